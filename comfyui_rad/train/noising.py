"""Which noise state each training image gets: a mask and a step of the two-phase schedule (paper §3.2, §3.4).

A training state is RAD's own (mask m [B,1,H,W] in [0,1], step t [B]): the pixels' noise is abar(m, t) of
``NoiseCurves`` and the forward step t-1 -> t is abar(m, t-1) -> abar(m, t), so the loss needs nothing else.

- ``perlin`` (the paper's recipe, RAD_NOTES §4): one binary Perlin mask per image with the authors' generator
  (``masks.perlin_mask`` defaults: cell size U[1, H) px, hole area U[0, 1]) and one t ~ U{0 .. T1+T2-1}.
- ``async`` (AsyncPatch-style controlled sampling: the average corruption and its spatial variability are drawn
  separately, instead of following from a random mask and step). Per image: a mean level mu ~ U[0, 1] and a spread
  sigma ~ U[0, 0.5] (both in units of Phase 1's length), a Perlin field z (one octave, cell size U[1, H) px)
  standardised to mean 0 / std 1 over the image, and per pixel the level l = clamp(mu + sigma * z, 0, 1), i.e.
  k = l * T1 DDPM steps of noise (bbar interpolated linearly in the table, ``NoiseCurves.bbar_after``, so the model's
  tau is k - 1 in guided-diffusion's convention). The map is written exactly as a Phase-1 RAD state: t = ceil(max k)
  - 1 and the soft mask m with log(1 - nu m) * e1[t] = log abar(k), which is how a soft inpainting mask behaves at
  sampling time; the pixel at the highest level gets m = 1.
- ``mixed``: per image, a fair coin between the two.
- ``full``: no RAD at all: an all-ones mask and t ~ U{0 .. T1-1}, so every pixel has the same noise abar1[t],
  i.e. ordinary DDPM training of a plain (pretrained-ADM-like) base model, whose spatial timestep map is constant
  (the model sees exactly a per-image t). Phase 2 is never drawn: with a full mask it adds no noise.
"""

from __future__ import annotations

import torch

from .. import masks
from ..schedule import NoiseCurves

__all__ = ["MASK_SAMPLINGS", "ASYNC_SPREAD", "sample_states", "perlin_states", "async_states", "full_states",
           "states_for_levels"]

MASK_SAMPLINGS = ("perlin", "async", "mixed", "full")
ASYNC_SPREAD = 0.5
"""Largest spatial spread (std of the per-pixel level, before clamping) of ``async`` states, in units of T1."""


def perlin_states(batch: int, height: int, width: int, curves: NoiseCurves,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's states: a binary Perlin mask (authors' defaults) and t ~ U{0 .. T1+T2-1} per image."""
    mask = masks.perlin_mask(batch, height, width, generator=generator)[:, None]
    return mask, torch.randint(0, curves.total_steps, (batch,), generator=generator)


def full_states(batch: int, height: int, width: int, curves: NoiseCurves,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain DDPM states: an all-ones mask and t ~ U{0 .. T1-1} per image (every pixel noised alike)."""
    return torch.ones(batch, 1, height, width), torch.randint(0, curves.T1, (batch,), generator=generator)


def states_for_levels(level: torch.Tensor, curves: NoiseCurves) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-pixel noise level map [B,H,W] in [0, 1] (fraction of Phase 1) as a RAD state (soft mask, step).

    Returns mask [B,1,H,W] float32 and t [B] long such that ``curves.abar(mask, t)`` is, per pixel, the noise of
    k = level * T1 DDPM steps (bbar interpolated linearly between whole steps).
    """
    k = level.double().clamp(0, 1) * curves.T1
    t = (k.flatten(1).amax(1).ceil().long() - 1).clamp(0, curves.T1 - 1)
    log_abar = torch.log1p(-curves.bbar_after(k))
    exponent = curves.e1[t][:, None, None]
    mask = (-torch.expm1(log_abar / exponent) / curves.nu).clamp(0, 1)
    return mask.float()[:, None], t


def async_states(batch: int, height: int, width: int, curves: NoiseCurves,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Controlled states: mean level and spatial spread drawn separately, shaped by a Perlin field (module doc)."""
    mean = torch.rand(batch, generator=generator, dtype=torch.float64)
    spread = ASYNC_SPREAD * torch.rand(batch, generator=generator, dtype=torch.float64)
    cell = 1 + (height - 1) * torch.rand(batch, generator=generator, dtype=torch.float64)
    z = masks.perlin_noise(batch, height, width, cell, generator=generator).double()
    z = (z - z.mean((1, 2), keepdim=True)) / z.std((1, 2), keepdim=True).clamp_min(1e-12)
    return states_for_levels(mean[:, None, None] + spread[:, None, None] * z, curves)


def sample_states(batch: int, height: int, width: int, curves: NoiseCurves, generator: torch.Generator,
                  mode: str = "perlin") -> tuple[torch.Tensor, torch.Tensor]:
    """mask [B,1,H,W] float32 in [0, 1] (1 = inpaint) and step t [B] long, drawn as ``mode`` says (module doc)."""
    if mode == "perlin":
        return perlin_states(batch, height, width, curves, generator)
    if mode == "async":
        return async_states(batch, height, width, curves, generator)
    if mode == "full":
        return full_states(batch, height, width, curves, generator)
    if mode == "mixed":
        coin = torch.rand(batch, generator=generator) < 0.5
        p_mask, p_t = perlin_states(batch, height, width, curves, generator)
        a_mask, a_t = async_states(batch, height, width, curves, generator)
        return torch.where(coin[:, None, None, None], a_mask, p_mask), torch.where(coin, a_t, p_t)
    raise ValueError(f"unknown mask sampling {mode!r}: use one of {', '.join(MASK_SAMPLINGS)}")
