import pytest
import torch

from comfyui_rad.masks import blur_mask, box_mask, extreme_mask, perlin_mask, perlin_noise, wide_mask


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def fractions(mask):
    return mask.mean(dim=(1, 2))


# ------------------------------------------------------------------------------------------------------ Perlin


def test_perlin_noise_shape_range_and_determinism():
    a = perlin_noise(3, 40, 56, 8.0, generator=gen(1), octaves=3)
    b = perlin_noise(3, 40, 56, 8.0, generator=gen(1), octaves=3)
    assert a.shape == (3, 40, 56) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert a.abs().max() <= 1 and a.std() > 0.1
    assert not torch.equal(a, perlin_noise(3, 40, 56, 8.0, generator=gen(2), octaves=3))


def test_perlin_noise_per_image_cell_size():
    noise = perlin_noise(2, 64, 64, torch.tensor([2.0, 32.0]), generator=gen())
    roughness = (noise[:, 1:] - noise[:, :-1]).abs().mean(dim=(1, 2))
    assert roughness[0] > 4 * roughness[1]  # small cells vary fast, large cells slowly


def test_perlin_noise_is_smooth_within_a_cell():
    noise = perlin_noise(1, 64, 64, 64.0, generator=gen())
    assert (noise[:, 1:] - noise[:, :-1]).abs().max() < 0.1


@pytest.mark.parametrize("size", [(64, 64), (37, 53), (1, 9)])
@pytest.mark.parametrize("coverage", [0.0, 0.1, 0.37, 1.0])
def test_perlin_mask_coverage_is_exact(size, coverage):
    mask = perlin_mask(4, *size, generator=gen(), coverage=coverage)
    pixels = size[0] * size[1]
    assert torch.all((fractions(mask) - coverage).abs() <= 0.5 / pixels + 1e-7)


def test_perlin_mask_coverage_range_and_binary():
    mask = perlin_mask(8, 37, 53, generator=gen(), coverage=(0.2, 0.3))
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.dtype == torch.float32
    assert torch.all((fractions(mask) >= 0.2 - 1 / 1961) & (fractions(mask) <= 0.3 + 1 / 1961))


def test_perlin_mask_determinism_and_seeds():
    a = perlin_mask(4, 32, 32, generator=gen(5))
    assert torch.equal(a, perlin_mask(4, 32, 32, generator=gen(5)))
    assert not torch.equal(a, perlin_mask(4, 32, 32, generator=gen(6)))


def test_perlin_mask_default_area_is_roughly_uniform():
    area = fractions(perlin_mask(200, 32, 32, generator=gen(123)))
    assert 0.4 <= area.mean() <= 0.6
    assert (area < 0.25).float().mean() > 0.15 and (area > 0.75).float().mean() > 0.15


def test_perlin_mask_soft_edges_invert_and_octaves():
    hard = perlin_mask(2, 48, 48, generator=gen(), coverage=0.5, cell_size=(8, 16))
    soft = perlin_mask(2, 48, 48, generator=gen(), coverage=0.5, cell_size=(8, 16), softness=2.0)
    assert soft.min() >= 0 and soft.max() <= 1
    assert ((soft > 0) & (soft < 1)).any()
    assert torch.allclose(fractions(soft), fractions(hard), atol=0.05)
    inverted = perlin_mask(2, 48, 48, generator=gen(), coverage=0.5, cell_size=(8, 16), invert=True)
    assert torch.equal(inverted, 1 - hard)
    rich = perlin_mask(2, 48, 48, generator=gen(), coverage=0.5, octaves=4, persistence=0.6)
    assert torch.allclose(fractions(rich), torch.full((2,), 0.5))


def test_blur_mask_keeps_range_and_zero_sigma_is_identity():
    mask = box_mask(1, 32, 32, center=True)
    assert blur_mask(mask, 0) is mask
    blurred = blur_mask(mask, 3.0)
    assert blurred.min() >= 0 and blurred.max() <= 1 and abs(blurred.mean() - mask.mean()) < 0.01


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(coverage=1.5), "coverage must be in \\[0, 1\\], got 1.5"),
        (dict(coverage=(0.6, 0.2)), "low <= high"),
        (dict(cell_size=(20, 4)), "cell_size range"),
        (dict(cell_size=-2.0), "cell_size must be in"),
        (dict(softness=-1.0), "softness must be >= 0"),
    ],
)
def test_perlin_mask_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        perlin_mask(2, 16, 16, generator=gen(), **kwargs)


def test_size_and_generator_errors():
    with pytest.raises(ValueError, match="height must be a positive integer, got 0"):
        perlin_mask(1, 0, 16, generator=gen())
    with pytest.raises(TypeError, match="CPU torch.Generator"):
        perlin_mask(1, 16, 16, generator=None)
    with pytest.raises(ValueError, match="one value or one per image"):
        perlin_noise(3, 8, 8, torch.tensor([2.0, 3.0]), generator=gen())
    with pytest.raises(TypeError, match="box_mask\\(center=False\\)"):
        box_mask(1, 16, 16)


# -------------------------------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("size, hole", [((256, 256), (128, 128)), ((64, 96), (32, 48)), ((37, 53), (19, 27))])
def test_box_and_extreme_sizes(size, hole):
    box = box_mask(5, *size, generator=gen())
    assert box.shape == (5, *size) and box.dtype == torch.float32
    assert torch.all(box.sum(dim=(1, 2)) == hole[0] * hole[1])
    rows, cols = box.amax(dim=2), box.amax(dim=1)
    assert torch.all(rows.sum(1) == hole[0]) and torch.all(cols.sum(1) == hole[1])  # one solid rectangle inside
    extreme = extreme_mask(5, *size)
    assert torch.all(extreme.sum(dim=(1, 2)) == size[0] * size[1] - hole[0] * hole[1])
    assert torch.equal(extreme[0], 1 - box_mask(1, *size, center=True)[0])


def test_box_positions_vary_and_are_seeded():
    box = box_mask(16, 256, 256, generator=gen(3))
    assert torch.equal(box, box_mask(16, 256, 256, generator=gen(3)))
    assert len({tuple(b.nonzero()[0].tolist()) for b in box}) > 8
    moved = extreme_mask(4, 256, 256, generator=gen(3), center=False)
    assert torch.all(moved.sum(dim=(1, 2)) == 256 * 256 - 128 * 128)
    assert not torch.equal(moved[0], moved[1])


@pytest.mark.parametrize("size", [(256, 256), (128, 192)])
def test_wide_mask_fraction_and_determinism(size):
    mask = wide_mask(64, *size, generator=gen(7))
    assert mask.shape == (64, *size) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(mask, wide_mask(64, *size, generator=gen(7)))
    area = fractions(mask)
    assert 0.15 <= area.mean() <= 0.35
    assert ((area >= 0.05) & (area <= 0.6)).float().mean() >= 0.85


def test_wide_mask_boxes_add_area():
    plain = fractions(wide_mask(32, 128, 128, generator=gen(1)))
    boxed = fractions(wide_mask(32, 128, 128, generator=gen(1), box_probability=1.0))
    assert boxed.mean() > plain.mean()
    with pytest.raises(ValueError, match="box_probability must be in \\[0, 1\\], got 2"):
        wide_mask(1, 64, 64, generator=gen(), box_probability=2)


# ------------------------------------------------------------------------------------- reading masks, the table


def test_one_layout_rule_and_one_threshold_rule():
    from comfyui_rad.masks import as_bhw, check_threshold, prepare

    m = torch.rand(2, 5, 7)
    for layout in (m, m[:, None], m[..., None]):
        assert torch.equal(as_bhw(layout), m)
    assert as_bhw(m[0]).shape == (1, 5, 7)
    with pytest.raises(ValueError, match=r"mask has shape \(2, 3, 5, 7\): mask must be"):
        as_bhw(torch.rand(2, 3, 5, 7))
    assert torch.equal(prepare(torch.tensor([0.0, 0.01, 0.5, 0.51]), threshold=0), torch.tensor([0.0, 1, 1, 1]))
    assert torch.equal(prepare(torch.tensor([0.0, 0.01, 0.5, 0.51])), torch.tensor([0.0, 0, 0, 1]))
    assert check_threshold(0.0) == 0.0
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"--threshold must be a finite number in \[0, 1\)"):
            check_threshold(bad, "--threshold")


def test_generated_masks_box_random_unless_centred():
    from comfyui_rad.masks import GENERATED_MASKS, generated_mask

    assert list(GENERATED_MASKS) == ["box", "extreme", "wide", "perlin"]
    centred = generated_mask("box", 3, 32, 32, seed=0, centred_box=True)
    assert torch.equal(centred, box_mask(3, 32, 32, center=True))
    drawn = generated_mask("box", 3, 32, 32, seed=0)
    assert torch.equal(drawn, box_mask(3, 32, 32, generator=torch.Generator().manual_seed(0)))
    extreme = generated_mask("extreme", 1, 32, 32, 5)
    assert torch.equal(generated_mask("extreme", 1, 32, 32, 5, centred_box=True), extreme)
    with pytest.raises(ValueError, match="unknown mask kind 'boxes'"):
        generated_mask("boxes", 1, 8, 8, 0)
