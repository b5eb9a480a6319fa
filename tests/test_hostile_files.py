"""Hostile files and a shared server (issue 20): odd mask values, outputs on inputs, run-folder locks and full
disks, model files replaced on disk, crafted model files that ask for gigabytes.

One test (or one parametrised table) per class; the CLIs run in-process through main(argv) and must give one line,
exit status 2 and no traceback.
"""

import pytest
import torch

from comfyui_rad import masks
from comfyui_rad.checks import check_mask_values
from comfyui_rad.pipeline import inpaint
from comfyui_rad.schedule import SpatialSchedule

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------- 5. odd masks


def noisy_255_mask() -> torch.Tensor:
    """A 0..255 mask with a little noise in the black part: 20 % white (it read as "inpaint 80 %")."""
    mask = torch.randint(0, 4, (16, 16), generator=torch.Generator().manual_seed(0)).float()
    mask[4:11, 4:11] = 255
    return mask


@pytest.mark.parametrize("mode", masks.MASK_MODES)
def test_masks_nan_0_255_and_empty_refused_in_every_mode(mode):
    one_nan = torch.zeros(8, 8)
    one_nan[2, 3] = float("nan")
    cases = [
        (one_nan, "mask has 1 NaN or infinite value"),  # binary mode read it as "keep"
        (torch.full((8, 8), float("nan")), "mask has 64 NaN"),  # not "empty"
        (noisy_255_mask(), r"mask values must be in \[0, 1\].*0\.\.255: divide it by 255"),
        (torch.zeros(0, 8, 8), r"mask is empty \(shape \(0, 8, 8\)\)"),
        (torch.empty(0), "mask is empty"),
    ]
    for mask, message in cases:
        with pytest.raises(ValueError, match=message):
            masks.prepare(mask, mode)
    with pytest.raises(ValueError, match="my_mask has 1 NaN"):  # the caller's name for it
        masks.prepare(one_nan, mode, name="my_mask")
    assert torch.equal(masks.prepare(torch.tensor([[0.0, 1.0005]]), mode), torch.tensor([[0.0, 1.0]]))  # rounding


def test_schedule_and_pipeline_masks_empty_or_0_255_are_clear(tiny_adm):
    for mask in (torch.zeros(0, 8, 8), torch.zeros(2, 0, 8)):
        with pytest.raises(ValueError, match="mask is empty"):  # was torch's RuntimeError from min()
            SpatialSchedule(mask)
    with pytest.raises(ValueError, match=r"got range \[0, 255\]: divide it by 255"):
        SpatialSchedule(noisy_255_mask())
    with pytest.raises(ValueError, match="mask has 256 NaN"):
        inpaint(tiny_adm, torch.rand(1, 3, 16, 16), torch.full((16, 16), float("nan")), steps=2)
    with pytest.raises(ValueError, match="divide it by 255"):
        inpaint(tiny_adm, torch.rand(1, 3, 16, 16), noisy_255_mask(), steps=2)
    assert check_mask_values(torch.ones(3)) is not None
