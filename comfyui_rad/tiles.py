"""Region by region ("tiles"): a hole larger than the model's window, filled at the model's own resolution.

AsyncPatch Diffusion's autoregressive generation, made possible by RAD's per-pixel noise levels. The hole's bounding
box plus ``context`` pixels of known surroundings is covered by overlapping square windows of the model's size
(``overlap`` pixels shared by neighbours); nothing is resized. The windows are generated one after the other, from
the known border inwards: the next window is always the one with the most context (its share of kept pixels, plus
a quarter of its share of pixels already generated), so the windows touching the real picture come first and every
window has context. Each window is inpainted with the mask

    1 (times the pixel's own mask value)   for hole pixels no window has generated yet,
    a soft value, at most ``soft``         for hole pixels earlier windows generated (the overlap),
    0                                      for kept pixels (and padding past the image border).

The soft value ramps down from ``soft`` next to the still-unfilled pixels to 0 ``overlap`` pixels away, so the
window's own border continues the earlier windows exactly while the pixels near the new content are partly
regenerated: in RAD a mask value m noises a pixel only to abar = 1 - nu*m, so m = 0.5 keeps its colour and layout
and redraws its texture to agree with the new window (harmonised, not frozen); see docs/TILES.md for the numbers
behind the default. Kept pixels have mask 0 in every window, so they come out bit-identical.

Optionally a coarse pass (``coarse``) first inpaints the whole hole and its context downscaled into one window, as
``fit="crop"`` does; its upscaled result is then every window's start in the still-unfilled hole, at mask value
``coarse_strength`` instead of 1 (a soft-known start), so large structure is shared across windows.

Images are float32 [B,3,H,W] in [0,1], masks [B,H,W] in [0,1] with 1 = inpaint. No ComfyUI import.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import imaging
from .imaging import Window
from .sampling import BASELINE_SAMPLERS, DEFAULT_JUMP, SAMPLERS, rad_calls, repaint_calls
from .schedule import NoiseCurves, SpatialSchedule

__all__ = ["TileSettings", "TilePlan", "plan_tiles", "plan_batch", "calls_per_pass", "count_calls", "window_mask",
           "owner_map", "crop_fits", "inpaint_tiles"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileSettings:
    """How a hole is covered. ``overlap`` / ``context``: pixels (None: a quarter of the model's window).
    ``soft``: the highest mask value of generated pixels in a later window's overlap (0 = frozen, hard-edged).
    ``coarse``: a downscaled pass of the whole hole first, whose result is the windows' start at
    ``coarse_strength``. ``independent``: naive tiling, each window from the input alone (for comparisons)."""

    overlap: int | None = None
    context: int | None = None
    soft: float = 0.5
    coarse: bool = False
    coarse_strength: float = 0.8
    independent: bool = False

    def resolved(self, size: int) -> TileSettings:
        """These settings with the defaults filled in for a model window of ``size`` pixels, checked."""
        overlap = size // 4 if self.overlap is None else self.overlap
        context = size // 4 if self.context is None else self.context
        if not 0 <= overlap < size:
            raise ValueError(f"tile overlap must be in [0, {size - 1}] pixels for a {size}-pixel model, got {overlap}")
        if context < 0:
            raise ValueError(f"tile context must be 0 or more pixels, got {context}")
        if not 0.0 <= self.soft <= 1.0 or not 0.0 < self.coarse_strength <= 1.0:
            raise ValueError(f"tile soft must be in [0, 1] and coarse_strength in (0, 1], got {self.soft}, "
                             f"{self.coarse_strength}")
        return TileSettings(overlap, context, self.soft, self.coarse, self.coarse_strength, self.independent)


@dataclass(frozen=True)
class TilePlan:
    """The windows of one image (or of images that share them), ``size`` x ``size`` each, in generation order."""

    size: int
    windows: tuple[Window, ...]


# ---------------------------------------------------------------------------------------------------- planning


def _starts(lo: int, hi: int, size: int, stride: int, length: int) -> list[int]:
    """Starts of windows of ``size`` pixels covering [lo, hi) (0 <= lo < hi <= length) with steps of at most
    ``stride``, evenly spread; one window centred on the span when it fits (kept inside [0, length) if possible)."""
    span = hi - lo
    if span <= size:
        return [imaging._span(lo, hi, size, length)]
    count = math.ceil((span - size) / max(stride, 1)) + 1
    return [lo + round(i * (span - size) / (count - 1)) for i in range(count)]


def _inside(window: Window, height: int, width: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the part of ``window`` inside an image of height x width."""
    return (max(window.top, 0), min(window.top + window.height, height),
            max(window.left, 0), min(window.left + window.width, width))


GENERATED_WEIGHT = 0.25
"""In the generation order, a pixel generated by an earlier window counts this much against a kept pixel."""


def _order(hole: torch.Tensor, windows: list[Window]) -> list[Window]:
    """Windows from the known border inwards: greedily the one with the most context, counted as its share of kept
    pixels plus ``GENERATED_WEIGHT`` times its share of pixels earlier windows generated; ties by position. So
    the windows that touch the real picture come first, and the inside fills from them. hole: bool [H,W]."""
    height, width = hole.shape
    boxes = [_inside(w, height, width) for w in windows]
    areas = [max((y1 - y0) * (x1 - x0), 1) for y0, y1, x0, x1 in boxes]
    score = [float((~hole[y0:y1, x0:x1]).sum()) / a for (y0, y1, x0, x1), a in zip(boxes, areas)]
    open_ = hole.clone()  # hole pixels no window has generated yet
    left, order = list(range(len(windows))), []
    while left:
        pick = max(left, key=lambda i: (score[i], -i))
        left.remove(pick)
        order.append(windows[pick])
        y0, y1, x0, x1 = boxes[pick]
        newly = torch.zeros_like(hole)
        newly[y0:y1, x0:x1] = open_[y0:y1, x0:x1]
        open_[y0:y1, x0:x1] = False
        for i in left:  # only the windows that intersect the new one change
            a0, a1, b0, b1 = boxes[i]
            if max(a0, y0) < min(a1, y1) and max(b0, x0) < min(b1, x1):
                score[i] += GENERATED_WEIGHT * float(newly[a0:a1, b0:b1].sum()) / areas[i]
    return order


def plan_tiles(mask: torch.Tensor, size: int, settings: TileSettings = TileSettings()) -> TilePlan:
    """The windows that cover the hole (mask > 0) of mask [H,W], for a model window of ``size`` pixels.

    Along each axis where the hole's bounding box is wider than a window, the box grows by ``context`` pixels
    (clipped to the image) and is covered by ``size`` squares at most ``size - overlap`` apart (where it fits, one
    window centred on it); windows without a hole pixel are dropped. Where the image is
    smaller than the window, the window is centred on it (the rest is padding). An empty mask: no window.
    """
    settings = settings.resolved(size)
    hole = mask > 0
    height, width = hole.shape
    rows, cols = torch.nonzero(hole, as_tuple=True)
    if rows.numel() == 0:
        return TilePlan(size, ())
    stride = size - settings.overlap

    def starts(lo: int, hi: int, length: int) -> list[int]:  # a span that fits: one window, centred on it
        c = settings.context if hi - lo > size else 0
        return _starts(max(lo - c, 0), min(hi + c, length), size, stride, length)

    grid = [Window(top, left, size, size) for top in starts(int(rows.min()), int(rows.max()) + 1, height)
            for left in starts(int(cols.min()), int(cols.max()) + 1, width)]
    windows = []
    for w in grid:
        a0, a1, b0, b1 = _inside(w, height, width)
        if bool(hole[a0:a1, b0:b1].any()):
            windows.append(w)
    return TilePlan(size, tuple(windows if settings.independent else _order(hole, windows)))


def plan_batch(mask: torch.Tensor, size: int, settings: TileSettings = TileSettings()) -> list[tuple[list[int], TilePlan]]:
    """Images of mask [B,H,W] grouped by their plan (each group is sampled as one batch), in batch order:
    [(image indices, plan), ...]. One mask for many images makes one group."""
    groups: dict[TilePlan, list[int]] = {}
    for b, m in enumerate(mask):
        groups.setdefault(plan_tiles(m, size, settings), []).append(b)
    return [(indices, plan) for plan, indices in groups.items()]


def calls_per_pass(sampler: str, steps: int, options: dict | None = None) -> int:
    """Network calls of one sampler pass over one window: ``steps`` for replace and for RAD's samplers (more with
    resampling, ``sampling.rad_calls``), RePaint's count for repaint (2,410 at 250 / 10 / 10)."""
    options = options or {}
    if sampler == "repaint":
        return repaint_calls(steps, options.get("jump_length", 10), options.get("jump_n_sample", 10))
    if sampler in ("ddpm", "ddim") and options.get("resample"):
        return rad_calls(steps, options["resample"], options.get("jump", DEFAULT_JUMP))
    return steps


def _coarse_used(settings: TileSettings, sampler: str) -> bool:
    return settings.coarse and not settings.independent and sampler not in BASELINE_SAMPLERS


def count_calls(mask: torch.Tensor, size: int, sampler: str, steps: int, options: dict | None = None,
                settings: TileSettings = TileSettings()) -> tuple[int, int]:
    """(windows, network calls) that ``inpaint_tiles`` makes for masks [B,H,W]: known before any call."""
    groups = plan_batch(mask, size, settings)
    windows = sum(len(plan.windows) for _, plan in groups)
    passes = windows + (len(groups) if _coarse_used(settings, sampler) else 0)
    return windows, passes * calls_per_pass(sampler, steps, options)


def crop_fits(mask: torch.Tensor, size: int) -> bool:
    """Whether every hole (mask > 0) of mask [B,H,W] fits one model window at native scale (its bounding box is
    at most ``size`` x ``size``). Then ``fit="crop"`` works exactly as it always has (a window of the hole plus
    context, shrunk a little where the context does not fit either); otherwise crop fills the hole region by
    region (tiles) instead of downscaling it."""
    for m in mask:
        rows, cols = torch.nonzero(m > 0, as_tuple=True)
        if rows.numel() and (int(rows.max() - rows.min()) >= size or int(cols.max() - cols.min()) >= size):
            return False
    return True


# ---------------------------------------------------------------------------------------------------- sampling


def _distance(source: torch.Tensor, limit: int) -> torch.Tensor:
    """Chessboard distance (in pixels, 1 = adjacent) of each pixel of [N,h,w] to the nearest True of ``source``,
    capped at limit + 1; 0 on ``source`` itself."""
    distance = torch.full(source.shape, float(limit + 1))
    reach = source[:, None].float()
    distance[source] = 0
    for d in range(1, limit + 1):
        grown = F.max_pool2d(reach, 3, 1, 1)
        distance[(grown[:, 0] > 0) & (reach[:, 0] == 0)] = d
        reach = grown
    return distance


def window_mask(mask: torch.Tensor, filled: torch.Tensor, settings: TileSettings, guided: bool = False) -> torch.Tensor:
    """The mask one window is inpainted with, float32 [N,h,w], from the user's mask [N,h,w] (1 = inpaint) and
    ``filled`` (bool [N,h,w], hole pixels earlier windows generated); see the module docstring. ``guided``: the
    unfilled pixels start from the coarse pass (``coarse_strength`` instead of 1)."""
    hole = mask > 0
    unfilled = hole & ~filled
    overlap = settings.overlap or 0
    if settings.soft > 0 and overlap > 0 and not settings.independent:
        d = _distance(unfilled, overlap)
        ramp = settings.soft * ((overlap + 1 - d) / overlap).clamp(0, 1)
    else:
        ramp = torch.zeros_like(mask)
    scale = settings.coarse_strength if guided else 1.0
    value = torch.where(unfilled, mask * scale, torch.minimum(mask, ramp))
    return torch.where(hole, value, torch.zeros_like(mask)).float()


def owner_map(mask: torch.Tensor, plan: TilePlan, settings: TileSettings = TileSettings()) -> torch.Tensor:
    """Which window (its index in ``plan``) last regenerated each pixel of mask [H,W]: long [H,W], -1 for pixels
    no window touches (kept ones). Where neighbouring pixels have different owners a seam could show; for
    ``metrics.region_seam``."""
    settings = settings.resolved(plan.size)
    height, width = mask.shape
    owner = torch.full((height, width), -1, dtype=torch.long)
    filled = torch.zeros(height, width, dtype=torch.bool)
    for index, w in enumerate(plan.windows):
        y0, y1, x0, x1 = _inside(w, height, width)
        a0, a1, b0, b1 = y0 - w.top, y1 - w.top, x0 - w.left, x1 - w.left
        user = imaging._cut(mask[None], w, "constant")
        done = imaging._cut(filled[None].float(), w, "constant") > 0
        if settings.independent:
            done = torch.zeros_like(done)
        touched = window_mask(user, done, settings)[0, a0:a1, b0:b1] > 0
        owner[y0:y1, x0:x1][touched] = index
        filled[y0:y1, x0:x1] |= mask[y0:y1, x0:x1] > 0
    return owner


class _Calls:
    """Counts every network call of every window; the callback gets the total over all windows and a preview of
    the whole picture as it fills (``pred_x0``: the canvas, [b,3,H,W] in [-1,1], with the window's prediction)."""

    def __init__(self, callback: Callable[[dict], None] | None, total: int, windows: int):
        self.callback, self.total, self.windows, self.done = callback, total, windows, 0

    def window(self, canvas: torch.Tensor | None, box, inner, index: int) -> Callable[[dict], None] | None:
        """The sampler callback for window number ``index``: box = (y0, y1, x0, x1) on the canvas, inner the same
        region inside the window."""
        def step(info: dict) -> None:
            preview = info["pred_x0"]  # the coarse pass: its own window
            if canvas is not None:
                preview = canvas
                (y0, y1, x0, x1), (a0, a1, b0, b1) = box, inner
                canvas[:, :, y0:y1, x0:x1] = info["pred_x0"][:, :, a0:a1, b0:b1].to(canvas)
            self.done += 1
            if self.callback is not None:
                self.callback({**info, "step": self.done - 1, "total": self.total, "window": index,
                               "windows": self.windows, "pred_x0": preview})
        return step


def _sample(model, image, mask, sampler, steps, generator, callback, y, curves, options):
    """One sampler pass at model resolution: image [b,3,s,s] in [0,1], mask [b,s,s] -> [b,3,s,s] in [0,1]."""
    schedule = SpatialSchedule(mask[:, None], curves)
    result = SAMPLERS[sampler](model, imaging.to_model_range(image), schedule, steps, generator, callback, y=y,
                               **options)
    return imaging.from_model_range(result.float().cpu())


def _coarse(model, size, image, mask, sampler, steps, generator, calls, y, curves, options):
    """The coarse pass: the whole hole and context downscaled into one window (as fit="crop"), stitched back."""
    model_image, model_mask, fitted = imaging.fit_crop(image, mask, size)
    result = _sample(model, model_image, model_mask, sampler, steps, generator, calls.window(None, None, None, -1),
                     y, curves, options)
    return imaging.stitch(result, image, mask, fitted)


def _group_y(y, indices: list[int], batch: int):
    if isinstance(y, torch.Tensor) and y.numel() == batch and batch > 1:
        return y.reshape(-1)[indices]
    return y


def inpaint_tiles(model: torch.nn.Module, image: torch.Tensor, mask: torch.Tensor, *, sampler: str = "ddpm",
                  steps: int = 100, generator: torch.Generator | None = None,
                  callback: Callable[[dict], None] | None = None, y=None, curves: NoiseCurves | None = None,
                  options: dict | None = None, settings: TileSettings = TileSettings(),
                  size: int | None = None) -> torch.Tensor:
    """Inpaint image [B,3,H,W] in [0,1] where mask [B,H,W] (1 = inpaint) is above 0, region by region at the
    model's resolution ``size`` (default ``model.config.image_size``). Images that share a plan are sampled as one batch; noise
    comes from ``generator`` in plan, window, step order. ``callback`` gets the sampler's dict with ``step`` and
    ``total`` over all network calls of all windows, ``window`` / ``windows``, and ``pred_x0`` the whole picture.
    Returns [B,3,H,W] in [0,1]: pixels with mask 0 bit-identical to ``image``.
    """
    size = size or model.config.image_size
    settings = settings.resolved(size)
    options = options or {}
    if sampler in BASELINE_SAMPLERS and settings.soft > 0:  # RePaint and replace take binary masks only
        settings = TileSettings(settings.overlap, settings.context, 0.0, settings.coarse, settings.coarse_strength,
                                settings.independent)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    groups = plan_batch(mask, size, settings)
    windows, total = count_calls(mask, size, sampler, steps, options, settings)
    log.info("region by region: %d window(s) of %dx%d, %d network calls", windows, size, size, total)
    calls = _Calls(callback, total, windows)
    out = image.clone()
    batch, _, height, width = image.shape
    for indices, plan in groups:
        group_y = _group_y(y, indices, batch)
        canvas, m = image[indices].clone(), mask[indices]
        guided = _coarse_used(settings, sampler)
        if guided:
            canvas = _coarse(model, size, canvas, m, sampler, steps, generator, calls, group_y, curves, options)
        source = image[indices] if settings.independent else canvas
        filled = torch.zeros(m.shape, dtype=torch.bool)
        preview = imaging.to_model_range(canvas)
        for index, w in enumerate(plan.windows):
            y0, y1, x0, x1 = _inside(w, height, width)
            inner = (y0 - w.top, y1 - w.top, x0 - w.left, x1 - w.left)
            crop = torch.stack([imaging._cut(x, w, "reflect") for x in source])
            user = torch.stack([imaging._cut(v[None], w, "constant")[0] for v in m])
            done = torch.stack([imaging._cut(v[None].float(), w, "constant")[0] > 0 for v in filled])
            if settings.independent:  # naive tiling: every window as if it were the only one
                done = torch.zeros_like(done)
            wmask = window_mask(user, done, settings, guided)
            step = calls.window(preview, (y0, y1, x0, x1), inner, index)
            result = _sample(model, crop, wmask, sampler, steps, generator, step, group_y, curves, options)
            a0, a1, b0, b1 = inner
            region = canvas[:, :, y0:y1, x0:x1]
            canvas[:, :, y0:y1, x0:x1] = torch.where(wmask[:, None, a0:a1, b0:b1] > 0,
                                                     result[:, :, a0:a1, b0:b1], region)
            preview[:, :, y0:y1, x0:x1] = imaging.to_model_range(canvas[:, :, y0:y1, x0:x1])
            filled[:, y0:y1, x0:x1] |= m[:, y0:y1, x0:x1] > 0
        out[indices] = canvas
    return torch.where(mask[:, None] > 0, out, image)
