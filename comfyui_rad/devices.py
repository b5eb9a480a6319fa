"""Devices and precisions: the one table of dtype names and the one rule for "auto".

``DTYPES`` holds the names a user picks (rad-inpaint/rad-eval ``--dtype``, the loader node's ``dtype``, rad-train's
``--export-dtype`` and ``--precision``); ``resolve_dtype`` also takes torch's own names ("float32", "bfloat16", ...).
``resolve_device`` names the caller's own option in its errors (``flag``), so each CLI and node speaks its own words.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

__all__ = ["DTYPES", "resolve_dtype", "resolve_device", "device_name"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
"""The precisions a user names on the command line and in the nodes (torch's names are accepted too)."""


def resolve_dtype(name: str | torch.dtype | None, device: torch.device | str = "cpu") -> torch.dtype:
    """A floating dtype from a user's name: ``DTYPES``' short names, torch's ("bfloat16", "float64", ...), a
    ``torch.dtype``, None (float32), or "auto": bf16 on a CUDA device that supports it, else fp16 there; fp32 on any
    other device."""
    if name is None:
        return torch.float32
    if name == "auto":
        if torch.device(device).type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    resolved = DTYPES.get(name, getattr(torch, name, None)) if isinstance(name, str) else name
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"dtype must be auto, {', '.join(DTYPES)} or a floating torch dtype (torch.float16, "
                         f"'bfloat16', ...), got {name!r}")
    return resolved


def resolve_device(name: str | torch.device, flag: str = "--device") -> torch.device:
    """"auto" (CUDA when there is one, else CPU) or a torch device name; a clear error naming ``flag`` (the caller's
    option) for unknown or absent devices."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown {flag} {name!r}: use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{flag} {name} asked for CUDA, but this torch has no CUDA device: use {flag} cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{flag} {name}: there are only {torch.cuda.device_count()} CUDA device(s) "
                         f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{flag} {name} asked for Apple's MPS, which this machine or torch does not have: use "
                         f"{flag} cpu (or auto)")
    if device.type not in ("cpu", "cuda", "mps"):
        backend = getattr(torch, device.type, None)
        if not (hasattr(backend, "is_available") and backend.is_available()):
            raise ValueError(f"{flag} {name}: no {device.type} device here: use {flag} auto, cpu or cuda")
    return device


def device_name(device: torch.device | str) -> str:
    """What a benchmark report calls ``device``: the CUDA device's name, or the CPU's model name ("unknown CPU" where
    neither /proc/cpuinfo nor the platform says)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
