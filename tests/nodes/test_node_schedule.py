import pytest
import torch
from comfy_stub import host  # noqa: F401


def schedule(host, mask, **kw):
    args = dict(mask_mode="binary", threshold=0.5, steps=10) | kw
    return host.nodes.RADSpatialSchedule.execute(mask, **args)


def box(*shape):
    mask = torch.zeros(*shape)
    mask[..., 8:20, 10:30] = 1
    return mask


@pytest.mark.parametrize("shape", [(32, 40), (1, 32, 40), (3, 32, 40), (3, 1, 32, 40), (3, 32, 40, 1)])
def test_mask_layouts(host, shape):
    mask = box(*shape) if shape[-1] != 1 else box(*shape[:-1])[..., None]
    out = schedule(host, mask)
    batch = 1 if len(shape) == 2 else shape[0]
    assert out[0].mask.shape == (batch, 32, 40) and out[0].steps == 10 and out[0].curves is None


def test_binary_reads_almost_one_and_almost_zero(host):
    jpeg = box(1, 32, 40) * 0.97 + 0.02  # a JPEG'd black and white mask
    mask = schedule(host, jpeg)[0].mask
    assert torch.equal(mask, box(1, 32, 40))


def test_soft_keeps_values_and_snaps_the_ends(host):
    soft = torch.tensor([[[0.0, 0.01, 0.3, 0.5, 0.985, 1.0]]])
    mask = schedule(host, soft, mask_mode="soft")[0].mask
    assert mask.tolist() == [[[0.0, 0.0, pytest.approx(0.3), 0.5, 1.0, 1.0]]]


def test_loadimage_empty_mask_is_explained(host):
    with pytest.raises(ValueError, match="Load Image gives for a picture without transparency"):
        schedule(host, torch.zeros(1, 64, 64))
    with pytest.raises(ValueError, match="the mask is empty"):
        schedule(host, torch.zeros(1, 100, 80))
    with pytest.raises(ValueError, match="above the threshold 0.5"):
        schedule(host, torch.full((1, 16, 16), 0.3))


def test_preview_image_and_ui(host):
    out = schedule(host, box(2, 32, 40))
    preview = out[1]
    assert preview.shape == (2, 32, 5 * 40 + 4 * 4, 3)
    first, last = preview[0, :, :40, 0], preview[0, :, -40:, 0]
    assert first[10, 15] > 0.99 and first[0, 0] == 0  # hole: pure noise at the first step; kept: clean
    assert last[10, 15] < first[10, 15]
    assert out.ui.image is preview


def test_custom_curves(host):
    out = schedule(host, box(1, 32, 40), curves="custom", T1=500, beta_start=0.0002, beta_end=0.03)
    assert out[0].curves.T1 == 500 and out[0].curves.beta_end == 0.03
    with pytest.raises(ValueError, match="cannot exceed T1"):
        schedule(host, box(1, 32, 40), steps=600, curves="custom", T1=500)


def test_odd_mask_values_are_refused_in_both_modes(host):
    one_nan = box(1, 32, 40)
    one_nan[0, 0, 0] = float("nan")
    for mode in ("binary", "soft"):
        with pytest.raises(ValueError, match="mask has 1 NaN"):  # binary mode read NaN as "keep"
            schedule(host, one_nan, mask_mode=mode)
        with pytest.raises(ValueError, match="mask has 1280 NaN"):  # not "the mask is empty"
            schedule(host, torch.full((1, 32, 40), float("nan")), mask_mode=mode)
        with pytest.raises(ValueError, match="divide it by 255"):
            schedule(host, box(1, 32, 40) * 255 + 0.5 * (box(1, 32, 40) == 0), mask_mode=mode)
        with pytest.raises(ValueError, match="mask is empty"):
            schedule(host, torch.zeros(0, 32, 40), mask_mode=mode)
