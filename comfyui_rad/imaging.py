"""Image and mask I/O and value ranges (fitting images to the model's resolution: ``comfyui_rad.plan``).

Images are float32 [B,3,H,W] in [0,1] (``to_model_range`` gives the model's [-1,1]). Masks are float32 [B,H,W] in
[0,1] with 1 = inpaint, 0 = keep; file conventions (white = inpaint, or transparent = inpaint for images with alpha)
are converted once, in ``load_mask``. Folders of images (training and evaluation data) are ``image_folders``'.
Shared by the CLIs and the ComfyUI nodes; no ComfyUI import.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
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
