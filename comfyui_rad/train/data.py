"""Training images: a held-out split and a deterministic stream of augmented crops (folders are scanned and crops
cut by ``imaging.scan_images`` / ``imaging.load_crop``, which rad-eval uses too).

Every random choice (epoch order, crop scale and position, flip) is drawn in the main thread from one CPU
``torch.Generator``, whose state the trainer checkpoints; worker threads only decode and resize. Images reach the
trainer as float32 [B,3,S,S] in [-1,1] on the 8-bit grid (k / 127.5 - 1), which the discretised decoder likelihood of
the VLB assumes.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ..imaging import IMAGE_READ_ERRORS, DataError, load_crop

__all__ = ["split_holdout", "ImageStream"]

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
        except IMAGE_READ_ERRORS as err:
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
