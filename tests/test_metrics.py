"""metrics: golden values of hole MSE / PSNR, SSIM, the seam measure and the Fréchet distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from comfyui_rad.metrics import (
    frechet_distance,
    frechet_from_statistics,
    gaussian_window,
    hole_mse,
    hole_psnr,
    seam,
    ssim,
    ssim_map,
)


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def box(batch=2, size=16, top=4, left=5, h=8, w=6):
    mask = torch.zeros(batch, size, size)
    mask[:, top:top + h, left:left + w] = 1
    return mask


# ------------------------------------------------------------------------------------------------ MSE and PSNR


def test_hole_psnr_of_a_known_error_counts_only_the_hole():
    truth = rand(2, 3, 16, 16)
    mask = box()
    result = truth.clone()
    result[:, :, 4:12, 5:11] += 0.1  # error 0.1 everywhere in the hole
    result[:, :, 0, 0] = 5.0  # a wild pixel outside the hole is not counted
    result[1, :, 4:12, 5:11] -= 0.05  # second image: error 0.05
    torch.testing.assert_close(hole_mse(result, truth, mask), torch.tensor([0.01, 0.0025], dtype=torch.float64))
    torch.testing.assert_close(hole_psnr(result, truth, mask), torch.tensor([20.0, 26.0206], dtype=torch.float64),
                               atol=1e-4, rtol=0)
    # images in [-1, 1]: twice the error and twice the range give the same PSNR
    torch.testing.assert_close(hole_psnr(2 * result - 1, 2 * truth - 1, mask, data_range=2.0),
                               hole_psnr(result, truth, mask))


def test_hole_psnr_edge_cases():
    truth = rand(2, 3, 8, 8)
    mask = torch.zeros(2, 8, 8)
    mask[0, 2:4, 2:4] = 1
    out = hole_psnr(truth, truth, mask)
    assert math.isinf(out[0]) and math.isnan(out[1])  # perfect hole; no hole
    with pytest.raises(ValueError, match="does not fit images"):
        hole_mse(truth, truth, torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="must be the same"):
        hole_mse(truth, truth[:1], mask)


# -------------------------------------------------------------------------------------------------------- SSIM


def test_ssim_of_identical_images_is_one_and_falls_with_noise():
    x = rand(1, 3, 32, 32)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-12)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    scores = [ssim(x, (x + s * noise).clamp(0, 1)).item() for s in (0.02, 0.1, 0.3)]
    assert 1 > scores[0] > scores[1] > scores[2] > 0, scores


def test_ssim_map_matches_the_formula_at_one_pixel():
    """The window sum written out at an interior pixel, against the convolution."""
    x, y = rand(1, 1, 24, 24, seed=2), rand(1, 1, 24, 24, seed=3)
    i, j = 12, 9
    w = gaussian_window().numpy()
    a, b = x[0, 0, i - 5:i + 6, j - 5:j + 6].double().numpy(), y[0, 0, i - 5:i + 6, j - 5:j + 6].double().numpy()
    mx, my = (w * a).sum(), (w * b).sum()
    vx, vy, cxy = (w * a * a).sum() - mx**2, (w * b * b).sum() - my**2, (w * a * b).sum() - mx * my
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert ssim_map(x, y)[0, i, j].item() == pytest.approx(expected, abs=1e-12)
    assert gaussian_window().sum().item() == pytest.approx(1.0) and gaussian_window().shape == (11, 11)


def test_ssim_of_constant_images_is_the_luminance_term():
    a, b = 0.3, 0.7
    x, y = torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b)
    c1 = 0.01**2
    assert ssim(x, y).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-6)


def test_ssim_over_the_hole_box_sees_only_that_region():
    truth = rand(2, 3, 32, 32)
    mask = box(size=32, top=10, left=12, h=8, w=8)
    result = truth.clone()
    result[0, :, :, :6] = 0  # damage far from the hole, image 0 only
    region = ssim(result, truth, mask)
    assert region[0].item() == pytest.approx(1.0) and region[1].item() == pytest.approx(1.0)
    assert ssim(result, truth)[0] < 0.95
    result[1, :, 10:18, 12:20] = 0.5  # damage in the hole, image 1
    assert ssim(result, truth, mask)[1] < 0.5
    assert math.isnan(ssim(truth, truth, torch.zeros(2, 32, 32))[0])


# -------------------------------------------------------------------------------------------------------- seam


def test_seam_is_zero_for_the_truth_and_sees_an_offset_hole():
    truth = rand(2, 3, 16, 16)
    mask = box()
    assert seam(truth, truth, mask).abs().max().item() == 0
    shifted = truth.clone()
    shifted[:, :, 4:12, 5:11] = shifted[:, :, 4:12, 5:11] + 0.2  # a step all along the border
    smooth = torch.full((2, 3, 16, 16), 0.5)
    stepped = smooth.clone()
    stepped[:, :, 4:12, 5:11] = 0.7
    # on a flat image the step is the whole jump: exactly 0.2 at every crossing
    torch.testing.assert_close(seam(stepped, smooth, mask), torch.full((2,), 0.2, dtype=torch.float64))
    assert (seam(shifted, truth, mask) > 0.05).all()
    # a change inside the hole that leaves the border rows and columns alone does not count
    inner = truth.clone()
    inner[:, :, 5:11, 6:10] = 0.0
    assert seam(inner, truth, mask).abs().max().item() == 0
    assert math.isnan(seam(truth, truth, torch.ones(2, 16, 16))[0])


# ---------------------------------------------------------------------------------------------------- Fréchet


def test_frechet_of_a_set_with_itself_is_zero():
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_frechet_of_shifted_gaussians_is_the_squared_mean_distance():
    """Same covariance (the same samples, shifted): the distance is exactly |c|^2."""
    x = torch.randn(500, 6, generator=torch.Generator().manual_seed(1)) * torch.tensor([1, 2, 3, 0.5, 1, 1])
    c = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 0.0])
    assert frechet_distance(x, x + c) == pytest.approx(float(c.square().sum()), rel=1e-9)


def test_frechet_closed_form_for_diagonal_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    v1, v2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 9.0])
    expected = (mu1 - mu2).square().sum() + (v1.sqrt() - v2.sqrt()).square().sum()  # 5 + 1 + 1 + 0
    assert frechet_from_statistics(mu1, torch.diag(v1), mu2, torch.diag(v2)) == pytest.approx(float(expected))


def test_frechet_matches_scipy_sqrtm_and_survives_few_samples():
    linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(40, 5, generator=g), torch.randn(60, 5, generator=g) * 1.5 + 0.3
    ma, mb = a.double().mean(0).numpy(), b.double().mean(0).numpy()
    ca, cb = np.cov(a.double().numpy(), rowvar=False), np.cov(b.double().numpy(), rowvar=False)
    ref = ((ma - mb) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(linalg.sqrtm(ca @ cb).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)
    # fewer samples than dimensions: singular covariances, still finite and non-negative; one sample works too
    few = frechet_distance(torch.randn(3, 16, generator=g), torch.randn(4, 16, generator=g))
    assert math.isfinite(few) and few > 0
    assert frechet_distance(a[:1], a[:1]) == 0.0
    with pytest.raises(ValueError, match="5 and 4 dimensions"):
        frechet_distance(a, b[:, :4])


def test_region_seam_is_seam_for_a_mask_and_sees_only_label_borders():
    from comfyui_rad.metrics import region_seam

    g = torch.Generator().manual_seed(3)
    truth, result = torch.rand(2, 3, 12, 14, generator=g), torch.rand(2, 3, 12, 14, generator=g)
    mask = torch.zeros(2, 12, 14)
    mask[:, 3:9, 4:11] = 1
    assert torch.allclose(region_seam(result, truth, mask > 0.5), seam(result, truth, mask))
    labels = torch.zeros(12, 14, dtype=torch.long)
    labels[:, 7:] = 1  # one vertical border between columns 6 and 7
    flat = truth[..., :1].expand(-1, -1, -1, 14).clone()  # constant along each row: no jump across columns
    stepped = flat.clone()
    stepped[..., 7:] += 0.1  # a seam of 0.1 exactly there
    truth = flat
    assert torch.allclose(region_seam(stepped, truth, labels), torch.full((2,), 0.1, dtype=torch.float64))
    assert torch.allclose(region_seam(stepped, truth, labels, across=False), torch.zeros(2, dtype=torch.float64),
                          atol=1e-7)
    within = torch.zeros(12, 14, dtype=torch.bool)
    assert region_seam(stepped, truth, labels, within).isnan().all()
