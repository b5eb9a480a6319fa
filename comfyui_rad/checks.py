"""Checks of what a user hands in, shared by the CLIs and the Python API: numbers, tensors and output paths.

- Numbers. ``Real`` and ``Int`` are the argparse types of every numeric flag of rad-inpaint, rad-train and rad-eval:
  finite (no nan/inf), inside the flag's range, or one line naming the flag, the value and the range.
  ``check_real`` / ``check_int`` are the same rules for the Python API, naming the argument.
- Memory. ``check_memory``: what a call would allocate, estimated from its inputs before anything is built, against
  ``memory_limit()`` (16 GiB, or half the machine's memory), or one line naming the inputs and their values.
- Tensors. ``check_image``: a non-empty float image, finite, in the range the function expects ([0,1] for
  ``pipeline.inpaint``, [-1,1] for the samplers), with a "divide by 255" hint for 0..255 input. ``check_mask_values``:
  a non-empty finite mask in [0, 1] (the same hint; NaN refused whatever the mask mode); ``check_mask`` adds the
  layout.
- Output paths. ``check_outputs``: every file a command will write is a file name (not a folder, not under a file),
  differs from every other output, is no input file and lies in no input folder (``check_not_inputs``, the one rule
  of every CLI, output folders included); checked before any work is done, whatever ``--force`` says.
- ``ArgumentParser``: argparse whose errors are one line (``prog: error: ...``) instead of a usage block, and whose
  ``--help`` states every option's default (``HelpFormatter``).

Torch-free at import (torch is imported by the tensor checks when they run), so a CLI can parse its arguments and
answer ``--help`` before it imports torch. The ranges of the settings themselves are ``settings.RANGES``.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import describe_error

if TYPE_CHECKING:
    import torch

__all__ = ["EXIT_STATUS", "SEED_MAX", "Real", "Int", "check_real", "check_int", "memory_limit", "check_memory", "check_image", "check_mask_values",
           "check_mask", "same_file", "is_within", "check_folder", "check_not_inputs", "check_outputs", "describe_error",
           "HelpFormatter", "ArgumentParser"]

EXIT_STATUS = ("exit status: 0 done; 2 bad input (one line on stderr naming the flag); 130 interrupted (Ctrl-C: "
               "no file is left half-written)")
"""The epilog line every CLI's --help ends with."""

SEED_MAX = 2**63 - 1
"""The largest seed the CLIs take (torch's generators take up to 2**64 - 1; the CLIs add offsets to seeds)."""


# ---------------------------------------------------------------------------------------------------- numbers


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _interval(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    """A readable range: "in [0, 2]", "in (0, 1]", ">= 0", "> 0", "<= 10"."""
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{_num(lo)}, {_num(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {_num(lo)}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {_num(hi)}"
    return "(any finite value)"


def _inside(value: float, lo, hi, lo_open: bool, hi_open: bool) -> bool:
    if lo is not None and (value <= lo if lo_open else value < lo):
        return False
    if hi is not None and (value >= hi if hi_open else value > hi):
        return False
    return True


class Real:
    """argparse type: a finite float in a range (``lo``/``hi`` None = unbounded; ``*_open`` excludes the end)."""

    def __init__(self, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False):
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open
        self.__name__ = "number"

    @property
    def range(self) -> str:
        return _interval(self.lo, self.hi, self.lo_open, self.hi_open)

    def __call__(self, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number: give a number {self.range}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number: give a number {self.range}")
        if not _inside(value, self.lo, self.hi, self.lo_open, self.hi_open):
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a number {self.range}")
        return value


class Int:
    """argparse type: a whole number in [lo, hi] (None = unbounded), or one of ``also`` (special values like -1)."""

    def __init__(self, lo: int | None = None, hi: int | None = None, *, also: tuple[int, ...] = ()):
        self.lo, self.hi, self.also = lo, hi, also
        self.__name__ = "integer"

    @property
    def range(self) -> str:
        text = _interval(self.lo, self.hi)
        return text + "".join(f" or {v}" for v in self.also)

    def __call__(self, text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number: give one {self.range}") from None
        if value not in self.also and not _inside(value, self.lo, self.hi, False, False):
            raise argparse.ArgumentTypeError(f"{text} is out of range: give a whole number {self.range}")
        return value


def check_real(value, name: str, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
               hi_open: bool = False) -> float:
    """``value`` as a float when it is a finite real number in the range, else ValueError naming ``name``."""
    loaded = sys.modules.get("torch")  # a tensor can only come from a torch already imported
    if loaded is not None and isinstance(value, loaded.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number {_interval(lo, hi, lo_open, hi_open)}, got {value!r}")
    if not math.isfinite(value) or not _inside(value, lo, hi, lo_open, hi_open):
        raise ValueError(f"{name} must be a finite number {_interval(lo, hi, lo_open, hi_open)}, got {value!r}")
    return float(value)


def check_int(value, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int when it is a whole number in [lo, hi], else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a whole number {_interval(lo, hi)}, got {value!r}")
    if not _inside(value, lo, hi, False, False):
        raise ValueError(f"{name} must be a whole number {_interval(lo, hi)}, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------------------------------- memory


def memory_limit() -> int:
    """Bytes one call may ask for: 16 GiB, or half the machine's memory where that is less (a ComfyUI server's
    memory is everyone's)."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # Windows, or unknown
        physical = 1 << 40
    return min(16 << 30, physical // 2)


def check_memory(nbytes: float, what: str, fix: str, limit: int | None = None) -> None:
    """ValueError naming ``what`` (the inputs that size it, with their values) when ``nbytes`` is over ``limit``
    (default ``memory_limit()``): checked before anything is allocated."""
    limit = memory_limit() if limit is None else limit
    if nbytes > limit:
        raise ValueError(f"{what} would need about {nbytes / 2**30:,.1f} GiB of memory, over the {limit / 2**30:.1f} "
                         f"GiB this allows: {fix}")


# ---------------------------------------------------------------------------------------------------- tensors


_SLACK = 1e-3
"""How far past its range a value may be (rounding of a conversion) before it is refused."""


def _check_tensor(x, name: str) -> torch.Tensor:
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): give at least one pixel")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} has {bad} NaN or infinite value(s) (of {x.numel()}, shape {tuple(x.shape)}): "
                         "every value must be a finite number")
    return x


def check_image(image, name: str = "image", low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """``image`` [B,C,H,W] when it is a non-empty float tensor of finite values in [low, high] (within 1e-3), else
    ValueError saying what is wrong and the range expected (0..255 input: divide by 255)."""
    import torch

    if isinstance(image, torch.Tensor) and not image.is_floating_point():
        hint = ": convert it with image.float() / 255" if image.dtype == torch.uint8 else ""
        raise ValueError(f"{name} must be a float tensor with values in [{low:g}, {high:g}], got {image.dtype}{hint}")
    _check_tensor(image, name)
    if image.dim() != 4 or 0 in image.shape:
        raise ValueError(f"{name} must be [B,C,H,W] with every size at least 1, got shape {tuple(image.shape)}")
    lo, hi = (float(v) for v in torch.aminmax(image.detach().float()))
    if lo < low - _SLACK or hi > high + _SLACK:
        hint = ""
        if hi > 1.5 and lo >= -_SLACK and high == 1.0:
            hint = " (it looks like 0..255: divide it by 255)"
        if low == 0.0 and lo < -_SLACK and hi <= 1 + _SLACK:
            hint = " (it looks like the models' [-1, 1]: use (image + 1) / 2)"
        raise ValueError(f"{name} values must be in [{low:g}, {high:g}], got [{lo:g}, {hi:g}]{hint}")
    return image


def check_mask_values(mask, name: str = "mask") -> torch.Tensor:
    """``mask`` (any shape) when it is a non-empty tensor of finite values in [0, 1] (within 1e-3; 1 = inpaint), else
    ValueError naming ``name``: the one rule for odd mask values (NaN in any mask mode, 0..255: divide by 255)."""
    import torch

    mask = _check_tensor(torch.as_tensor(mask) if not isinstance(mask, torch.Tensor) else mask, name)
    lo, hi = (float(v) for v in torch.aminmax(mask.detach().float()))
    if lo < -_SLACK or hi > 1 + _SLACK:
        hint = " (it looks like 0..255: divide it by 255)" if hi > 1.5 and lo >= -_SLACK else ""
        raise ValueError(f"{name} values must be in [0, 1] (1 = inpaint), got [{lo:g}, {hi:g}]{hint}")
    return mask


def check_mask(mask, name: str = "mask") -> torch.Tensor:
    """``mask`` when it follows ``check_mask_values`` and is [H,W], [B,H,W] or [B,1,H,W] with no size 0, else
    ValueError (0..255 masks: divide by 255)."""
    mask = check_mask_values(mask, name)
    if 0 in mask.shape or mask.dim() < 2:
        raise ValueError(f"{name} has shape {tuple(mask.shape)}: give at least one pixel, as [H,W], [B,H,W] or "
                         "[B,1,H,W] (1 = inpaint)")
    return mask


# ------------------------------------------------------------------------------------------------ output paths


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two paths name one file: the same resolved path, or (both existing) the same inode (links)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_parents(path: Path, flag: str) -> None:
    """No existing file stands where a folder above ``path`` must be (the nearest existing parent is a folder)."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {path}: {parent} is a file, not a folder: choose another path")
            break


def _check_target(path: Path, flag: str) -> None:
    """A file can be written at ``path``: not a folder, and no existing file where a folder of it must be."""
    if path.is_dir():
        example = path / ("result" + (path.suffix or ".png"))
        raise ValueError(f"{flag} {path} is a folder: give a file name, e.g. {example}")
    _check_parents(path, flag)


def check_folder(path: str | os.PathLike, flag: str) -> None:
    """A folder can be made (or used) at ``path``: it is not a file, and no file stands where a folder above it must
    be. ValueError naming ``flag`` otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file: give a folder")
    _check_parents(path, flag)


def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when ``path`` is ``folder`` or lies anywhere below it, links resolved (``a/../b`` and symlinks too)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_not_inputs(outputs: Iterable[tuple[str, str | os.PathLike]],
                     inputs: Mapping[str, str | os.PathLike | None] | Iterable[tuple[str, str | os.PathLike | None]]
                     ) -> None:
    """The one rule for outputs and inputs: an output (file or folder) may not be an input file, nor be or lie
    inside an input folder. ValueError naming both flags; --force never allows it."""
    inputs = [(flag, Path(p)) for flag, p in (inputs.items() if isinstance(inputs, Mapping) else inputs)
              if p is not None]
    for flag, path in outputs:
        for in_flag, source in inputs:
            if not source.is_dir() and same_file(path, source):
                raise ValueError(f"{flag} {path} is the {in_flag} file: writing it would destroy the input; "
                                 "choose another output name")
            if source.is_dir() and is_within(path, source):
                raise ValueError(f"{flag} {path} is inside the {in_flag} folder {source}, which this run reads: "
                                 "writing there would change the input; choose an output outside it")


def check_outputs(outputs: Iterable[tuple[str, str | os.PathLike]],
                  inputs: Mapping[str, str | os.PathLike | None] | Iterable[tuple[str, str | os.PathLike | None]]
                  = ()) -> None:
    """Refuse, before any work, outputs that cannot be written or that would clobber each other or an input.

    ``outputs``: (flag, path) pairs, one per file a command writes (a flag may come many times, e.g. numbered
    samples); ``inputs``: (flag, path) pairs of the files and folders it reads (None skipped). Raises ValueError
    naming the flags when a path is a folder or lies under a file, when two outputs are one file, or when an output
    is an input or lies in an input folder (``check_not_inputs``); --force never allows these (it only allows
    replacing an older file of the user's).
    """
    outputs = [(flag, Path(p)) for flag, p in outputs]
    for flag, path in outputs:
        _check_target(path, flag)
    for i, (flag, path) in enumerate(outputs):
        for other_flag, other in outputs[i + 1:]:
            if same_file(path, other):
                raise ValueError(f"{flag} and {other_flag} both write {path}: give them different file names")
    check_not_inputs(outputs, inputs)


# ----------------------------------------------------------------------------------------------------- parser


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` as written: the description and epilog keep their lines (examples, commands); every option's help
    ends with its default, "(default: X)", unless the text already states it (the word "default", or the value in
    brackets: "(8)", "(1.0; 0 = off)"). Flags that take no value say "(default: off)"; options without a default
    say "(default: none)"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default is argparse.SUPPRESS or action.required:
            return text
        if action.default is not None and any(f"({action.default}{end}" in text for end in (")", ";")):
            return text
        if action.nargs == 0:
            return f"{text} (default: off)"
        if action.default is None:
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``prog: error: message (prog --help lists the options)``, exit status 2; its
    ``--help`` keeps the description's lines and states every option's default (``HelpFormatter``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")
        sys.exit(2)
