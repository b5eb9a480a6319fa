import pytest
import torch

from comfyui_rad import fill as fill_module
from comfyui_rad.fill import fill, harmonic_fill, start_image
from comfyui_rad.masks import perlin_mask


def reference(image: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """The 5-point discrete Laplace problem [C,H,W] in ``hole`` [H,W] (Neumann at the picture's edge), built as a
    dense linear system over the hole pixels and solved directly in float64."""
    c, h, w = image.shape
    index = torch.nonzero(hole.flatten()).flatten()
    number = torch.full((h * w,), -1, dtype=torch.long)
    number[index] = torch.arange(index.numel())
    matrix = torch.zeros(index.numel(), index.numel(), dtype=torch.float64)
    rhs = torch.zeros(c, index.numel(), dtype=torch.float64)
    pixels = image.double()
    for k, p in enumerate(index.tolist()):
        y, x = divmod(p, w)
        for yy, xx in ((y, x + 1), (y, x - 1), (y + 1, x), (y - 1, x)):
            if 0 <= yy < h and 0 <= xx < w:
                matrix[k, k] += 1
                if hole[yy, xx]:
                    matrix[k, number[yy * w + xx]] -= 1
                else:
                    rhs[:, k] += pixels[:, yy, xx]
    out = pixels.reshape(c, -1).clone()
    out[:, index] = torch.linalg.solve(matrix, rhs.T).T
    return out.reshape(c, h, w)


def random_holes(batch, h, w, seed, density=0.5):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(batch, h, w, generator=g) < density).float()
    mask[:, :2, : w // 2] = 1  # a hole along the top edge
    return mask


@pytest.mark.parametrize("direct", [fill_module.DIRECT_CELLS, 8])
@pytest.mark.parametrize("shape,seed", [((23, 31), 0), ((40, 48), 1), ((33, 17), 2)])
def test_agrees_with_a_direct_solve(monkeypatch, direct, shape, seed):
    monkeypatch.setattr(fill_module, "DIRECT_CELLS", direct)  # 8: a deep hierarchy on a small picture
    image = torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(seed))
    mask = random_holes(2, *shape, seed)
    out = harmonic_fill(image, mask)
    for b in range(2):
        assert (out[b].double() - reference(image[b], mask[b] > 0)).abs().max() < 1e-5


def test_large_separate_holes_agree_with_a_direct_solve():
    image = torch.rand(1, 3, 48, 56, generator=torch.Generator().manual_seed(3))
    mask = perlin_mask(1, 48, 56, generator=torch.Generator().manual_seed(3), cell_size=(10, 10), coverage=0.45)
    assert int(mask.sum()) > fill_module.DIRECT_CELLS  # multigrid, not only the direct solve
    out = harmonic_fill(image, mask)
    assert (out[0].double() - reference(image[0], mask[0] > 0)).abs().max() < 1e-5


def test_float64_is_solved_in_float64():
    image = torch.rand(1, 3, 30, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    mask = random_holes(1, 30, 30, 4, 0.7)
    out = harmonic_fill(image, mask, tol=1e-11)
    assert out.dtype == torch.float64
    assert (out[0] - reference(image[0], mask[0] > 0)).abs().max() < 1e-9


def test_a_linear_ramp_is_reproduced():
    y, x = torch.meshgrid(torch.arange(40, dtype=torch.float64), torch.arange(50, dtype=torch.float64), indexing="ij")
    image = torch.stack([0.01 * x + 0.005 * y, 0.3 + 0.002 * x, 0.9 - 0.01 * y])[None]
    mask = torch.zeros(1, 40, 50)
    mask[:, 5:33, 4:45] = 1
    mask[:, 20:39, 20:24] = 1  # an irregular hole, inside the picture
    holed = torch.where(mask[:, None] > 0, torch.zeros_like(image), image)
    assert (harmonic_fill(holed, mask, tol=1e-12) - image).abs().max() < 1e-10


def test_a_constant_picture_stays_constant_with_holes_on_the_edge():
    image = torch.full((1, 3, 20, 30), 0.25)
    mask = torch.zeros(1, 20, 30)
    mask[:, :, :10] = 1  # the whole left side, three picture edges
    assert (harmonic_fill(image, mask) - 0.25).abs().max() < 1e-6


def test_kept_pixels_are_bit_identical_and_the_hole_is_never_read():
    image = torch.rand(3, 3, 37, 41, generator=torch.Generator().manual_seed(5))
    mask = perlin_mask(3, 37, 41, generator=torch.Generator().manual_seed(5), coverage=0.4, softness=2.0)
    mask = torch.where(mask < 0.05, 0.0, mask)  # a blur's tails reach every pixel: keep some
    out = harmonic_fill(image, mask)
    kept = (mask == 0)[:, None].expand_as(image)
    assert torch.equal(out[kept], image[kept])
    scrambled = torch.where(kept, image, torch.rand(image.shape, generator=torch.Generator().manual_seed(6)))
    assert torch.equal(harmonic_fill(scrambled, mask), out)


def test_a_soft_mask_is_a_hole_wherever_it_is_above_zero():
    image = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(7))
    mask = torch.zeros(1, 24, 24)
    mask[:, 6:18, 6:18] = 0.3
    mask[:, 9:15, 9:15] = 1
    assert torch.equal(harmonic_fill(image, mask), harmonic_fill(image, (mask > 0).float()))
    assert not torch.equal(harmonic_fill(image, mask)[:, :, 7, 7], image[:, :, 7, 7])


def test_one_mask_for_many_pictures_and_mask_layouts():
    image = torch.rand(2, 3, 16, 20, generator=torch.Generator().manual_seed(8))
    mask = random_holes(1, 16, 20, 8)
    out = harmonic_fill(image, mask)
    assert torch.equal(out[1:], harmonic_fill(image[1:], mask[0]))
    assert torch.equal(out, harmonic_fill(image, mask[:, None]))


def test_an_empty_mask_returns_the_image():
    image = torch.rand(2, 3, 8, 8)
    out = harmonic_fill(image, torch.zeros(8, 8))
    assert torch.equal(out, image) and out is not image


def test_a_mask_without_kept_pixels_is_refused_naming_it():
    image = torch.rand(2, 3, 8, 8)
    mask = torch.zeros(2, 8, 8)
    mask[1] = 0.5
    with pytest.raises(ValueError, match=r"^the mask input 1 has no kept pixel"):
        harmonic_fill(image, mask, name="the mask input")
    with pytest.raises(ValueError, match=r"^mask has no kept pixel"):
        harmonic_fill(image[:1], torch.ones(8, 8))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="mask is .* but image is"):
        harmonic_fill(torch.rand(1, 3, 8, 8), torch.zeros(1, 8, 9))
    with pytest.raises(ValueError, match="mask is .* but image is"):
        harmonic_fill(torch.rand(2, 3, 8, 8), torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        harmonic_fill(torch.full((1, 3, 4, 4), float("nan")), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="unknown fill method 'telea': use one of harmonic"):
        fill(torch.rand(1, 3, 4, 4), torch.zeros(4, 4), "telea")


# ------------------------------------------------------------------------------------------------- start_image


def soft_hole(h=20, w=24):
    mask = torch.zeros(2, h, w)
    mask[:, 4:16, 5:19] = 0.5
    mask[:, 6:14, 7:17] = 1
    return mask


@pytest.mark.parametrize("start,strength", [("noise", 0.3), ("harmonic", 1.0), ("noise", 1.0)])
def test_a_noise_start_or_full_strength_changes_nothing(start, strength):
    image, mask = torch.rand(2, 3, 20, 24), soft_hole()
    started, scaled = start_image(image, mask, start, strength)
    assert started is image and scaled is mask


@pytest.mark.parametrize("strength", [0.0, 0.25, 0.5])
def test_the_hidden_pixels_hold_the_fill_and_the_mask_is_scaled(strength):
    image, mask = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(9)), soft_hole()
    started, scaled = start_image(image, mask, "harmonic", strength)
    hidden = (mask >= 1)[:, None].expand_as(image)
    assert torch.equal(scaled, mask * strength) and torch.equal(scaled[mask == 1], torch.full_like(mask[mask == 1],
                                                                                                   strength))
    assert torch.equal(started[~hidden], image[~hidden])  # kept and soft pixels: the input's, bit for bit
    assert torch.equal(started[hidden], harmonic_fill(image, (mask >= 1).float())[hidden])  # filled from all m < 1


def test_a_start_from_a_fill_needs_pixels_to_fill_from():
    mask = torch.ones(2, 8, 8)
    mask[0, 0, 0] = 0
    with pytest.raises(ValueError, match="start harmonic fills the hole .* but mask covers the whole image: use "
                                         "start noise"):
        start_image(torch.rand(2, 3, 8, 8), mask, "harmonic", 0.5)
    assert start_image(torch.rand(2, 3, 8, 8), mask, "noise", 0.5)[1] is mask  # pure generation stays possible


def test_start_settings_are_checked_naming_the_interface():
    image, mask = torch.rand(1, 3, 8, 8), soft_hole(8, 8)[:1]
    with pytest.raises(ValueError, match="unknown --start 'telea': use one of noise, harmonic"):
        start_image(image, mask, "telea", 0.5, names=("--start", "--start-strength"))
    for bad in (1.5, -0.1, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="start_strength must be a"):
            start_image(image, mask, "harmonic", bad)


def test_the_starts_are_the_settings_table():
    from comfyui_rad import fill as module, settings

    assert module.STARTS == settings.STARTS and settings.START_NAMES == ("auto", *module.STARTS)
