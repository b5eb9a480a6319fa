"""rad-train's settings: one range table, three front ends (command line, config file, Python API), resume rules.

``RANGES`` holds the range of every numeric option. From it come the argparse types of ``rad-train`` (errors name
the flag, ``--lr``), the checks of a ``--config`` TOML file (errors name the file and its key, ``run.toml: lr``) and
``TrainOptions.check`` (errors name the field, ``lr``). ``Names`` turns a field name into what the user typed.

A config file holds any option under its field name (``batch_size = 8``; ``batch-size`` is read too); flags on the
command line override it. The resolved settings of a run are written to ``<out>/config.toml`` at its start, and
``--resume`` starts from them. ``RECIPE`` lists what a run computes: changing one of those on resume would not
continue the run exactly (refused unless --force); the rest (``steps``, workers, periods, paths) are harmless
(a warning names them).
"""

from __future__ import annotations

import difflib
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..checks import SEED_MAX, Int, Real, check_int, check_real

__all__ = ["Range", "RANGES", "RECIPE", "Names", "API", "CLI", "check_ranges", "read_config", "config_text",
           "CONFIG_NAME", "resume_changes"]

CONFIG_NAME = "config.toml"
"""The resolved settings of a run, in its folder."""


@dataclass(frozen=True)
class Range:
    """A numeric option's range: whole numbers (``kind`` int) or finite floats; ``lo``/``hi`` None = unbounded,
    ``*_open`` excludes the end; ``also``: extra allowed values (-1 = "not set" for head options)."""

    kind: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    also: tuple[int, ...] = ()

    def argtype(self) -> Callable[[str], Any]:
        """The argparse type: one line naming the flag when the value is out of range."""
        if self.kind is int:
            return Int(self.lo, self.hi, also=self.also)
        return Real(self.lo, self.hi, lo_open=self.lo_open, hi_open=self.hi_open)

    def check(self, value: Any, name: str) -> int | float:
        """``value`` when it is in range, else ValueError naming ``name``."""
        if self.kind is int:
            if value in self.also and not isinstance(value, bool):
                return int(value)
            return check_int(value, name, self.lo, self.hi)
        return check_real(value, name, self.lo, self.hi, lo_open=self.lo_open, hi_open=self.hi_open)


RANGES: dict[str, Range] = {
    # data
    "scale_range": Range(float, 0.0, 1.0, lo_open=True),
    "holdout": Range(int, 0, 1024),
    "workers": Range(int, 0, 256),
    # model
    "resolution": Range(int, 8, 4096),
    "num_head_channels": Range(int, 1, 4096, also=(-1,)),
    "num_heads": Range(int, 1, 4096, also=(-1,)),
    "lora_rank": Range(int, 1, 4096),
    "lora_alpha": Range(float, 0.0, 1e4, lo_open=True),
    # recipe and optimisation
    "vlb_weight": Range(float, 0.0, 1e3),
    "steps": Range(int, 1, 10**9),
    "batch_size": Range(int, 1, 65536),
    "grad_accum": Range(int, 1, 65536),
    "lr": Range(float, 0.0, 1.0, lo_open=True),
    "weight_decay": Range(float, 0.0, 10.0),
    "grad_clip": Range(float, 0.0, 1e6),
    "ema": Range(float, 0.0, 1.0, hi_open=True),
    "seed": Range(int, 0, SEED_MAX),
    "threads": Range(int, 0, 1024),
    # scale
    "dist_timeout": Range(float, 0.0, 1e6, lo_open=True),
    "dry_run": Range(int, 0, 10**6),
    # run folder
    "save_every": Range(int, 0, 10**9),
    "keep_checkpoints": Range(int, 0, 10**6),
    "preview_every": Range(int, 0, 10**9),
    "preview_steps": Range(int, 1, 1000),
    "log_every": Range(int, 0, 10**9),
    # validation
    "val_every": Range(int, 0, 10**9),
    "val_steps": Range(int, 1, 1000),
    "val_count": Range(int, 1, 4096),
    "val_batch": Range(int, 1, 4096),
}
"""Field name -> range of every numeric option of rad-train (``TrainOptions`` fields and the CLI's ``threads``)."""

RECIPE = ("data", "preset", "resolution", "num_head_channels", "num_heads", "learn_sigma",
          "lora_rank", "lora_alpha", "lr", "weight_decay", "grad_clip", "ema", "seed", "precision", "embedding",
          "mask_sampling", "vlb_weight", "holdout", "resize", "scale_range", "scale_sampling", "color_augment",
          "flip")
"""Options whose change on --resume breaks exact resume: what the trained tensors and the sample stream depend on
(the base's identity is checked by its sha256, whatever its path). Every other option (steps, batch size and
accumulation at the same global batch, workers, periods, validation, export, speed, the base's path) is harmless."""


class Names:
    """How errors name an option: ``API`` the field (``lr``), ``CLI`` the flag (``--lr``)."""

    def __init__(self, style: str):
        self.style = style

    def __call__(self, field: str) -> str:
        if self.style == "cli":
            return _FLAGS.get(field, "--" + field.replace("_", "-"))
        return f"{field}=True" if field == "force" else field


API, CLI = Names("api"), Names("cli")
_FLAGS = {"flip": "--no-flip", "learn_sigma": "--no-learn-sigma", "use_ema": "--no-ema",
          "tensorboard": "--no-tensorboard"}


def check_ranges(values: dict[str, Any], name: Callable[[str], str]) -> None:
    """Every numeric value in ``values`` (field -> value; None = not set) in its ``RANGES`` entry: ValueError
    naming the first that is not, as ``name`` spells it."""
    for field, rng in RANGES.items():
        value = values.get(field)
        if value is None:
            continue
        if field == "scale_range":
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise ValueError(f"{name(field)} takes two numbers (low, high), got {value!r}")
            for v in value:
                rng.check(v, name(field))
        else:
            rng.check(value, name(field))


# ------------------------------------------------------------------------------------------------- config files


def _kind(action) -> str:
    """What a config value of this argparse action must be: bool, number, numbers, choice, path, text."""
    if action.nargs == 0:
        return "bool"
    if action.dest in RANGES:
        return "numbers" if action.nargs == 2 else "number"
    if action.choices:
        return "choice"
    return "path" if action.type is Path else "text"


def _config_value(action, value: Any, where: str) -> Any:
    kind = _kind(action)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if kind in ("number", "numbers"):
        check_ranges({action.dest: value}, lambda _: where)
        return tuple(float(v) for v in value) if kind == "numbers" else value
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {value!r}")
    if kind == "choice" and value not in action.choices:
        raise ValueError(f"{where} {value!r} is not one of {', '.join(map(str, action.choices))}")
    return Path(value) if kind == "path" else value


def config_actions(parser) -> dict[str, Any]:
    """dest -> argparse action of every option a config file may hold (all but --help, --config, --print-config)."""
    actions = {}
    for action in parser._actions:
        if action.dest in ("help", "config", "print_config") or not action.option_strings:
            continue
        if action.nargs == 0 and action.dest in actions:  # --channels-last / --no-channels-last: one setting
            continue
        actions[action.dest] = action
    return actions


def read_config(path: str | Path, parser) -> dict[str, Any]:
    """The settings of a TOML config file, checked against the parser's options: dest -> value. ValueError naming
    the file and the key for an unknown key or a bad value."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"--config {path} is not valid TOML ({err}): fix it, or start from "
                         "rad-train --print-config") from None
    actions = config_actions(parser)
    out = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in actions:
            close = difflib.get_close_matches(dest, list(actions), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"{path.name}: unknown option {key!r}{hint}: rad-train --print-config lists them")
        out[dest] = _config_value(actions[dest], value, f"{path.name}: {key}")
    return out


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "nan"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string


def _comment(text: str, width: int = 116) -> list[str]:
    words, lines, line = " ".join(text.split()).replace("%%", "%").split(" "), [], "#"
    for word in words:
        if len(line) + 1 + len(word) > width and line != "#":
            lines.append(line)
            line = "#"
        line += " " + word
    return lines + [line]


def config_text(parser, values: dict[str, Any] | None = None, *, skip: tuple[str, ...] = (),
                header: str = "") -> str:
    """A TOML file of every option of ``parser`` grouped as ``--help`` groups them, each with its help as a comment:
    ``values`` (dest -> value; default: the parser's defaults); an option without a value is commented out."""
    actions = config_actions(parser)
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for group in parser._action_groups:
        rows = [a for a in group._group_actions if actions.get(a.dest) is a and a.dest not in skip]
        if not rows:
            continue
        lines += ["", f"# ---- {group.title}"]
        for action in rows:
            value = (values or {}).get(action.dest, action.default) if values is not None else action.default
            help_text = (action.help or "").replace("%(default)s", str(action.default))
            flags = "/".join(action.option_strings)
            lines += _comment(f"{flags}: {help_text}")
            lines.append(f"{action.dest} = {_toml(value)}" if value is not None else f"# {action.dest} =")
    return "\n".join(lines).lstrip("\n") + "\n"


def resume_changes(saved: dict[str, Any], now: dict[str, Any]) -> tuple[dict, dict]:
    """(changes that break exact resume, harmless changes): field -> (saved value, value now), over the fields both
    hold (a checkpoint of an older version lacks newer options)."""
    def same(a, b):
        return (list(a) if isinstance(a, (list, tuple)) else a) == (list(b) if isinstance(b, (list, tuple)) else b)

    changed = {k: (v, now[k]) for k, v in saved.items() if k in now and not same(v, now[k])}
    recipe = {k: v for k, v in changed.items() if k in RECIPE}
    return recipe, {k: v for k, v in changed.items() if k not in RECIPE}
