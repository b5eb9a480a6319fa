"""Fast training steps: activation checkpointing, channels-last, torch.compile, throughput and memory readings.

- ``enable_grad_checkpoint``: each ResBlock and AttentionBlock recomputes its activations in the backward pass
  (``torch.utils.checkpoint``, non-reentrant) instead of keeping them: memory for compute, the same gradients.
  A per-pixel ``SpatialEmbedding`` caches its resized maps; every checkpointed block runs (and is recomputed) on a
  copy of the cache as it was when the block was entered, so the recomputation repeats exactly the original ops,
  and what it adds is shared with the later blocks afterwards.
- ``channels_last``: NHWC memory format for the convolutions (helps tensor cores on CUDA; off on the CPU).
- ``compile_model``: ``torch.compile``; CUDA only here, with a clear message otherwise.
"""

from __future__ import annotations

import copy
import functools
import logging
import resource
import sys

import torch
from torch.utils.checkpoint import checkpoint

from ..adm import AttentionBlock, ResBlock, SpatialEmbedding

__all__ = ["enable_grad_checkpoint", "use_channels_last", "compile_model", "peak_memory_mib", "reset_peak_memory"]

log = logging.getLogger(__name__)


def _checkpointed(forward, x: torch.Tensor, emb=None) -> torch.Tensor:
    if not torch.is_grad_enabled():
        return forward(x, emb)
    if not isinstance(emb, SpatialEmbedding):
        return checkpoint(forward, x, emb, use_reentrant=False)
    entry = dict(emb._cache)
    views = []

    def run(x):
        view = copy.copy(emb)
        view._cache = dict(entry)  # the cache as it was when the block was entered, for the first run and the replay
        views.append(view)
        return forward(x, view)

    out = checkpoint(run, x, use_reentrant=False)
    emb._cache.update(views[0]._cache)
    return out


def enable_grad_checkpoint(model: torch.nn.Module) -> int:
    """Checkpoint every ResBlock and AttentionBlock of ``model`` in place; returns how many blocks."""
    count = 0
    for module in model.modules():
        if isinstance(module, (ResBlock, AttentionBlock)) and not getattr(module, "_rad_checkpointed", False):
            module.forward = functools.partial(_checkpointed, module.forward)
            module._rad_checkpointed = True
            count += 1
    return count


def use_channels_last(model: torch.nn.Module) -> None:
    model.to(memory_format=torch.channels_last)


def compile_model(model: torch.nn.Module, device: torch.device):
    """``torch.compile(model)``; a ValueError that says what to do where it is not supported."""
    if device.type != "cuda":
        raise ValueError(f"--compile is supported on CUDA devices only (this run is on {device}): drop --compile")
    if sys.platform == "win32":
        raise ValueError("--compile needs triton, which does not run on Windows: drop --compile")
    try:
        import triton  # noqa: F401
    except ImportError:
        raise ValueError("--compile needs triton (pip install triton), which is not installed: drop --compile "
                         "or install it") from None
    return torch.compile(model)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory in MiB: allocated CUDA memory on CUDA; this process's peak RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)
