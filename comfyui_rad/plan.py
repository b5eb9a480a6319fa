"""Plans of windows: how one inpaint call meets the model's resolution, decided before the first network call.

A ``Plan`` is the windows one call samples, at the model's size: crop, resize and pad (``FIT_MODES``) are
one-window plans (one window per image, cut and resized to the model: ``fit_windows``, ``to_model``, ``stitch``);
tiles is a many-window plan (the hole covered by overlapping native windows, ``plan_tiles``, grouped per batch by
``plan_batch``, with a downscaled coarse pass first, see ``comfyui_rad.tiles``). With a ``sampling.SamplerSpec`` a
plan knows its network calls (``plan.calls(spec)``) and says what it will do (``plan.describe(spec)``: "coarse
pass + 9 windows of 64x64, 1,000 network calls"); ``pipeline.run_plan`` executes any plan. ``FITS`` is the one
list of fit names; ``resolve_fit`` the one rule that turns crop into tiles.

Images are float32 [B,3,H,W] in [0,1] (or any range: geometry only), masks [B,H,W] in [0,1] with 1 = inpaint.
No ComfyUI import.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from .imaging import normalize_mask
from .sampling import SamplerSpec
from .settings import FIT_NAMES

__all__ = ["FITS", "FIT_MODES", "Window", "Fit", "cut", "span", "inside", "resize", "crop_window", "fit_windows",
           "to_model", "fit_crop", "fit_resize", "fit_pad", "stitch", "TileSettings", "TilePlan", "plan_tiles",
           "plan_batch", "crop_fits", "window_mask", "fixed_frame", "group_window_mask", "mark_filled", "resolve_fit",
           "Plan", "make_plan"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- one window


@dataclass(frozen=True)
class Window:
    """A rectangle of an image in pixels; it may reach past the image borders (those pixels are padding)."""

    top: int
    left: int
    height: int
    width: int


@dataclass(frozen=True)
class Fit:
    """How a batch was fitted to the model resolution: one window per image, each resized to ``size`` x ``size``.

    ``empty`` means the mask has no pixel to inpaint: skip sampling, ``stitch`` returns the input unchanged.
    """

    mode: str
    size: int
    image_size: tuple[int, int]
    windows: tuple[Window, ...]
    empty: bool


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of [N,C,h,w] (antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def cut(x: torch.Tensor, window: Window, pad_mode: str) -> torch.Tensor:
    """The ``window`` of x [C,H,W]; parts outside the image are padded by reflection (replicate where the image is
    too small to reflect), or with zeros for pad_mode="constant"."""
    height, width = x.shape[-2:]
    pads = (max(0, -window.left), max(0, window.left + window.width - width),
            max(0, -window.top), max(0, window.top + window.height - height))
    if any(pads):
        too_small = max(pads[:2]) >= width or max(pads[2:]) >= height
        mode = "replicate" if pad_mode == "reflect" and too_small else pad_mode
        x = F.pad(x[None], pads, mode=mode)[0]
    top, left = window.top + pads[2], window.left + pads[0]
    return x[..., top:top + window.height, left:left + window.width]


def to_model(image: torch.Tensor, mask: torch.Tensor, fit: Fit) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each image's window of ``fit``, resize it to size x size: (images [B,C,s,s], masks [B,s,s]). The
    model-resolution mask is the max over each model pixel's footprint (adaptive max pooling): every model pixel
    that touches the hole is regenerated."""
    size = fit.size
    images = torch.stack([resize(cut(x, w, "reflect")[None], (size, size))[0] for x, w in zip(image, fit.windows)])
    masks = torch.stack([F.adaptive_max_pool2d(cut(m[None], w, "constant")[None], size)[0, 0]
                         for m, w in zip(mask, fit.windows)])
    return images, masks


def _fit(image: torch.Tensor, mask: torch.Tensor, size: int, mode: str,
         windows: list[Window]) -> tuple[torch.Tensor, torch.Tensor, Fit]:
    fit = Fit(mode, size, tuple(image.shape[-2:]), tuple(windows), not bool((mask > 0).any()))
    if fit.empty:
        log.warning("the mask is empty: nothing to inpaint, stitch() will return the input unchanged")
    return (*to_model(image, mask, fit), fit)


def _prepare(image: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    if image.dim() != 4 or not image.is_floating_point():
        raise ValueError(f"image must be a float tensor [B,C,H,W], got {image.dtype} {tuple(image.shape)}")
    if size < 1:
        raise ValueError(f"model resolution must be a positive number of pixels, got {size}")
    return image, normalize_mask(mask, image.shape[0], *image.shape[-2:]).to(image.device)


def span(lo: int, hi: int, side: int, length: int) -> int:
    """Start of a span of ``side`` pixels centred on [lo, hi), kept inside [0, length) when it fits, else centred on
    the image (the rest is padding)."""
    if side >= length:
        return -((side - length) // 2)
    return min(max((lo + hi - side) // 2, 0), length - side)


def crop_window(mask: torch.Tensor, size: int, margin: int) -> Window:
    """Square window around the bounding box of mask [H,W] > 0 plus ``margin`` (clipped to the image), at least
    ``size`` wide; a centred ``size`` square for an empty mask."""
    height, width = mask.shape
    rows, cols = torch.nonzero(mask > 0, as_tuple=True)
    if rows.numel() == 0:
        y0 = y1 = height // 2
        x0 = x1 = width // 2
    else:
        y0, y1 = max(int(rows.min()) - margin, 0), min(int(rows.max()) + 1 + margin, height)
        x0, x1 = max(int(cols.min()) - margin, 0), min(int(cols.max()) + 1 + margin, width)
    side = max(size, y1 - y0, x1 - x0)
    return Window(span(y0, y1, side, height), span(x0, x1, side, width), side, side)


def fit_windows(mode: str, mask: torch.Tensor, size: int, margin: int = 32) -> list[Window]:
    """The one window per mask [B,H,W] of a one-window fit (crop: around the hole, see ``fit_crop``; resize: the
    whole image; pad: the image centred in a square, see ``fit_pad``)."""
    batch, height, width = mask.shape
    if mode == "crop":
        return [crop_window(m, size, margin) for m in mask]
    if mode == "resize":
        return [Window(0, 0, height, width)] * batch
    side = size * math.ceil(max(height, width) / size)
    return [Window(-((side - height) // 2), -((side - width) // 2), side, side)] * batch


def fit_crop(image: torch.Tensor, mask: torch.Tensor, size: int, *,
             margin: int = 32) -> tuple[torch.Tensor, torch.Tensor, Fit]:
    """Crop around each image's mask for a model of resolution ``size``.

    image [B,C,H,W] (any value range), mask in any layout ``normalize_mask`` takes (1 = inpaint). Per image: the
    mask's bounding box plus ``margin`` pixels of context, grown to a square of at least ``size`` (kept inside the
    image; reflected padding where the image is smaller), downscaled with antialiasing when larger. Returns the
    crops [B,C,size,size], the mask used at model resolution [B,size,size] in [0,1], and the ``Fit`` for ``stitch``.
    """
    image, mask = _prepare(image, mask, size)
    return _fit(image, mask, size, "crop", fit_windows("crop", mask, size, margin))


def fit_resize(image: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, Fit]:
    """The whole image resized to ``size`` x ``size`` (aspect ratio not kept); returns like ``fit_crop``."""
    image, mask = _prepare(image, mask, size)
    return _fit(image, mask, size, "resize", fit_windows("resize", mask, size))


def fit_pad(image: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, Fit]:
    """The image centred in a square whose side is the smallest multiple of ``size`` that holds it (reflected
    padding), then downscaled by that whole factor to ``size`` x ``size``; returns like ``fit_crop``."""
    image, mask = _prepare(image, mask, size)
    return _fit(image, mask, size, "pad", fit_windows("pad", mask, size))


FIT_MODES = {"crop": fit_crop, "resize": fit_resize, "pad": fit_pad}
"""The one-window fits: crop, resize, pad (``FITS`` adds tiles)."""


def stitch(result: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, fit: Fit) -> torch.Tensor:
    """Put a model-resolution ``result`` [B,C,size,size] back into ``image`` [B,C,H,W] (same value range), for any
    fit mode. Each window is resized back and pasted where the mask (1 = inpaint) is above 0: pixels with mask 0
    are bit-identical to ``image``, every other pixel comes from the result. Soft values are not blended again: RAD
    already regenerated each pixel by its mask value, and blending would apply it twice.
    """
    batch, _, height, width = image.shape
    if (height, width) != fit.image_size or len(fit.windows) != batch:
        raise ValueError(f"image {batch}x{height}x{width} is not the one fitted ({len(fit.windows)}x"
                         f"{fit.image_size[0]}x{fit.image_size[1]}): pass the same image to stitch()")
    if tuple(result.shape) != (batch, image.shape[1], fit.size, fit.size):
        raise ValueError(f"result must be {[batch, image.shape[1], fit.size, fit.size]}, got {list(result.shape)}")
    mask = normalize_mask(mask, batch, height, width).to(image)[:, None]
    pasted = image.clone()
    for b, w in enumerate(fit.windows):
        patch = resize(result[b:b + 1].to(image), (w.height, w.width))[0]
        y0, y1, x0, x1 = max(w.top, 0), min(w.top + w.height, height), max(w.left, 0), min(w.left + w.width, width)
        pasted[b, :, y0:y1, x0:x1] = patch[:, y0 - w.top:y1 - w.top, x0 - w.left:x1 - w.left]
    return torch.where(mask > 0, pasted, image)


# ---------------------------------------------------------------------------------------------- many windows


@dataclass(frozen=True)
class TileSettings:
    """How a hole is covered. ``overlap`` / ``context``: pixels (None: a quarter of the model's window).
    ``soft``: the highest mask value of generated pixels in a later window's overlap (0 = frozen, hard-edged).
    ``coarse``: a downscaled pass of the whole hole first (default), whose result is the windows' start at
    ``coarse_strength``; not for RePaint and replace (binary masks only). ``independent``: naive tiling, each
    window from the input alone (for comparisons)."""

    overlap: int | None = None
    context: int | None = None
    soft: float = 0.5
    coarse: bool = True
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


# ------------------------------------------------------------------------------------------- window masks


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


def window_mask(mask: torch.Tensor, filled: torch.Tensor, settings: TileSettings, guided: bool = False,
                strength: float = 1.0, frame: torch.Tensor | None = None) -> torch.Tensor:
    """The mask one window is inpainted with, float32 [N,h,w], from the mask [N,h,w] the picture is sampled with
    (1 = inpaint) and ``filled`` (bool [N,h,w], hole pixels earlier windows generated); see the module docstring.
    ``guided``: the unfilled pixels start from the coarse pass (``coarse_strength`` times their mask).

    ``strength``: the start's strength s (``Plan.strength``; 1 for a plain start). A fill start scaled the user's
    mask m to s*m (``fill.start_image``); the overlap ramp scales with it, so an overlap pixel gets s*min(m, ramp),
    what the plain start gives it times s, as every other pixel of the window. (Unscaled, min(s*m, ramp) sat at s
    across most of the overlap, more than the new pixels' 0.8*s, and fell to 0 in its last pixels or at the
    window's own edge where a neighbour overlaps it by fewer pixels: a hard line across the fill.) At s = 1 the
    mask is the one a plain start always had, bit for bit.

    ``frame``: bool [N,h+2,w+2], the picture just outside the window that stays as it is (``fixed_frame``); the
    overlap ramp also falls to 0 towards it, s*soft*d/overlap at d pixels from it, so what the window regenerates
    meets the pixels it cannot see continuously. Where no pixel still to fill lies within ``overlap`` pixels of the
    frame this changes nothing; the tiles pass it for fill starts only (s < 1)."""
    hole = mask > 0
    unfilled = hole & ~filled
    overlap = settings.overlap or 0
    if settings.soft > 0 and overlap > 0 and not settings.independent:
        d = _distance(unfilled, overlap)
        ramp = (strength * settings.soft) * ((overlap + 1 - d) / overlap).clamp(0, 1)
        if frame is not None:  # and down to 0 at the window's edge where the picture beyond it stays
            edge = _distance(frame, overlap)[:, 1:-1, 1:-1]
            ramp = torch.minimum(ramp, (strength * settings.soft) * (edge / overlap).clamp(0, 1))
    else:
        ramp = torch.zeros_like(mask)
    scale = settings.coarse_strength if guided else 1.0
    value = torch.where(unfilled, mask * scale, torch.minimum(mask, ramp))
    return torch.where(hole, value, torch.zeros_like(mask)).float()


def fixed_frame(mask: torch.Tensor, filled: torch.Tensor, window: Window) -> torch.Tensor:
    """bool [B,s+2,s+2]: the one-pixel frame just outside ``window`` (its inside False), True where it holds
    picture that stays as it is now: inside the image and not a hole pixel (mask [B,H,W] > 0) still to be
    generated (``filled`` [B,H,W]: generated already). A window cannot see those pixels, so what it regenerates next
    to them must fade to 0 at its edge (``window_mask``'s ``frame``)."""
    grown = Window(window.top - 1, window.left - 1, window.height + 2, window.width + 2)
    image = cut(torch.ones(1, *mask.shape[-2:]), grown, "constant")[0] > 0
    unfilled = torch.stack([cut(((m > 0) & ~f)[None].float(), grown, "constant")[0] > 0
                            for m, f in zip(mask, filled)])
    frame = image & ~unfilled
    frame[:, 1:-1, 1:-1] = False
    return frame


def group_window_mask(mask: torch.Tensor, filled: torch.Tensor, window: Window, settings: TileSettings,
                      guided: bool = False, strength: float = 1.0) -> torch.Tensor:
    """The mask ``window`` is sampled with for the images of one group, float32 [b,s,s]: ``window_mask`` of its
    cut of masks [b,H,W] and of ``filled`` (bool [b,H,W], the hole pixels earlier windows generated), from
    nothing for ``independent`` windows, fading at the window's edge for a fill start (strength < 1,
    ``fixed_frame``)."""
    user = torch.stack([cut(v[None], window, "constant")[0] for v in mask])
    done = torch.stack([cut(v[None].float(), window, "constant")[0] > 0 for v in filled])
    if settings.independent:  # naive tiling: every window as if it were the only one
        done = torch.zeros_like(done)
    frame = fixed_frame(mask, filled, window) if strength < 1 else None  # a plain start: as it always was
    return window_mask(user, done, settings, guided, strength, frame)


def mark_filled(mask: torch.Tensor, filled: torch.Tensor, window: Window) -> bool:
    """Mark the hole pixels (masks [b,H,W] > 0) inside ``window`` generated in ``filled`` (bool [b,H,W], in
    place); whether any of them was not yet."""
    y0, y1, x0, x1 = inside(window, *mask.shape[-2:])
    hole = mask[:, y0:y1, x0:x1] > 0
    new = bool((hole & ~filled[:, y0:y1, x0:x1]).any())
    filled[:, y0:y1, x0:x1] |= hole
    return new


# ---------------------------------------------------------------------------------------------------- planning


def _starts(lo: int, hi: int, size: int, stride: int, length: int) -> list[int]:
    """Starts of windows of ``size`` pixels covering [lo, hi) (0 <= lo < hi <= length) with steps of at most
    ``stride``, evenly spread; one window centred on the span when it fits (kept inside [0, length) if possible)."""
    extent = hi - lo
    if extent <= size:
        return [span(lo, hi, size, length)]
    count = math.ceil((extent - size) / max(stride, 1)) + 1
    return [lo + round(i * (extent - size) / (count - 1)) for i in range(count)]


def inside(window: Window, height: int, width: int) -> tuple[int, int, int, int]:
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
    boxes = [inside(w, height, width) for w in windows]
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
        a0, a1, b0, b1 = inside(w, height, width)
        if bool(hole[a0:a1, b0:b1].any()):
            windows.append(w)
    return TilePlan(size, tuple(windows if settings.independent else _order(hole, windows)))


def plan_batch(mask: torch.Tensor, size: int,
               settings: TileSettings = TileSettings()) -> list[tuple[list[int], TilePlan]]:
    """Images of mask [B,H,W] grouped by their plan (each group is sampled as one batch), in batch order:
    [(image indices, plan), ...]. One mask for many images makes one group."""
    groups: dict[TilePlan, list[int]] = {}
    for b, m in enumerate(mask):
        groups.setdefault(plan_tiles(m, size, settings), []).append(b)
    return [(indices, plan) for plan, indices in groups.items()]


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


# ---------------------------------------------------------------------------------------------- the plan


FITS = FIT_NAMES
"""How ``pipeline.inpaint`` meets the model's resolution: crop, resize, pad (one window per image, ``FIT_MODES``) or
tiles (region by region at native resolution, ``comfyui_rad.tiles``); crop turns into tiles by itself when a hole
does not fit. The names are ``settings.FIT_NAMES`` (torch-free, for the CLIs' --help)."""
assert tuple(FIT_MODES) == FITS[:-1], "settings.FIT_NAMES and plan.FIT_MODES disagree"


def resolve_fit(fit: str, mask: torch.Tensor, size: int) -> str:
    """The fit used for masks [B,H,W] and a model of ``size`` pixels: ``fit`` itself, except that crop becomes
    tiles when a hole does not fit one window at native scale (``crop_fits``), instead of being downscaled. Where
    every hole fits, crop is exactly what it always was."""
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}: use one of {', '.join(FITS)}")
    if fit == "crop" and bool((mask > 0).any()) and not crop_fits(mask, size):
        return "tiles"
    return fit


@dataclass(frozen=True, eq=False)
class Plan:
    """The windows of one inpaint call. ``fit``: the fit used (``resolve_fit``); ``size``: the model's window;
    ``image`` [B,3,H,W] in [0,1] and ``mask`` [B,H,W] (batches matched; image None for a plan only counted);
    one-window fits: ``window``, the ``Fit`` (one window per image); tiles: ``groups`` [(image indices, TilePlan)]
    and the resolved ``settings``. ``start`` / ``given_mask``: see ``mask_used``; ``strength``: the start's strength
    s (``fill.start_image``), 1 for a plain start: ``mask`` is the given mask times s, and the tiles' overlap ramp
    scales with it (``tiles.window_mask``)."""

    fit: str
    size: int
    image: torch.Tensor | None
    mask: torch.Tensor
    window: Fit | None = None
    groups: tuple = ()
    settings: TileSettings | None = None
    start: str = "noise"
    given_mask: torch.Tensor | None = None
    strength: float = 1.0
    _skipped: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # spec.baseline -> skipped

    @property
    def mask_used(self) -> torch.Tensor:
        """The mask as given [B,H,W] (batches matched): ``mask``, unless a start (``fill.start_image``, "noise" in
        ``start`` when none) scaled ``mask`` by its strength and filled ``image``'s hidden pixels."""
        return self.mask if self.given_mask is None else self.given_mask

    @property
    def empty(self) -> bool:
        """No pixel to inpaint (one-window fits: the call returns the image unchanged)."""
        return self.window.empty if self.window is not None else not bool((self.mask > 0).any())

    @property
    def windows(self) -> int:
        """Native windows sampled (tiles: all groups'; one-window fits: 1, or 0 when there is nothing to do)."""
        if self.fit == "tiles":
            return sum(len(tiles.windows) for _, tiles in self.groups)
        return 0 if self.empty else 1

    def coarse_passes(self, spec: SamplerSpec) -> int:
        """Downscaled coarse passes before the windows: one per group of tiles (RAD's samplers; not with
        ``independent`` windows nor for the baselines, which take binary masks only)."""
        s = self.settings
        used = self.fit == "tiles" and s.coarse and not s.independent and not spec.baseline
        return len(self.groups) if used else 0

    def tile_settings(self, spec: SamplerSpec) -> TileSettings:
        """The tile settings the windows are sampled with: ``settings``, with ``soft`` 0 for RePaint and replace
        (``spec.baseline``: binary masks only)."""
        if spec.baseline and self.settings.soft > 0:
            return replace(self.settings, soft=0.0)
        return self.settings

    def skipped(self, spec: SamplerSpec) -> frozenset[tuple[int, int]]:
        """The runs (group, window) of a tiles plan that would change nothing, so are not sampled: windows whose
        mask (``group_window_mask``, the windows filling in plan order) is 0 for every image of the group, as
        every hole pixel in them was generated by earlier windows and the overlap ramp does not reach them (the
        README's cat: windows 5, 6 and 9 of 9). That depends on the masks and the order only, not on what the
        network draws, so it is known here; ``tiles.run_tiles`` still draws their noise (``runs``), so every
        other window's stays the same."""
        if self.fit != "tiles":
            return frozenset()
        if spec.baseline not in self._skipped:
            settings, guided, skipped = self.tile_settings(spec), self.coarse_passes(spec) > 0, set()
            for g, (indices, tiles) in enumerate(self.groups):
                mask = self.mask[indices]
                filled = torch.zeros(mask.shape, dtype=torch.bool)
                for k, w in enumerate(tiles.windows):
                    window = group_window_mask(mask, filled, w, settings, guided, self.strength)
                    if not mark_filled(mask, filled, w) and not bool((window > 0).any()):
                        skipped.add((g, k))
            self._skipped[spec.baseline] = frozenset(skipped)
        return self._skipped[spec.baseline]

    def sampled_windows(self, spec: SamplerSpec) -> int:
        """Native windows sampled: ``windows`` less the ``skipped`` ones."""
        return self.windows - len(self.skipped(spec))

    def calls(self, spec: SamplerSpec) -> int:
        """Network calls of the whole call, before any is made: (coarse passes + windows sampled, ``skipped`` ones
        left out) x ``spec.calls()``, a window's calls counted whether or not it shares a batch with others
        (``waves``); the progress total."""
        return (self.coarse_passes(spec) + self.sampled_windows(spec)) * spec.calls()

    def runs(self, spec: SamplerSpec) -> tuple[tuple[int, int], ...]:
        """The sampler runs of a tiles plan in the order they would run one after another: (group, window), the
        group's index in ``groups`` and the window's in its ``TilePlan`` (-1: the group's coarse pass, first);
        the ``skipped`` ones too, as each run's noise is drawn in this order."""
        coarse = self.coarse_passes(spec) > 0
        return tuple((g, k) for g, (_, tiles) in enumerate(self.groups)
                     for k in ([-1] if coarse else []) + list(range(len(tiles.windows))))

    def waves(self, spec: SamplerSpec, limit: int | None = None) -> tuple[tuple[tuple[int, int], ...], ...]:
        """The runs (``runs``) in waves: each wave's runs are sampled as one batch of network calls, the waves one
        after the other, with the result of running every run in order. Runs in order, a run joins the wave unless
        its box overlaps a run left for a later wave before it, or (windows that read the picture as it fills, i.e.
        not ``independent``) a run already in the wave; or the wave already holds ``limit`` images (a run of a
        group of b images counts b; a wave holds at least one run). A window's box is the part of the picture it
        reads and writes; a coarse pass's, its group's whole picture; runs of different groups never overlap.
        The ``skipped`` runs are then left out (waves they held alone too), so every other run keeps the
        batch it always had, less them."""
        height, width = self.mask.shape[-2:]
        reads = not self.settings.independent
        boxes = {(g, k): inside(tiles.windows[k], height, width) if k >= 0 else (0, height, 0, width)
                 for g, (_, tiles) in enumerate(self.groups) for k in range(-1, len(tiles.windows))}

        def overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
            (a0, a1, b0, b1), (c0, c1, d0, d1) = boxes[a], boxes[b]
            return a[0] == b[0] and max(a0, c0) < min(a1, c1) and max(b0, d0) < min(b1, d1)

        pending, waves = list(self.runs(spec)), []
        while pending:
            wave, later, images = [], [], 0
            for run in pending:
                size = len(self.groups[run[0]][0])
                full = bool(wave) and limit is not None and images + size > limit
                if full or any(overlap(run, o) for o in later) or (reads and any(overlap(run, o) for o in wave)):
                    later.append(run)
                else:
                    wave.append(run)
                    images += size
            waves.append(tuple(wave))
            pending = later
        skipped = self.skipped(spec)
        waves = [tuple(run for run in wave if run not in skipped) for wave in waves]
        return tuple(wave for wave in waves if wave)

    def describe(self, spec: SamplerSpec) -> str:
        """What the call will do, for logs and progress: "coarse pass + 9 windows of 64x64, 1,000 network calls",
        "coarse pass + 6 of 9 windows of 64x64, 105 network calls" (3 ``skipped``), "1 window of 64x64 (crop), 100
        network calls"."""
        coarse, windows, sampled = self.coarse_passes(spec), self.windows, self.sampled_windows(spec)
        parts = ([f"{coarse} coarse passes" if coarse > 1 else "coarse pass"] if coarse else [])
        some = f"{sampled} of " if sampled != windows else ""
        parts.append(f"{some}{windows} window{'s' if windows != 1 else ''} of {self.size}x{self.size}")
        where = f" ({self.fit})" if self.fit != "tiles" else ""
        return f"{' + '.join(parts)}{where}, {self.calls(spec):,} network calls"


def make_plan(image: torch.Tensor | None, mask: torch.Tensor, size: int, fit: str = "crop",
              settings: TileSettings | None = None) -> Plan:
    """The plan for images [B,3,H,W] (or None: only counted) and masks [B,H,W] (batches matched, ``pipeline.
    match_batches``), a model window of ``size`` pixels, ``fit`` (``FITS``; ``resolve_fit``) and, for tiles,
    ``settings``. The windows are decided here, once; nothing is cut or sampled."""
    used = resolve_fit(fit, mask, size)
    if used == "tiles":
        if fit == "crop":
            log.info("the hole is larger than the model's %dx%d window: crop fills it region by region (tiles)",
                     size, size)
        settings = (settings or TileSettings()).resolved(size)
        return Plan("tiles", size, image, mask, groups=tuple(plan_batch(mask, size, settings)), settings=settings)
    window = Fit(used, size, tuple(mask.shape[-2:]), tuple(fit_windows(used, mask, size)),
                 not bool((mask > 0).any()))
    return Plan(used, size, image, mask, window=window)
