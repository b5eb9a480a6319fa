"""TensorBoard events of a run: scalars (the losses, learning rate, gradient norm, images/s, EMA decay, validation
scores) and pictures (preview grids), written by rank 0 with ``torch.utils.tensorboard``'s ``SummaryWriter``.

The ``tensorboard`` package is optional (``comfyui-rad[train]`` brings it): without it a run says in one line how to
turn this on and trains as before. A resumed run purges the events after its step (a crashed run's tail), so the
curves never double back. View them with ``tensorboard --logdir runs/``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

__all__ = ["EventLog"]

log = logging.getLogger(__name__)


class EventLog:
    """A ``SummaryWriter`` in ``folder`` when ``enabled`` and tensorboard imports; otherwise every call is a no-op."""

    def __init__(self, folder: Path, enabled: bool = True, step: int = 0):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - optional
        except ImportError:
            log.info("TensorBoard logging is off: pip install tensorboard (or comfyui-rad[train]) to turn it on")
            return
        self.writer = SummaryWriter(str(folder), purge_step=step)
        log.info("TensorBoard events in %s (tensorboard --logdir %s)", folder, Path(folder).parent)

    def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        if self.writer is not None:
            for name, value in values.items():
                if value is not None:
                    self.writer.add_scalar(prefix + name, value, step)

    def image(self, tag: str, picture: torch.Tensor, step: int) -> None:
        """``picture`` [3,H,W] in [0,1]."""
        if self.writer is not None:
            self.writer.add_image(tag, picture.clamp(0, 1), step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
