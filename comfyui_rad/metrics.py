"""Inpainting quality measures: hole MSE / PSNR, SSIM, a seam measure, and the Fréchet distance of feature sets.

Conventions: images are float tensors [B,C,H,W] in [0,1] (``imaging.from_model_range`` turns the model's [-1,1] into
that); masks are [B,H,W] or [B,1,H,W] with 1 = inpaint, read as binary (hole = mask > 0.5). Every per-image measure
returns a float64 CPU tensor [B], computed in float64, with nan where it is undefined for that image (an empty hole,
a mask without a border). No network here: LPIPS and the Inception features live in ``perceptual``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["hole_mse", "hole_psnr", "gaussian_window", "ssim_map", "ssim", "seam", "region_seam",
           "feature_statistics",
           "frechet_from_statistics", "frechet_distance", "SSIM_K1", "SSIM_K2"]

SSIM_K1, SSIM_K2 = 0.01, 0.03
"""SSIM's stabilising constants (Wang et al. 2004): C1 = (K1 L)^2, C2 = (K2 L)^2 with L the data range."""


def _pair(result: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if result.shape != truth.shape or result.ndim != 4:
        raise ValueError(f"result {tuple(result.shape)} and truth {tuple(truth.shape)} must be the same [B,C,H,W]")
    return result.detach().double().cpu(), truth.detach().double().cpu()


def _hole(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """mask [B,H,W] / [B,1,H,W] / [H,W] -> bool [B,1,H,W] (hole = mask > 0.5) matching ``like`` [B,C,H,W]."""
    mask = torch.as_tensor(mask).detach().cpu()
    mask = mask[None] if mask.ndim == 2 else mask
    mask = mask[:, None] if mask.ndim == 3 else mask
    b, _, h, w = like.shape
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != (h, w) or mask.shape[0] not in (1, b):
        raise ValueError(f"mask {tuple(mask.shape)} does not fit images {tuple(like.shape)}: give [B,H,W] masks "
                         "of the images' size")
    return (mask > 0.5).expand(b, 1, h, w)


def hole_mse(result: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the hole's pixels (mask 1) and all channels, per image: float64 [B] (nan: no hole)."""
    result, truth = _pair(result, truth)
    hole = _hole(mask, result).double()
    count = hole.sum(dim=(1, 2, 3)) * result.shape[1]
    return ((result - truth) ** 2 * hole).sum(dim=(1, 2, 3)) / count


def hole_psnr(result: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB over the hole only, per image: 10 log10(data_range^2 / hole MSE), float64 [B]; inf for a
    perfect hole, nan for an empty one. ``data_range`` 1.0 for images in [0,1] (2.0 if you pass [-1,1] images)."""
    return 10 * torch.log10(data_range**2 / hole_mse(result, truth, mask))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The normalised 2-D Gaussian window [size, size] (float64) of SSIM."""
    taps = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (taps / sigma) ** 2)
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, size: int = 11,
             sigma: float = 1.5) -> torch.Tensor:
    """Local SSIM at every pixel, mean over channels: float64 [B,H,W].

    Wang et al. 2004: Gaussian-weighted local means, variances and covariance (window ``size`` x ``size``, std
    ``sigma``; population moments, E[xy] - E[x]E[y]), C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = ``data_range``.
    Windows reaching past the border see the image mirrored (reflect padding), so the map has the image's size;
    pixels at least size // 2 from the border never touch the padding.
    """
    x, y = _pair(x, y)
    c, pad = x.shape[1], size // 2
    if min(x.shape[-2:]) <= pad:
        raise ValueError(f"images of {x.shape[-2]}x{x.shape[-1]} are too small for an SSIM window of {size}: "
                         f"need more than {pad} pixels per side")
    window = gaussian_window(size, sigma).expand(c, 1, size, size)

    def blur(t):
        return F.conv2d(F.pad(t, (pad,) * 4, mode="reflect"), window, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean(dim=1)


def _bounding_boxes(hole: torch.Tensor) -> torch.Tensor:
    """bool [B,H,W]: the bounding box of each image's hole [B,1,H,W] (empty for an empty hole)."""
    rows, cols = hole[:, 0].any(dim=2), hole[:, 0].any(dim=1)  # [B,H], [B,W]

    def span(v):  # everything between the first and the last True
        return (v.long().cummax(dim=1).values > 0) & (v.flip(1).long().cummax(dim=1).values.flip(1) > 0)

    return span(rows)[:, :, None] & span(cols)[:, None, :]


def ssim(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None, data_range: float = 1.0) -> torch.Tensor:
    """SSIM per image, float64 [B], from ``ssim_map`` (11x11 Gaussian window, sigma 1.5, standard constants).

    Without ``mask``: the mean of the map over the pixels whose window lies inside the image (the 'valid' region of
    Wang et al.'s reference code). With ``mask`` (1 = inpaint): the mean over the bounding box of each image's hole,
    the region where the result can differ (nan for an empty hole).
    """
    s = ssim_map(x, y, data_range)
    if mask is None:
        pad = 5
        return s[:, pad:-pad, pad:-pad].mean(dim=(1, 2)) if min(s.shape[-2:]) > 2 * pad else s.mean(dim=(1, 2))
    box = _bounding_boxes(_hole(mask, x)).double()
    return (s * box).sum(dim=(1, 2)) / box.sum(dim=(1, 2))


def seam(result: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """How differently the result crosses the hole's border than the original does, per image: float64 [B].

    The border crossings are the pairs of 4-neighbour pixels (p, q) with p in the hole (mask > 0.5) and q outside
    it, horizontal and vertical. At each crossing and channel the jump of an image x is |x(p) - x(q)|; the measure
    is the mean over all crossings and channels of | jump(result) - jump(truth) |, in the images' units (0..1).
    0: the new content meets the kept pixels exactly as sharply as the original did; a visible seam (a step the
    original has not) or a smeared border (a step the original has, lost) raises it. nan where the mask has no
    border (an empty or a full hole). The kept pixel q is the same in both images when the sampler keeps it.
    """
    result, truth = _pair(result, truth)
    hole = _hole(mask, result)
    total = torch.zeros(result.shape[0], dtype=torch.float64)
    count = torch.zeros(result.shape[0], dtype=torch.float64)
    for dim in (2, 3):
        n = result.shape[dim] - 1
        a, b = hole.narrow(dim, 0, n), hole.narrow(dim, 1, n)
        crossing = (a ^ b).double()  # exactly one side of the pair is in the hole
        jump_r = (result.narrow(dim, 0, n) - result.narrow(dim, 1, n)).abs()
        jump_t = (truth.narrow(dim, 0, n) - truth.narrow(dim, 1, n)).abs()
        total += ((jump_r - jump_t).abs() * crossing).sum(dim=(1, 2, 3))
        count += crossing.sum(dim=(1, 2, 3)) * result.shape[1]
    return total / count


def region_seam(result: torch.Tensor, truth: torch.Tensor, labels: torch.Tensor,
                within: torch.Tensor | None = None, *, across: bool = True) -> torch.Tensor:
    """``seam``'s measure at the borders between the regions of a label map, per image: float64 [B].

    labels: integer [B,H,W] (or [H,W]), e.g. which window generated each pixel; within: bool [B,H,W], only pairs
    with both pixels inside count (e.g. the hole). The pairs are the 4-neighbours with different labels
    (``across``), or, as a control, with the same label (``across=False``: the level the measure has away from any
    border); the value is the mean of | jump(result) - jump(truth) | over them and the channels. nan: no pair.
    ``seam(r, t, m)`` is ``region_seam(r, t, m > 0.5)``.
    """
    result, truth = _pair(result, truth)
    labels = torch.as_tensor(labels).detach().cpu()
    labels = (labels[None] if labels.ndim == 2 else labels)[:, None].expand(result.shape[0], 1, *result.shape[-2:])
    inside = torch.ones_like(labels, dtype=torch.bool) if within is None else \
        torch.as_tensor(within).detach().cpu().bool().reshape(-1, 1, *result.shape[-2:]).expand_as(labels)
    total = torch.zeros(result.shape[0], dtype=torch.float64)
    count = torch.zeros(result.shape[0], dtype=torch.float64)
    for dim in (2, 3):
        n = result.shape[dim] - 1
        differ = labels.narrow(dim, 0, n) != labels.narrow(dim, 1, n)
        pairs = ((differ if across else ~differ) & inside.narrow(dim, 0, n) & inside.narrow(dim, 1, n)).double()
        jump_r = (result.narrow(dim, 0, n) - result.narrow(dim, 1, n)).abs()
        jump_t = (truth.narrow(dim, 0, n) - truth.narrow(dim, 1, n)).abs()
        total += ((jump_r - jump_t).abs() * pairs).sum(dim=(1, 2, 3))
        count += pairs.sum(dim=(1, 2, 3)) * result.shape[1]
    return total / count


# ------------------------------------------------------------------------------------------------ Fréchet distance


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [D] and covariance [D,D] (unbiased, N - 1) of features [N,D], float64; the covariance of a single
    sample is taken as 0."""
    f = torch.as_tensor(features).detach().double().cpu()
    if f.ndim != 2 or f.shape[0] < 1:
        raise ValueError(f"features must be [N, D] with N >= 1, got shape {tuple(f.shape)}")
    mu = f.mean(dim=0)
    if f.shape[0] < 2:
        return mu, torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues below 0 clipped)."""
    w, v = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_from_statistics(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Fréchet distance of two Gaussians: |mu1 - mu2|^2 + tr(C1) + tr(C2) - 2 tr((C1 C2)^(1/2)) (float64).

    tr((C1 C2)^(1/2)) is the sum of the square roots of the eigenvalues of the symmetric PSD product
    C1^(1/2) C2 C1^(1/2) (same spectrum as C1 C2), so singular covariances from few samples are fine: no complex
    parts, no inverse. The result is clipped at 0 (rounding).
    """
    mu1, mu2, cov1, cov2 = (torch.as_tensor(t).double().cpu() for t in (mu1, mu2, cov1, cov2))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(f"statistics do not match: means {tuple(mu1.shape)} / {tuple(mu2.shape)}, covariances "
                         f"{tuple(cov1.shape)} / {tuple(cov2.shape)}")
    root1 = _psd_sqrt(cov1)
    product = root1 @ cov2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((product + product.T) / 2).clamp_min(0).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt
    return max(float(distance), 0.0)


def frechet_distance(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """Fréchet distance between feature sets [N,D] and [M,D] (each summarised by mean and covariance): FID when the
    features are InceptionV3 pool features (``perceptual.InceptionFeatures``), any embedding otherwise. Few samples
    bias it upwards: compare values computed from equal counts."""
    s1, s2 = feature_statistics(features1), feature_statistics(features2)
    if s1[0].shape != s2[0].shape:
        raise ValueError(f"feature sets have {s1[0].numel()} and {s2[0].numel()} dimensions: use one extractor")
    if not all(math.isfinite(float(t.abs().sum())) for t in (*s1, *s2)):
        raise ValueError("features hold nan or inf values")
    return frechet_from_statistics(*s1, *s2)
