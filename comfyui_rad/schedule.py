"""RAD's two-phase per-pixel noise schedule (paper §3.1-3.2, §3.4; RAD_NOTES §1).

Phase 1 (steps 0 .. T1-1) puts noise into the hole, Phase 2 (T1 .. T1+T2-1) into the rest. A pixel with mask value
m in [0, 1] (1 = inpaint) follows

    Phase 1:  abar = (1 - nu*m) ** e1[t]
    Phase 2:  abar = (1 - nu*m) * ((1 - nu) / (1 - nu*m)) ** e2[t - T1]

with nu = 1 - abar1[T1-1] and each phase's exponent normalised by its own last value (e = log abar / log abar[-1]),
so every pixel ends at 1 - nu. A binary hole pixel follows plain DDPM in Phase 1; a kept pixel stays clean. Fractional
m interpolates in log space: the mask value is how much of the pixel is regenerated.

Tables are float64 1-D curves; a schedule is curves plus a mask, evaluated per step (memory O(T + H*W)).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

__all__ = ["NoiseCurves", "SpatialSchedule", "step_pairs"]

TAU_OFFSETS = {"gd": -1.0, "authors": 0.0}
"""Model timestep = (index into [clean, after 1 step, ..., after T1 steps]) + offset, per tau convention."""


def _linear_abar(steps: int, start: float, end: float) -> torch.Tensor:
    betas = torch.linspace(start, end, steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


@dataclass(frozen=True)
class NoiseCurves:
    """The 1-D curves behind a two-phase schedule: linear betas per phase, as DDPM (float64)."""

    T1: int = 1000
    T2: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta2_start: float | None = None
    beta2_end: float | None = None

    def __post_init__(self):
        for name in ("T1", "T2"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for lo, hi in ((self.beta_start, self.beta_end), (self.phase2_betas)):
            if not 0.0 < lo <= hi < 1.0:
                raise ValueError(f"betas must satisfy 0 < start <= end < 1, got start={lo}, end={hi}")
        abar1 = _linear_abar(self.T1, self.beta_start, self.beta_end)
        abar2 = _linear_abar(self.T2, *self.phase2_betas)
        object.__setattr__(self, "abar1", abar1)
        object.__setattr__(self, "e1", torch.log(abar1) / math.log(abar1[-1]))
        object.__setattr__(self, "e2", torch.log(abar2) / math.log(abar2[-1]))
        object.__setattr__(self, "nu", float(1.0 - abar1[-1]))
        # bbar after k steps of Phase 1, k = 0 .. T1: the table the inverse map interpolates (paper §3.4)
        object.__setattr__(self, "bbar_table", torch.cat([torch.zeros(1, dtype=torch.float64), 1.0 - abar1]))

    @property
    def phase2_betas(self) -> tuple[float, float]:
        start = self.beta_start if self.beta2_start is None else self.beta2_start
        return start, self.beta_end if self.beta2_end is None else self.beta2_end

    @property
    def total_steps(self) -> int:
        return self.T1 + self.T2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> NoiseCurves:
        if not d:
            return cls()
        known = {k: d[k] for k in ("T1", "T2", "beta_start", "beta_end", "beta2_start", "beta2_end") if k in d}
        return cls(**known)

    def log_abar(self, mask: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """log abar (float64) for mask values ``mask`` (1 = inpaint) after step ``t`` (0-based; -1 = clean).

        t: an int, or a [B] tensor of per-image steps broadcast against mask [B, 1, H, W]. Shapes broadcast.
        """
        t = torch.as_tensor(t, dtype=torch.long, device=mask.device)
        if t.ndim:
            t = t.reshape(-1, *([1] * (mask.ndim - 1)))
        if int(t.min()) < -1 or int(t.max()) >= self.total_steps:
            raise ValueError(f"step {t.flatten().tolist()} outside [-1, {self.total_steps - 1}]")
        lm = torch.log1p(-self.nu * mask.double())  # log(1 - nu*m): where each pixel stands after Phase 1
        e1 = self.e1.to(mask.device)[t.clamp(0, self.T1 - 1)]
        e2 = self.e2.to(mask.device)[(t - self.T1).clamp(0, self.T2 - 1)]
        phase1 = lm * e1
        phase2 = lm + e2 * (math.log1p(-self.nu) - lm)
        out = torch.where(t < self.T1, phase1, phase2)
        return torch.where(t < 0, torch.zeros_like(out), out)

    def abar(self, mask: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Accumulated signal fraction abar_t per pixel, float64, same shape as ``mask`` (broadcast with t)."""
        return torch.exp(self.log_abar(mask, t))

    def timestep(self, abar: torch.Tensor, convention: str = "gd") -> torch.Tensor:
        """Inverse map abar -> fractional model timestep on Phase 1's DDPM curve (paper §3.4), float32.

        Linear interpolation of bbar = 1 - abar in [0, bbar after 1 step, ..., after T1 steps] (searchsorted).
        Convention "gd": guided-diffusion's timestep, a hole pixel at step t gets t and a clean pixel -1;
        "authors": the authors' code, one more (t + 1 and 0).
        """
        if convention not in TAU_OFFSETS:
            raise ValueError(f"unknown tau convention {convention!r}: use one of {sorted(TAU_OFFSETS)}")
        table = self.bbar_table.to(abar.device)
        bbar = (1.0 - abar.double()).clamp(0.0, float(table[-1]))
        hi = torch.searchsorted(table, bbar.reshape(-1)).reshape(bbar.shape).clamp(1, self.T1)
        lo_val, hi_val = table[hi - 1], table[hi]
        k = (hi - 1) + (bbar - lo_val) / (hi_val - lo_val)
        return (k + TAU_OFFSETS[convention]).float()


def step_pairs(steps: int, T1: int = 1000) -> list[tuple[int, int]]:
    """Reverse-process (t, prev) pairs over Phase 1, one list for both: 100 of 1000 -> (990, 980), ..., (0, -1)."""
    if not isinstance(steps, int) or not 1 <= steps <= T1:
        raise ValueError(f"steps must be an integer in [1, {T1}], got {steps!r}")
    ts = [(i * T1) // steps for i in range(steps)][::-1]
    return list(zip(ts, ts[1:] + [-1]))


class SpatialSchedule:
    """A per-pixel schedule: the curves plus a mask [B or 1, 1, H, W] in [0, 1] (1 = inpaint).

    What the samplers take (ComfyUI's ``RAD_SCHEDULE``). Nothing T x H x W is ever stored.
    """

    def __init__(self, mask: torch.Tensor, curves: NoiseCurves | None = None):
        mask = torch.as_tensor(mask)
        if mask.ndim == 2:
            mask = mask[None, None]
        elif mask.ndim == 3:
            mask = mask[:, None]
        if mask.ndim != 4 or mask.shape[1] != 1:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected [H, W], [B, H, W] or [B, 1, H, W]")
        mask = mask.float()
        if not torch.isfinite(mask).all() or float(mask.min()) < 0.0 or float(mask.max()) > 1.0:
            raise ValueError(
                f"mask values must lie in [0, 1] (1 = inpaint), got range [{float(mask.min()):g}, "
                f"{float(mask.max()):g}]: normalise or clamp the mask"
            )
        self.mask = mask
        self.curves = curves or NoiseCurves()

    @property
    def is_binary(self) -> bool:
        return bool(((self.mask == 0) | (self.mask == 1)).all())

    def to(self, device) -> SpatialSchedule:
        return SpatialSchedule(self.mask.to(device), self.curves)

    def abar(self, t: int) -> torch.Tensor:
        """abar per pixel after step t, float64 [B or 1, 1, H, W]."""
        return self.curves.abar(self.mask, t)

    def steps(self, steps: int) -> list[tuple[int, int]]:
        return step_pairs(steps, self.curves.T1)
