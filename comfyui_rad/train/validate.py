"""Validation scores during training: a fixed set of images, fixed masks and fixed seeds, sampled with the EMA
weights by a fast sampler (DDIM, eta 1) through ``pipeline.inpaint``, measured as rad-eval measures them (the
masks of ``masks.generated_mask``: box / extreme / wide as LaMa and the paper draw them, and Perlin; batch k from
image i uses noise seed ``seed + i``; hole PSNR and SSIM from ``metrics``).

Everything random is seeded from the run's seed, and the noise comes from CPU generators, so two runs (or a run on
one and on two processes) that reach the same weights get the same scores. The score that ranks steps is the mean
hole PSNR over the mask kinds (``score``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import masks, metrics
from ..image_folders import load_crop
from ..pipeline import inpaint

__all__ = ["VAL_MASKS", "VAL_SAMPLER", "VAL_ETA", "Validation", "score"]

log = logging.getLogger(__name__)

VAL_MASKS = ("box", "extreme", "wide", "perlin")
VAL_SAMPLER, VAL_ETA = "ddim", 1.0


@contextlib.contextmanager
def _quiet(*names: str):
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def score(scores: dict[str, dict[str, float | None]]) -> float:
    """The mean hole PSNR over the mask kinds (dB; higher is better): what picks the best step."""
    values = [s["hole_psnr"] for s in scores.values() if s.get("hole_psnr") is not None]
    return sum(values) / len(values) if values else -math.inf


@dataclass
class Validation:
    """``images`` [N,3,S,S] in [0,1], scored under ``kinds`` of masks with ``steps`` DDIM steps (eta 1), noise seeds
    from ``seed``, ``batch`` images per network call."""

    images: torch.Tensor
    steps: int
    seed: int
    batch: int = 16
    kinds: tuple[str, ...] = VAL_MASKS

    @classmethod
    def from_files(cls, paths: list[Path], size: int, **kw) -> Validation:
        """The centre square of each image resized to ``size`` (as rad-eval takes them)."""
        return cls(torch.stack([load_crop(p, size) for p in paths]).float() / 255, **kw)

    @property
    def evaluations(self) -> int:
        """Network evaluations of one image each: images x mask kinds x steps."""
        return self.images.shape[0] * len(self.kinds) * self.steps

    @property
    def calls(self) -> int:
        """Batched network calls of one validation."""
        return len(self.kinds) * math.ceil(self.images.shape[0] / self.batch) * self.steps

    def time_call(self, model: torch.nn.Module, autocast) -> float:
        """Seconds of one batched network call (the second of two: the first pays for allocations)."""
        device = next(model.parameters()).device
        n = min(self.batch, self.images.shape[0])
        x = torch.zeros(n, 3, *self.images.shape[2:], device=device)
        tau = torch.full((n, 1, *self.images.shape[2:]), 500.0, device=device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), autocast():
                for _ in range(2):
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    tick = time.perf_counter()
                    model(x, tau if model.rad_info.embedding == "spatial" else tau.flatten(1)[:, 0])
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    seconds = time.perf_counter() - tick
        finally:
            model.train(was_training)
        return seconds

    def run(self, model: torch.nn.Module) -> dict[str, dict[str, float | None]]:
        """Mask kind -> mean hole_psnr, ssim, ssim_hole over the images (``model`` as it is: the caller swaps in the
        EMA weights)."""
        scores = {}
        with _quiet("comfyui_rad.pipeline"):  # its per-batch lines do not belong in a training log
            for kind in self.kinds:
                size = self.images.shape[-1]
                mask = masks.generated_mask(kind, self.images.shape[0], size, size, self.seed)
                results = torch.cat([
                    inpaint(model, self.images[i:i + self.batch], mask[i:i + self.batch], steps=self.steps,
                            sampler=VAL_SAMPLER, eta=VAL_ETA, seed=self.seed + i, fit="resize")[0]
                    for i in range(0, self.images.shape[0], self.batch)])
                scores[kind] = {
                    "hole_psnr": _finite_mean(metrics.hole_psnr(results, self.images, mask)),
                    "ssim": _finite_mean(metrics.ssim(results, self.images)),
                    "ssim_hole": _finite_mean(metrics.ssim(results, self.images, mask)),
                }
        return scores


def _finite_mean(values: torch.Tensor) -> float | None:
    """The mean over the images where the measure is finite (a perfect hole's PSNR is infinite)."""
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else None
