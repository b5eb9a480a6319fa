"""Element-wise samplers for RAD (paper eq. (5), §4.2; RAD_NOTES §3).

Every sampler has one shape, ``sample_x(model, image, schedule, steps, generator, callback)``: ``model`` a
``RADDenoiser`` (or a bare ADM, wrapped in one), ``image`` [B,3,H,W] in [-1, 1], ``schedule`` a ``SpatialSchedule``
whose mask is 1 where to inpaint; ``DEFAULT_STEPS`` holds each sampler's default steps. Only Phase 1 is sampled. The
schedule alone keeps the known region: a pixel that has received no noise has mean x_t and no noise, so it comes
out bit-identical to the input. Pixels under a full (m = 1) mask are never read: the start state is drawn without
them, so the sampler cannot see what it must invent.

Noise is drawn on the CPU from ``generator``, so a seed gives the same result on any device. ``callback`` gets a
dict per step: ``step`` (0-based), ``total``, ``t``, ``x`` (x_t after the step) and ``pred_x0``.

RAD with resampling (beyond the paper): ``resample`` r > 0 and ``jump`` j make the RAD samplers walk RePaint's
jump schedule (``rad_times``) with RAD's own per-pixel levels: at every j-th step the hole pixels are sent back up j
steps of their own schedule, x_{t+j} ~ q(x_{t+j} | x_t) element-wise, and denoised again, r times. A pixel whose
level does not change (the known region) gets no noise. ``rad_calls`` counts the network calls (r = 0: ``steps``).

``sample_repaint`` is the baseline users compare against (RePaint, RAD_NOTES §6): one timestep per image, the known
region re-noised at every step, about 24x the network calls of RAD's DDPM at the defaults. ``sample_replace`` is the
plain "replace the known region" baseline: RePaint without its jumps, as many network calls as RAD.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from . import settings
from .checks import check_image
from .schedule import EMBEDDINGS, NoiseCurves, SpatialSchedule, rad_info

__all__ = ["DEFAULT_STEPS", "DEFAULT_JUMP", "FINITE_CHECK_EVERY", "NonFiniteOutput", "RADDenoiser", "sample_ddpm",
           "sample_ddim", "sample_repaint", "sample_replace", "repaint_times", "repaint_calls", "check_resample",
           "rad_times", "rad_calls", "SAMPLERS", "BASELINE_SAMPLERS"]

log = logging.getLogger(__name__)

Callback = Callable[[dict], None]

DEFAULT_STEPS, DEFAULT_JUMP = settings.DEFAULT_STEPS, settings.DEFAULT_JUMP
"""Reverse steps per sampler when none are given, and RAD resampling's jump length: the one table of user settings,
``settings`` (torch-free, so the CLIs state them in --help before they import torch)."""


FINITE_CHECK_EVERY = 10
"""Network calls between two reads of the denoiser's "outputs finite" flag (one device sync each)."""


class NonFiniteOutput(ValueError):
    """The network gave NaN or infinite outputs while sampling; the message names the model."""


class RADDenoiser:
    """The network as the samplers drive it: noise levels abar per pixel [B or 1, 1, H, W] in, (eps, v or None) out
    (float32; v is the learned-range variance output, when the model has one).

    Built once by the caller, as k-diffusion's model wrappers are (``pipeline.inpaint`` builds one per call; a
    sampler given a bare model builds its own). The model's RAD facts (``schedule.rad_info``) say how its network takes
    timesteps: ``embedding`` "spatial" gives it the per-pixel map ``NoiseCurves.timestep``; "scalar" (the paper's
    Cfg. 2 ablation, ``rad-train --embedding scalar``) one timestep per image, ``NoiseCurves.scalar_timestep`` of the
    image's mean noise level; "auto" (default) follows ``rad_info``. The tau convention is always the model's.
    ``curves``: the noise curves the levels come from (default the model's).
    """

    def __init__(self, model: torch.nn.Module, curves: NoiseCurves | None = None, embedding: str = "auto"):
        if embedding not in ("auto", *EMBEDDINGS):
            raise ValueError(f"embedding must be auto, spatial or scalar, got {embedding!r}")
        info = rad_info(model)
        self.model = model
        self.curves = curves or info.curves
        self.convention = info.tau_convention
        self.embedding = info.embedding if embedding == "auto" else embedding
        param = next(model.parameters(), torch.empty(0))  # a network without parameters: float32 on the CPU
        self.device, self.dtype = param.device, param.dtype
        self.name = " + ".join(n for n in (info.base, info.adapter) if n) or type(model).__name__
        self.reset()

    def reset(self) -> None:
        """Start a new sampling run: no call made, every output so far finite."""
        self.calls, self._finite = 0, torch.ones((), dtype=torch.bool, device=self.device)

    def check_finite(self) -> None:
        """Raise ``NonFiniteOutput`` naming the model if any output since ``reset`` held NaN or inf (one device
        sync; the network calls it every ``FINITE_CHECK_EVERY`` calls and the samplers at the end)."""
        if not bool(self._finite):
            raise NonFiniteOutput(
                f"the model {self.name} gave NaN or infinite outputs (found after {self.calls} network call(s)): "
                "its weights are damaged (NaN/inf) or the adapter merge exploded; check the file, or load the "
                "adapter at a lower strength")

    def timesteps(self, abar: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The network's timesteps for images x [B,C,H,W] at levels ``abar`` (broadcast to x): [B,1,H,W] (spatial)
        or [B] (scalar)."""
        if self.embedding == "scalar":
            return self.curves.scalar_timestep(abar, self.convention).expand(x.shape[0])
        return self.curves.timestep(abar, self.convention).expand(x.shape[0], 1, *x.shape[-2:])

    def __call__(self, x: torch.Tensor, abar: torch.Tensor,
                 y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.model(x.to(self.dtype), self.timesteps(abar, x), y=y).float()
        self._finite &= torch.isfinite(out).all()  # stays on the device: read by check_finite
        self.calls += 1
        if self.calls % FINITE_CHECK_EVERY == 0:
            self.check_finite()
        c = x.shape[1]
        return out[:, :c], (out[:, c:2 * c] if out.shape[1] == 2 * c else None)


def _denoiser(model, curves: NoiseCurves) -> RADDenoiser:
    """``model`` itself when the caller built a ``RADDenoiser``, else one over ``curves`` (the schedule's)."""
    return model if isinstance(model, RADDenoiser) else RADDenoiser(model, curves)


def _prepare(model, image: torch.Tensor, schedule: SpatialSchedule, steps: int, generator):
    """Checks inputs; returns (denoiser, schedule on the model's device, the first x_t, the step pairs)."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image has shape {tuple(image.shape)}, expected [B, 3, H, W] in [-1, 1]")
    check_image(image, "image", -1.0, 1.0)
    b, _, h, w = image.shape
    mb, _, mh, mw = schedule.mask.shape
    if (mh, mw) != (h, w):
        raise ValueError(f"mask is {mh}x{mw} but image is {h}x{w}: resize the mask to the image")
    if mb not in (1, b):
        raise ValueError(f"mask batch {mb} does not match image batch {b}: give one mask or one per image")
    denoiser = _denoiser(model, schedule.curves)
    denoiser.reset()
    schedule = schedule.to(denoiser.device)
    pairs = schedule.steps(steps)
    image = image.to(denoiser.device, torch.float32)
    hole = schedule.mask >= 1
    known = torch.where(hole, torch.zeros_like(image), image)  # never read what must be invented
    abar = schedule.abar(pairs[0][0])
    noise = _randn(generator, image.shape, denoiser.device)
    # q(x_t | x0) where x0 is known (a soft mask keeps part of it); pure noise in the hole, as DDPM starts
    x = torch.where(abar >= 1, known, (abar.sqrt() * known + (1 - abar).sqrt() * noise).float())
    return denoiser, schedule, torch.where(hole, noise, x), pairs


def _randn(generator: torch.Generator, shape, device) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


def _predict_x0(x: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), clipped to [-1, 1] (DDPM eq. (15))."""
    return ((x - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)


def _loop(model, image, schedule, steps, generator, callback, update, y=None, resample: int = 0,
          jump: int = DEFAULT_JUMP) -> torch.Tensor:
    """The RAD reverse walk: ``rad_times(steps, resample, jump)`` over the respaced steps, one network call and one
    ``update`` per step down, element-wise re-noising per jump up. Without resampling it is the plain walk
    (t_0 -> t_1 -> ... -> clean), with the same noise draws in the same order."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    denoiser, schedule, x, pairs = _prepare(model, image, schedule, steps, generator)
    times = rad_times(steps, resample, jump)
    ts = [t for t, _ in reversed(pairs)]  # the respaced steps, ascending: position p holds level abar(ts[p])

    def level(p: int) -> int:
        return ts[p] if p >= 0 else -1

    total, call = _downs(times), 0
    for cur, nxt in zip(times, times[1:]):
        abar_t, abar_next = schedule.abar(level(cur)), schedule.abar(level(nxt))
        if nxt > cur:  # jump back up: x_{t+j} ~ q(x_{t+j} | x_t), element-wise; unchanged levels get no noise
            x = _renoise(x, abar_next / abar_t, _randn(generator, x.shape, x.device))
            continue
        eps, v = denoiser(x, abar_t, y)
        noisy = abar_t < 1  # pixels that have received noise; the others pass through untouched
        x0 = _predict_x0(x, eps, abar_t)
        z = _randn(generator, x.shape, x.device) if nxt >= 0 else None
        x_new = update(x, x0, eps, v, abar_t, abar_next, z)
        x = torch.where(noisy, x_new.float(), x)
        if callback is not None:
            callback({"step": call, "total": total, "t": level(cur), "x": x,
                      "pred_x0": torch.where(noisy, x0.float(), x)})
        call += 1
    denoiser.check_finite()
    return x


def _renoise(x: torch.Tensor, alpha: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_{t+j} = sqrt(alpha) x_t + sqrt(1 - alpha) noise per pixel, alpha = abar_{t+j} / abar_t [B or 1,1,H,W]
    (float64); where alpha is 1 (a level that does not change: the known region) x is returned bit for bit."""
    out = (alpha.sqrt() * x + (1 - alpha).clamp_min(0).sqrt() * noise).float()
    return torch.where(alpha < 1, out, x)


def _ddpm_update(x, x0, eps, v, abar_t, abar_prev, z):
    """Per-pixel DDPM posterior step (eq. (5)) with guided-diffusion's learned-range variance."""
    alpha = abar_t / abar_prev
    beta = 1 - alpha
    # 1. posterior mean of q(x_prev | x_t, x0)
    mean = (abar_prev.sqrt() * beta / (1 - abar_t)) * x0 + (alpha.sqrt() * (1 - abar_prev) / (1 - abar_t)) * x
    if z is None:
        return mean
    # 2. variance: interpolate log beta and log posterior variance by f = (v + 1) / 2, or fixed (beta) without v
    tiny = torch.finfo(torch.float64).tiny
    post_var = beta * (1 - abar_prev) / (1 - abar_t)
    if v is None:
        log_var = torch.log(beta.clamp_min(tiny))
    else:
        f = (v.double() + 1) / 2
        log_var = f * torch.log(beta.clamp_min(tiny)) + (1 - f) * torch.log(post_var.clamp_min(tiny))
    return torch.where(beta > 0, mean + torch.exp(0.5 * log_var) * z, mean)


def _ddim_update(eta: float):
    def update(x, x0, eps, v, abar_t, abar_prev, z):
        """Per-pixel DDIM step (Song et al. 2021, eq. (12)), eps re-derived from the clipped x0."""
        eps = (x - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()
        sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
        out = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma**2).clamp_min(0).sqrt() * eps
        return out if z is None else out + sigma * z
    return update


@torch.no_grad()
def sample_ddpm(model, image: torch.Tensor, schedule: SpatialSchedule, steps: int = DEFAULT_STEPS["ddpm"],
                generator: torch.Generator | None = None, callback: Callback | None = None,
                y: torch.Tensor | None = None, resample: int = 0, jump: int = DEFAULT_JUMP) -> torch.Tensor:
    """RAD inpainting by the element-wise DDPM reverse process (paper eq. (5), §4.2) -> [B,3,H,W] in [-1, 1].

    ``resample`` r > 0: every ``jump`` steps the hole goes back up ``jump`` steps of its own schedule and is denoised
    again, r times (``rad_times``; ``rad_calls`` network calls). 0 (default): the paper's sampler."""
    return _loop(model, image, schedule, steps, generator, callback, _ddpm_update, y, resample, jump)


@torch.no_grad()
def sample_ddim(model, image: torch.Tensor, schedule: SpatialSchedule, steps: int = DEFAULT_STEPS["ddim"],
                generator: torch.Generator | None = None, callback: Callback | None = None,
                y: torch.Tensor | None = None, eta: float = 0.0, resample: int = 0,
                jump: int = DEFAULT_JUMP) -> torch.Tensor:
    """RAD inpainting by element-wise DDIM (paper §3.4; eta = 0 deterministic, 1 DDPM-like) -> [B,3,H,W].
    ``resample``, ``jump``: as ``sample_ddpm`` (the jumps draw noise even at eta 0)."""
    eta = settings.check("eta", eta)
    return _loop(model, image, schedule, steps, generator, callback, _ddim_update(eta), y, resample, jump)


def check_resample(resample: int, jump: int, steps: int,
                   names: tuple[str, str, str] = ("resample", "jump", "steps")) -> None:
    """Raise ValueError unless ``resample`` (>= 0; 0 = off) and ``jump`` (>= 1, below ``steps`` when resampling) are
    valid RAD resampling settings. ``names``: how the caller's interface calls the three (CLI flags, node inputs)."""
    settings.check("resample", resample, names[0])  # settings.RANGES: 0 (no resampling) to 100
    settings.check("jump", jump, names[1])
    if resample and jump >= steps:
        raise ValueError(f"{names[1]} {jump} must be below {names[2]} {steps} to jump back: lower {names[1]}, raise "
                         f"{names[2]}, or set {names[0]} to 0 (no resampling)")


def rad_times(steps: int, resample: int = 0, jump: int = DEFAULT_JUMP) -> list[int]:
    """The respaced step positions a RAD sampler's state visits, from ``steps - 1`` (the first, noisiest step) to
    -1 (clean): straight down without resampling; with ``resample`` r > 0, RePaint's jump schedule
    (``repaint_times(steps, jump, r + 1)``): at every multiple of ``jump`` below ``steps - jump`` the walk goes back
    up ``jump`` positions, r times, before it goes on down."""
    check_resample(resample, jump, steps)
    return repaint_times(steps, jump, resample + 1) if resample else list(range(steps - 1, -2, -1))


def rad_calls(steps: int, resample: int = 0, jump: int = DEFAULT_JUMP) -> int:
    """Network calls of one RAD DDPM/DDIM run (steps down in ``rad_times``): ``steps`` without resampling; 190 for
    100 steps, r = 1, j = 10 (RePaint 100/10/2's count)."""
    return _downs(rad_times(steps, resample, jump))


def _downs(times: list[int]) -> int:
    return sum(nxt < cur for cur, nxt in zip(times, times[1:]))


def repaint_times(steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """The respaced step indices RePaint's state visits, from ``steps - 1`` (pure noise) to -1 (clean), as a list.

    Walking down, each multiple j of ``jump_length`` below ``steps - jump_length`` sends the walk back up to
    j + ``jump_length`` (re-noising), ``jump_n_sample - 1`` times for that j, before it goes on down (RePaint §4.2).
    Each step down is one network call: 2,410 for (250, 10, 10) (RAD_NOTES §6).
    """
    for name, value in (("steps", steps), ("jump_length", jump_length), ("jump_n_sample", jump_n_sample)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if jump_n_sample > 1 and jump_length >= steps:
        raise ValueError(f"jump_length {jump_length} must be below steps {steps} to jump back: lower jump_length, "
                         "or set jump_n_sample to 1 (no jumps)")
    left = {j: jump_n_sample - 1 for j in range(0, steps - jump_length, jump_length)}
    times = [steps - 1]
    while times[-1] >= 0:
        t = times[-1]
        if left.get(t, 0) > 0:
            left[t] -= 1
            times.append(t + jump_length)
        else:
            times.append(t - 1)
    return times


def repaint_calls(steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> int:
    """Network calls (steps down in ``repaint_times``) of one RePaint run: 2,410 for (250, 10, 10)."""
    return _downs(repaint_times(steps, jump_length, jump_n_sample))


@torch.no_grad()
def sample_repaint(model, image: torch.Tensor, schedule: SpatialSchedule, steps: int = DEFAULT_STEPS["repaint"],
                   generator: torch.Generator | None = None, callback: Callback | None = None,
                   y: torch.Tensor | None = None, jump_length: int = 10, jump_n_sample: int = 10) -> torch.Tensor:
    """RePaint (Lugmayr et al. 2022, Alg. 1 with the jump schedule) on any ADM -> [B,3,H,W] in [-1, 1].

    One timestep per image: ``steps`` respaced steps of Phase 1's DDPM curve (abar at the chosen steps, as the
    other samplers), guided-diffusion's learned-range variance. Before every network call the known region
    (mask 0) is replaced by the input re-noised to that step, q(x_t | x0); a jump back re-noises the whole image,
    x_{t+j} ~ q(x_{t+j} | x_t). Finally the known region is copied back, bit-identical to the input.
    The mask must be binary, 1 = inpaint (RePaint's own mask files use 1 = keep: invert those). Pixels under the
    mask are never read. With an all-ones mask no known-region noise is drawn, so jump_n_sample = 1 is plain DDPM.
    ``callback`` gets a dict per network call: ``step`` over all calls, ``total`` calls, DDPM ``t``, ``x``, ``pred_x0``.
    """
    if not schedule.is_binary:
        raise ValueError("RePaint needs a binary mask (0 = keep, 1 = inpaint), got values between 0 and 1: "
                         "threshold it (Spatial Noise Schedule mask_mode binary, or masks.prepare)")
    times = repaint_times(steps, jump_length, jump_n_sample)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    denoiser, schedule, x, pairs = _prepare(model, image, schedule, steps, generator)
    hole = (schedule.mask >= 1).expand_as(x)
    known = torch.where(hole, 0.0, image.to(x.device, torch.float32))  # never read what must be invented
    ts = [t for t, _ in reversed(pairs)]  # the respaced DDPM steps, ascending
    abar1 = schedule.curves.abar1.to(x.device)
    one = torch.ones(1, 1, 1, 1, dtype=torch.float64, device=x.device)

    def abar(i: int) -> torch.Tensor:
        return abar1[ts[i]].reshape(1, 1, 1, 1) if i >= 0 else one

    replace = not bool(hole.all())
    total, call = repaint_calls(steps, jump_length, jump_n_sample), 0
    for cur, nxt in zip(times, times[1:]):
        abar_t, abar_next = abar(cur), abar(nxt)
        if nxt > cur:  # 1. jump back: x_{t+j} ~ q(x_{t+j} | x_t) = N(sqrt(a) x_t, (1 - a) I), a = abar_{t+j} / abar_t
            alpha = abar_next / abar_t
            x = (alpha.sqrt() * x + (1 - alpha).sqrt() * _randn(generator, x.shape, x.device)).float()
            continue
        if replace:  # 2. known region at this step's level, q(x_t | x0) (RePaint eq. (8))
            noisy_known = abar_t.sqrt() * known + (1 - abar_t).sqrt() * _randn(generator, x.shape, x.device)
            x = torch.where(hole, x, noisy_known.float())
        # 3. the unknown region by one DDPM step (RePaint eq. (7)), on the whole image as the network sees it
        eps, v = denoiser(x, abar_t, y)
        x0 = _predict_x0(x, eps, abar_t)
        z = _randn(generator, x.shape, x.device) if nxt >= 0 else None
        x = _ddpm_update(x, x0, eps, v, abar_t, abar_next, z).float()
        if callback is not None:
            callback({"step": call, "total": total, "t": ts[cur], "x": x,
                      "pred_x0": torch.where(hole, x0.float(), known)})
        call += 1
    denoiser.check_finite()
    return torch.where(hole, x, known)  # 4. the known region is the input, bit for bit


@torch.no_grad()
def sample_replace(model, image: torch.Tensor, schedule: SpatialSchedule, steps: int = DEFAULT_STEPS["replace"],
                   generator: torch.Generator | None = None, callback: Callback | None = None,
                   y: torch.Tensor | None = None) -> torch.Tensor:
    """The "replace" baseline on any ADM: RePaint's conditioning (Lugmayr et al. 2022, eq. (8)) without resampling.

    Ordinary DDPM on the whole image with one timestep per image (``steps`` respaced steps, learned-range variance);
    after each step the known region (mask 0) is replaced by the input noised to the new level, q(x_t | x0), and at
    the end by the input itself. That is ``sample_repaint`` without jumps (jump_n_sample = 1), which is how it is
    computed: same noise draws, same callback. Binary masks only, 1 = inpaint; pixels under the mask are never read.
    """
    return sample_repaint(model, image, schedule, steps, generator, callback, y, jump_length=1, jump_n_sample=1)


SAMPLERS = {"ddpm": sample_ddpm, "ddim": sample_ddim, "repaint": sample_repaint, "replace": sample_replace}
BASELINE_SAMPLERS = settings.BASELINE_SAMPLERS
"""Samplers that work on any ADM (one timestep per image); the others are RAD's and need a RAD-trained model."""
