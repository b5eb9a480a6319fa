"""Training images: a folder scanned recursively, a held-out split, and a deterministic stream of augmented crops.

Every random choice (epoch order, crop scale and position, flip) is drawn in the main thread from one CPU
``torch.Generator``, whose state the trainer checkpoints; worker threads only decode and resize. Images reach the
trainer as float32 [B,3,S,S] in [-1,1] on the 8-bit grid (k / 127.5 - 1), which the discretised decoder likelihood of
the VLB assumes.
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

__all__ = ["IMAGE_SUFFIXES", "DataError", "scan_images", "split_holdout", "load_crop", "ImageStream"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError)


class DataError(ValueError):
    """Training data that cannot be used; the message names the folder and what to do."""


def _header(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header; raises for files PIL cannot identify."""
    with Image.open(path) as picture:
        width, height = picture.size
    if width < 1 or height < 1:
        raise ValueError(f"empty image {width}x{height}")
    return width, height


def scan_images(root: str | os.PathLike, size: int = 0, workers: int = 0) -> list[Path]:
    """Image files (png/jpg/jpeg/webp) under ``root``, recursively, sorted by relative path; files whose header PIL
    cannot read are skipped with one warning that counts them. Raises ``DataError`` when none is readable."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--data {root} is not a folder: point it at a folder of images ({', '.join(IMAGE_SUFFIXES)})")
    found = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=lambda p: p.relative_to(root).as_posix())

    def probe(path: Path):
        try:
            return _header(path)
        except _READ_ERRORS as err:
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
                        + ": point --data at a folder of training images")
    small = sum(1 for h in headers if isinstance(h, tuple) and min(h) < size)
    if small:
        log.warning("%d image(s) in %s are smaller than %d px on their short side: they will be upscaled",
                    small, root, size)
    return readable


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
        picture = ImageOps.exif_transpose(picture).convert("RGB")
    width, height = picture.size
    side = frac * min(width, height)
    left, top = fx * (width - side), fy * (height - side)
    out = picture.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)


class ImageStream:
    """Endless batches of augmented crops, float32 [B,3,S,S] in [-1,1]; deterministic given ``seed`` and resumable.

    Per epoch a permutation of the images; per sample four uniform draws: crop scale in ``scale_range`` (a fraction of
    the short side, see ``load_crop``; ignored with ``resize``), x and y position, flip (if ``flip``). Files that fail
    to decode are skipped for the rest of the run (warning) and replaced by the next draw.
    """

    def __init__(self, paths: list[Path], size: int, *, seed: int, resize: bool = False,
                 scale_range: tuple[float, float] = (0.5, 1.0), flip: bool = True, workers: int = 0):
        lo, hi = scale_range
        if not 0 < lo <= hi <= 1:
            raise DataError(f"--scale-range must satisfy 0 < low <= high <= 1, got {lo} {hi}")
        self.paths, self.size, self.resize, self.scale_range, self.flip = list(paths), size, resize, (lo, hi), flip
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(self.paths), generator=self.generator)
        self.pos, self.epoch, self.bad = 0, 0, set()
        self._pool = ThreadPoolExecutor(workers) if workers > 0 else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _draw(self) -> tuple[int, tuple[float, float, float, bool]]:
        """The next (image index, crop) of the stream; four uniform draws per sample whatever the options."""
        while True:
            if self.pos >= len(self.order):
                self.order = torch.randperm(len(self.paths), generator=self.generator)
                self.pos, self.epoch = 0, self.epoch + 1
            index = int(self.order[self.pos])
            self.pos += 1
            u = torch.rand(4, generator=self.generator, dtype=torch.float64).tolist()
            if index in self.bad:
                continue
            lo, hi = self.scale_range
            scale, fx, fy = (1.0, 0.5, 0.5) if self.resize else (lo + (hi - lo) * u[0], u[1], u[2])
            return index, (scale, fx, fy, self.flip and u[3] < 0.5)

    def _load(self, job) -> torch.Tensor | Exception:
        index, crop = job
        try:
            return load_crop(self.paths[index], self.size, crop)
        except _READ_ERRORS as err:
            return err

    def next_batch(self, batch: int) -> torch.Tensor:
        jobs = [self._draw() for _ in range(batch)]
        results = list(self._pool.map(self._load, jobs)) if self._pool else [self._load(j) for j in jobs]
        for k, result in enumerate(results):
            while isinstance(result, Exception):
                index = jobs[k][0]
                self.bad.add(index)
                log.warning("skipping unreadable image %s (%s); %d skipped so far", self.paths[index],
                            str(result).splitlines()[0][:120], len(self.bad))
                if len(self.bad) == len(self.paths):
                    raise DataError("none of the training images can be decoded: check the --data folder")
                jobs[k] = self._draw()
                result = self._load(jobs[k])
            results[k] = result
        return torch.stack(results).float() / 127.5 - 1

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order.clone(), "pos": self.pos,
                "epoch": self.epoch, "bad": sorted(str(self.paths[i]) for i in self.bad), "count": len(self.paths)}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        if state["count"] != len(self.paths):
            log.warning("the data folder now has %d training images, the checkpoint %d: the data order restarts "
                        "(the run is no longer an exact continuation)", len(self.paths), state["count"])
            self.order, self.pos = torch.randperm(len(self.paths), generator=self.generator), 0
        else:
            self.order, self.pos = state["order"].clone(), int(state["pos"])
        self.epoch = int(state["epoch"])
        index = {str(p): i for i, p in enumerate(self.paths)}
        self.bad = {index[p] for p in state["bad"] if p in index}
