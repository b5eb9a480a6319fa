"""Inpainting in one call: batch rules, fitting the model's resolution, sampling and stitching back.

The wiring shared by ``rad-inpaint``, ``rad-eval`` and the ComfyUI nodes. Images are float32 [B,3,H,W] in [0,1],
masks float32 [B,H,W] in [0,1] with 1 = inpaint, as ``masks.prepare`` made them (mask modes and the threshold rule
live there). No ComfyUI import.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F

from . import imaging, settings, tiles
from .checks import check_image, check_mask
from .masks import as_bhw
from .sampling import BASELINE_SAMPLERS, DEFAULT_STEPS, SAMPLERS, RADDenoiser
from .schedule import NoiseCurves, SpatialSchedule, rad_info

__all__ = ["FITS", "match_batches", "resolve_fit", "network_calls", "inpaint", "schedule_preview"]

log = logging.getLogger(__name__)

FITS = (*imaging.FIT_MODES, "tiles")
"""How ``inpaint`` meets the model's resolution: crop, resize, pad (``imaging.FIT_MODES``) or tiles (region by
region at native resolution, ``comfyui_rad.tiles``). crop turns into tiles by itself when a hole does not fit."""


def match_batches(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """image [Bi,C,H,W] and a mask ([H,W], [Bm,H,W] or [Bm,1,H,W], any size) -> image [B,C,H,W], mask [B,H,W].

    One image with many masks, many images with one mask, or as many of each; B = max(Bi, Bm). A mask of another
    size is resized to the image (``imaging.normalize_mask``), with a warning when its aspect ratio differs.
    """
    if image.dim() != 4:
        raise ValueError(f"image must be [B,C,H,W], got shape {tuple(image.shape)}")
    mask = as_bhw(mask)
    (ib, _, height, width), mb = image.shape, mask.shape[0]
    batch = max(ib, mb)
    if ib not in (1, batch) or mb not in (1, batch):
        raise ValueError(f"{ib} images and {mb} masks: give one image, one mask, or as many images as masks")
    return image.expand(batch, -1, -1, -1), imaging.normalize_mask(mask, batch, height, width)


def resolve_fit(fit: str, mask: torch.Tensor, size: int) -> str:
    """The fit ``inpaint`` uses for masks [B,H,W] and a model of ``size`` pixels: ``fit`` itself, except that
    crop becomes tiles when a hole does not fit one window at native scale (``tiles.crop_fits``), instead of being
    downscaled. Where every hole fits, crop is exactly what it always was."""
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}: use one of {', '.join(FITS)}")
    if fit == "crop" and bool((mask > 0).any()) and not tiles.crop_fits(mask, size):
        return "tiles"
    return fit


def network_calls(image_size: int, image: torch.Tensor, mask: torch.Tensor, *, steps: int | None = None,
                  sampler: str = "ddpm", fit: str = "crop", options: dict | None = None,
                  tile_settings: tiles.TileSettings | None = None) -> int:
    """How many network calls ``inpaint`` makes for these arguments (a model of ``image_size`` pixels), before
    any is made: for a progress bar over all windows. 0 for an empty mask."""
    steps = DEFAULT_STEPS[sampler] if steps is None else steps
    image, mask = match_batches(image.float(), mask)
    if resolve_fit(fit, mask, image_size) == "tiles":
        return tiles.count_calls(mask, image_size, sampler, steps, options, tile_settings or tiles.TileSettings())[1]
    return tiles.calls_per_pass(sampler, steps, options) if bool((mask > 0).any()) else 0


def inpaint(model: torch.nn.Module, image: torch.Tensor, mask: torch.Tensor, *, steps: int | None = None,
            sampler: str = "ddpm", eta: float = 0.0, seed: int = 0, fit: str = "crop",
            callback: Callable[[dict], None] | None = None, y: int | torch.Tensor | None = None,
            curves: NoiseCurves | None = None, options: dict | None = None,
            embedding: str = "auto", tile_settings: tiles.TileSettings | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inpaint ``image`` [B,3,H,W] in [0,1] (CPU) where ``mask`` (1 = inpaint, read as given) is above 0.

    Refused with a ValueError naming the argument: images or masks that are empty, hold NaN/inf or lie outside
    [0, 1] (0..255 data: divide by 255), eta outside [0, 1], a seed torch cannot take, a model whose output turns
    non-finite while sampling (``sampling.NonFiniteOutput``, naming the model).

    ``steps``: default ``sampling.DEFAULT_STEPS[sampler]``. The batches follow ``match_batches``; the model's
    resolution is met by ``fit`` (crop / resize / pad, see ``imaging.FIT_MODES``; tiles, region by region at native
    resolution, see ``comfyui_rad.tiles``, with ``tile_settings``; crop switches to tiles where a hole does not fit,
    ``resolve_fit``), and the result is stitched back: pixels with mask 0 are bit-identical to the input. Noise
    comes from a CPU generator seeded with ``seed``, so a seed gives the same result on any device. ``curves``:
    Phase 1's noise curves, default the model's (``rad_info(model).curves``). ``callback`` gets the sampler's dict
    every step. ``options``: further keywords for the sampler (repaint: ``jump_length``, ``jump_n_sample``; ddpm and
    ddim: ``resample``, ``jump``). ``embedding``: how the network takes its timesteps, as ``sampling.RADDenoiser``
    (auto: as it was trained; the one denoiser is built here).
    Returns (result [B,3,H,W] in [0,1] on the CPU, the mask used [B,H,W]).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: use one of {', '.join(sorted(SAMPLERS))}")
    check_image(image, "image")  # [0, 1]: finite, not empty, not 0..255
    check_mask(mask, "mask")
    eta, seed = settings.check("eta", eta), settings.check("torch_seed", seed, "seed")
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}: use one of {', '.join(FITS)}")
    steps = DEFAULT_STEPS[sampler] if steps is None else steps
    image, mask = match_batches(image.float(), mask)
    if sampler not in BASELINE_SAMPLERS and not rad_info(model).is_rad:
        log.warning("the model has no RAD adapter: RAD steps on a plain ADM inpaint poorly (paper Table 3, Cfg. 1); "
                    "load a RAD adapter or a RAD model")
    size = model.config.image_size
    denoiser = RADDenoiser(model, curves, embedding)
    kwargs = ({"eta": eta} if sampler == "ddim" else {}) | (options or {})
    if resolve_fit(fit, mask, size) == "tiles":
        if fit == "crop":
            log.info("the hole is larger than the model's %dx%d window: crop fills it region by region (tiles)",
                     size, size)
        result = tiles.inpaint_tiles(denoiser, image, mask, sampler=sampler, steps=steps, size=size,
                                     generator=torch.Generator().manual_seed(seed), callback=callback, y=y,
                                     curves=denoiser.curves, options=kwargs,
                                     settings=tile_settings or tiles.TileSettings())
        return result, mask
    model_image, model_mask, fitted = imaging.FIT_MODES[fit](image, mask, size)
    if fitted.empty:
        return image.clone(), mask
    schedule = SpatialSchedule(model_mask[:, None], denoiser.curves)
    log.info("inpainting %d image(s) of %dx%d at %dx%d (%s), %d %s steps on %s", image.shape[0], image.shape[3],
             image.shape[2], size, size, fit, steps, sampler, denoiser.device)
    result = SAMPLERS[sampler](denoiser, imaging.to_model_range(model_image), schedule, steps,
                               torch.Generator().manual_seed(seed), callback, y=y, **kwargs)
    return imaging.stitch(imaging.from_model_range(result.float().cpu()), image, mask, fitted), mask


def schedule_preview(mask: torch.Tensor, steps: int, curves: NoiseCurves | None = None, frames: int = 5,
                     size: int = 256) -> torch.Tensor:
    """Pictures of the noise a sampler puts in each pixel, float32 [B, h, frames*w + gaps] in [0,1].

    Per mask [B,H,W] (1 = inpaint), shrunk to at most ``size`` pixels on the long side: ``frames`` snapshots of the
    noise standard deviation sqrt(1 - abar) along the ``steps`` reverse steps (first step on the left, the last on
    the right), side by side with 4-pixel gray gaps. White = pure noise, black = the input pixel, untouched.
    """
    mask = as_bhw(mask)
    height, width = mask.shape[-2:]
    scale = min(1.0, size / max(height, width))
    shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    small = F.adaptive_max_pool2d(mask[:, None], shape) if scale < 1 else mask[:, None]
    schedule = SpatialSchedule(small, curves)
    pairs = schedule.steps(steps)
    picks = sorted({round(i * (len(pairs) - 1) / max(1, frames - 1)) for i in range(frames)})
    gap = torch.full((mask.shape[0], shape[0], 4), 0.5)
    tiles = []
    for k in picks:
        tiles += [(1 - schedule.abar(pairs[k][0])).sqrt().float()[:, 0], gap]
    return torch.cat(tiles[:-1], dim=2)
