"""rad-train under torchrun: the process group, who writes, stop signals and collective failures.

``torchrun --nproc_per_node N -m comfyui_rad.train ...`` (or ``rad-train`` under torchrun) sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT; ``Distributed.from_env`` reads them and joins the group: NCCL on CUDA, gloo on CPU,
with a timeout, so a collective that waits on a dead rank fails after ``timeout`` seconds instead of hanging. A
second, gloo, group carries the tiny per-step control messages (stop requests) on the CPU, so that they never make
the CUDA stream wait. Without those variables (or with WORLD_SIZE=1) everything here is a no-op on one process.

Rank 0 alone writes to the run folder (checkpoints, previews, metrics, export); every rank reads a checkpoint to
resume, so for several machines ``--out`` must be on a filesystem they share.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

__all__ = ["Distributed", "CollectiveError", "StopRequest", "elastic_restart"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 600.0


class CollectiveError(RuntimeError):
    """A collective failed or timed out: another process of the run stopped."""


def elastic_restart() -> int:
    """How often torchrun has restarted this run's workers (TORCHELASTIC_RESTART_COUNT; 0 without torchrun)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


_INITS = [0]
_PEER_LOST = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "watchdog", "collective")


def _is_collective_failure(err: BaseException) -> bool:
    """A lost or silent peer (not an out-of-memory error or a bug that happens to raise a RuntimeError)."""
    if isinstance(err, torch.OutOfMemoryError):
        return False
    return isinstance(err, getattr(dist, "DistError", ())) or any(w in str(err).lower() for w in _PEER_LOST)


def _init_group(backend: str, rank: int, world: int, local: int, timeout: float, device: torch.device) -> None:
    """init_process_group from torchrun's variables. Under torchrun's shared rendezvous store its keys outlive a
    restart (torch's env:// handler assumes a fresh store per attempt), so the restarted workers would read the dead
    ones' addresses; the keys go under a prefix of the restart count and of this process's init count instead."""
    wait = datetime.timedelta(seconds=timeout)
    kwargs = {"device_id": torch.device("cuda", local)} if device.type == "cuda" else {}
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
        dist.init_process_group(backend, timeout=wait, **kwargs)
        return
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=wait)
    _INITS[0] += 1
    prefix = dist.PrefixStore(f"rad-train/restart-{elastic_restart()}/init-{_INITS[0]}", store)
    dist.init_process_group(backend, store=prefix, rank=rank, world_size=world, timeout=wait, **kwargs)


@dataclass
class Distributed:
    """This process's place in the run: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    _control: object = field(default=None, repr=False)
    _owned: bool = False  # this object started the default group (and ends it in ``close``)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device, timeout: float = DEFAULT_TIMEOUT) -> Distributed:
        """Join torchrun's process group when WORLD_SIZE > 1 (NCCL for CUDA devices, gloo otherwise)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(timeout=timeout)
        missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise ValueError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start distributed runs with "
                             "torchrun --nproc_per_node N -m comfyui_rad.train ...")
        rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl" and not dist.is_nccl_available():
            raise ValueError("this torch build has no NCCL: distributed CUDA training needs it (or use --device cpu)")
        owned = not dist.is_initialized()
        if owned:  # else: the caller's group
            _init_group(backend, rank, world, local, timeout, device)
        control = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout))
        return cls(rank, world, local, backend, timeout, control, owned)

    def device_for(self, device: torch.device) -> torch.device:
        """One GPU per process: cuda means cuda:LOCAL_RANK under torchrun."""
        if self.enabled and device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        return device

    @contextlib.contextmanager
    def collective(self, what: str):
        """Turn a failed or timed-out collective into ``CollectiveError`` with a message that says what to do."""
        try:
            yield
        except RuntimeError as err:  # gloo/NCCL report timeouts and lost peers as RuntimeErrors (or DistErrors)
            if not self.enabled or not _is_collective_failure(err):
                raise
            raise CollectiveError(
                f"rank {self.rank}/{self.world}: {what} failed ({str(err).splitlines()[0][:160]}): another process "
                f"of this run stopped or did not answer within {self.timeout:g} s (see its log). Restart the run "
                "with --resume: it continues from the newest checkpoint") from None

    def barrier(self, what: str = "waiting for the other processes") -> None:
        if self.enabled:
            with self.collective(what):
                dist.barrier(group=self._control)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a CPU all-reduce on the gloo control group)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1 if flag else 0], dtype=torch.int32)
        with self.collective("agreeing on a stop request"):
            dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self._control)
        return bool(value.item())

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of ``values`` (a small float tensor on the training device)."""
        if not self.enabled:
            return values
        values = values.clone()
        with self.collective("averaging the logged losses"):
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values / self.world

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group(self._control)
                if self._owned:
                    dist.destroy_process_group()
        self._control, self._owned = None, False


class StopRequest:
    """SIGINT / SIGTERM handlers that ask the trainer to stop after the current step (a second SIGINT stops at
    once). torchrun forwards both to its workers. Restores the previous handlers on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: str | None = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = name
        log.warning("%s: stopping after this step with a checkpoint (Ctrl-C again to stop at once)", name)

    def __enter__(self) -> StopRequest:
        try:
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread: no handlers, Ctrl-C raises KeyboardInterrupt as usual
            self._old = {}
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
