"""Training images: a held-out split, and a look for masks among them (``mask_like``). Folders are scanned and crops cut by ``image_folders.scan_images`` /
``image_folders.load_crop`` (which rad-eval uses too); which image and crop each training sample gets is decided by
``stream.SampleStream``. Images reach the trainer as float32 [B,3,S,S] in [-1,1] on the 8-bit grid (k / 127.5 - 1),
which the discretised decoder likelihood of the VLB assumes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..image_folders import DataError

__all__ = ["split_holdout", "mask_like", "find_masks"]

log = logging.getLogger(__name__)


def split_holdout(paths: list[Path], count: int, seed: int, root: Path | None = None) -> tuple[list[Path], list[Path]]:
    """(train, holdout): ``count`` images chosen by ``seed`` from the sorted ``paths``, never trained on."""
    if count < 0:
        raise DataError(f"--holdout must be >= 0, got {count}")
    if len(paths) < count + 1:
        where = f" in {root}" if root else ""
        raise DataError(f"{len(paths)} readable image(s){where}, but --holdout {count} needs at least {count + 1} "
                        "(the held-out images plus one to train on): add images or lower --holdout")
    chosen = set(torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))[:count].tolist())
    holdout = [p for i, p in enumerate(paths) if i in chosen]
    if holdout:
        log.info("held out for previews (never trained on): %s",
                 ", ".join(str(p.relative_to(root)) if root else p.name for p in holdout))
    return [p for i, p in enumerate(paths) if i not in chosen], holdout




def mask_like(picture: Image.Image) -> str | None:
    """Why a picture looks like an inpainting mask rather than a photo, or None: "alpha only" (flat colour, varying
    transparency) or "two grey levels" (grey, with at least 98 % of its pixels near black or white: JPEG noise
    allowed). Read on a nearest-neighbour reduction to at most 128 px, so that no level is invented."""
    width, height = picture.size
    scale = max(1.0, max(width, height) / 128)
    small = picture.resize((max(1, round(width / scale)), max(1, round(height / scale))), Image.Resampling.NEAREST)
    if "A" in small.getbands() or "transparency" in small.info:
        rgba = np.asarray(small.convert("RGBA"), dtype=np.int16)
        if np.ptp(rgba[..., 3]) > 0 and all(np.ptp(rgba[..., c]) <= 8 for c in range(3)):
            return "alpha only"
    rgb = np.asarray(small.convert("RGB"), dtype=np.int16)
    grey = np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).max() <= 8
    level = rgb.mean(axis=-1)
    extreme = ((level <= 16) | (level >= 239)).mean()
    if grey and extreme >= 0.98 and (level <= 16).any() and (level >= 239).any():
        return "two grey levels"
    return None


def find_masks(paths: list[Path], limit: int = 256) -> tuple[list[tuple[Path, str]], int]:
    """(pictures among ``paths`` that look like masks, with why; how many were looked at): at most ``limit``,
    spread evenly over the list, so that a large folder costs a bounded time."""
    step = max(1, len(paths) / limit)
    chosen = [paths[int(i * step)] for i in range(min(limit, len(paths)))]
    found = []
    for path in chosen:
        try:
            with Image.open(path) as picture:
                why = mask_like(picture)
        except (OSError, UnidentifiedImageError, ValueError):
            continue  # unreadable files are the stream's to report
        if why:
            found.append((path, why))
    return found, len(chosen)
