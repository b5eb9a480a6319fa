"""Inpainting in one call: batch rules, fitting the model's resolution, sampling and stitching back.

The wiring shared by ``rad-inpaint``, ``rad-eval`` and the ComfyUI nodes. Images are float32 [B,3,H,W] in [0,1],
masks float32 [B,H,W] in [0,1] with 1 = inpaint, as ``masks.prepare`` made them (mask modes and the threshold rule
live there). No ComfyUI import.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable

import torch

from . import imaging, settings
from .architecture import sampling_bytes
from .checks import check_image, check_mask, check_memory
from .fill import start_image
from .masks import as_bhw
from .plan import FITS, Plan, TileSettings, make_plan, resolve_fit, stitch, to_model
from .sampling import RADDenoiser, SamplerSpec, sample
from .schedule import NoiseCurves, SpatialSchedule, rad_info
from .tiles import run_tiles

__all__ = ["FITS", "match_batches", "resolve_fit", "resolve_start", "plan_inpaint", "run_plan", "network_calls",
           "inpaint"]

log = logging.getLogger(__name__)


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


def resolve_start(model: torch.nn.Module | int, start: str = settings.DEFAULT_START,
                  start_strength: float | None = None, *, baseline: bool = False,
                  names: tuple[str, str] = ("start", "start_strength")) -> tuple[str, float]:
    """The start and strength a call runs (``settings.START_NAMES``): ``start`` as given, or for "auto" the one
    ``model``'s file recommends (``rad_info(model).start``), noise where it records none (every file written before
    issue 21, the RAD authors' checkpoints, a model size given as a number) and for a baseline sampler (``baseline``:
    binary masks only). The strength: ``start_strength`` when given, else (auto) the model's recommended one, else
    ``settings.START_STRENGTH``. Refused (ValueError naming ``names``): an unknown start, a strength outside
    [0, 1]."""
    if start not in settings.START_NAMES:
        raise ValueError(f"unknown {names[0]} {start!r}: use one of {', '.join(settings.START_NAMES)}")
    if start_strength is not None:
        start_strength = settings.check("start_strength", start_strength, names[1])
    info = None if isinstance(model, int) else rad_info(model)
    recommended = (None, None) if info is None else (info.start, info.start_strength)
    if start == "auto":
        start = "noise" if baseline or recommended[0] is None else recommended[0]
        if start_strength is None:
            start_strength = recommended[1]
    return start, settings.START_STRENGTH if start_strength is None else start_strength


def _baseline_error(start: str, sampler: str, names: tuple[str, str]) -> ValueError:
    return ValueError(f"{names[0]} {start} works with RAD's samplers ({', '.join(settings.RAD_SAMPLERS)}) only: "
                      f"{sampler} takes binary masks; use {names[0]} noise or auto")


def network_calls(image_size: int, image: torch.Tensor, mask: torch.Tensor, *, steps: int | None = None,
                  sampler: str = settings.DEFAULT_SAMPLER, fit: str = "crop", options: dict | None = None,
                  tile_settings: TileSettings | None = None, spec: SamplerSpec | None = None,
                  start: str = "noise", start_strength: float | None = None) -> int:
    """How many network calls ``inpaint`` makes for these arguments (a model of ``image_size`` pixels, or the
    model itself: its recommended start for "auto"), before any is made: ``plan_inpaint(...).calls(spec)``. 0 for
    an empty mask or a start at strength 0."""
    spec = spec or SamplerSpec.create(sampler, steps=steps, **(options or {}))
    return plan_inpaint(image_size, image, mask, fit=fit, tile_settings=tile_settings, start=start,
                        start_strength=start_strength, baseline=spec.baseline).calls(spec)


def plan_inpaint(model: torch.nn.Module | int, image: torch.Tensor, mask: torch.Tensor, *, fit: str = "crop",
                 tile_settings: TileSettings | None = None, start: str = "noise",
                 start_strength: float | None = None, names: tuple[str, str] = ("start", "start_strength"),
                 mask_name: str = "mask", baseline: bool = False) -> Plan:
    """The plan of one inpaint call (``plan.make_plan``): ``image`` [B,3,H,W] in [0,1] and ``mask`` (1 = inpaint)
    checked and matched (``match_batches``), the windows for ``model``'s resolution (or a size in pixels) and
    ``fit`` decided. ``plan.calls(spec)`` is the call's network calls, ``plan.describe(spec)`` says what it does,
    ``plan.mask_used`` is the mask used [B,H,W]; ``run_plan`` runs it. Refused with a ValueError naming the
    argument: images or masks that are empty, hold NaN/inf or lie outside [0, 1] (0..255 data: divide by 255), an
    unknown fit, a start that cannot be made (``fill.start_image``).

    ``start``, ``start_strength``: RAD from a classical start (``fill.start_image``). With a fill, ``plan.image``
    is the started image (the hidden pixels hold the fill: a preview of the start) and ``plan.mask`` the mask
    scaled by the strength (``plan.strength``), which every fit samples and stitches with (tiles included: their
    window masks, the overlap ramp too, scale with it, ``tiles.window_mask``); at strength 0 the plan is empty and
    its result is the fill. ``names``, ``mask_name``: how the caller's interface calls the two settings and the
    mask, for its errors. ``start`` "auto", ``start_strength`` None: ``resolve_start`` (the model's recommended
    start; ``baseline``: the sampler takes binary masks, so noise); an auto start from a fill where a mask covers its
    whole image (nothing to fill from) is noise."""
    check_image(image, "image")  # [0, 1]: finite, not empty, not 0..255
    check_mask(mask, "mask")
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}: use one of {', '.join(FITS)}")
    auto = start == "auto"
    start, start_strength = resolve_start(model, start, start_strength, baseline=baseline, names=names)
    if baseline and start != "noise":
        raise _baseline_error(start, "this sampler", names)
    image, given = match_batches(image.float(), mask)
    if auto and start != "noise" and bool((as_bhw(given) >= 1).flatten(1).all(1).any()):
        log.info("start auto: a mask covers its whole image, nothing to fill from: starting from noise")
        start = "noise"
    image, mask = start_image(image, given, start, start_strength, names=names, name=mask_name)
    size = model if isinstance(model, int) else model.config.image_size
    if mask is given:
        return make_plan(image, mask, size, fit, tile_settings)
    if not bool((mask > 0).any()):
        fit = "crop"  # strength 0: nothing is sampled, the start is the result (an empty one-window plan)
    return replace(make_plan(image, mask, size, fit, tile_settings), start=start, given_mask=given,
                   strength=start_strength)


def run_plan(model: torch.nn.Module, plan: Plan, spec: SamplerSpec = SamplerSpec(), *, seed: int = 0,
             callback: Callable[[dict], None] | None = None, y: int | torch.Tensor | None = None,
             curves: NoiseCurves | None = None, embedding: str = "auto", batch_limit: int | None = None
             ) -> torch.Tensor:
    """Run ``plan`` (``plan_inpaint``) with ``spec``: the one executor of every fit -> [B,3,H,W] in [0,1] on the
    CPU, pixels with mask 0 bit-identical to the input. One-window fits: cut and resize (``plan.to_model``),
    sample, stitch back; tiles: ``tiles.run_tiles``. Noise comes from a CPU generator seeded with ``seed``, so a
    seed gives the same result on any device. ``curves``: Phase 1's noise curves, default the model's
    (``rad_info(model).curves``); ``embedding``: how the network takes its timesteps, as ``sampling.RADDenoiser``
    (auto: as it was trained; the one denoiser is built here). ``callback`` gets the sampler's dict every network
    call (tiles add ``phase``: "coarse pass", "window 1/9"). ``batch_limit``: tiles' images per batched network
    call (``tiles.run_tiles``; default ``tiles.wave_limit``, 1: one window after the other)."""
    seed = settings.check("torch_seed", seed, "seed")
    if plan.size != model.config.image_size:
        raise ValueError(f"the plan is for a {plan.size}-pixel model, this one is {model.config.image_size}: plan "
                         "with this model")
    if plan.start != "noise" and spec.baseline:
        raise _baseline_error(plan.start, spec.name, ("start", "start_strength"))
    batch = plan.image.shape[0]
    check_memory(sampling_bytes(model.config, batch),
                 f"inpainting a batch of {batch} at the model's {plan.size}x{plan.size} window",
                 "give fewer images or masks at once")  # a batch from a workflow: before any network call
    if not spec.baseline and not rad_info(model).is_rad:
        log.warning("the model has no RAD adapter: RAD steps on a plain ADM inpaint poorly (paper Table 3, Cfg. 1); "
                    "load a RAD adapter or a RAD model")
    denoiser = RADDenoiser(model, curves, embedding)
    image, mask = plan.image, plan.mask
    log.info("inpainting %d image(s) of %dx%d: %s; %s on %s", image.shape[0], image.shape[3], image.shape[2],
             plan.describe(spec), spec.describe(), denoiser.device)
    generator = torch.Generator().manual_seed(seed)
    if plan.fit == "tiles":
        return run_tiles(denoiser, plan, spec, generator, callback, y, batch_limit=batch_limit)
    if plan.empty:
        if plan.start == "noise":
            log.warning("the mask is empty: nothing to inpaint, the image is returned unchanged")
        return image.clone()
    model_image, model_mask = to_model(image, mask, plan.window)
    schedule = SpatialSchedule(model_mask[:, None], denoiser.curves)
    result = sample(spec, denoiser, imaging.to_model_range(model_image), schedule, generator, callback, y)
    return stitch(imaging.from_model_range(result.float().cpu()), image, mask, plan.window)


def inpaint(model: torch.nn.Module, image: torch.Tensor, mask: torch.Tensor, *, steps: int | None = None,
            sampler: str = settings.DEFAULT_SAMPLER, eta: float | None = None, seed: int = 0, fit: str = "crop",
            callback: Callable[[dict], None] | None = None, y: int | torch.Tensor | None = None,
            curves: NoiseCurves | None = None, options: dict | None = None,
            embedding: str = "auto", tile_settings: TileSettings | None = None,
            spec: SamplerSpec | None = None, start: str = settings.DEFAULT_START, start_strength: float | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inpaint ``image`` [B,3,H,W] in [0,1] (CPU) where ``mask`` (1 = inpaint, read as given) is above 0:
    ``run_plan(model, plan_inpaint(model, image, mask, ...), spec, ...)``.

    The sampler is ``spec`` (a ``sampling.SamplerSpec``), or the one ``SamplerSpec.create(sampler, steps=steps,
    eta=eta, **options)`` builds (defaults from the one table: ``steps`` ``sampling.DEFAULT_STEPS[sampler]``, eta 1;
    ``options``: repaint's ``jump_length``, ``jump_n_sample``, ddpm's and ddim's ``resample``, ``jump``). The
    batches follow ``match_batches``; the model's resolution is met by ``fit`` (``plan.FITS``: crop / resize / pad,
    one window per image; tiles, region by region at native resolution with ``tile_settings``; crop switches to
    tiles where a hole does not fit, ``plan.resolve_fit``), and the result is stitched back: pixels with mask 0 are
    bit-identical to the input. Refused with a ValueError naming the argument: bad images or masks
    (``plan_inpaint``), a sampler setting out of range (``SamplerSpec``), a seed torch cannot take, a model whose
    output turns non-finite while sampling (``sampling.NonFiniteOutput``, naming the model). ``start``: where the
    hole starts, "noise" (the paper's sampler) or "harmonic" (``fill.STARTS``): RAD from a classical start, the
    hole filled first and regenerated at ``start_strength`` in [0, 1] (``fill.start_image``: 1 is plain RAD bit for
    bit, 0 returns the fill without a network call; RAD's samplers only; every fit, tiles included); or "auto"
    (default): the start and strength the model's file recommends, noise where it records none
    (``resolve_start``; a ``start_strength`` given overrides the recommended one; None: the model's, else
    ``settings.START_STRENGTH``). Returns (result [B,3,H,W] in [0,1] on the CPU, the mask used [B,H,W]: the mask
    given, whatever the start).
    """
    spec = spec or SamplerSpec.create(sampler, steps=steps, eta=eta, **(options or {}))
    if start not in ("auto", "noise") and spec.baseline:  # before the fill is computed
        raise _baseline_error(start, spec.name, ("start", "start_strength"))
    plan = plan_inpaint(model, image, mask, fit=fit, tile_settings=tile_settings, start=start,
                        start_strength=start_strength, baseline=spec.baseline)
    return run_plan(model, plan, spec, seed=seed, callback=callback, y=y, curves=curves, embedding=embedding), \
        plan.mask_used
