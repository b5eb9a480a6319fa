"""Inpainting masks: how RAD reads a mask, Perlin training masks (RAD paper §3.2) and the evaluation masks of §4.2.

Every mask is a float32 CPU tensor [B,H,W] with values in [0,1]: 1 = inpaint, 0 = keep. Random masks draw only
from the CPU ``torch.Generator`` passed in (never the global RNG), so a seed gives the same masks on any machine;
move them to the device afterwards.

Reading a mask happens here, once: ``as_bhw`` takes every layout to [B,H,W]; ``prepare`` applies the mask mode. The
threshold rule, everywhere (rad-inpaint ``--threshold``, the Spatial Noise Schedule node's ``threshold``): in binary
mode a pixel is inpainted where its mask value is above the threshold, a number in [0, 1) (0 = any nonzero pixel).
``GENERATED_MASKS`` is the one table of generated masks (rad-inpaint ``--mask box`` ..., rad-eval ``--masks``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from . import settings
from .checks import check_mask_values, check_memory

__all__ = ["MASK_MODES", "SOFT_SNAP", "as_bhw", "is_binary", "check_threshold", "binarize", "prepare",
           "perlin_noise", "perlin_bytes", "perlin_mask", "blur_mask", "box_mask", "extreme_mask", "wide_mask", "GENERATED_MASKS",
           "generated_mask"]

Range = float | tuple[float, float]

MASK_MODES = settings.MASK_MODES
SOFT_SNAP = 0.02
"""Soft mask values within this of 0 or 1 (about 5/255: JPEG noise, antialiased painting) count as exactly 0 or 1."""


# ---------------------------------------------------------------------------------------------- reading a mask


def as_bhw(mask: torch.Tensor) -> torch.Tensor:
    """Any mask layout as float32 [B,H,W] (same device): [H,W], [B,H,W], [B,1,H,W] or ComfyUI's [B,H,W,1]."""
    mask = torch.as_tensor(mask).to(torch.float32)
    if mask.dim() == 4 and mask.shape[-1] == 1 and mask.shape[1] != 1:
        mask = mask[..., 0]
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    mask = mask[None] if mask.dim() == 2 else mask
    if mask.dim() != 3:
        raise ValueError(f"mask has shape {tuple(mask.shape)}: mask must be [H,W], [B,H,W] or [B,1,H,W] "
                         "(1 = inpaint)")
    return mask


def is_binary(mask: torch.Tensor) -> bool:
    """True when every value is exactly 0 or 1."""
    return bool(((mask == 0) | (mask == 1)).all())


def check_threshold(threshold: float, name: str = "threshold") -> float:
    """``threshold`` when it follows the rule (module doc: ``settings.RANGES["threshold"]``, [0, 1)), else a
    ValueError naming ``name`` (the caller's input)."""
    try:
        return settings.check("threshold", threshold, name)
    except ValueError as err:
        raise ValueError(f"{err}: mask values above it are inpainted (0 = any nonzero pixel)") from None


def binarize(mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """A float mask of 1 where ``mask`` > threshold, else 0 (same shape; threshold=0 keeps every nonzero pixel)."""
    return (mask > threshold).to(torch.float32)


def prepare(mask: torch.Tensor, mode: str = "binary", threshold: float = 0.5, name: str = "mask") -> torch.Tensor:
    """A mask as RAD takes it, float32, same shape, values in [0,1] (1 = inpaint).

    ``binary``: 1 where mask > ``threshold`` (the rule of the module doc), else 0 ("almost 1" and "almost 0" pixels of
    a JPEG land on the right side). ``soft``: the value is how much of the pixel is regenerated; values within
    ``SOFT_SNAP`` of 0 or 1 are snapped, so JPEG noise neither leaves a trace of the original in a hole nor repaints
    kept pixels a little. Refused in either mode (ValueError naming ``name``): an empty mask, NaN or infinite values,
    values outside [0, 1] (0..255 masks: divide by 255), as ``checks.check_mask_values``.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode must be one of {', '.join(MASK_MODES)}, got {mode!r}")
    mask = check_mask_values(mask, name).float().clamp(0, 1)
    if mode == "binary":
        return binarize(mask, check_threshold(threshold))
    return torch.where(mask <= SOFT_SNAP, 0.0, torch.where(mask >= 1 - SOFT_SNAP, 1.0, mask))


# ---------------------------------------------------------------------------------------------- argument checks


def _check_size(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_generator(generator: torch.Generator | None, caller: str) -> torch.Generator:
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError(
            f"{caller} needs a CPU torch.Generator, e.g. generator=torch.Generator().manual_seed(0); got {generator!r}"
        )
    return generator


def _range(value: Range, name: str, low: float, high: float = math.inf) -> tuple[float, float]:
    """``value`` (a number or a (lo, hi) pair) as (lo, hi) with low <= lo <= hi <= high."""
    lo, hi = (value, value) if isinstance(value, numbers.Real) else tuple(value)
    if not (math.isfinite(lo) and math.isfinite(hi)) or not low <= lo <= high or not low <= hi <= high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value!r}")
    if lo > hi:
        raise ValueError(f"{name} range must be (low, high) with low <= high, got {value!r}: swap the two values")
    return float(lo), float(hi)


def _uniform(lo: float, hi: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """[n] float64 uniform in [lo, hi)."""
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def _randint(lo: int, hi: int, generator: torch.Generator) -> int:
    """One integer uniform in [lo, hi] (both ends included)."""
    return int(torch.randint(lo, hi + 1, (), generator=generator))


# ------------------------------------------------------------------------------------------------- Perlin noise


def _fade(t: torch.Tensor) -> torch.Tensor:
    """Perlin's quintic fade 6t^5 - 15t^4 + 10t^3 (zero first and second derivatives at 0 and 1)."""
    return t * t * t * (t * (6 * t - 15) + 10)


def _perlin_octave(cell: torch.Tensor, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """One octave of 2-D gradient noise, [B,H,W] float64 in [-1, 1]; ``cell`` [B] is the lattice spacing in pixels.

    Pixel centres sit at (i + 0.5) / cell plus a random phase per image, so no pixel falls systematically on a
    lattice point (where gradient noise is 0).
    """
    batch = cell.shape[0]
    phase = torch.rand(batch, 2, generator=generator, dtype=torch.float64)
    y = (torch.arange(height, dtype=torch.float64) + 0.5) / cell[:, None] + phase[:, :1]  # [B,H]
    x = (torch.arange(width, dtype=torch.float64) + 0.5) / cell[:, None] + phase[:, 1:]  # [B,W]
    y0, x0 = y.floor().long(), x.floor().long()
    fy, fx = (y - y0)[:, :, None], (x - x0)[:, None, :]  # [B,H,1], [B,1,W]
    shape = (batch, int(y0.max()) + 2, int(x0.max()) + 2)
    angle = 2 * math.pi * torch.rand(shape, generator=generator, dtype=torch.float64)
    b = torch.arange(batch)[:, None, None]

    def corner(dy: int, dx: int) -> torch.Tensor:  # dot(gradient at lattice corner, offset from it)
        a = angle[b, y0[:, :, None] + dy, x0[:, None, :] + dx]
        return a.cos() * (fy - dy) + a.sin() * (fx - dx)

    u, v = _fade(fy), _fade(fx)
    top, bottom = torch.lerp(corner(0, 0), corner(0, 1), v), torch.lerp(corner(1, 0), corner(1, 1), v)
    return math.sqrt(2) * torch.lerp(top, bottom, u)  # 2-D gradient noise peaks at sqrt(1/2)


def _cell_sizes(cell_size: float | torch.Tensor, batch: int) -> torch.Tensor:
    """``cell_size`` (a number or one per image) as a float64 CPU tensor [B] of positive pixels."""
    cell = torch.as_tensor(cell_size, dtype=torch.float64).detach().cpu().flatten()
    cell = cell.expand(batch) if cell.numel() == 1 else cell
    if cell.numel() != batch:
        raise ValueError(f"cell_size has {cell.numel()} values but batch is {batch}: give one value or one per image")
    if not bool(torch.isfinite(cell).all() and (cell > 0).all()):
        raise ValueError(f"cell_size must be positive pixels, got {cell.tolist()}")
    return cell


def perlin_noise(
    batch: int,
    height: int,
    width: int,
    cell_size: float | torch.Tensor,
    *,
    generator: torch.Generator,
    octaves: int = 1,
    persistence: float = 0.5,
    lacunarity: float = 2.0,
) -> torch.Tensor:
    """Perlin gradient noise (Perlin 1985, quintic fade), float32 [B,H,W] in [-1, 1].

    ``cell_size`` is the lattice spacing in pixels: a number, or a [B] tensor with one per image. Octave k uses
    cell_size / lacunarity**k (at least 1 pixel: finer lattices only alias) with amplitude persistence**k; the sum
    is divided by the total amplitude. Deterministic for a given CPU ``generator`` state.
    """
    _check_size(batch=batch, height=height, width=width, octaves=octaves)
    _check_generator(generator, "perlin_noise")
    cell = _cell_sizes(cell_size, batch)
    if not (math.isfinite(persistence) and math.isfinite(lacunarity)) or persistence < 0 or lacunarity <= 0:
        raise ValueError(f"need finite persistence >= 0 and lacunarity > 0, got {persistence} and {lacunarity}")
    amplitudes = [persistence**k for k in range(octaves)]
    noise = sum(
        a * _perlin_octave((cell / lacunarity**k).clamp_min(1.0), height, width, generator)
        for k, a in enumerate(amplitudes)
    )
    return (noise / sum(amplitudes)).float()


# ------------------------------------------------------------------------------------------------- Perlin masks


def _top_fraction(noise: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
    """Binary [B,H,W]: 1 on the round(fraction * H*W) largest values of each image (ties broken by position)."""
    flat = noise.flatten(1)
    count = (fraction * flat.shape[1]).round().long()[:, None]
    rank = flat.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
    return (rank < count).float().view_as(noise)


def blur_mask(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a mask [B,H,W] with standard deviation ``sigma`` pixels (edges replicated); stays in [0,1]."""
    if sigma <= 0:
        return mask
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=mask.dtype, device=mask.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = F.pad(mask[:, None], (radius,) * 4, mode="replicate")
    x = F.conv2d(F.conv2d(x, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
    return x[:, 0].clamp(0, 1)


PERLIN_BYTES_PER_PIXEL = 160
"""Peak memory of ``perlin_mask`` per pixel of the batch (measured: 102 bytes with one octave, 147 with four;
float64 noise, gathers, the ranking of the coverage)."""


def perlin_bytes(batch: int, height: int, width: int) -> int:
    """About how many bytes ``perlin_mask`` allocates for these sizes (checked before it starts)."""
    return batch * height * width * PERLIN_BYTES_PER_PIXEL


def perlin_mask(
    batch: int,
    height: int,
    width: int,
    *,
    generator: torch.Generator,
    cell_size: Range | None = None,
    octaves: int = 1,
    persistence: float = 0.5,
    lacunarity: float = 2.0,
    coverage: Range | None = None,
    softness: float = 0.0,
    invert: bool = False,
) -> torch.Tensor:
    """Perlin inpainting masks as RAD trains on them (§3.2), float32 [B,H,W], 1 = inpaint.

    Per image: a cell size uniform in ``cell_size`` = (lo, hi) pixels (default the authors' [1, H)), Perlin noise,
    then the hole is the ``coverage`` fraction of pixels with the largest noise: coverage is a number or a (lo, hi)
    range drawn uniformly per image, by default the authors' uniform [0, 1]. The hole holds exactly
    round(coverage * H*W) pixels. ``softness`` > 0 blurs the binary mask with a Gaussian of that sigma in pixels
    (values in [0,1]); 0 gives exactly {0, 1}. ``invert`` returns 1 - mask, applied last (coverage then is the kept
    fraction). Deterministic for a given CPU ``generator`` state.
    """
    _check_size(batch=batch, height=height, width=width)
    check_memory(perlin_bytes(batch, height, width), f"perlin_mask of batch {batch} x height {height} x width {width}",
                 "ask for fewer or smaller masks")
    _check_generator(generator, "perlin_mask")
    cell_lo, cell_hi = _range((1.0, float(height)) if cell_size is None else cell_size, "cell_size", 0.0)
    cover_lo, cover_hi = _range((0.0, 1.0) if coverage is None else coverage, "coverage", 0.0, 1.0)
    if not math.isfinite(softness) or softness < 0:
        raise ValueError(f"softness must be >= 0 pixels (a finite number), got {softness}")
    cell = _uniform(cell_lo, cell_hi, batch, generator)
    noise = perlin_noise(batch, height, width, cell, generator=generator, octaves=octaves,
                         persistence=persistence, lacunarity=lacunarity)
    mask = blur_mask(_top_fraction(noise, _uniform(cover_lo, cover_hi, batch, generator)), softness)
    return 1 - mask if invert else mask


# ---------------------------------------------------------------------------------------------- evaluation masks


def _rectangles(top: torch.Tensor, left: torch.Tensor, size: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """float32 [B,H,W]: 1 inside the rectangle of ``size`` (h, w) at (top[b], left[b]), 0 elsewhere."""
    rows = torch.arange(height)[None, :]
    cols = torch.arange(width)[None, :]
    inside_y = (rows >= top[:, None]) & (rows < top[:, None] + size[0])
    inside_x = (cols >= left[:, None]) & (cols < left[:, None] + size[1])
    return (inside_y[:, :, None] & inside_x[:, None, :]).float()


def _half_box(batch: int, height: int, width: int, generator: torch.Generator | None, center: bool,
              caller: str) -> torch.Tensor:
    """A box of half the image's height and width (128x128 at 256x256), centred or at a uniform random position."""
    _check_size(batch=batch, height=height, width=width)
    size = (max(1, (height + 1) // 2), max(1, (width + 1) // 2))
    if center:
        top = torch.full((batch,), (height - size[0]) // 2)
        left = torch.full((batch,), (width - size[1]) // 2)
    else:
        generator = _check_generator(generator, f"{caller}(center=False)")
        top = torch.randint(0, height - size[0] + 1, (batch,), generator=generator)
        left = torch.randint(0, width - size[1] + 1, (batch,), generator=generator)
    return _rectangles(top, left, size, height, width)


def box_mask(batch: int, height: int, width: int, *, generator: torch.Generator | None = None,
             center: bool = False) -> torch.Tensor:
    """LaMa/RAD "box" masks, float32 [B,H,W], 1 = inpaint: a hole of round(H/2) x round(W/2) pixels (128x128 at
    256x256) fully inside the image, at a random position (needs ``generator``) or centred."""
    return _half_box(batch, height, width, generator, center, "box_mask")


def extreme_mask(batch: int, height: int, width: int, *, generator: torch.Generator | None = None,
                 center: bool = True) -> torch.Tensor:
    """LaMa/RAD "extreme" masks, float32 [B,H,W], 1 = inpaint: keeps only a round(H/2) x round(W/2) region (128x128
    at 256x256), centred by default or at a random position (needs ``generator``), and inpaints everything else."""
    return 1 - _half_box(batch, height, width, generator, center, "extreme_mask")


def _draw_strokes(canvas: ImageDraw.ImageDraw, height: int, width: int, scale: float,
                  strokes: tuple[int, int], generator: torch.Generator) -> None:
    """LaMa's thick irregular strokes: polylines of 1-5 segments (random angle, 20-150 px long at 256) drawn with a
    random width (20-50 px at 256) and round joints and caps."""
    for _ in range(_randint(*strokes, generator)):
        u = torch.rand(2, generator=generator, dtype=torch.float64)
        points = [(float(u[0]) * width, float(u[1]) * height)]
        for _ in range(_randint(1, 5, generator)):
            angle = 2 * math.pi * float(torch.rand((), generator=generator))
            length = scale * _randint(20, 150, generator)
            x, y = points[-1]
            points.append((min(max(x + length * math.cos(angle), 0), width - 1),
                           min(max(y + length * math.sin(angle), 0), height - 1)))
        radius = max(1.0, scale * _randint(20, 50, generator) / 2)
        canvas.line(points, fill=255, width=round(2 * radius), joint="curve")
        for x, y in points:
            canvas.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)


def _draw_boxes(canvas: ImageDraw.ImageDraw, height: int, width: int, scale: float,
                generator: torch.Generator) -> None:
    """LaMa's random boxes: 1-3 rectangles with sides of 30-150 px at 256, at least 10 px from the border."""
    margin = round(10 * scale)
    for _ in range(_randint(1, 3, generator)):
        h = min(round(scale * _randint(30, 150, generator)), max(1, height - 2 * margin))
        w = min(round(scale * _randint(30, 150, generator)), max(1, width - 2 * margin))
        top = _randint(margin, max(margin, height - margin - h), generator)
        left = _randint(margin, max(margin, width - margin - w), generator)
        canvas.rectangle((left, top, left + w - 1, top + h - 1), fill=255)


def wide_mask(batch: int, height: int, width: int, *, generator: torch.Generator, strokes: tuple[int, int] = (1, 5),
              box_probability: float = 0.0) -> torch.Tensor:
    """LaMa/RAD "wide" masks, float32 [B,H,W], 1 = inpaint: thick irregular strokes.

    Per image ``strokes`` = (lo, hi) polylines (their sizes are given at 256 px and scale with min(H, W) / 256), and
    with probability ``box_probability`` also 1-3 random boxes. Hole fraction at the defaults: ~25% mean at 256x256,
    10-50% for ~90% of masks. Drawn with PIL from draws of the CPU ``generator``.
    """
    _check_size(batch=batch, height=height, width=width)
    _check_generator(generator, "wide_mask")
    lo, hi = _range(strokes, "strokes", 0)
    if not 0 <= box_probability <= 1:
        raise ValueError(f"box_probability must be in [0, 1], got {box_probability}")
    scale = min(height, width) / 256
    masks = []
    for _ in range(batch):
        picture = Image.new("L", (width, height), 0)
        canvas = ImageDraw.Draw(picture)
        _draw_strokes(canvas, height, width, scale, (int(lo), int(hi)), generator)
        if float(torch.rand((), generator=generator)) < box_probability:
            _draw_boxes(canvas, height, width, scale, generator)
        masks.append(torch.from_numpy(np.asarray(picture) > 127))
    return torch.stack(masks).float()


# ----------------------------------------------------------------------------------------------- the one table

GENERATED_MASKS: dict[str, Callable[..., torch.Tensor]] = {
    "box": lambda n, h, w, g, center: box_mask(n, h, w, generator=g, center=center),  # a half-size square
    "extreme": lambda n, h, w, g, center: extreme_mask(n, h, w, generator=g),  # only the centred square kept
    "wide": lambda n, h, w, g, center: wide_mask(n, h, w, generator=g),  # LaMa's thick strokes
    "perlin": lambda n, h, w, g, center: perlin_mask(n, h, w, generator=g, coverage=(0.2, 0.5)),
}
"""Generated masks by name: (count, height, width, CPU generator, center) -> float32 [N,H,W], 1 = inpaint. The
paper's box / extreme / wide evaluation masks and a Perlin one. ``center`` only moves the box (see
``generated_mask``)."""


def generated_mask(kind: str, count: int, height: int, width: int, seed: int, *,
                   centred_box: bool = False) -> torch.Tensor:
    """``count`` masks of ``kind`` (``GENERATED_MASKS``) at ``height`` x ``width``, the same for a seed.

    ``box`` is a half-size square at a random position, as LaMa's and the paper's evaluation protocol draws it
    (rad-eval); ``centred_box`` puts it in the centre instead, which is what rad-inpaint's ``--mask box`` gives
    (one picture a person looks at: the hole where the eye goes). Every other kind ignores it.
    """
    if kind not in GENERATED_MASKS:
        raise ValueError(f"unknown mask kind {kind!r}: use one of {', '.join(GENERATED_MASKS)}")
    return GENERATED_MASKS[kind](count, height, width, torch.Generator().manual_seed(seed), centred_box)
