"""The settings a user gives rad-inpaint, rad-eval, rad-convert and the Python API: their names, defaults and ranges.

One table, torch-free, so a CLI parses its arguments (and answers ``--help``) before it imports torch:

- ``RANGES``: the range of every numeric setting. ``arg_type(name)`` is its argparse type (an error names the flag,
  ``--eta``); ``check(name, value)`` is the Python API's check (an error names the argument, ``eta``). Both come
  from the same ``Range``, so the CLIs and the API accept the same values.
- The choices: ``SAMPLER_NAMES``, ``BASELINE_SAMPLERS``, ``FIT_NAMES``, ``MASK_MODES``, ``MASK_KINDS``,
  ``DTYPE_NAMES``, the names of the engine's registries (``sampling.SAMPLERS``, ``plan.FITS``,
  ``masks.GENERATED_MASKS``, ``devices.DTYPES``; tests/test_cli.py pins them equal).
- The defaults: the samplers' (``SAMPLER_DEFAULTS``, ``DEFAULTS``: ``sampling.SamplerSpec`` reads them;
  ``DEFAULT_STEPS``, ``DEFAULT_JUMP``), the built-in ``DEFAULT_MODEL``.
- ``add_start_arguments(parser)``: ``--start`` and ``--start-strength`` with their one help text (rad-inpaint,
  rad-eval); ``add_recommend_start_arguments``: ``--recommend-start`` and ``--recommend-start-strength``
  (rad-convert, rad-train).

rad-train's own options and ranges live with the trainer (``comfyui_rad.train``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .checks import SEED_MAX, Int, Real, check_int, check_real

__all__ = ["SEED_MAX", "BUILTIN_WEIGHTS", "DEFAULT_MODEL", "DEFAULT_STEPS", "DEFAULT_JUMP", "DEFAULTS",
           "SAMPLER_DEFAULTS", "DEFAULT_SAMPLER", "SAMPLER_NAMES", "BASELINE_SAMPLERS", "ETA_SAMPLERS", "SPACING_NAMES", "FIT_NAMES",
           "MASK_MODES", "MASK_KINDS", "DTYPE_NAMES", "RAD_SAMPLERS", "STARTS", "START_NAMES", "DEFAULT_START",
           "START_STRENGTH", "RECOMMENDED_START_KEYS", "Range", "RANGES", "arg_type",
           "check", "add_start_arguments", "add_recommend_start_arguments"]

BUILTIN_WEIGHTS = Path(__file__).resolve().parent / "weights"
"""The pack's own model folder (listed by the ComfyUI loader too)."""

DEFAULT_MODEL = BUILTIN_WEIGHTS / "rad_default.safetensors"
"""The small RAD model rad-inpaint and the nodes use when no model is chosen."""

DEFAULT_JUMP = 10
"""RAD resampling's jump length when none is given (RePaint's 10); resampling itself is off by default."""

DEFAULTS = {"eta": 1.0, "resample": 0, "jump": DEFAULT_JUMP, "spacing": "uniform"}
"""The sampler settings every sampler has unless ``SAMPLER_DEFAULTS`` says otherwise. DDIM's eta is 1 (as random as
DDPM: the noise washes out model error, docs/EXPERIMENTS.md) in rad-inpaint, rad-eval, the node and the Python API
alike (the API's was 0 before issue 19)."""

SAMPLER_DEFAULTS = {
    "ddpm": {"steps": 100},
    "ddim": {"steps": 50},
    "euler_ancestral": {"steps": 15, "spacing": "lambda"},
    "dpmpp_2m": {"steps": 25, "spacing": "lambda"},
    "dpmpp_2m_sde": {"steps": 15, "spacing": "lambda"},
    "repaint": {"steps": 250, "resample": 9, "jump": 10},  # RePaint 250/10/10: jump_n_sample = resample + 1
    "replace": {"steps": 100},
}
"""The one table of sampler defaults, by sampler (the rest from ``DEFAULTS``): the paper's 100 DDPM steps, DDIM's
usual 50, RePaint's 250 with jumps of 10 sampled 10 times; ComfyUI's multistep samplers (issue 22) spaced uniformly
in the hole's log-SNR: the stochastic ones 15 steps, deterministic DPM-Solver++(2M) 25 (flat from 10; it keeps the
model's error like DDIM at eta 0), from the sampler table on the digits (docs/EXPERIMENTS.md).
``sampling.SamplerSpec`` fills a spec from it; a new sampler is one row here (torch-free, so the CLIs state its
defaults in --help) and one ``sampling.register`` line."""

DEFAULT_SAMPLER = "dpmpp_2m_sde"
"""The sampler of rad-inpaint, rad-eval, the RAD Sampler node and the Python API when none is named: DPM-Solver++(2M)
SDE, 15 steps spaced in log-SNR, 15 network calls where the paper's DDPM takes 100, and on the digits' RAD adapter
(docs/EXPERIMENTS.md, the sampler table) at or above DDPM-100's hole PSNR on the box, extreme and wide masks. It was
ddpm (100 steps) before issue 22; name ``ddpm`` for the paper's sampler."""

DEFAULT_STEPS = {name: row["steps"] for name, row in SAMPLER_DEFAULTS.items()}
"""Reverse steps per sampler when none are given (``SAMPLER_DEFAULTS``)."""

SAMPLER_NAMES = tuple(sorted(SAMPLER_DEFAULTS))
"""The samplers by name (``sampling.SAMPLERS`` maps them to their functions)."""

BASELINE_SAMPLERS = ("repaint", "replace")
"""Samplers that work on any ADM (one timestep per image); the others are RAD's and need a RAD-trained model."""

RAD_SAMPLERS = tuple(name for name in SAMPLER_NAMES if name not in BASELINE_SAMPLERS)
"""RAD's samplers (every pixel on its own noise level): the ones a start from a fill works with."""

ETA_SAMPLERS = ("ddim", "euler_ancestral", "dpmpp_2m_sde")
"""Samplers with an ``eta`` (their share of fresh noise per step; Euler ancestral at eta e is DDIM at eta e)."""

SPACING_NAMES = ("uniform", "lambda", "karras")
"""How a sampler's steps are spread over Phase 1 (``schedule.step_times``): uniform in t (the paper's, guided-
diffusion's respacing), uniform in the hole's half log-SNR lambda (ComfyUI's "exponential"), or Karras et al.'s
rho = 7 spacing of its noise level (ComfyUI's "karras")."""

FIT_NAMES = ("crop", "resize", "pad", "tiles")
"""How ``pipeline.inpaint`` meets the model's resolution (``plan.FITS``, ``plan.FIT_MODES``)."""

MASK_MODES = ("binary", "soft")
"""How a mask file is read: thresholded, or its values as how much each pixel is regenerated (``masks.prepare``)."""

MASK_KINDS = ("box", "extreme", "wide", "perlin")
"""The generated masks (``masks.GENERATED_MASKS``): rad-inpaint ``--mask box``, rad-eval ``--masks``."""

STARTS = ("noise", "harmonic")
"""Where RAD's hole starts (``fill.STARTS``): noise (the paper's sampler) or a classical fill, regenerated at the
start strength (``fill.start_image``)."""

START_NAMES = ("auto", *STARTS)
"""The start a user chooses: one of ``STARTS``, or auto: the start (and strength) the model's file recommends
(``schedule.RADInfo.start``), noise for a model that records none (every file written before issue 21, the RAD
authors' checkpoints) and for the baselines (``BASELINE_SAMPLERS``)."""

DEFAULT_START = "auto"
"""The start when none is given (``pipeline.inpaint``, rad-inpaint, rad-eval). The RAD Sampler node's ``start``
widget defaults to noise (``nodes/sampler.py``: a workflow saved before the input existed keeps its images)."""

START_STRENGTH = 0.5
"""The start strength when none is given and the model recommends none (``pipeline.inpaint``, rad-inpaint,
rad-eval, the RAD Sampler node): how much of a start from a fill is regenerated. Only a start other than noise reads
it (docs/EXPERIMENTS.md)."""

RECOMMENDED_START_KEYS = ("recommended_start", "recommended_start_strength")
"""The safetensors metadata keys in which a model or adapter file records the start it is best used with (one of
``STARTS``) and its strength (in [0, 1]): read by ``schedule.RADInfo.from_metadata``, written only when asked
(rad-convert and rad-train's ``--recommend-start``)."""

DTYPE_NAMES = ("fp32", "fp16", "bf16")
"""The precisions a user names (``devices.DTYPES``)."""


@dataclass(frozen=True)
class Range:
    """The values a numeric setting takes: ``lo``..``hi`` (None = unbounded; ``*_open`` leaves the end out), whole
    numbers only when ``integer``, plus the special values ``also`` (e.g. -1)."""

    lo: float | None = None
    hi: float | None = None
    integer: bool = False
    lo_open: bool = False
    hi_open: bool = False
    also: tuple[int, ...] = ()

    def arg_type(self) -> Real | Int:
        """The argparse type: a bad value is one line naming the flag, the value and this range."""
        if self.integer:
            return Int(self.lo, self.hi, also=self.also)
        return Real(self.lo, self.hi, lo_open=self.lo_open, hi_open=self.hi_open)

    def check(self, value, name: str):
        """``value`` (an int, or a float for real ranges) when it is in the range, else ValueError naming ``name``."""
        if self.integer:
            if value in self.also and not isinstance(value, bool):
                return int(value)
            return check_int(value, name, self.lo, self.hi)
        return check_real(value, name, self.lo, self.hi, lo_open=self.lo_open, hi_open=self.hi_open)


RANGES: dict[str, Range] = {
    # sampling (rad-inpaint, rad-eval, pipeline.inpaint, the samplers)
    "steps": Range(1, 1000, integer=True),
    "eta": Range(0.0, 1.0),
    "resample": Range(0, 100, integer=True),
    "jump": Range(1, 1000, integer=True),
    "jump_length": Range(1, 1000, integer=True),
    "jump_n_sample": Range(1, 100, integer=True),
    "seed": Range(0, SEED_MAX, integer=True),
    "start_strength": Range(0.0, 1.0),
    "torch_seed": Range(-2**63, 2**64 - 1, integer=True),  # what a torch generator takes (pipeline.inpaint's seed)
    # the model (load_adm, rad-inpaint, rad-eval)
    "strength": Range(0.0, 2.0),
    "class_label": Range(0, integer=True),
    "num_head_channels": Range(1, 4096, integer=True, also=(-1,)),
    "num_heads": Range(1, 4096, integer=True, also=(-1,)),
    # masks and outputs (rad-inpaint)
    "threshold": Range(0.0, 1.0, hi_open=True),
    "samples": Range(1, 1000, integer=True),
    # rad-eval
    "limit": Range(1, integer=True),
    "batch_size": Range(1, 4096, integer=True),
    "grid_rows": Range(1, 1024, integer=True),
    "threads": Range(0, 1024, integer=True),
}
"""Every numeric setting of rad-inpaint, rad-eval and the Python API, by its Python name (the flag is the name
with dashes: ``--batch-size``)."""


def arg_type(name: str) -> Real | Int:
    """The argparse type of the setting ``name`` (``RANGES``)."""
    return RANGES[name].arg_type()


def check(name: str, value, label: str | None = None):
    """``value`` of the setting ``name`` checked against ``RANGES`` (ValueError naming ``label``, default ``name``)."""
    return RANGES[name].check(value, label or name)


def add_start_arguments(parser) -> None:
    """rad-inpaint's and rad-eval's ``--start`` and ``--start-strength`` (``pipeline.inpaint``'s ``start`` and
    ``start_strength``): one definition, one help text for both CLIs."""
    parser.add_argument("--start", choices=START_NAMES, default=DEFAULT_START,
                        help="where the hole starts: noise (the paper's RAD), harmonic: the hole first filled from the "
                             "pixels around it, then regenerated at --start-strength (RAD's samplers: "
                             + ", ".join(RAD_SAMPLERS) + "; keeps the picture's colours), or auto (default): the "
                             "start the model's file recommends, noise where it records none (the built-in model's: "
                             "its card, docs/EXPERIMENTS.md)")
    parser.add_argument("--start-strength", type=arg_type("start_strength"), default=None,
                        help="with a start from a fill: how much of the hole is regenerated, in [0, 1] (1 = RAD from "
                             "noise, 0 = the fill alone, no network call; default: the model's recommended strength "
                             f"with --start auto, else {START_STRENGTH})")


def add_recommend_start_arguments(parser, where: str) -> None:
    """rad-convert's and rad-train's ``--recommend-start`` and ``--recommend-start-strength``
    (``RECOMMENDED_START_KEYS``), recorded in ``where`` ("the file", "the export"); ``parser`` may be a group."""
    parser.add_argument("--recommend-start", choices=STARTS,
                        help=f"record in {where} the start the model is best used with (what rad-inpaint --start "
                             "auto runs; default: none recorded, auto starts from noise): measure it first, "
                             "docs/EXPERIMENTS.md")
    parser.add_argument("--recommend-start-strength", type=arg_type("start_strength"),
                        help="with --recommend-start harmonic: the strength recorded with it, in [0, 1]")
