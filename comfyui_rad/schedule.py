"""RAD's two-phase per-pixel noise schedule (paper §3.1-3.2, §3.4; RAD_NOTES §1).

Phase 1 (steps 0 .. T1-1) puts noise into the hole, Phase 2 (T1 .. T1+T2-1) into the rest. A pixel with mask value
m in [0, 1] (1 = inpaint) follows

    Phase 1:  abar = (1 - nu*m) ** e1[t]
    Phase 2:  abar = (1 - nu*m) * ((1 - nu) / (1 - nu*m)) ** e2[t - T1]

with nu = 1 - abar1[T1-1] and each phase's exponent normalised by its own last value (e = log abar / log abar[-1]),
so every pixel ends at 1 - nu. A binary hole pixel follows plain DDPM in Phase 1; a kept pixel stays clean. Fractional
m interpolates in log space: the mask value is how much of the pixel is regenerated.

Tables are float64 1-D curves; a schedule is curves plus a mask, evaluated per step (memory O(T + H*W)). The maps
between noise levels and the network's timesteps (paper §3.4) are ``NoiseCurves`` methods: ``timestep`` (abar -> tau,
per pixel), ``scalar_timestep`` (one tau per image: the paper's Cfg. 2 embedding) and their inverse
``abar_from_timestep``.

``RADInfo`` is what a model's weights expect of them: its curves, tau convention (``TAU_OFFSETS``, the one table) and
timestep embedding, and whether it is RAD-trained. ``load_adm`` puts it on the model as ``model.rad_info``; read it
with ``rad_info(model)`` (a plain guided-diffusion ADM gets the defaults).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .masks import as_bhw, is_binary
from . import settings
from .settings import RECOMMENDED_START_KEYS, SPACING_NAMES, STARTS

__all__ = ["TAU_OFFSETS", "TAU_CONVENTIONS", "EMBEDDINGS", "NoiseCurves", "RADInfo", "rad_info", "SpatialSchedule",
           "respaced_steps", "schedule_preview", "SPACINGS", "step_times", "recommended_start",
           "recommendation_metadata"]

TAU_OFFSETS = {"gd": -1.0, "authors": 0.0}
"""Model timestep = (index into [clean, after 1 step, ..., after T1 steps]) + offset, per tau convention."""
TAU_CONVENTIONS = tuple(TAU_OFFSETS)
"""guided-diffusion's ("gd": a clean pixel is -1) and the RAD authors' code's ("authors": one more)."""
EMBEDDINGS = ("spatial", "scalar")
"""How a network takes its timesteps: a per-pixel map (RAD), or one per image (the paper's Cfg. 2 ablation)."""


def _linear_abar(steps: int, start: float, end: float) -> torch.Tensor:
    betas = torch.linspace(start, end, steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


MAX_T = 100_000
"""The most diffusion steps a phase may have (DDPM has 1,000; the tables hold T float64 values each)."""


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
        for name in ("T1", "T2"):  # a file's numbers: each T sizes tables of T float64 values
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_T:
                raise ValueError(f"{name} must be a positive integer, at most {MAX_T:,}, got {value!r}")
        for name in ("beta_start", "beta_end", "beta2_start", "beta2_end"):
            value = getattr(self, name)
            if value is None and name.startswith("beta2"):
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number in (0, 1), got {value!r}")
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

    def bbar_after(self, k: torch.Tensor) -> torch.Tensor:
        """bbar = 1 - abar after ``k`` (fractional, clamped to [0, T1]) DDPM steps of Phase 1, float64, linear
        between whole steps in ``bbar_table``: the table lookup behind ``abar_from_timestep`` and the trainer's
        level maps."""
        k = k.double().clamp(0, self.T1)
        table = self.bbar_table.to(k.device)
        lo = k.floor().long().clamp(max=self.T1 - 1)
        return torch.lerp(table[lo], table[lo + 1], k - lo)

    def timestep(self, abar: torch.Tensor, convention: str = "gd") -> torch.Tensor:
        """Inverse map abar -> fractional model timestep on Phase 1's DDPM curve (paper §3.4), float32.

        Linear interpolation of bbar = 1 - abar in [0, bbar after 1 step, ..., after T1 steps] (searchsorted).
        Convention "gd": guided-diffusion's timestep, a hole pixel at step t gets t and a clean pixel -1;
        "authors": the authors' code, one more (t + 1 and 0).
        """
        _check_convention(convention)
        table = self.bbar_table.to(abar.device)
        bbar = (1.0 - abar.double()).clamp(0.0, float(table[-1]))
        hi = torch.searchsorted(table, bbar.reshape(-1)).reshape(bbar.shape).clamp(1, self.T1)
        lo_val, hi_val = table[hi - 1], table[hi]
        k = (hi - 1) + (bbar - lo_val) / (hi_val - lo_val)
        return (k + TAU_OFFSETS[convention]).float()

    def scalar_timestep(self, abar: torch.Tensor, convention: str = "gd") -> torch.Tensor:
        """One timestep per image for the paper's Cfg. 2 ablation (no spatial embedding): ``timestep`` of the image's
        mean noise level, abar [B,1,H,W] -> [B] float32."""
        return self.timestep(abar.double().mean(dim=(1, 2, 3)), convention)

    def abar_from_timestep(self, tau: torch.Tensor, convention: str = "gd") -> torch.Tensor:
        """The inverse of ``timestep``: model timesteps -> abar (float64), linear in the bbar table."""
        _check_convention(convention)
        return 1 - self.bbar_after(tau.double() - TAU_OFFSETS[convention])

    def to_metadata(self) -> dict[str, Any]:
        """The fields as a file records them (JSON-able; Phase 2's betas only when they differ from Phase 1's)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def _check_convention(convention: str) -> str:
    if convention not in TAU_OFFSETS:
        raise ValueError(f"unknown tau convention {convention!r}: use one of {sorted(TAU_OFFSETS)}")
    return convention


@dataclass(frozen=True)
class RADInfo:
    """A model's RAD facts: what its weights expect of the noise, and where they came from.

    ``curves``: the noise curves it was trained with; ``tau_convention``: "gd" | "authors" (``TAU_OFFSETS``);
    ``embedding``: "spatial" (per-pixel timesteps) | "scalar" (one per image, Cfg. 2); ``is_rad``: RAD-trained (a
    plain guided-diffusion ADM, or weights trained as a plain DDPM, are not). ``base``, ``adapter``, ``strength``:
    the files ``load_adm`` read (strength 1 for a whole RAD model, 0 for a plain one). ``start``,
    ``start_strength``: the start the file recommends (``settings.STARTS``, ``settings.RECOMMENDED_START_KEYS``),
    which a start "auto" uses; None where it records none (noise, then).
    """

    curves: NoiseCurves = field(default_factory=NoiseCurves)
    tau_convention: str = "gd"
    embedding: str = "spatial"
    is_rad: bool = False
    base: str | None = None
    adapter: str | None = None
    strength: float = 0.0
    start: str | None = None
    start_strength: float | None = None

    def __post_init__(self):
        _check_convention(self.tau_convention)
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {', '.join(EMBEDDINGS)}, got {self.embedding!r}")
        key, strength_key = (f"metadata {k}" for k in RECOMMENDED_START_KEYS)
        if self.start is not None and self.start not in STARTS:
            raise ValueError(f"{key} must be one of {', '.join(STARTS)}, got {str(self.start)[:40]!r}")
        if self.start_strength is not None:
            if self.start is None:
                raise ValueError(f"{strength_key} is recorded without {key}: record both, or neither")
            settings.check("start_strength", self.start_strength, strength_key)

    def to_metadata(self) -> dict[str, str]:
        """The facts a weights file records, as safetensors metadata (str -> str): ``schedule`` (JSON),
        ``tau_convention`` and ``train_embedding``. Whether weights are RAD follows from the file's kind and its
        training record (``train_mask_sampling``), not from these."""
        return {"schedule": json.dumps(self.curves.to_metadata(), sort_keys=True),
                "tau_convention": self.tau_convention, "train_embedding": self.embedding}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], *, is_rad: bool = True, **provenance: Any) -> RADInfo:
        """The facts of a file's metadata (raw strings, or with ``schedule`` already parsed), as every comfyui-rad
        version wrote them: missing keys mean DDPM's curves, "gd" and "spatial". ``is_rad``: whether the file's kind
        is RAD (a comfyui-rad model or adapter); weights rad-train trained with ``--mask-sampling full`` are not.
        ``provenance``: ``base``, ``adapter``, ``strength``."""
        schedule = metadata.get("schedule")
        try:
            schedule = json.loads(schedule) if isinstance(schedule, str) else schedule
            if schedule is not None and not isinstance(schedule, Mapping):
                raise ValueError("it must be a JSON object")
            curves = NoiseCurves.from_dict(schedule)
        except (ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
            raise ValueError(f"metadata schedule {str(metadata.get('schedule'))[:80]!r}: {err}") from None
        return cls(curves=curves, tau_convention=metadata.get("tau_convention", "gd"),
                   embedding=metadata.get("train_embedding", "spatial"),
                   is_rad=is_rad and metadata.get("train_mask_sampling") != "full",
                   **recommended_start(metadata), **provenance)


def recommended_start(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The recommended start a file's metadata records (``settings.RECOMMENDED_START_KEYS``), as ``RADInfo``'s
    ``start`` and ``start_strength`` (None where it records none); the strength's text read as a number (checked,
    with the start, by ``RADInfo``: ValueError naming the metadata key)."""
    key, strength_key = RECOMMENDED_START_KEYS
    start, strength = metadata.get(key), metadata.get(strength_key)
    if isinstance(strength, str):
        try:
            strength = float(strength)
        except ValueError:
            raise ValueError(f"metadata {strength_key} must be a number in [0, 1], got {strength[:40]!r}") from None
    return {"start": start, "start_strength": strength}


def recommendation_metadata(start: str, start_strength: float | None = None) -> dict[str, str]:
    """The metadata that records ``start`` (``settings.STARTS``) and its strength as the one a model is best used
    with (``settings.RECOMMENDED_START_KEYS``; a strength only with a fill): checked as ``RADInfo`` reads them
    (ValueError naming the key)."""
    key, strength_key = RECOMMENDED_START_KEYS
    RADInfo(start=start, start_strength=start_strength)
    return {key: start, **({strength_key: repr(float(start_strength))} if start_strength is not None else {})}


def rad_info(model: torch.nn.Module) -> RADInfo:
    """The RAD facts ``model`` carries (``model.rad_info``, set by ``load_adm`` and the trainer), or those of a plain
    guided-diffusion ADM: DDPM's curves, guided-diffusion's timesteps, spatial embedding, not RAD."""
    info = getattr(model, "rad_info", None)
    return info if isinstance(info, RADInfo) else RADInfo()


def respaced_steps(steps: int, T1: int = 1000) -> list[int]:
    """The ``steps`` reverse steps spread over Phase 1's ``T1``, descending: 100 of 1000 -> [990, 980, ..., 0]."""
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= T1:
        raise ValueError(f"steps must be an integer in [1, {T1}], got {steps!r}")
    return [(i * T1) // steps for i in range(steps)][::-1]


SPACINGS = SPACING_NAMES
"""How a sampler's steps are spread over Phase 1 (``step_times``): uniform in t (``respaced_steps``, the paper's),
uniform in the hole's half log-SNR lambda = log(alpha / sigma), or Karras et al.'s rho = 7 spacing of the hole's
VE noise level sigma / alpha. Whole Phase 1 steps in every case."""

KARRAS_RHO = 7.0


def step_times(steps: int, curves: NoiseCurves | None = None, spacing: str = "uniform") -> list[int]:
    """The ``steps`` Phase 1 steps a sampler visits, descending, the last 0 (one step from clean), by ``spacing``
    (``SPACINGS``). "uniform" is ``respaced_steps``; "lambda" and "karras" run from the noisiest step T1 - 1 down,
    placed on the hole's curve (a binary hole pixel follows plain DDPM in Phase 1; softer pixels take the same steps
    at their own levels), rounded to whole steps and kept distinct."""
    curves = curves or NoiseCurves()
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}: use one of {', '.join(SPACINGS)}")
    if spacing == "uniform":
        return respaced_steps(steps, curves.T1)
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= curves.T1:
        raise ValueError(f"steps must be an integer in [1, {curves.T1}], got {steps!r}")
    abar = curves.abar1
    level = 0.5 * (torch.log(abar) - torch.log1p(-abar)) if spacing == "lambda" else ((1 - abar) / abar).sqrt()
    if spacing == "karras":
        level = level ** (1 / KARRAS_RHO)  # spaced uniformly, as Karras et al. (2022) eq. (5)
    targets = torch.linspace(float(level[-1]), float(level[0]), steps, dtype=torch.float64)
    nearest = (level[None, :] - targets[:, None]).abs().argmin(dim=1).tolist()  # level is monotone in t
    times = [0] * steps
    for i in range(steps - 2, -1, -1):  # from the clean end up: distinct, and at most T1 - 1
        times[i] = min(max(nearest[i], times[i + 1] + 1), curves.T1 - 1 - i)
    return times


class SpatialSchedule:
    """A per-pixel schedule: the curves plus a mask [B or 1, 1, H, W] in [0, 1] (1 = inpaint).

    What the samplers take (ComfyUI's ``RAD_SCHEDULE``). Nothing T x H x W is ever stored.
    """

    def __init__(self, mask: torch.Tensor, curves: NoiseCurves | None = None):
        mask = as_bhw(mask)[:, None]
        if mask.numel() == 0:
            raise ValueError(f"mask is empty (shape {tuple(mask.shape)}): give at least one pixel (1 = inpaint)")
        lo, hi = (float(v) for v in torch.aminmax(mask))
        if not torch.isfinite(mask).all() or lo < 0.0 or hi > 1.0:
            hint = "divide it by 255" if hi > 1.5 and lo >= 0 else "normalise or clamp the mask"
            raise ValueError(f"mask values must lie in [0, 1] (1 = inpaint), got range [{lo:g}, {hi:g}]: {hint}")
        self.mask = mask
        self.curves = curves or NoiseCurves()

    @property
    def is_binary(self) -> bool:
        return is_binary(self.mask)

    def to(self, device) -> SpatialSchedule:
        return SpatialSchedule(self.mask.to(device), self.curves)

    def abar(self, t: int) -> torch.Tensor:
        """abar per pixel after step t, float64 [B or 1, 1, H, W]."""
        return self.curves.abar(self.mask, t)


def schedule_preview(mask: torch.Tensor, steps: int, curves: NoiseCurves | None = None, frames: int = 5,
                     size: int = 256) -> torch.Tensor:
    """Pictures of the noise a sampler puts in each pixel, float32 [B, h, frames*w + gaps] in [0,1].

    Per mask [B,H,W] (1 = inpaint), shrunk to at most ``size`` pixels on the long side: ``frames`` snapshots of the
    noise standard deviation sqrt(1 - abar) along the ``steps`` reverse steps (first step on the left, the last on
    the right), side by side with 4-pixel gray gaps. White = pure noise, black = the input pixel, untouched.
    """
    mask = as_bhw(mask)
    height, width = mask.shape[-2:]
    scale = min(1.0, size / max(height, width))
    shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    small = F.adaptive_max_pool2d(mask[:, None], shape) if scale < 1 else mask[:, None]
    schedule = SpatialSchedule(small, curves)
    ts = respaced_steps(steps, schedule.curves.T1)
    picks = sorted({round(i * (len(ts) - 1) / max(1, frames - 1)) for i in range(frames)})
    gap = torch.full((mask.shape[0], shape[0], 4), 0.5)
    frames_ = []
    for k in picks:
        frames_ += [(1 - schedule.abar(ts[k])).sqrt().float()[:, 0], gap]
    return torch.cat(frames_[:-1], dim=2)
