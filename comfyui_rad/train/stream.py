"""The global sample stream: what global sample k of optimiser step s is, whatever the number of processes.

Step s trains on G = batch x processes x accumulation samples, k = 0 .. G-1. Rank r's micro-batch j of the step
takes k = j*(batch*processes) + r*batch + i, i < batch, so one process at batch 8 and two at batch 4 (or one at
batch 4 with 2 accumulation steps) see the same G samples per step and train the same model (float reduction order
aside). Each sample is a pure function of (seed, s, k, its place n in the image order):

- the image: position n = (samples before step s) + k of an endless sequence of epochs, each a permutation of the
  training images drawn from a generator seeded (seed, epoch); an image that fails to decode is replaced by the
  next position's (the same on every rank: decoding a file fails the same way everywhere);
- the crop (scale, x, y, flip: four uniform draws), from a generator seeded (seed, "crop", s, k);
- the noise state (mask and step, ``noising.sample_states`` for one image) and then eps, from a generator seeded
  (seed, "noise", s, k);
- with ``--color-augment palette``, a colour transform of the whole crop (``color_transform``), from a generator
  seeded (seed, "color", s, k).

Seeds are mixed by ``numpy.random.SeedSequence``. Because nothing carries over from sample to sample, a resumed run
needs only the step and the number of samples seen (and continues exactly under any number of processes whose
global batch is the same), and samples can be prepared ahead, in any order, by worker threads: ``SampleStream``
keeps the next micro-batches decoding (and their noise states computed) while the model trains on this one.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..image_folders import IMAGE_READ_ERRORS, DataError, load_crop
from ..schedule import NoiseCurves
from .losses import StepTerms, step_terms
from .noising import sample_states

__all__ = ["sample_generator", "color_transform", "MicroBatch", "SampleStream"]

log = logging.getLogger(__name__)

_ORDER, _CROP, _NOISE, _COLOR = 1, 2, 3, 4


def sample_generator(seed: int, *key: int) -> torch.Generator:
    """A CPU generator seeded from (seed, *key) through SeedSequence: independent streams for distinct keys."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32 & 0xFFFFFFFF, *key]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]) & (2**63 - 1))


@dataclass
class MicroBatch:
    """One rank's micro-batch: x0 and eps [B,3,S,S] float32, tau (model timesteps: [B,1,S,S] or [B]) and the
    per-pixel ``StepTerms`` of the loss."""

    x0: torch.Tensor
    eps: torch.Tensor
    tau: torch.Tensor
    terms: StepTerms

    def to(self, device: torch.device) -> MicroBatch:
        if device.type == "cpu":
            return self
        move = lambda t: t.pin_memory().to(device, non_blocking=True)  # noqa: E731
        return MicroBatch(move(self.x0), move(self.eps), move(self.tau),
                          StepTerms(**{k: move(v) for k, v in vars(self.terms).items()}))


SCALE_SAMPLINGS = ("uniform", "log")
"""How a crop's side is drawn inside ``--scale-range``: uniformly, or log-uniformly (every zoom level as often)."""

COLOR_AUGMENTS = ("off", "palette")
"""``--color-augment``: off, or palette: every crop recoloured as a whole (``color_transform``), so that the training
pictures' colours cannot be learnt and a hole's colours must come from the kept pixels around it."""

_PERMUTATIONS = list(itertools.permutations(range(3)))
_LUMA = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)  # Rec. 601, the Y of YIQ


def _grey_axis_rotation(angle: float) -> torch.Tensor:
    """[3,3] rotation by ``angle`` (radians) about the grey axis (1,1,1)/sqrt(3) (Rodrigues): greys stay put, hues
    turn."""
    k = torch.full((3, 3), 1 / 3, dtype=torch.float64)  # the projection onto the grey axis
    cross = torch.tensor([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], dtype=torch.float64) / 3 ** 0.5
    return k + math.cos(angle) * (torch.eye(3, dtype=torch.float64) - k) + math.sin(angle) * cross


def color_transform(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random recolouring of the whole uint8 [3,H,W] ``image`` (``--color-augment palette``), uint8 [3,H,W] back,
    on the 8-bit grid the VLB's decoder assumes.

    Eleven uniform draws from ``generator``, each part applied with its probability, in this order: a permutation of
    the channels (p 0.5), a rotation of the hue by a uniform angle about the grey axis (p 0.9), per-channel gains in
    [0.6, 1.6] log-uniformly (p 0.5), clamping to [0,1], a gamma in [0.6, 1.6] log-uniformly (p 0.5), grey (Rec. 601
    luma in all three channels, p 0.1).
    """
    u = torch.rand(11, generator=generator, dtype=torch.float64).tolist()
    x = image.to(torch.float64) / 255
    matrix = torch.eye(3, dtype=torch.float64)
    if u[0] < 0.5:
        matrix = matrix[list(_PERMUTATIONS[min(int(u[1] * 6), 5)])]
    if u[2] < 0.9:
        matrix = _grey_axis_rotation(2 * math.pi * u[3]) @ matrix
    if u[4] < 0.5:
        matrix = torch.diag(torch.tensor(u[5:8], dtype=torch.float64).mul(math.log(1.6 / 0.6)).exp().mul(0.6)) @ matrix
    x = torch.einsum("ij,jhw->ihw", matrix, x).clamp(0, 1)
    if u[8] < 0.5:
        x = x ** (0.6 * (1.6 / 0.6) ** u[9])
    if u[10] < 0.1:
        x = torch.einsum("j,jhw->hw", _LUMA, x).expand_as(x)
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


class SampleStream:
    """This rank's micro-batches of the global sample stream (module doc), prepared ``ahead`` micro-batches in
    advance by ``workers`` threads (0: in the calling thread)."""

    def __init__(self, paths: list[Path], size: int, curves: NoiseCurves, *, seed: int, batch: int, world: int = 1,
                 rank: int = 0, accum: int = 1, resize: bool = False, scale_range: tuple[float, float] = (0.5, 1.0),
                 scale_sampling: str = "uniform", flip: bool = True, mask_sampling: str = "perlin",
                 per_pixel_tau: bool = True, tau_convention: str = "gd", color_augment: str = "off",
                 workers: int = 0, ahead: int = 2):
        lo, hi = scale_range
        if not 0 < lo <= hi <= 1:
            raise DataError(f"--scale-range must satisfy 0 < low <= high <= 1, got {lo} {hi}")
        if scale_sampling not in SCALE_SAMPLINGS:
            raise DataError(f"--scale-sampling {scale_sampling!r} is not one of {', '.join(SCALE_SAMPLINGS)}")
        if color_augment not in COLOR_AUGMENTS:
            raise DataError(f"--color-augment {color_augment!r} is not one of {', '.join(COLOR_AUGMENTS)}")
        self.scale_sampling, self.color_augment = scale_sampling, color_augment
        self.paths, self.size, self.curves, self.seed = list(paths), size, curves, seed
        self.batch, self.world, self.rank, self.accum = batch, world, rank, accum
        self.resize, self.scale_range, self.flip = resize, (lo, hi), flip
        self.mask_sampling, self.per_pixel_tau, self.tau_convention = mask_sampling, per_pixel_tau, tau_convention
        self.global_batch = batch * world * accum
        self.start_step, self.start_samples = 0, 0
        self.bad: set[int] = set()
        self._orders: dict[int, torch.Tensor] = {}
        self._orders_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="rad-data") if workers > 0 else None
        self._ahead = max(1, ahead)
        self._pending: dict[tuple[int, int], list[Future]] = {}

    # ------------------------------------------------------------------------------------------ the definition

    def samples_before(self, step: int) -> int:
        """Samples of the image order used by steps < ``step`` (0-based step index)."""
        return self.start_samples + (step - self.start_step) * self.global_batch

    def global_indices(self, micro: int) -> range:
        """The k of this rank's micro-batch ``micro`` in its step."""
        first = micro * self.batch * self.world + self.rank * self.batch
        return range(first, first + self.batch)

    def _order(self, epoch: int) -> torch.Tensor:
        with self._orders_lock:  # worker threads share the cache (a small folder turns many epochs per step)
            if epoch not in self._orders:
                if len(self._orders) > 4:
                    self._orders.pop(min(self._orders))
                self._orders[epoch] = torch.randperm(len(self.paths),
                                                     generator=sample_generator(self.seed, _ORDER, epoch))
            return self._orders[epoch]

    def image_at(self, n: int) -> int:
        """The image index at position n of the endless epoch sequence."""
        return int(self._order(n // len(self.paths))[n % len(self.paths)])

    def crop(self, step: int, k: int) -> tuple[float, float, float, bool]:
        u = torch.rand(4, generator=sample_generator(self.seed, _CROP, step, k), dtype=torch.float64).tolist()
        lo, hi = self.scale_range
        side = lo * (hi / lo) ** u[0] if self.scale_sampling == "log" else lo + (hi - lo) * u[0]
        scale, fx, fy = (1.0, 0.5, 0.5) if self.resize else (side, u[1], u[2])
        return scale, fx, fy, self.flip and u[3] < 0.5

    def _decode(self, step: int, k: int) -> torch.Tensor:
        """uint8 [3,S,S] crop of global sample k of ``step``; unreadable images give way to the next position's."""
        n, crop = self.samples_before(step) + k, self.crop(step, k)
        for tries in range(len(self.paths) + 1):
            index = self.image_at(n + tries)
            if index in self.bad:
                continue
            try:
                return load_crop(self.paths[index], self.size, crop)
            except IMAGE_READ_ERRORS as err:
                self.bad.add(index)
                log.warning("skipping unreadable image %s (%s); %d skipped so far", self.paths[index],
                            str(err).splitlines()[0][:120], len(self.bad))
        raise DataError("none of the training images can be decoded: check the --data folder")

    def _noise(self, step: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """mask [1,1,S,S], t [1], eps [1,3,S,S] of global sample k of ``step``."""
        g = sample_generator(self.seed, _NOISE, step, k)
        mask, t = sample_states(1, self.size, self.size, self.curves, g, self.mask_sampling)
        return mask, t, torch.randn(1, 3, self.size, self.size, generator=g)

    def image(self, step: int, k: int) -> torch.Tensor:
        """uint8 [3,S,S]: the crop of global sample k of ``step``, recoloured under ``--color-augment palette``."""
        crop = self._decode(step, k)
        if self.color_augment == "palette":
            crop = color_transform(crop, sample_generator(self.seed, _COLOR, step, k))
        return crop

    def sample(self, step: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, StepTerms]:
        """(x0 [1,3,S,S] in [-1,1], eps, tau, terms) of global sample k of ``step``."""
        x0 = self.image(step, k)[None].float() / 127.5 - 1
        mask, t, eps = self._noise(step, k)
        terms, abar = step_terms(self.curves, mask, t)
        if self.per_pixel_tau:
            tau = self.curves.timestep(abar, self.tau_convention)
        else:
            tau = self.curves.scalar_timestep(abar, self.tau_convention)
        return x0, eps, tau, terms

    # ----------------------------------------------------------------------------------------- serving batches

    def _submit(self, step: int, micro: int) -> list:
        key = (step, micro)
        if key not in self._pending:
            ks = self.global_indices(micro)
            if self._pool is None:
                return [self.sample(step, k) for k in ks]
            self._pending[key] = [self._pool.submit(self.sample, step, k) for k in ks]
        return self._pending[key]

    def micro_batch(self, step: int, micro: int) -> MicroBatch:
        """This rank's micro-batch ``micro`` of (0-based) ``step``; schedules the next ones ahead."""
        parts = self._submit(step, micro)
        self._pending.pop((step, micro), None)
        if self._pool is not None:
            nxt = (step, micro)
            for _ in range(self._ahead):
                nxt = (nxt[0], nxt[1] + 1) if nxt[1] + 1 < self.accum else (nxt[0] + 1, 0)
                self._submit(*nxt)
            parts = [p.result() for p in parts]
        x0, eps, tau, terms = zip(*parts)
        stacked = StepTerms(**{f: torch.cat([getattr(t, f) for t in terms]) for f in vars(terms[0])})
        return MicroBatch(torch.cat(x0), torch.cat(eps), torch.cat(tau), stacked)

    def close(self) -> None:
        if self._pool is not None:
            for futures in self._pending.values():
                for f in futures:
                    f.cancel()
            self._pool.shutdown()
            self._pool = None
        self._pending.clear()

    # ------------------------------------------------------------------------------------------------ resuming

    def state_dict(self, step: int) -> dict:
        """What a checkpoint at ``step`` (steps done) needs to continue the stream."""
        return {"kind": "global", "step": step, "samples": self.samples_before(step),
                "global_batch": self.global_batch, "count": len(self.paths),
                "bad": sorted(str(self.paths[i]) for i in self.bad)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "global":
            raise ValueError("this checkpoint was written before the global sample stream (an older rad-train): "
                             "it cannot be resumed by this version; export it with --export-from, or start anew")
        if state["count"] != len(self.paths):
            log.warning("the data folder now has %d training images, the checkpoint %d: the data order changes "
                        "(the run is no longer an exact continuation)", len(self.paths), state["count"])
        if state["global_batch"] != self.global_batch:
            log.warning("global batch %d (batch x processes x accumulation), the checkpoint's run had %d: the run "
                        "continues, but not as the original run would have", self.global_batch,
                        state["global_batch"])
        self.start_step, self.start_samples = int(state["step"]), int(state["samples"])
        index = {str(p): i for i, p in enumerate(self.paths)}
        self.bad = {index[p] for p in state["bad"] if p in index}
        self._pending.clear()
