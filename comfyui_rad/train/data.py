"""Training images: a held-out split. Folders are scanned and crops cut by ``image_folders.scan_images`` /
``image_folders.load_crop`` (which rad-eval uses too); which image and crop each training sample gets is decided by
``stream.SampleStream``. Images reach the trainer as float32 [B,3,S,S] in [-1,1] on the 8-bit grid (k / 127.5 - 1),
which the discretised decoder likelihood of the VLB assumes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..image_folders import DataError

__all__ = ["split_holdout"]

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


