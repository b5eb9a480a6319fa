import pytest
import torch
from comfy_stub import host  # noqa: F401

from comfyui_rad.fill import harmonic_fill


def photo(batch, height, width, seed=0):
    """ComfyUI IMAGE [B,H,W,3] in [0,1]."""
    return torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(seed))


def box(batch, height, width):
    mask = torch.zeros(batch, height, width)
    mask[:, height // 4:height // 2, width // 3:2 * width // 3] = 1
    return mask


def test_fills_the_hole_from_the_rest_and_passes_the_mask_on(host):
    image, mask = photo(2, 24, 32), box(2, 24, 32)
    out, used = host.nodes.RADFill.execute(image, mask, "harmonic")
    assert out.shape == image.shape and out.dtype == torch.float32 and torch.equal(used, mask)
    keep = (mask == 0)[..., None].expand_as(image)
    assert torch.equal(out[keep], image[keep])
    assert torch.equal(out, harmonic_fill(image.movedim(-1, 1), mask).movedim(1, -1))


def test_batch_rules_one_image_many_masks(host):
    image, masks = photo(1, 16, 16), torch.stack([box(1, 16, 16)[0], box(1, 16, 16)[0].flip(0)])
    out, used = host.nodes.RADFill.execute(image, masks, "harmonic")
    assert out.shape == (2, 16, 16, 3) and torch.equal(used, masks)
    assert not torch.equal(out[0], out[1])


def test_refusals_name_the_node_inputs(host):
    with pytest.raises(ValueError, match="the mask input is 20x16 but the image input is 16x16"):
        host.nodes.RADFill.execute(photo(1, 16, 16), torch.zeros(1, 16, 20), "harmonic")
    with pytest.raises(ValueError, match="2 images and the mask input 3 masks"):
        host.nodes.RADFill.execute(photo(2, 16, 16), torch.zeros(3, 16, 16), "harmonic")
    with pytest.raises(ValueError, match="^the mask input has no kept pixel"):
        host.nodes.RADFill.execute(photo(1, 16, 16), torch.ones(1, 16, 16), "harmonic")
