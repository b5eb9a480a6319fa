import logging

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_rad.imaging import (
    from_model_range,
    load_image,
    load_mask,
    normalize_mask,
    save_image,
    to_model_range,
)
from comfyui_rad.masks import binarize
from comfyui_rad.plan import FIT_MODES, fit_crop, fit_pad, fit_resize, stitch


def quantized(*shape, seed=0):
    """Random values that 8-bit files hold exactly."""
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed)).float() / 255


# ----------------------------------------------------------------------------------------------------- files


def test_png_round_trip_is_exact(tmp_path):
    image = quantized(1, 3, 21, 34)
    (written,) = save_image(image, tmp_path / "a.png")
    loaded = load_image(written)
    assert loaded.shape == (1, 3, 21, 34) and loaded.dtype == torch.float32
    assert torch.equal(loaded, image)


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_lossy_formats_by_extension(tmp_path, suffix):
    image = torch.full((3, 16, 16), 0.5)
    save_image(image, tmp_path / f"a{suffix}")
    assert (load_image(tmp_path / f"a{suffix}") - 0.5).abs().max() < 0.02


def test_save_refuses_to_clobber_and_force_overwrites(tmp_path):
    path = tmp_path / "a.png"
    save_image(torch.zeros(3, 8, 8), path)
    with pytest.raises(FileExistsError, match=r"a\.png.*pass force=True"):  # the API's name; the CLIs say --force
        save_image(torch.ones(3, 8, 8), path)
    assert load_image(path).max() == 0
    save_image(torch.ones(3, 8, 8), path, force=True)
    assert load_image(path).min() == 1


def test_save_batch_numbers_files_and_leaves_no_temporaries(tmp_path):
    image = quantized(3, 3, 8, 8)
    written = save_image(image, tmp_path / "out" / "x.png")
    assert [p.name for p in written] == ["x_00000.png", "x_00001.png", "x_00002.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in written]
    assert torch.equal(load_image(written[2])[0], image[2])
    with pytest.raises(FileExistsError):
        save_image(image, tmp_path / "out" / "x.png")


def test_failed_write_leaves_no_temporaries(tmp_path):
    with pytest.raises(ValueError, match="empty"):  # PIL fails while writing the temporary file
        save_image(torch.zeros(3, 0, 8), tmp_path / "a.png")
    assert list(tmp_path.iterdir()) == []


def test_save_and_load_errors(tmp_path):
    with pytest.raises(ValueError, match="format of .*a.bmp"):
        save_image(torch.zeros(3, 8, 8), tmp_path / "a.bmp")
    with pytest.raises(ValueError, match="image must be"):
        save_image(torch.zeros(2, 8, 8), tmp_path / "a.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image .*junk.png"):
        load_mask(tmp_path / "junk.png")


# ----------------------------------------------------------------------------------------------------- masks


def test_rgba_alpha_means_transparent_is_inpaint(tmp_path):
    rgba = np.full((4, 6, 4), 255, np.uint8)
    rgba[1:3, 2:5, 3] = 0  # transparent hole
    rgba[0, 0, 3] = 64
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.png")
    mask = load_mask(tmp_path / "m.png")
    assert mask.shape == (1, 4, 6) and mask.dtype == torch.float32
    assert mask[0, 1:3, 2:5].eq(1).all() and mask.sum() == 6 + (1 - 64 / 255)
    assert torch.equal(load_mask(tmp_path / "m.png", invert=True), 1 - mask)


def test_grayscale_and_opaque_rgba_mean_white_is_inpaint(tmp_path):
    gray = np.zeros((5, 7), np.uint8)
    gray[2:4, 1:3] = 255
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    Image.fromarray(np.stack([gray] * 3 + [np.full_like(gray, 255)], -1), "RGBA").save(tmp_path / "o.png")
    Image.fromarray(np.stack([gray] * 3, -1), "RGB").save(tmp_path / "c.png")
    expected = torch.from_numpy(gray == 255).float()[None]
    for name in ("g.png", "o.png", "c.png"):
        assert torch.equal(load_mask(tmp_path / name), expected)
    assert torch.equal(load_mask(tmp_path / "g.png", invert=True), 1 - expected)


def test_value_ranges_and_binarize():
    x = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(to_model_range(x), torch.tensor([-1.0, -0.5, 1.0]))
    assert torch.equal(from_model_range(torch.tensor([-2.0, 0.0, 1.0])), torch.tensor([0.0, 0.5, 1.0]))
    assert torch.equal(binarize(torch.tensor([0.2, 0.5, 0.7])), torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(binarize(torch.tensor([0.0, 0.01]), threshold=0), torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("shape", [(6, 8), (1, 6, 8), (1, 1, 6, 8)])
def test_normalize_mask_broadcasts_one_mask(shape):
    mask = normalize_mask(torch.ones(shape), 3, 6, 8)
    assert mask.shape == (3, 6, 8) and mask.dtype == torch.float32 and mask.eq(1).all()


def test_normalize_mask_per_image_and_resize():
    masks = torch.rand(2, 1, 6, 8)
    assert torch.equal(normalize_mask(masks, 2, 6, 8), masks[:, 0])
    binary = normalize_mask(torch.eye(4), 1, 8, 8)
    assert set(binary.unique().tolist()) == {0.0, 1.0} and binary.sum() == 16
    soft = normalize_mask(torch.rand(10, 10), 1, 5, 5)
    assert soft.shape == (1, 5, 5) and 0 <= soft.min() and soft.max() <= 1


def test_normalize_mask_errors():
    with pytest.raises(ValueError, match="mask batch 3 does not match image batch 2: give one mask or one per image"):
        normalize_mask(torch.ones(3, 4, 4), 2, 4, 4)
    with pytest.raises(ValueError, match="mask must be"):
        normalize_mask(torch.ones(2, 3, 4, 4), 2, 4, 4)


# ------------------------------------------------------------------------------------------- fit and stitch


def check_round_trip(fit_fn, image, mask, size, **kwargs):
    """Fit, replace the model input by a constant fake result, stitch: kept pixels must be bit-identical and the
    hole must come from the result."""
    model_in, model_mask, fit = fit_fn(image, mask, size, **kwargs)
    assert model_in.shape == (image.shape[0], 3, size, size) and model_mask.shape == (image.shape[0], size, size)
    assert model_mask.sum() > 0 and 0 <= model_mask.min() and model_mask.max() <= 1
    out = stitch(torch.full_like(model_in, 0.25), image, mask, fit)
    hole = normalize_mask(mask, *image.shape[:1], *image.shape[-2:])[:, None].expand_as(image) > 0
    assert torch.equal(out[~hole], image[~hole])
    assert torch.allclose(out[hole], torch.tensor(0.25), atol=1e-6)
    return model_in, model_mask, fit


def test_crop_small_mask_on_300x500():
    image = torch.rand(1, 3, 300, 500)
    mask = torch.zeros(300, 500)
    mask[250:280, 440:470] = 1
    model_in, model_mask, fit = check_round_trip(fit_crop, image, mask, 256)
    (window,) = fit.windows
    assert (window.height, window.width) == (256, 256) and window.top == 44 and window.left == 244
    assert torch.equal(model_in[0], image[0, :, 44:300, 244:500])  # no resize: exact crop
    assert model_mask.sum() == 30 * 30


def test_crop_is_per_image_and_takes_soft_mask_pixels_from_the_result():
    image = torch.rand(2, 3, 300, 500)
    mask = torch.zeros(2, 300, 500)
    mask[0, 10:20, 10:20] = 0.5
    mask[1, 200:220, 400:420] = 1
    model_in, _, fit = fit_crop(image, mask, 256)
    assert fit.windows[0].left == 0 and fit.windows[1].left == 244
    out = stitch(torch.ones_like(model_in), image, mask, fit)
    assert torch.equal(out[0, :, 10:20, 10:20], torch.ones(3, 10, 10))  # the sampler applied the soft value
    assert torch.equal(out[0, :, 20:, :], image[0, :, 20:, :])
    assert torch.equal(out[1, :, 200:220, 400:420], torch.ones(3, 20, 20))


def test_crop_large_mask_is_downscaled():
    image = torch.rand(1, 3, 600, 500)
    mask = torch.zeros(600, 500)
    mask[50:450, 100:420] = 1
    _, model_mask, fit = check_round_trip(fit_crop, image, mask, 128, margin=16)
    (window,) = fit.windows
    assert window.height == window.width == 432 and window.top == 34
    assert model_mask.max() == 1 and model_mask.mean() > 0.5


def test_crop_image_smaller_than_model():
    image = torch.rand(1, 3, 40, 200)
    mask = torch.zeros(40, 200)
    mask[10:20, 150:160] = 1
    model_in, _, fit = check_round_trip(fit_crop, image, mask, 64, margin=8)
    assert fit.windows[0].top == -12  # padded above and below
    assert torch.equal(model_in[0, :, 12:52], image[0, :, :, fit.windows[0].left:fit.windows[0].left + 64])
    tiny = torch.rand(1, 3, 5, 7)  # too small to reflect: replicated
    check_round_trip(fit_crop, tiny, torch.ones(5, 7), 32)


@pytest.mark.parametrize("fit_fn", [fit_resize, fit_pad])
@pytest.mark.parametrize("size", [(300, 500), (100, 60)])
def test_resize_and_pad_round_trips(fit_fn, size):
    image = torch.rand(2, 3, *size)
    mask = torch.zeros(size)
    mask[20:50, 10:40] = 1
    check_round_trip(fit_fn, image, mask, 128)


def test_pad_uses_a_whole_factor():
    _, _, fit = fit_pad(torch.rand(1, 3, 300, 500), torch.ones(300, 500), 256)
    assert fit.windows[0].height == 512 and fit.windows[0].top == -106 and fit.windows[0].left == -6
    assert set(FIT_MODES) == {"crop", "resize", "pad"}


@pytest.mark.parametrize("fit_fn", list(FIT_MODES.values()))
def test_empty_mask_returns_input(fit_fn, caplog):
    image = torch.rand(1, 3, 50, 70)
    with caplog.at_level(logging.WARNING):
        model_in, model_mask, fit = fit_fn(image, torch.zeros(50, 70), 32)
    assert fit.empty and model_mask.sum() == 0 and "empty" in caplog.text
    assert torch.equal(stitch(model_in, image, torch.zeros(50, 70), fit), image)


def test_fit_and_stitch_errors():
    image = torch.rand(2, 3, 40, 40)
    with pytest.raises(ValueError, match="mask batch 3 does not match image batch 2"):
        fit_crop(image, torch.ones(3, 40, 40), 32)
    model_in, _, fit = fit_crop(image, torch.ones(40, 40), 32)
    with pytest.raises(ValueError, match="result must be"):
        stitch(model_in[:, :, :16], image, torch.ones(40, 40), fit)
    with pytest.raises(ValueError, match="not the one fitted"):
        stitch(model_in, image[:, :, :30], torch.ones(30, 40), fit)
