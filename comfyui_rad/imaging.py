"""Image and mask I/O, value ranges, and fitting images of any size to the model resolution and back.

Images are float32 [B,3,H,W] in [0,1] (``to_model_range`` gives the model's [-1,1]). Masks are float32 [B,H,W] in
[0,1] with 1 = inpaint, 0 = keep; file conventions (white = inpaint, or transparent = inpaint for images with alpha)
are converted once, in ``load_mask``. Folders of images (training and evaluation data) are ``image_folders``'.
Shared by the CLIs and the ComfyUI nodes; no ComfyUI import.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .fileio import atomic_write
from .masks import as_bhw, is_binary

__all__ = [
    "load_image", "save_image", "output_paths", "load_mask", "photo_mask_reason", "same_aspect", "warn_if_stretched",
    "rgb8", "to_model_range", "from_model_range", "normalize_mask",
    "Window", "Fit", "fit_crop", "fit_resize", "fit_pad", "FIT_MODES", "stitch",
]

log = logging.getLogger(__name__)

_FORMATS = {".png": ("PNG", {}), ".jpg": ("JPEG", {"quality": 95}), ".jpeg": ("JPEG", {"quality": 95}),
            ".webp": ("WEBP", {"quality": 95})}


# --------------------------------------------------------------------------------------------------------- files


def _open(path: str | os.PathLike) -> Image.Image:
    """The decoded picture at ``path``, EXIF orientation applied (as ComfyUI's LoadImage does).

    One-line errors (ValueError) for files Pillow cannot decode (truncated, corrupt, not an image) and for
    decompression bombs (over twice Pillow's ``MAX_IMAGE_PIXELS``); images over the limit itself are read with one
    warning line."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(path) as picture:
                picture.load()
                picture = ImageOps.exif_transpose(picture)
        for warning in caught:
            if issubclass(warning.category, Image.DecompressionBombWarning):
                log.warning("%s is a very large image (%dx%d): it needs a lot of memory", path, *picture.size)
            else:
                log.debug("%s: %s", path, warning.message)
        return picture
    except Image.DecompressionBombError as error:
        raise ValueError(f"{path} is too large to decode safely ({_bomb_size(error)}, Pillow's limit is "
                         f"{2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} M pixels; a possible decompression bomb): "
                         "downscale the image first") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        raise ValueError(f"cannot read image {path} ({_reason(error)}): the file is truncated, damaged or not an "
                         "image; re-save or replace it") from None


def _bomb_size(error: Exception) -> str:
    """"N M pixels" from Pillow's DecompressionBombError message, or its message."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    return f"{int(found.group(1)) / 1e6:.0f} M pixels" if found else _reason(error)


def _reason(error: Exception) -> str:
    """The first line of an exception, short."""
    return (str(error).splitlines() or [type(error).__name__])[0][:160] or type(error).__name__


_HIGH_DEPTH = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}
"""Modes Pillow reads at more than 8 bits per pixel (16-bit PNGs) -> the value that is white."""


def _gray(picture: Image.Image) -> np.ndarray:
    """The gray levels of a picture as float32 [H,W] in [0,1], at the file's own depth (16-bit PNGs too: Pillow's
    convert("L") would clip them at 255, reading almost every pixel as white)."""
    white = _HIGH_DEPTH.get(picture.mode)
    if white is None:
        return np.asarray(picture.convert("L"), dtype=np.float32) / 255
    return np.clip(np.asarray(picture, dtype=np.float32) / white, 0.0, 1.0)


def rgb8(picture: Image.Image) -> Image.Image:
    """An RGB picture with 8 bits per channel; 16-bit gray files are scaled down, not clipped."""
    if picture.mode in _HIGH_DEPTH:
        picture = Image.fromarray(np.round(_gray(picture) * 255).astype(np.uint8), "L")
    return picture.convert("RGB")


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 array [H,W] or [H,W,C] -> float32 tensor [H,W] or [C,H,W] in [0,1]."""
    x = torch.from_numpy(np.array(array, dtype=np.float32, copy=True)) / 255
    return x.permute(2, 0, 1) if x.dim() == 3 else x


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file as float32 [1,3,H,W] in [0,1] (RGB; alpha dropped, grayscale expanded; 16-bit files at their
    own depth)."""
    picture = _open(path)
    if picture.mode in _HIGH_DEPTH:  # 16-bit gray: at its own depth
        return torch.from_numpy(_gray(picture))[None, None].expand(1, 3, -1, -1).contiguous()
    return _to_tensor(np.asarray(picture.convert("RGB")))[None]


def _has_alpha(picture: Image.Image) -> bool:
    return picture.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in picture.info


def load_mask(path: str | os.PathLike, *, invert: bool = False) -> torch.Tensor:
    """A mask file as float32 [1,H,W] in [0,1], 1 = inpaint.

    An image with an alpha channel that is not fully opaque: transparent = inpaint (mask = 1 - alpha, as ComfyUI's
    LoadImage and mask editor). Otherwise its gray level: white = inpaint. ``invert`` flips the result, for files
    that use the other convention (e.g. RePaint's white = keep).
    """
    picture = _open(path)
    alpha = np.asarray(picture.convert("RGBA"))[..., 3] if _has_alpha(picture) else None
    if alpha is not None and alpha.min() < 255:
        log.debug("mask %s: transparent = inpaint", path)
        mask = 1 - _to_tensor(alpha)
    else:
        log.debug("mask %s: white = inpaint", path)
        mask = torch.from_numpy(_gray(picture).copy())
    return (1 - mask if invert else mask)[None]


PHOTO_LEVELS = 64
PHOTO_MIDTONES = 0.2
"""A mask file without transparency "looks like a photo" (``photo_mask_reason``) when it is in colour, or has at
least ``PHOTO_LEVELS`` grey levels with at least ``PHOTO_MIDTONES`` of its pixels mid-grey (between 0.1 and 0.9):
painted masks, even JPEG'd or feathered, are nearly all black and white."""


def photo_mask_reason(path: str | os.PathLike) -> str | None:
    """Why the mask file at ``path`` looks like a photo rather than a mask (a short phrase), or None.

    Files with transparent pixels are masks by their alpha (``load_mask``) and never look like photos. The usual
    cause is an image without alpha (a JPEG) passed as its own mask: its bright pixels would be inpainted.
    """
    picture = _open(path)
    if _has_alpha(picture) and np.asarray(picture.convert("RGBA"))[..., 3].min() < 255:
        return None
    gray = _gray(picture)
    levels = len(np.unique(np.round(gray * 255).astype(np.uint8)))
    midtones = float(((gray > 0.1) & (gray < 0.9)).mean())
    if picture.mode not in ("1", "L", "LA", "La", *_HIGH_DEPTH):
        rgb = np.asarray(picture.convert("RGB"), dtype=np.int16)
        if float((rgb.max(axis=-1) - rgb.min(axis=-1)).mean()) > 0.05 * 255:
            return f"a colour picture with {levels} grey levels"
    if levels >= PHOTO_LEVELS and midtones >= PHOTO_MIDTONES:
        return f"{levels} grey levels, {midtones:.0%} of the pixels mid-grey"
    return None


def output_paths(path: str | os.PathLike, batch: int = 1) -> list[Path]:
    """The files ``save_image`` writes for a batch of ``batch`` at ``path``: itself, or numbered ones beside it."""
    path = Path(path)
    if batch == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{i:05d}{path.suffix}") for i in range(batch)]


def check_writable(path: str | os.PathLike, batch: int = 1, *, force: bool = False, flag: str = "force=True") -> list[Path]:
    """The files ``save_image`` would write for a batch of ``batch``; raises before any work is done if the format
    is unknown or a file exists (unless ``force``; the error names ``flag``, the caller's way to say force: the
    CLIs pass "--force")."""
    path = Path(path)
    if path.suffix.lower() not in _FORMATS:
        raise ValueError(f"cannot tell the format of {path}: use one of {', '.join(sorted(_FORMATS))}")
    targets = output_paths(path, batch)
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exists: choose another name or pass {flag}")
    return targets


def save_image(image: torch.Tensor, path: str | os.PathLike, *, force: bool = False) -> list[Path]:
    """Write ``image`` [B,C,H,W] or [C,H,W] (C = 3, or 1 for grayscale) in [0,1] as 8-bit PNG, JPEG or WEBP
    (chosen by the extension). Returns the paths written.

    A batch of one goes to ``path``; a batch of B > 1 to numbered files ``stem_00000.ext`` ... ``stem_{B-1:05d}.ext``
    beside it. Existing files are refused (FileExistsError, before anything is written) unless ``force``. Each file
    is written atomically (``fileio.atomic_write``).
    """
    path = Path(path)
    image = image[None] if image.dim() == 3 else image
    if image.dim() != 4 or image.shape[1] not in (1, 3):
        raise ValueError(f"image must be [B,3,H,W] or [3,H,W] (or 1 channel), got shape {tuple(image.shape)}")
    targets = check_writable(path, image.shape[0], force=force)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    fmt, options = _FORMATS[path.suffix.lower()]
    for target, array in zip(targets, pixels.permute(0, 2, 3, 1).numpy()):
        picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        atomic_write(target, lambda tmp, p=picture: p.save(tmp, format=fmt, **options), force=True)
        log.info("wrote %s", target)
    return targets


# ---------------------------------------------------------------------------------------------- values and masks


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """[0,1] -> [-1,1], the range diffusion models work in."""
    return x * 2 - 1


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """[-1,1] -> [0,1], clamped."""
    return ((x + 1) / 2).clamp(0, 1)


def same_aspect(mask_height: int, mask_width: int, height: int, width: int) -> bool:
    """Whether a mask of mask_width x mask_height meets an image of width x height by resizing alone: aspect ratios
    within 1 % (a half-size mask of an odd-sized image passes)."""
    return abs(mask_width / mask_height - width / height) <= 0.01 * width / height


def warn_if_stretched(mask_height: int, mask_width: int, height: int, width: int) -> bool:
    """Warn (and return True) when a mask of mask_width x mask_height has another aspect ratio than the image of
    width x height it is resized to (``same_aspect``): the mask gets stretched."""
    if min(mask_height, mask_width, height, width) < 1:
        raise ValueError(f"mask {mask_width}x{mask_height} or image {width}x{height} has no pixels")
    if same_aspect(mask_height, mask_width, height, width):
        return False
    log.warning("the mask is %dx%d but the image is %dx%d (another aspect ratio): the mask is stretched to fit",
                mask_width, mask_height, width, height)
    return True


def normalize_mask(mask: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """Any mask layout as float32 [B,H,W] in [0,1] (1 = inpaint) for a batch of B images of H x W.

    Accepts the layouts of ``masks.as_bhw``; one mask is broadcast over the batch. A mask of another size is
    resized: nearest-exact when it is binary (stays binary), bilinear with antialiasing when it is soft.
    """
    mask = as_bhw(mask)
    if mask.shape[0] not in (1, batch):
        raise ValueError(
            f"mask batch {mask.shape[0]} does not match image batch {batch}: give one mask or one per image"
        )
    if mask.shape[1:] != (height, width):
        warn_if_stretched(mask.shape[1], mask.shape[2], height, width)
        log.info("resizing mask from %dx%d to %dx%d", mask.shape[2], mask.shape[1], width, height)
        binary = is_binary(mask)
        mask = F.interpolate(mask[:, None], size=(height, width), mode="nearest-exact" if binary else "bilinear",
                             antialias=not binary, align_corners=None if binary else False)[:, 0]
    return mask.expand(batch, height, width).clamp(0, 1)


# ------------------------------------------------------------------------------- fitting to the model resolution


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


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of [N,C,h,w] (antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def _cut(x: torch.Tensor, window: Window, pad_mode: str) -> torch.Tensor:
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


def _fit(image: torch.Tensor, mask: torch.Tensor, size: int, mode: str,
         windows: list[Window]) -> tuple[torch.Tensor, torch.Tensor, Fit]:
    """Cut each image's window, resize it to size x size. The model-resolution mask is the max over each model
    pixel's footprint (adaptive max pooling): every model pixel that touches the hole is regenerated."""
    images = torch.stack([_resize(_cut(x, w, "reflect")[None], (size, size))[0] for x, w in zip(image, windows)])
    masks = torch.stack([F.adaptive_max_pool2d(_cut(m[None], w, "constant")[None], size)[0, 0]
                         for m, w in zip(mask, windows)])
    empty = not bool((mask > 0).any())
    if empty:
        log.warning("the mask is empty: nothing to inpaint, stitch() will return the input unchanged")
    return images, masks, Fit(mode, size, tuple(image.shape[-2:]), tuple(windows), empty)


def _prepare(image: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    if image.dim() != 4 or not image.is_floating_point():
        raise ValueError(f"image must be a float tensor [B,C,H,W], got {image.dtype} {tuple(image.shape)}")
    if size < 1:
        raise ValueError(f"model resolution must be a positive number of pixels, got {size}")
    return image, normalize_mask(mask, image.shape[0], *image.shape[-2:]).to(image.device)


def _span(lo: int, hi: int, side: int, length: int) -> int:
    """Start of a span of ``side`` pixels centred on [lo, hi), kept inside [0, length) when it fits, else centred on
    the image (the rest is padding)."""
    if side >= length:
        return -((side - length) // 2)
    return min(max((lo + hi - side) // 2, 0), length - side)


def _crop_window(mask: torch.Tensor, size: int, margin: int) -> Window:
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
    return Window(_span(y0, y1, side, height), _span(x0, x1, side, width), side, side)


def fit_crop(image: torch.Tensor, mask: torch.Tensor, size: int, *,
             margin: int = 32) -> tuple[torch.Tensor, torch.Tensor, Fit]:
    """Crop around each image's mask for a model of resolution ``size``.

    image [B,C,H,W] (any value range), mask in any layout ``normalize_mask`` takes (1 = inpaint). Per image: the
    mask's bounding box plus ``margin`` pixels of context, grown to a square of at least ``size`` (kept inside the
    image; reflected padding where the image is smaller), downscaled with antialiasing when larger. Returns the
    crops [B,C,size,size], the mask used at model resolution [B,size,size] in [0,1], and the ``Fit`` for ``stitch``.
    """
    image, mask = _prepare(image, mask, size)
    return _fit(image, mask, size, "crop", [_crop_window(m, size, margin) for m in mask])


def fit_resize(image: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, Fit]:
    """The whole image resized to ``size`` x ``size`` (aspect ratio not kept); returns like ``fit_crop``."""
    image, mask = _prepare(image, mask, size)
    height, width = image.shape[-2:]
    return _fit(image, mask, size, "resize", [Window(0, 0, height, width)] * image.shape[0])


def fit_pad(image: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, Fit]:
    """The image centred in a square whose side is the smallest multiple of ``size`` that holds it (reflected
    padding), then downscaled by that whole factor to ``size`` x ``size``; returns like ``fit_crop``."""
    image, mask = _prepare(image, mask, size)
    height, width = image.shape[-2:]
    side = size * math.ceil(max(height, width) / size)
    window = Window(-((side - height) // 2), -((side - width) // 2), side, side)
    return _fit(image, mask, size, "pad", [window] * image.shape[0])


FIT_MODES = {"crop": fit_crop, "resize": fit_resize, "pad": fit_pad}


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
        patch = _resize(result[b:b + 1].to(image), (w.height, w.width))[0]
        y0, y1, x0, x1 = max(w.top, 0), min(w.top + w.height, height), max(w.left, 0), min(w.left + w.width, width)
        pasted[b, :, y0:y1, x0:x1] = patch[:, y0 - w.top:y1 - w.top, x0 - w.left:x1 - w.left]
    return torch.where(mask > 0, pasted, image)
