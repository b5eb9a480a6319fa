"""Element-wise samplers for RAD (paper eq. (5), §4.2; RAD_NOTES §3).

Every sampler has one shape, ``sample_x(model, image, schedule, steps, generator, callback)``: ``image`` [B,3,H,W]
in [-1, 1], ``schedule`` a ``SpatialSchedule`` whose mask is 1 where to inpaint. Only Phase 1 is sampled. The
schedule alone keeps the known region: a pixel that has received no noise has mean x_t and no noise, so it comes
out bit-identical to the input. Pixels under a full (m = 1) mask are never read: the start state is drawn without
them, so the sampler cannot see what it must invent.

Noise is drawn on the CPU from ``generator``, so a seed gives the same result on any device. ``callback`` gets a
dict per step: ``step`` (0-based), ``total``, ``t``, ``x`` (x_t after the step) and ``pred_x0``.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from .schedule import SpatialSchedule

__all__ = ["RADDenoiser", "sample_ddpm", "sample_ddim", "SAMPLERS"]

log = logging.getLogger(__name__)

Callback = Callable[[dict], None]


class RADDenoiser:
    """Wraps an ADM for the samplers: per-pixel abar -> per-pixel model timestep -> (eps, v or None), float32.

    The tau convention and the curves come from the model's ``rad_config`` when it has one (a RAD adapter records
    them); a plain guided-diffusion model uses guided-diffusion's timestep convention.
    """

    def __init__(self, model: torch.nn.Module, schedule: SpatialSchedule, y: torch.Tensor | None = None):
        self.model = model
        self.curves = schedule.curves
        self.convention = getattr(model, "rad_config", {}).get("tau_convention", "gd")
        self.y = y
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype

    def __call__(self, x: torch.Tensor, abar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        tau = self.curves.timestep(abar, self.convention).expand(x.shape[0], 1, *x.shape[-2:])
        out = self.model(x.to(self.dtype), tau, y=self.y).float()
        c = x.shape[1]
        return out[:, :c], (out[:, c:2 * c] if out.shape[1] == 2 * c else None)


def _prepare(model, image: torch.Tensor, schedule: SpatialSchedule, steps: int, generator, y):
    """Checks inputs; returns (denoiser, schedule on the model's device, the first x_t, the step pairs)."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image has shape {tuple(image.shape)}, expected [B, 3, H, W] in [-1, 1]")
    b, _, h, w = image.shape
    mb, _, mh, mw = schedule.mask.shape
    if (mh, mw) != (h, w):
        raise ValueError(f"mask is {mh}x{mw} but image is {h}x{w}: resize the mask to the image")
    if mb not in (1, b):
        raise ValueError(f"mask batch {mb} does not match image batch {b}: give one mask or one per image")
    denoiser = RADDenoiser(model, schedule, y)
    schedule = schedule.to(denoiser.device)
    pairs = schedule.steps(steps)
    image = image.to(denoiser.device, torch.float32)
    hole = schedule.mask >= 1
    known = torch.where(hole, torch.zeros_like(image), image)  # never read what must be invented
    abar = schedule.abar(pairs[0][0])
    noise = _randn(generator, image.shape, denoiser.device)
    # q(x_t | x0) where x0 is known (a soft mask keeps part of it); pure noise in the hole, as DDPM starts
    x = torch.where(abar >= 1, known, (abar.sqrt() * known + (1 - abar).sqrt() * noise).float())
    return denoiser, schedule, torch.where(hole, noise, x), pairs


def _randn(generator: torch.Generator, shape, device) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


def _predict_x0(x: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), clipped to [-1, 1] (DDPM eq. (15))."""
    return ((x - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)


def _loop(model, image, schedule, steps, generator, callback, update, y=None) -> torch.Tensor:
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    denoiser, schedule, x, pairs = _prepare(model, image, schedule, steps, generator, y)
    for i, (t, prev) in enumerate(pairs):
        abar_t, abar_prev = schedule.abar(t), schedule.abar(prev)
        eps, v = denoiser(x, abar_t)
        noisy = abar_t < 1  # pixels that have received noise; the others pass through untouched
        x0 = _predict_x0(x, eps, abar_t)
        z = _randn(generator, x.shape, x.device) if prev >= 0 else None
        x_new = update(x, x0, eps, v, abar_t, abar_prev, z)
        x = torch.where(noisy, x_new.float(), x)
        if callback is not None:
            callback({"step": i, "total": len(pairs), "t": t, "x": x, "pred_x0": torch.where(noisy, x0.float(), x)})
    return x


def _ddpm_update(x, x0, eps, v, abar_t, abar_prev, z):
    """Per-pixel DDPM posterior step (eq. (5)) with guided-diffusion's learned-range variance."""
    alpha = abar_t / abar_prev
    beta = 1 - alpha
    # 1. posterior mean of q(x_prev | x_t, x0)
    mean = (abar_prev.sqrt() * beta / (1 - abar_t)) * x0 + (alpha.sqrt() * (1 - abar_prev) / (1 - abar_t)) * x
    if z is None:
        return mean
    # 2. variance: interpolate log beta and log posterior variance by f = (v + 1) / 2, or fixed (beta) without v
    tiny = torch.finfo(torch.float64).tiny
    post_var = beta * (1 - abar_prev) / (1 - abar_t)
    if v is None:
        log_var = torch.log(beta.clamp_min(tiny))
    else:
        f = (v.double() + 1) / 2
        log_var = f * torch.log(beta.clamp_min(tiny)) + (1 - f) * torch.log(post_var.clamp_min(tiny))
    return torch.where(beta > 0, mean + torch.exp(0.5 * log_var) * z, mean)


def _ddim_update(eta: float):
    def update(x, x0, eps, v, abar_t, abar_prev, z):
        """Per-pixel DDIM step (Song et al. 2021, eq. (12)), eps re-derived from the clipped x0."""
        eps = (x - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()
        sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
        out = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma**2).clamp_min(0).sqrt() * eps
        return out if z is None else out + sigma * z
    return update


@torch.no_grad()
def sample_ddpm(model, image: torch.Tensor, schedule: SpatialSchedule, steps: int = 100,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                y: torch.Tensor | None = None) -> torch.Tensor:
    """RAD inpainting by the element-wise DDPM reverse process (paper eq. (5), §4.2) -> [B,3,H,W] in [-1, 1]."""
    return _loop(model, image, schedule, steps, generator, callback, _ddpm_update, y)


@torch.no_grad()
def sample_ddim(model, image: torch.Tensor, schedule: SpatialSchedule, steps: int = 50,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                y: torch.Tensor | None = None, eta: float = 0.0) -> torch.Tensor:
    """RAD inpainting by element-wise DDIM (paper §3.4; eta = 0 deterministic, 1 DDPM-like) -> [B,3,H,W]."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    return _loop(model, image, schedule, steps, generator, callback, _ddim_update(eta), y)


SAMPLERS = {"ddpm": sample_ddpm, "ddim": sample_ddim}
