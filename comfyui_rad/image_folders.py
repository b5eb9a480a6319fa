"""Folders of images as data: rad-train's training images and rad-eval's held-out images.

``scan_images`` lists the image files under a folder (recursive, sorted, unreadable headers skipped with one warning);
``load_crop`` cuts a square crop of one, uint8 [3,S,S] (antialiased; JPEGs decoded at a reduced scale when they
shrink a lot). ``DataError`` is a folder or file that cannot be used, its message naming the caller's option
(``--data``, ``--images``). Single image and mask files are ``imaging``'s; the trainer's held-out split and sample
stream are ``train/``'s.
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError
from .imaging import rgb8

__all__ = ["IMAGE_SUFFIXES", "IMAGE_READ_ERRORS", "DataError", "scan_images", "load_crop"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
IMAGE_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


class DataError(UserError):
    """A folder or file of images that cannot be used (training or evaluation data); the message names the folder
    and what to do."""


def _header(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header; raises for files PIL cannot identify."""
    with Image.open(path) as picture:
        width, height = picture.size
    if width < 1 or height < 1:
        raise ValueError(f"empty image {width}x{height}")
    return width, height


def scan_images(root: str | os.PathLike, size: int = 0, workers: int = 0, flag: str = "--data") -> list[Path]:
    """Image files (png/jpg/jpeg/webp) under ``root``, recursively, sorted by relative path; files whose header PIL
    cannot read are skipped with one warning that counts them. Raises ``DataError`` naming ``flag`` (the caller's
    option: rad-train's ``--data``, rad-eval's ``--images``) when none is readable."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{flag} {root} is not a folder: point it at a folder of images ({', '.join(IMAGE_SUFFIXES)})")
    found = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=lambda p: p.relative_to(root).as_posix())

    def probe(path: Path):
        try:
            return _header(path)
        except IMAGE_READ_ERRORS as err:
            return err

    if workers > 0 and len(found) > 64:
        with ThreadPoolExecutor(workers) as pool:
            headers = list(pool.map(probe, found))
    else:
        headers = [probe(p) for p in found]
    readable = [p for p, h in zip(found, headers) if isinstance(h, tuple)]
    bad = [(p, h) for p, h in zip(found, headers) if not isinstance(h, tuple)]
    if bad:
        first, err = bad[0]
        log.warning("skipped %d unreadable file(s) of %d in %s (first: %s: %s)", len(bad), len(found), root,
                    first.relative_to(root), str(err).splitlines()[0][:120])
    if not readable:
        raise DataError(f"no readable images ({', '.join(IMAGE_SUFFIXES)}) in {root}"
                        + (f" ({len(bad)} unreadable file(s) skipped)" if bad else "")
                        + f": point {flag} at a folder of images")
    small = sum(1 for h in headers if isinstance(h, tuple) and min(h) < size)
    if small:
        log.warning("%d image(s) in %s are smaller than %d px on their short side: they will be upscaled",
                    small, root, size)
    return readable


def load_crop(path: Path, size: int, crop: tuple[float, float, float, bool] | None = None) -> torch.Tensor:
    """A square ``size`` x ``size`` RGB crop of an image file, uint8 [3,S,S].

    ``crop`` = (scale, fx, fy, flip): a square whose side is ``scale`` times the image's short side (raised so that it
    spans at least ``size`` source pixels: never upsampled unless the image itself is smaller), at relative position
    (fx, fy) in [0,1] of the free range, resized (antialiased bicubic) to ``size``, mirrored if ``flip``.
    None: the centred square of the full short side (``--resize``), no flip.
    """
    scale, fx, fy, flip = crop if crop is not None else (1.0, 0.5, 0.5, False)
    with Image.open(path) as picture:
        width, height = picture.size
        frac = min(1.0, max(scale, size / min(width, height)))  # crop side / short side
        factor = size / (frac * min(width, height))  # how much the crop shrinks
        if picture.format == "JPEG" and factor < 0.5:  # decode at a reduced scale: still >= the pixels needed
            picture.draft("RGB", (math.ceil(width * factor), math.ceil(height * factor)))
        picture = rgb8(ImageOps.exif_transpose(picture))
    width, height = picture.size
    side = frac * min(width, height)
    left, top = fx * (width - side), fy * (height - side)
    out = picture.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)
