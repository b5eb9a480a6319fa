"""Training checkpoints: one ``.pt`` per save, written atomically, read back with ``weights_only=True``.

A checkpoint holds everything a run needs to continue exactly: ``step``; ``run`` (what was trained: model config,
base identity, LoRA rank/alpha, schedule, tau convention, options; plain JSON-able values); ``trainable`` and ``ema``
(adapter-file names -> float32 tensors; the EMA as rank 0 keeps it); ``optimizer`` and ``scaler`` state dicts;
``data`` (the global sample stream's position: step, samples seen, global batch; ``stream.py``). ``run`` records the
world size and the global batch (per process x processes x accumulation).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..fileio import atomic_write

__all__ = ["CHECKPOINT_FORMAT", "checkpoint_path", "list_checkpoints", "save_checkpoint", "load_checkpoint",
           "remove_partial_saves", "BEST_NAME"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "comfyui-rad.train-checkpoint"
CHECKPOINT_VERSION = 2  # 2: the global sample stream (``stream.py``) replaced the stream generators
BEST_NAME = "best.pt"
"""The checkpoint of the best validation score, beside the step-N ones (``Trainer.validate``)."""
_NAME = re.compile(r"^step-(\d{7,})\.pt$")


def checkpoint_path(out: Path, step: int) -> Path:
    return Path(out) / "checkpoints" / f"step-{step:07d}.pt"


def list_checkpoints(out: Path) -> list[Path]:
    """The checkpoints of a run folder, oldest step first."""
    folder = Path(out) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(path: Path, state: dict[str, Any], keep: int = 0) -> Path:
    """Write ``state`` to ``path`` atomically (``fileio.atomic_write``, over an older file of that step); then
    keep only the newest ``keep`` checkpoints beside it (0 = keep all)."""
    path = atomic_write(path, lambda tmp: torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                                                      **state}, tmp), force=True,
                        what=f"training checkpoint of step {state.get('step', '?')}")
    log.info("saved checkpoint %s", path)
    if keep > 0:
        for old in list_checkpoints(path.parent.parent)[:-keep]:
            if old != path:
                old.unlink(missing_ok=True)
    return path


def remove_partial_saves(out: Path) -> int:
    """Delete the temporary files of saves that were killed before their rename; returns how many."""
    folder = Path(out) / "checkpoints"
    stale = sorted([*folder.glob(".step-*.pt.*.tmp"), *folder.glob(f".{BEST_NAME}.*.tmp")]) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log.warning("removed %d partial checkpoint file(s) of an interrupted save in %s", len(stale), folder)
    return len(stale)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint written by ``save_checkpoint`` (a run folder means its newest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise FileNotFoundError(f"no checkpoints (checkpoints/step-*.pt) in {path}: nothing to resume or export")
        path = found[-1]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader error means the same thing here
        raise ValueError(f"could not read training checkpoint {path} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:160]}): it is damaged or not a rad-train checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a rad-train checkpoint (format {CHECKPOINT_FORMAT!r}): pass a file from "
                         "<out>/checkpoints/ or the run folder")
    if state.get("version") not in (1, CHECKPOINT_VERSION):  # 1 still exports; resuming it is refused (stream)
        raise ValueError(f"{path}: checkpoint version {state.get('version')!r} is not {CHECKPOINT_VERSION}: "
                         "it was written by another comfyui-rad version")
    for key, kind in (("step", int), ("run", dict), ("trainable", dict), ("ema", dict)):
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or (key == "step" and value < 0):
            raise ValueError(f"{path}: its {key!r} is {'missing' if key not in state else repr(value)[:60]}, not "
                             f"{'a step number' if key == 'step' else 'a table'}: the checkpoint is damaged")
    state["path"] = str(path)
    log.info("read checkpoint %s (step %d)", path, state["step"])
    return state
