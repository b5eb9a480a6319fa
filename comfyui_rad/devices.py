"""Devices and precisions: the one table of dtype names and the one rule for "auto".

``DTYPES`` holds the names a user picks (rad-inpaint/rad-eval ``--dtype``, the loader node's ``dtype``, rad-train's
``--export-dtype`` and ``--precision``); ``resolve_dtype`` also takes torch's own names ("float32", "bfloat16", ...).
``resolve_device`` names the caller's own option in its errors (``flag``), so each CLI and node speaks its own words.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["DTYPES", "resolve_dtype", "resolve_device", "device_name", "MAX_AUTO_THREADS", "cpu_count",
           "auto_threads", "cpu_threads"]

log = logging.getLogger(__name__)

MAX_AUTO_THREADS = 4
"""The most intra-op threads "auto" picks: small models gain little beyond 4 (docs/BENCHMARKS.md)."""

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


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def auto_threads(cpus: int | None = None, load: float | None = None) -> int:
    """torch's intra-op threads for sampling on the CPU when the user names none: the CPUs other processes leave
    free (``cpus`` minus the 1-minute load average, rounded up), at least 1 and at most ``MAX_AUTO_THREADS``.

    torch's own default (one thread per CPU) oversubscribes a busy machine: its threads wait for each other at every
    operation while other processes hold the cores (the README's first command: 63 s with 1 thread, about 10
    minutes with torch's default on 2 busy cores). 2 CPUs, quiet: 2; one core busy: 1."""
    cpus = cpu_count() if cpus is None else cpus
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average (Windows): assume a quiet machine
            load = 0.0
    return max(1, min(MAX_AUTO_THREADS, cpus - math.ceil(load - 0.5)))


@contextlib.contextmanager
def cpu_threads(threads: int | None, device: torch.device | str = "cpu") -> Iterator[int]:
    """Run the block with ``threads`` intra-op threads (0 or None: ``auto_threads()``) when ``device`` is the CPU,
    and put torch's setting back afterwards; on any other device the threads are left alone (the host's setting,
    e.g. ComfyUI's, stays). Yields the threads in use."""
    if torch.device(device).type != "cpu":
        yield torch.get_num_threads()
        return
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 0):
        raise ValueError(f"threads must be a whole number >= 0 (0 = auto), got {threads!r}")
    before, wanted = torch.get_num_threads(), threads or auto_threads()
    if wanted != before:
        torch.set_num_threads(wanted)
    log.debug("sampling on the CPU with %d thread(s)", wanted)
    try:
        yield wanted
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
