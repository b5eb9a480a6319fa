"""Element-wise samplers for RAD (paper eq. (5), §4.2; RAD_NOTES §3), and the baselines, in k-diffusion's shape.

A run is described by one frozen ``SamplerSpec`` (sampler name, steps, eta, resampling), built and checked once by
each front end: ``SamplerSpec.create("ddim", steps=25)`` fills the rest from the one table of defaults (the registry
below); ``spec.calls()`` is the number of network calls of one run, known before the first. ``sample(spec, model,
image, schedule, ...)`` runs it: the one entry, where a bare model is wrapped into a ``RADDenoiser`` (which owns the
noise curves) and the spec becomes the list of timesteps the state visits (``spec.timesteps``).

Each sampler is then one function in k-diffusion's shape, ``x_loop(denoiser, image, mask, timesteps, generator,
callback, y, **settings)``: ``image`` [B,3,H,W] in [-1, 1], ``mask`` [B or 1,1,H,W] in [0, 1] (1 = inpaint) on the
denoiser's device, ``timesteps`` a plain list of the Phase 1 steps visited, the first (noisiest) to -1 (clean),
going back up where the walk jumps. All of them walk the same loop (``_walk``): a step down is one network call and
one numbered update rule, a step up re-noises. Only Phase 1 is sampled. The schedule alone keeps the known region: a
pixel that has received no noise has mean x_t and no noise, so it comes out bit-identical to the input. Pixels under
a full (m = 1) mask are never read: the start state is drawn without them.

Noise is drawn on the CPU from ``generator`` through one ``Noise`` source (``noise_draws`` tensors per run, in a
fixed order), so a seed gives the same result on any device; ``StackedNoise`` lets independent runs share one batch
and still draw what each would have drawn alone (``tiles``' waves). ``callback`` gets a dict per network call:
``step`` (0-based), ``total``, ``t``, ``x`` (x_t after the step) and ``pred_x0``.

RAD with resampling (beyond the paper): ``resample`` r > 0 and ``jump`` j make the walk RePaint's jump schedule
with RAD's own per-pixel levels: at every j-th step the hole pixels are sent back up j steps of their own schedule,
x_{t+j} ~ q(x_{t+j} | x_t) element-wise, and denoised again, r times. A pixel whose level does not change (the known
region) gets no noise. RePaint's jump_length is ``jump`` and its jump_n_sample is ``resample + 1`` (the old names
are accepted where they were public: ``sample_repaint``, ``SamplerSpec.create``, ``repaint_times``).

``repaint`` is the baseline users compare against (RePaint, RAD_NOTES §6): one timestep per image, the known region
re-noised at every step, about 24x the network calls of RAD's DDPM at the defaults. ``replace`` is the plain
"replace the known region" baseline: RePaint without its jumps, as many network calls as RAD.

ComfyUI's samplers, per pixel (issue 22): ``euler_ancestral``, ``dpmpp_2m`` and ``dpmpp_2m_sde`` are k-diffusion's
update rules with every pixel on its own level: alpha = sqrt(abar), sigma = sqrt(1 - abar), lambda =
log(alpha / sigma) and the step h per pixel, the network's one eps (and clipped x0) shared. Degenerate pixels fall
back to first order (a pixel reaching abar = 1 lands on its x0; no 2M correction where the last step did not end at
the pixel's level: its first step, after a jump) and a pixel whose level does not fall stays bit for bit. Their
steps are spaced uniformly in the hole's lambda by default (``spacing``, ``schedule.step_times``).

A new sampler is one ``register(...)`` line at the end of this module (its loop, the settings it takes, its call
count when it is not one call per step down, whether it is a baseline on any ADM or RAD's) plus its row of defaults
in ``settings.SAMPLER_DEFAULTS`` (the one table, torch-free so the CLIs can state it in --help). ``SAMPLERS``
(name -> ``sample_x(model, image, schedule, steps, generator, callback, y, ...)``), ``DEFAULT_STEPS`` and
``BASELINE_SAMPLERS`` follow.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable

import torch

from .checks import check_image
from .schedule import EMBEDDINGS, SPACINGS, NoiseCurves, SpatialSchedule, rad_info, step_times
from .settings import DEFAULT_JUMP, DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULTS, SAMPLER_DEFAULTS
from .settings import check as check_setting

__all__ = ["DEFAULT_STEPS", "DEFAULT_JUMP", "DEFAULTS", "FINITE_CHECK_EVERY", "NonFiniteOutput", "RADDenoiser",
           "as_denoiser", "SamplerSpec", "Sampler", "register", "sample", "ddpm_loop", "ddim_loop", "repaint_loop",
           "sample_ddpm", "sample_ddim", "sample_repaint", "sample_replace", "jump_walk", "repaint_times",
           "repaint_calls", "check_resample", "rad_times", "rad_calls", "SAMPLERS", "BASELINE_SAMPLERS",
           "euler_ancestral_loop", "dpmpp_2m_loop", "dpmpp_2m_sde_loop", "Noise", "StackedNoise", "as_noise",
           "noise_draws", "skip_noise"]

log = logging.getLogger(__name__)

Callback = Callable[[dict], None]

# DEFAULT_STEPS, DEFAULT_JUMP, DEFAULTS and SAMPLER_DEFAULTS: the one table of sampler defaults lives in ``settings``
# (torch-free, so the CLIs state it in --help before they import torch); ``register`` reads a sampler's row there.

FINITE_CHECK_EVERY = 10
"""Network calls between two reads of the denoiser's "outputs finite" flag (one device sync each)."""


class NonFiniteOutput(ValueError):
    """The network gave NaN or infinite outputs while sampling; the message names the model."""


class RADDenoiser:
    """The network as the samplers drive it: noise levels abar per pixel [B or 1, 1, H, W] in, (eps, v or None) out
    (float32; v is the learned-range variance output, when the model has one).

    Built once by the caller, as k-diffusion's model wrappers are (``pipeline.inpaint`` builds one per call;
    ``sample`` wraps a bare model with ``as_denoiser``). It owns the noise curves the samplers use. The model's RAD facts (``schedule.rad_info``) say how its network takes
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


def as_denoiser(model, curves: NoiseCurves | None = None) -> RADDenoiser:
    """``model`` itself when the caller built a ``RADDenoiser``, else one around it over ``curves`` (default the
    model's): the one place a bare model is wrapped."""
    return model if isinstance(model, RADDenoiser) else RADDenoiser(model, curves)


# ---------------------------------------------------------------------------------------------- the jump walk


def jump_walk(steps: int, jump: int, resample: int) -> list[int]:
    """The respaced step positions a sampler's state visits, from ``steps - 1`` (the first, noisiest step) to -1
    (clean): straight down when ``resample`` is 0; else RePaint's jump schedule (Lugmayr et al. 2022, §4.2): walking
    down, each multiple j of ``jump`` below ``steps - jump`` sends the walk back up to j + ``jump``, ``resample``
    times for that j, before it goes on down. Unchecked: ``SamplerSpec`` checks the settings."""
    left = {j: resample for j in range(0, steps - jump, jump)} if resample else {}
    times = [steps - 1]
    while times[-1] >= 0:
        t = times[-1]
        if left.get(t, 0) > 0:
            left[t] -= 1
            times.append(t + jump)
        else:
            times.append(t - 1)
    return times


def _downs(times: list[int]) -> int:
    """Steps down (network calls) in a walk of positions or timesteps."""
    return sum(nxt < cur for cur, nxt in zip(times, times[1:]))


def check_resample(resample: int, jump: int, steps: int,
                   names: tuple[str, str, str] = ("resample", "jump", "steps")) -> None:
    """Raise ValueError unless ``resample`` (>= 0; 0 = off) and ``jump`` (>= 1, below ``steps`` when resampling) are
    valid resampling settings. ``names``: how the caller's interface calls the three (CLI flags, node inputs)."""
    check_setting("resample", resample, names[0])  # settings.RANGES: 0 (no resampling) to 100
    check_setting("jump", jump, names[1])
    if resample and jump >= steps:
        raise ValueError(f"{names[1]} {jump} must be below {names[2]} {steps} to jump back: lower {names[1]}, raise "
                         f"{names[2]}, or set {names[0]} to 0 (no resampling)")


def _check_repaint_names(steps: int, jump_length: int, jump_n_sample: int) -> None:
    """RePaint's own names for the jump settings (jump_length = jump, jump_n_sample = resample + 1), checked."""
    for name, value in (("steps", steps), ("jump_length", jump_length), ("jump_n_sample", jump_n_sample)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if jump_n_sample > 1 and jump_length >= steps:
        raise ValueError(f"jump_length {jump_length} must be below steps {steps} to jump back: lower jump_length, "
                         "or set jump_n_sample to 1 (no jumps)")


def repaint_times(steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """RePaint's walk in its own names: ``jump_walk(steps, jump_length, jump_n_sample - 1)``, checked. Each step
    down is one network call: 2,410 for (250, 10, 10) (RAD_NOTES §6)."""
    _check_repaint_names(steps, jump_length, jump_n_sample)
    return jump_walk(steps, jump_length, jump_n_sample - 1)


def repaint_calls(steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> int:
    """Network calls (steps down in ``repaint_times``) of one RePaint run: 2,410 for (250, 10, 10)."""
    return _downs(repaint_times(steps, jump_length, jump_n_sample))


def rad_times(steps: int, resample: int = 0, jump: int = DEFAULT_JUMP) -> list[int]:
    """RAD's walk in RAD's names: ``jump_walk(steps, jump, resample)``, checked (``check_resample``)."""
    check_resample(resample, jump, steps)
    return jump_walk(steps, jump, resample)


def rad_calls(steps: int, resample: int = 0, jump: int = DEFAULT_JUMP) -> int:
    """Network calls of one RAD DDPM/DDIM run (steps down in ``rad_times``): ``steps`` without resampling; 190 for
    100 steps, r = 1, j = 10 (RePaint 100/10/2's count)."""
    return _downs(rad_times(steps, resample, jump))


# ---------------------------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class Sampler:
    """One registry entry (``register``). ``loop``: the sampler in k-diffusion's shape, ``loop(denoiser, image,
    mask, timesteps, generator, callback, y, **settings)``; ``sample``: the same with the old public signature
    (``SAMPLERS``); ``defaults``: its ``SamplerSpec`` defaults (steps, eta, resample, jump); ``settings``: the spec
    fields the loop takes as keywords (DDIM: eta); ``resamples``: whether it may jump back; ``calls``: network
    calls of one run of a spec (default: one per step down of its walk); ``baseline``: it works on any ADM, one
    timestep per image and binary masks only (else it is RAD's and wants a RAD-trained model)."""

    name: str
    loop: Callable
    sample: Callable
    defaults: Mapping
    settings: tuple[str, ...] = ()
    resamples: bool = True
    calls: Callable | None = None
    baseline: bool = False


_REGISTRY: dict[str, Sampler] = {}
SAMPLERS: dict[str, Callable] = {}
"""The registry of sampler names: name -> ``sample_x(model, image, schedule, steps, generator, callback, y, ...)``."""
API_NAMES = {"sampler": "sampler", "steps": "steps", "eta": "eta", "resample": "resample", "jump": "jump",
             "spacing": "spacing"}
"""How the Python API names the spec's fields in its errors (``SamplerSpec.create(names=...)``: a CLI's flags)."""


def _entry(name: str, label: str = "sampler") -> Sampler:
    if name not in _REGISTRY:
        raise ValueError(f"unknown {label} {name!r}: use one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


_FIELDS = ("steps", "eta", "resample", "jump", "spacing")
"""The settings of a ``SamplerSpec`` beside the sampler's name, in order."""


@dataclass(frozen=True)
class SamplerSpec:
    """How one run samples: ``name`` (a ``SAMPLERS`` name), ``steps`` (respaced reverse steps), ``eta`` (DDIM's
    share of fresh noise, in [0, 1]; samplers without the setting ignore it), ``resample`` / ``jump`` (jump back
    ``jump`` steps, ``resample`` times at every ``jump``-th step; 0 = straight down; RePaint's jump_n_sample is
    ``resample + 1`` and its jump_length is ``jump``), ``spacing`` (how the steps are spread over the noise levels,
    ``schedule.SPACINGS``; RAD's samplers only). A field left None takes the sampler's default from the
    registry, so ``SamplerSpec("ddim") == SamplerSpec.create("ddim")``. Checked on construction: a ValueError
    names the API argument (``create(names=...)`` names a CLI's flags or a node's inputs instead)."""

    name: str = DEFAULT_SAMPLER
    steps: int | None = None
    eta: float | None = None
    resample: int | None = None
    jump: int | None = None
    spacing: str | None = None

    def __post_init__(self):
        entry = _entry(self.name)
        for key, value in entry.defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        eta = _check_settings(entry, {k: getattr(self, k) for k in _FIELDS}, API_NAMES)
        object.__setattr__(self, "eta", eta)

    @classmethod
    def create(cls, name: str = DEFAULT_SAMPLER, *, names: Mapping[str, str] | None = None, **overrides) -> SamplerSpec:
        """The spec of sampler ``name`` with ``overrides`` (None = the default) on the registry's defaults, checked
        in the caller's ``names`` (field -> how the caller's interface calls it: "--jump", a node input).
        RePaint's ``jump_length`` / ``jump_n_sample`` are accepted for ``jump`` / ``resample + 1``."""
        names = {**API_NAMES, **(names or {})}
        entry = _entry(name, names["sampler"])
        repaint_names = bool({"jump_length", "jump_n_sample"} & overrides.keys())  # given, even as None
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if repaint_names:
            overrides = _from_repaint_names(overrides, entry)
        unknown = overrides.keys() - set(_FIELDS)
        if unknown:
            raise TypeError(f"unknown sampler setting(s) {', '.join(sorted(unknown))}: use steps, eta, resample, "
                            "jump, spacing (RePaint: jump_length, jump_n_sample)")
        values = {**entry.defaults, **overrides}
        _check_settings(entry, values, names)  # in the caller's names first; the constructor checks again
        return cls(name, *(values[k] for k in _FIELDS))

    @property
    def sampler(self) -> Sampler:
        """The registry entry."""
        return _REGISTRY[self.name]

    @property
    def baseline(self) -> bool:
        """Whether this is a baseline (any ADM, one timestep per image, binary masks) rather than a RAD sampler."""
        return self.sampler.baseline

    def calls(self) -> int:
        """Network calls of one run over one window: 100 for DDPM-100, 190 with resample 1 / jump 10, 2,410 for
        RePaint 250/10/10. The one count every front end uses (progress bars, budgets, rad-eval's records)."""
        rule = self.sampler.calls
        return rule(self) if rule is not None else _downs(jump_walk(self.steps, self.jump, self.resample))

    def timesteps(self, T1: NoiseCurves | int = 1000) -> list[int]:
        """The Phase 1 steps of the curves ``T1`` (or of default curves with ``T1`` steps) the state visits, first
        to -1 (clean): the ``steps`` steps spread by ``spacing`` (``schedule.step_times``), going back up where the
        walk jumps. DDPM-100: [990, 980, ..., 0, -1]."""
        curves = T1 if isinstance(T1, NoiseCurves) else NoiseCurves(T1=T1)
        ascending = step_times(self.steps, curves, self.spacing)[::-1]
        return [ascending[p] if p >= 0 else -1 for p in jump_walk(self.steps, self.jump, self.resample)]

    def settings(self) -> dict:
        """The keywords the sampler's loop takes beyond the timesteps (DDIM: eta)."""
        return {key: getattr(self, key) for key in self.sampler.settings}

    def describe(self) -> str:
        """For logs: "ddim, 25 steps, eta 1", "ddpm, 100 steps, resampling 1x every 10 (190 network calls)"."""
        text = f"{self.name}, {self.steps} steps"
        text += "".join(f", {key} {getattr(self, key):g}" for key in self.sampler.settings)
        if self.spacing != "uniform":
            text += f", {self.spacing} spacing"
        if self.resample:
            text += f", resampling {self.resample}x every {self.jump} ({self.calls():,} network calls)"
        return text


def _from_repaint_names(overrides: dict, entry: Sampler) -> dict:
    """RePaint's jump_length / jump_n_sample -> jump / resample, checked in RePaint's names."""
    if {"jump", "resample"} & overrides.keys():
        raise TypeError("give jump and resample, or RePaint's jump_length and jump_n_sample, not both")
    overrides = dict(overrides)
    length = overrides.pop("jump_length", entry.defaults["jump"])
    n_sample = overrides.pop("jump_n_sample", entry.defaults["resample"] + 1)
    _check_repaint_names(overrides.get("steps", entry.defaults["steps"]), length, n_sample)
    return overrides | {"jump": length, "resample": n_sample - 1}


def _check_settings(entry: Sampler, values: Mapping, names: Mapping[str, str]) -> float:
    """ValueError naming the setting (in ``names``) unless ``values`` (steps, eta, resample, jump) suit ``entry``;
    returns eta as a float."""
    steps = values["steps"]
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:  # the model's T1 bounds it (timesteps)
        raise ValueError(f"{names['steps']} must be an integer >= 1, got {steps!r}")
    eta = check_setting("eta", values["eta"], names["eta"])
    check_resample(values["resample"], values["jump"], steps, (names["resample"], names["jump"], names["steps"]))
    if values["spacing"] not in SPACINGS:
        raise ValueError(f"{names['spacing']} must be one of {', '.join(SPACINGS)}, got {values['spacing']!r}")
    if values["spacing"] != "uniform" and entry.baseline:
        raise ValueError(f"{names['spacing']} {values['spacing']} works with RAD's samplers, not {entry.name}: leave "
                         "it at uniform")
    if values["resample"] and not entry.resamples:
        raise ValueError(f"sampler {entry.name} does not resample: set {names['resample']} to 0 (repaint is the "
                         "sampler with jumps)")
    return eta


# ---------------------------------------------------------------------------------------------- the loop


def _check_inputs(image: torch.Tensor, mask: torch.Tensor) -> None:
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image has shape {tuple(image.shape)}, expected [B, 3, H, W] in [-1, 1]")
    check_image(image, "image", -1.0, 1.0)
    b, _, h, w = image.shape
    mb, _, mh, mw = mask.shape
    if (mh, mw) != (h, w):
        raise ValueError(f"mask is {mh}x{mw} but image is {h}x{w}: resize the mask to the image")
    if mb not in (1, b):
        raise ValueError(f"mask batch {mb} does not match image batch {b}: give one mask or one per image")


class Noise:
    """Where a sampler run's Gaussian noise comes from: float32 draws on the CPU from one ``generator``, in the
    order the run asks for them (``noise_draws`` of them, each of the image's shape), moved to the run's device; so
    a seed gives the same picture on any device. Every sampler draws through one (``_walk``); ``sample`` wraps a
    plain ``torch.Generator`` in one (``as_noise``). ``StackedNoise`` serves independent runs sampled as one
    batch."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def __call__(self, shape, device, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Standard normal noise of ``shape`` [B, ...] on ``device``. ``rows`` (bool [B], optional): the images
        that use this draw (``StackedNoise`` skips a run none of whose images use it; one run always draws)."""
        return torch.randn(shape, generator=self.generator, dtype=torch.float32).to(device)


class StackedNoise(Noise):
    """The noise of independent runs stacked into one batch (``tiles``' waves): run i owns ``sizes[i]`` images
    (consecutive rows) and draws its rows of every draw from ``generators[i]``, exactly what it draws run alone
    from that generator. A draw none of a run's images use (``rows``) is not drawn for it (zeros there), as the run
    alone would not have drawn it."""

    def __init__(self, generators: list[torch.Generator], sizes: list[int]):
        if len(generators) != len(sizes):
            raise ValueError(f"{len(generators)} generators for {len(sizes)} runs: give one per run")
        self.generators, self.sizes = list(generators), [int(n) for n in sizes]

    def __call__(self, shape, device, rows: torch.Tensor | None = None) -> torch.Tensor:
        if shape[0] != sum(self.sizes):
            raise ValueError(f"a draw of {shape[0]} images from runs of {self.sizes} images: they must add up")
        parts, start = [], 0
        for generator, n in zip(self.generators, self.sizes):
            part = (n, *shape[1:])
            used = rows is None or bool(rows[start:start + n].any())
            parts.append(torch.randn(part, generator=generator, dtype=torch.float32) if used else torch.zeros(part))
            start += n
        return torch.cat(parts).to(device)


def as_noise(generator: torch.Generator | Noise) -> Noise:
    """``generator`` itself when it is a ``Noise``, else a ``Noise`` drawing from it."""
    return generator if isinstance(generator, Noise) else Noise(generator)


def noise_draws(spec: SamplerSpec, mask: torch.Tensor) -> int:
    """How many noise tensors (each of the image's shape) one run of ``spec`` draws over mask [B or 1,1,H,W]
    (1 = inpaint), as ``_walk`` draws them: the start, one per jump back up, one per step down but the last, and
    for the baselines one more per step down where some pixel is known. Lets a caller move a generator past a run
    without making it (``skip_noise``)."""
    walk = jump_walk(spec.steps, spec.jump, spec.resample)
    ups = sum(nxt > cur for cur, nxt in zip(walk, walk[1:]))
    downs = len(walk) - 1 - ups
    known = spec.baseline and not bool((mask >= 1).all())
    return 1 + ups + (downs - 1) + (downs if known else 0)


def skip_noise(generator: torch.Generator, draws: int, shape) -> None:
    """Move ``generator`` past ``draws`` draws of ``shape``, as a run that made them would leave it."""
    scratch = torch.empty(shape, dtype=torch.float32)
    for _ in range(draws):
        torch.randn(shape, generator=generator, dtype=torch.float32, out=scratch)


def _start(denoiser: RADDenoiser, image: torch.Tensor, mask: torch.Tensor, t0: int, noise: Noise):
    """(x at the first level t0, the known image, the hole): q(x_t0 | x0) where x0 is known (a soft mask keeps part
    of it), pure noise in the hole (mask >= 1), as DDPM starts. The known image is 0 in the hole: never read."""
    denoiser.reset()
    image = image.to(denoiser.device, torch.float32)
    hole = mask >= 1
    known = torch.where(hole, torch.zeros_like(image), image)
    abar = denoiser.curves.abar(mask, t0)
    z = noise(image.shape, denoiser.device)
    x = torch.where(abar >= 1, known, (abar.sqrt() * known + (1 - abar).sqrt() * z).float())
    return torch.where(hole, z, x), known, hole


def _predict_x0(x: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), clipped to [-1, 1] (DDPM eq. (15))."""
    return ((x - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)


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


def _image_levels(curves: NoiseCurves, device) -> Callable[[int], torch.Tensor]:
    """abar of Phase 1's DDPM curve after step t, one per image, [1,1,1,1] float64 (1 at t = -1): RePaint's."""
    abar1, one = curves.abar1.to(device), torch.ones(1, 1, 1, 1, dtype=torch.float64, device=device)
    return lambda t: abar1[t].reshape(1, 1, 1, 1) if t >= 0 else one


def _walk(denoiser: RADDenoiser, image: torch.Tensor, mask: torch.Tensor, timesteps: list[int], generator,
          callback: Callback | None, y, update, *, baseline: bool = False) -> torch.Tensor:
    """The reverse walk every sampler takes, over ``timesteps`` (first to -1): a step up re-noises, a step down is
    one network call and one ``update(x, x0, eps, v, abar_t, abar_next, z)``. RAD's levels are per pixel, from
    the mask; ``baseline`` (RePaint's conditioning) gives one level per image, replaces the known region before
    every call and copies it back at the end. Noise (``generator``: a ``torch.Generator`` or a ``Noise``) draws in
    a fixed order, ``noise_draws`` of them: start, then per step (jump | known region, z)."""
    noise = as_noise(generator)
    x, known, hole = _start(denoiser, image, mask, timesteps[0], noise)
    level = _image_levels(denoiser.curves, x.device) if baseline else (lambda t: denoiser.curves.abar(mask, t))
    replace = baseline and not bool(hole.all())
    known_rows = (~hole).expand(x.shape[0], *hole.shape[1:]).flatten(1).any(1).cpu() if replace else None
    total, call = _downs(timesteps), 0
    for t, t_next in zip(timesteps, timesteps[1:]):
        abar_t, abar_next = level(t), level(t_next)
        if t_next > t:  # 1. jump back up: x_{t+j} ~ q(x_{t+j} | x_t), element-wise; unchanged levels get no noise
            x = _renoise(x, abar_next / abar_t, noise(x.shape, x.device))
            continue
        if replace:  # 2. RePaint: the known region at this step's level, q(x_t | x0) (RePaint eq. (8))
            noisy_known = abar_t.sqrt() * known + (1 - abar_t).sqrt() * noise(x.shape, x.device, known_rows)
            x = torch.where(hole, x, noisy_known.float())
        # 3. one step down on the whole image as the network sees it (RePaint eq. (7): the unknown region)
        eps, v = denoiser(x, abar_t, y)
        noisy = abar_t < 1  # pixels that have received noise; the others pass through untouched
        x0 = _predict_x0(x, eps, abar_t)
        z = noise(x.shape, x.device) if t_next >= 0 else None
        x = torch.where(noisy, update(x, x0, eps, v, abar_t, abar_next, z).float(), x)
        if callback is not None:
            preview = torch.where(hole, x0.float(), known) if baseline else torch.where(noisy, x0.float(), x)
            callback({"step": call, "total": total, "t": t, "x": x, "pred_x0": preview})
        call += 1
    denoiser.check_finite()
    return torch.where(hole, x, known) if baseline else x  # 4. RePaint: the known region is the input, bit for bit


# ---------------------------------------------------------------------------------------------- the samplers


@torch.no_grad()
def ddpm_loop(denoiser: RADDenoiser, image: torch.Tensor, mask: torch.Tensor, timesteps: list[int], generator,
              callback: Callback | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
    """RAD inpainting by the element-wise DDPM reverse process (paper eq. (5), §4.2) -> [B,3,H,W] in [-1, 1]."""
    return _walk(denoiser, image, mask, timesteps, generator, callback, y, _ddpm_update)


@torch.no_grad()
def ddim_loop(denoiser: RADDenoiser, image: torch.Tensor, mask: torch.Tensor, timesteps: list[int], generator,
              callback: Callback | None = None, y: torch.Tensor | None = None, eta: float = 1.0) -> torch.Tensor:
    """RAD inpainting by element-wise DDIM (paper §3.4; eta 0 deterministic, 1 DDPM-like) -> [B,3,H,W]. Jumps draw
    noise even at eta 0."""
    return _walk(denoiser, image, mask, timesteps, generator, callback, y, _ddim_update(eta))


@torch.no_grad()
def repaint_loop(denoiser: RADDenoiser, image: torch.Tensor, mask: torch.Tensor, timesteps: list[int], generator,
                 callback: Callback | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
    """RePaint (Lugmayr et al. 2022, Alg. 1 with the jump schedule) on any ADM -> [B,3,H,W] in [-1, 1]: DDPM with one
    timestep per image (abar of Phase 1's curve at the visited steps, guided-diffusion's learned-range variance),
    the known region (mask 0) replaced by the input re-noised to each step's level before every call, a jump
    re-noising the whole image, and the known region copied back at the end, bit-identical to the input. Binary
    masks, 1 = inpaint; pixels under the mask are never read. Without jumps: the "replace" baseline."""
    return _walk(denoiser, image, mask, timesteps, generator, callback, y, _ddpm_update, baseline=True)


def _ve_sigma(abar: torch.Tensor) -> torch.Tensor:
    """k-diffusion's noise level per pixel, sigma = sqrt((1 - abar) / abar) (0 where clean), float64."""
    return ((1 - abar) / abar).clamp_min(0).sqrt()


def _half_log_snr(abar: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha / sigma) = (log abar - log(1 - abar)) / 2 per pixel (DPM-Solver's time), float64;
    +inf where the pixel is clean."""
    return 0.5 * (torch.log(abar) - torch.log1p(-abar))


def _euler_ancestral_update(eta: float):
    def update(x, x0, eps, v, abar_t, abar_next, z):
        """Per-pixel Euler ancestral step (k-diffusion's ``sample_euler_ancestral``) in VE terms x / alpha."""
        s, s_next = _ve_sigma(abar_t), _ve_sigma(abar_next)
        # 1. split the next level into the deterministic part s_down and fresh noise s_up (s_down^2 + s_up^2 = s_next^2)
        s_up = torch.minimum(s_next, eta * (s_next**2 * (s**2 - s_next**2) / s**2).clamp_min(0).sqrt())
        s_down = (s_next**2 - s_up**2).clamp_min(0).sqrt()
        # 2. Euler step of the probability-flow ODE dx/ds = (x - x0) / s from s to s_down, then noise up to s_next
        out = x0 + (s_down / s) * (x / abar_t.sqrt() - x0)
        if z is not None:
            out = out + s_up * z
        # 3. a pixel whose level does not fall stays where it is
        return torch.where(abar_next > abar_t, abar_next.sqrt() * out, x)
    return update


class _DPMSolver2M:
    """Per-pixel DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), and with ``eta`` > 0 its SDE variant (k-diffusion's
    ``sample_dpmpp_2m_sde``, midpoint); eta 0 is the ODE solver. One instance per run: it keeps the last step's x0.

    Every pixel has its own lambda and step h = lambda_next - lambda. The second-order correction uses the last step's
    x0 only where that step ended at this pixel's current level (so a resampling jump, or a pixel just starting,
    gives a first-order step); a pixel reaching abar = 1 lands on its x0 (first order, as k-diffusion's last step);
    a pixel whose level does not fall (h <= 0) stays where it is."""

    def __init__(self, eta: float):
        self.eta, self.last = eta, None

    def __call__(self, x, x0, eps, v, abar_t, abar_next, z):
        lam, lam_next = _half_log_snr(abar_t), _half_log_snr(abar_next)
        h = lam_next - lam
        d = self._corrected(x0.double(), abar_t, lam, h)
        self.last = (abar_t, abar_next, x0.double())
        # 1. the exponential integrator, data prediction, from lambda to lambda_next (k-diffusion's VE form times
        #    alpha_next): x' = (sigma'/sigma) e^{-eta h} x + alpha' (1 - e^{-(1+eta) h}) D
        #    + sigma' sqrt(1 - e^{-2 eta h}) z
        sigma, sigma_next = (1 - abar_t).sqrt(), (1 - abar_next).sqrt()
        out = ((sigma_next / sigma) * torch.exp(-self.eta * h) * x
               - abar_next.sqrt() * torch.expm1(-(1 + self.eta) * h) * d)
        if self.eta and z is not None:
            out = out + sigma_next * (-torch.expm1(-2 * self.eta * h)).sqrt() * z
        # 2. degenerate steps: clean next level -> x0 (first order); a level that does not fall -> unchanged
        out = torch.where(abar_next >= 1, x0, out)
        return torch.where(h > 0, out, x)

    def _corrected(self, x0, abar_t, lam, h):
        """D = x0 + (x0 - x0_last) / (2r), r = h_last / h, where the last step ended at this level; x0 elsewhere."""
        if self.last is None:
            return x0
        abar_from, abar_to, x0_last = self.last
        h_last = lam - _half_log_snr(abar_from)
        ok = (abar_to == abar_t) & torch.isfinite(h_last) & (h_last > 0) & torch.isfinite(h) & (h > 0)
        half_inv_r = torch.where(ok, h / (2 * h_last), torch.zeros_like(h))
        return torch.where(ok, x0 + half_inv_r * (x0 - x0_last), x0)


@torch.no_grad()
def euler_ancestral_loop(denoiser: RADDenoiser, image: torch.Tensor, mask: torch.Tensor, timesteps: list[int],
                         generator, callback: Callback | None = None, y: torch.Tensor | None = None,
                         eta: float = 1.0) -> torch.Tensor:
    """RAD inpainting by per-pixel Euler ancestral (k-diffusion's ``sample_euler_ancestral``; it is DDIM at the same
    eta, written in VE terms; eta 0: Euler) -> [B,3,H,W] in [-1, 1]."""
    return _walk(denoiser, image, mask, timesteps, generator, callback, y, _euler_ancestral_update(eta))


@torch.no_grad()
def dpmpp_2m_loop(denoiser: RADDenoiser, image: torch.Tensor, mask: torch.Tensor, timesteps: list[int], generator,
                  callback: Callback | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
    """RAD inpainting by per-pixel DPM-Solver++(2M) (Lu et al. 2022; deterministic but for the start and the
    resampling jumps; a jump restarts the history) -> [B,3,H,W] in [-1, 1]."""
    return _walk(denoiser, image, mask, timesteps, generator, callback, y, _DPMSolver2M(0.0))


@torch.no_grad()
def dpmpp_2m_sde_loop(denoiser: RADDenoiser, image: torch.Tensor, mask: torch.Tensor, timesteps: list[int],
                      generator, callback: Callback | None = None, y: torch.Tensor | None = None,
                      eta: float = 1.0) -> torch.Tensor:
    """RAD inpainting by per-pixel DPM-Solver++(2M) SDE (k-diffusion's ``sample_dpmpp_2m_sde``, midpoint; Gaussian
    noise per step from ``generator`` instead of a Brownian tree) -> [B,3,H,W]. eta 0 is ``dpmpp_2m_loop``; a
    first-order step at eta 1 is DDPM's posterior with the small variance."""
    return _walk(denoiser, image, mask, timesteps, generator, callback, y, _DPMSolver2M(eta))


def _check_binary(schedule: SpatialSchedule, name: str) -> None:
    if not schedule.is_binary:
        raise ValueError(f"{name} needs a binary mask (0 = keep, 1 = inpaint), got values between 0 and 1: "
                         "threshold it (Spatial Noise Schedule mask_mode binary, or masks.prepare)")


def sample(spec: SamplerSpec, model, image: torch.Tensor, schedule: SpatialSchedule,
           generator: torch.Generator | Noise | None = None, callback: Callback | None = None,
           y: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``spec`` on ``image`` [B,3,H,W] in [-1, 1] where ``schedule``'s mask (1 = inpaint) says -> [B,3,H,W].

    The one entry of every sampler: ``model`` is a ``RADDenoiser`` (its curves are used) or a bare ADM, wrapped
    here over the schedule's curves (``as_denoiser``); ``generator``: a ``torch.Generator`` (None: seed 0) or a
    ``Noise``."""
    denoiser = as_denoiser(model, schedule.curves)
    _check_inputs(image, schedule.mask)
    if spec.baseline:
        _check_binary(schedule, spec.name)
    timesteps = spec.timesteps(denoiser.curves)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    mask = schedule.mask.to(denoiser.device)
    return spec.sampler.loop(denoiser, image, mask, timesteps, generator, callback, y, **spec.settings())


# ------------------------------------------------------------------------- the public samplers, old signature


@torch.no_grad()
def sample_ddpm(model, image: torch.Tensor, schedule: SpatialSchedule, steps: int | None = None,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                y: torch.Tensor | None = None, resample: int | None = None, jump: int | None = None,
                spacing: str | None = None) -> torch.Tensor:
    """RAD inpainting by the element-wise DDPM reverse process (paper eq. (5), §4.2) -> [B,3,H,W] in [-1, 1].

    ``model``: a ``RADDenoiser`` or a bare ADM; ``image`` [B,3,H,W] in [-1, 1]; ``schedule``: a ``SpatialSchedule``
    whose mask is 1 where to inpaint. ``steps`` default 100. ``resample`` r > 0: every ``jump`` steps the hole goes
    back up ``jump`` steps of its own schedule and is denoised again, r times (``rad_calls`` network calls).
    0 (default): the paper's sampler. ``spacing``: ``schedule.SPACINGS`` (default uniform, the paper's)."""
    return sample(SamplerSpec.create("ddpm", steps=steps, resample=resample, jump=jump, spacing=spacing), model,
                  image, schedule, generator, callback, y)


@torch.no_grad()
def sample_ddim(model, image: torch.Tensor, schedule: SpatialSchedule, steps: int | None = None,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                y: torch.Tensor | None = None, eta: float | None = None, resample: int | None = None,
                jump: int | None = None, spacing: str | None = None) -> torch.Tensor:
    """RAD inpainting by element-wise DDIM (paper §3.4; eta 0 deterministic, 1 DDPM-like) -> [B,3,H,W].
    ``steps`` default 50, ``eta`` default 1 (0 before issue 19). ``resample``, ``jump``, ``spacing``: as
    ``sample_ddpm``."""
    return sample(SamplerSpec.create("ddim", steps=steps, eta=eta, resample=resample, jump=jump, spacing=spacing),
                  model, image, schedule, generator, callback, y)


@torch.no_grad()
def sample_repaint(model, image: torch.Tensor, schedule: SpatialSchedule, steps: int | None = None,
                   generator: torch.Generator | None = None, callback: Callback | None = None,
                   y: torch.Tensor | None = None, jump_length: int | None = None,
                   jump_n_sample: int | None = None) -> torch.Tensor:
    """RePaint (``repaint_loop``) on any ADM -> [B,3,H,W] in [-1, 1]; ``steps`` default 250, ``jump_length``
    10, ``jump_n_sample`` 10 (2,410 network calls). With an all-ones mask no known-region noise is drawn, so
    jump_n_sample = 1 is plain DDPM. The mask must be binary, 1 = inpaint (RePaint's own mask files use 1 = keep:
    invert those). ``callback`` gets a dict per network call: ``step`` over all calls, ``total``, DDPM ``t``."""
    _check_binary(schedule, "RePaint")
    return sample(SamplerSpec.create("repaint", steps=steps, jump_length=jump_length, jump_n_sample=jump_n_sample),
                  model, image, schedule, generator, callback, y)


@torch.no_grad()
def sample_replace(model, image: torch.Tensor, schedule: SpatialSchedule, steps: int | None = None,
                   generator: torch.Generator | None = None, callback: Callback | None = None,
                   y: torch.Tensor | None = None) -> torch.Tensor:
    """The "replace" baseline on any ADM: RePaint's conditioning (Lugmayr et al. 2022, eq. (8)) without resampling.

    Ordinary DDPM on the whole image with one timestep per image (``steps`` respaced steps, default 100,
    learned-range variance); before each step the known region (mask 0) is replaced by the input noised to the
    level, q(x_t | x0), and at the end by the input itself. That is ``sample_repaint`` without jumps
    (jump_n_sample = 1): same loop, same noise draws, same callback. Binary masks only, 1 = inpaint.
    """
    _check_binary(schedule, "replace")
    return sample(SamplerSpec.create("replace", steps=steps), model, image, schedule, generator, callback, y)


# ---------------------------------------------------------------------------------------------- the registry


def register(name: str, loop: Callable, *, sample_fn: Callable | None = None, settings: tuple[str, ...] = (),
             resamples: bool = True, calls: Callable | None = None, baseline: bool = False, **defaults) -> Sampler:
    """Add sampler ``name``: its ``loop`` (k-diffusion's shape), the spec fields its loop takes (``settings``),
    whether it may jump back (``resamples``), its ``calls`` rule (``spec -> int``; default one call per step down)
    and whether it is a ``baseline``. Its defaults are its row of ``settings.SAMPLER_DEFAULTS`` (steps; eta, resample,
    jump from ``settings.DEFAULTS`` unless the row says otherwise), ``defaults`` over them. ``sample_fn``: its public
    ``sample_x`` (default: one built from ``sample``)."""
    row = {**DEFAULTS, **SAMPLER_DEFAULTS.get(name, {}), **defaults}
    if "steps" not in row:
        raise ValueError(f"sampler {name!r} has no default steps: add its row to settings.SAMPLER_DEFAULTS")
    if sample_fn is None:
        def sample_fn(model, image, schedule, steps=None, generator=None, callback=None, y=None, **kw):
            return sample(SamplerSpec.create(name, steps=steps, **kw), model, image, schedule, generator, callback, y)
        sample_fn.__name__ = f"sample_{name}"
    entry = Sampler(name, loop, sample_fn, row, settings, resamples, calls, baseline)
    _REGISTRY[name], SAMPLERS[name], DEFAULT_STEPS[name] = entry, sample_fn, row["steps"]
    return entry


register("ddpm", ddpm_loop, sample_fn=sample_ddpm)
register("ddim", ddim_loop, sample_fn=sample_ddim, settings=("eta",))
register("repaint", repaint_loop, sample_fn=sample_repaint, baseline=True)
register("replace", repaint_loop, sample_fn=sample_replace, baseline=True, resamples=False)
register("euler_ancestral", euler_ancestral_loop, settings=("eta",))
register("dpmpp_2m", dpmpp_2m_loop)
register("dpmpp_2m_sde", dpmpp_2m_sde_loop, settings=("eta",))

BASELINE_SAMPLERS = tuple(name for name, entry in _REGISTRY.items() if entry.baseline)
"""Samplers that work on any ADM (one timestep per image); the others are RAD's and need a RAD-trained model."""
