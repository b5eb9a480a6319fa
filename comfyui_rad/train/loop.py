"""The RAD training loop (paper §3.4, §4.2; RAD_NOTES §4): LoRA on a guided-diffusion ADM, or a fresh preset.

Per optimiser step and micro-batch: this rank's share of the step's global samples (``stream.SampleStream``: crop,
noise state, eps, the per-pixel forward step ``losses.step_terms`` and tau in guided-diffusion's convention, each a
pure function of (seed, step, sample index), prepared ahead by worker threads), the model, the hybrid loss. Then
AdamW with gradient clipping and an EMA of the trained tensors. Under torchrun the model is wrapped in
DistributedDataParallel (``distributed.py``); since the samples do not depend on the number of processes, one
process at batch 8 and two at batch 4 train the same model, and a checkpoint (step, samples seen, optimiser) resumes
exactly under any number of processes with the same global batch (bitwise on CPU for the same one). LoRA A and fresh
weights are initialised from ``seed``; the held-out split and the preview masks and noise use ``seed`` too.

No host-device synchronisation in a step: losses stay on the device and are read at ``--log-every`` steps (where a
non-finite loss stops the run) and before checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .. import masks
from ..checkpoints import load_adm
from ..checks import check_folder, check_not_inputs, check_outputs
from ..devices import DTYPES, resolve_device
from ..fileio import file_sha256
from ..image_folders import IMAGE_READ_ERRORS, load_crop, scan_images
from ..imaging import save_image
from ..sampling import sample_ddim
from ..schedule import EMBEDDINGS, NoiseCurves, RADInfo, SpatialSchedule, rad_info
from .data import find_masks, split_holdout
from .distributed import DEFAULT_TIMEOUT, Distributed, StopRequest, elastic_restart
from .export import base_weights, export_checkpoint, export_weights
from .lora import add_lora, trainable_parameters
from .losses import q_sample, rad_loss, step_terms
from .noising import MASK_SAMPLINGS
from .options import API, check_ranges, resume_changes
from .presets import PRESETS, build_fresh, preset_config
from .lock import RunLock
from .speed import compile_model, enable_grad_checkpoint, peak_memory_mib, reset_peak_memory, use_channels_last
from .state import BEST_NAME, checkpoint_path, list_checkpoints, load_checkpoint, remove_partial_saves, save_checkpoint
from .stream import COLOR_AUGMENTS, SCALE_SAMPLINGS, SampleStream
from .tblog import EventLog
from .validate import Validation
from .validate import score as val_score

__all__ = ["TrainOptions", "Trainer", "EMBEDDINGS", "PRECISIONS"]

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TAU_CONVENTION = "gd"
_LOGGED = ("loss", "mse", "vb", "grad_norm")  # the metrics of metrics.jsonl and the progress bar
# What the trained tensors depend on: a checkpoint only resumes under the same values.
_STRUCTURE = ("kind", "model_config", "lora_rank", "lora_alpha", "schedule", "tau_convention", "embedding")


@dataclass
class TrainOptions:
    """A training run; field names match ``rad-train``'s options (``rad-train --help`` explains each)."""

    data: Path | None = None
    out: Path | None = None
    base: Path | None = None
    preset: str | None = None
    init: Path | None = None
    resolution: int | None = None
    num_head_channels: int | None = None
    num_heads: int | None = None
    learn_sigma: bool = True
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lr: float = 1e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema: float = 0.999
    batch_size: int = 8
    grad_accum: int = 1
    steps: int = 10000
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    workers: int = 2
    embedding: str = "spatial"
    mask_sampling: str = "perlin"
    vlb_weight: float = 1.0
    holdout: int = 4
    resize: bool = False
    scale_range: tuple[float, float] = (0.5, 1.0)
    scale_sampling: str = "uniform"
    color_augment: str = "off"
    flip: bool = True
    save_every: int = 1000
    keep_checkpoints: int = 3
    preview_every: int = 1000
    preview_steps: int = 20
    log_every: int = 50
    export: Path | None = None
    export_dtype: str = "fp32"
    resume: str | None = None
    force: bool = False
    grad_checkpoint: bool = False
    channels_last: bool | None = None
    compile: bool = False
    dist_timeout: float = DEFAULT_TIMEOUT
    dry_run: int = 0

    val_every: int = 1000
    val_steps: int = 25
    val_data: Path | None = None
    val_count: int = 8
    val_batch: int = 16
    log_dir: Path | None = None
    tensorboard: bool = True

    def check(self, name: Callable[[str], str] = API) -> None:
        """Raise ValueError naming the first bad option, as ``name`` spells it (``options.API``: the field, ``lr``;
        ``options.CLI``: the flag, ``--lr``)."""
        check_ranges(vars(self), name)
        if (self.base is None) == (self.preset is None):
            raise ValueError(f"give exactly one of {name('base')} (LoRA fine-tuning of a guided-diffusion ADM) or "
                             f"{name('preset')} (a fresh model: {', '.join(PRESETS)})")
        if self.init is not None and self.preset is None:
            raise ValueError(f"{name('init')} starts a {name('preset')} model from a trained one: give "
                             f"{name('preset')} too (the layout of {Path(self.init).name}); to fine-tune a "
                             f"guided-diffusion ADM with LoRA use {name('base')}")
        if self.data is None or self.out is None:
            raise ValueError(f"{name('data')} and {name('out')} are required to train")
        _check_paths(self, name)
        choices = {"embedding": EMBEDDINGS, "mask_sampling": MASK_SAMPLINGS, "precision": PRECISIONS,
                   "export_dtype": DTYPES, "scale_sampling": SCALE_SAMPLINGS,
                   "color_augment": COLOR_AUGMENTS}
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"{name(field)} {getattr(self, field)!r} is not one of {', '.join(allowed)}")
        if self.export is not None and Path(self.export).suffix.lower() != ".safetensors":
            raise ValueError(f"{name('export')} {self.export}: exports are .safetensors files: use a name ending "
                             "in .safetensors")


def _check_paths(opts: TrainOptions, name: Callable[[str], str]) -> None:
    """out a folder (not a file) outside data, export a file name that is not an input: ValueError naming them,
    before any work."""
    inputs = [(name(k), getattr(opts, k)) for k in ("data", "base", "init")]
    for field in ("out", "log_dir"):
        if getattr(opts, field) is not None:
            check_folder(getattr(opts, field), name(field))  # the run's folder: checkpoints, previews, metrics
            # inside data the scan of a resumed run would train on its own preview grids
            check_not_inputs([(name(field), getattr(opts, field))], inputs)
    if opts.export is not None:
        check_outputs([(name("export"), opts.export)], inputs)


def _warm_start(model: torch.nn.Module, path: Path, preset: str, n: Callable[[str], str] = API) -> dict[str, str]:
    """Copy a trained model's weights (``init``: same layout as ``preset``) into the fresh ``model``; returns what
    the run records of it (name and sha256). Errors name the options as ``n`` spells them."""
    trained = load_adm(path, device="cpu", dtype=torch.float32)
    mine, theirs = model.config.to_dict(), trained.config.to_dict()
    diffs = sorted(k for k in mine if mine[k] != theirs.get(k))
    if diffs:
        raise ValueError(f"{n('init')} {path.name} is not a {preset!r} model: its {', '.join(diffs)} differ "
                         f"({', '.join(f'{k} {theirs.get(k)!r} != {mine[k]!r}' for k in diffs[:3])}); "
                         f"give the {n('preset')} it was trained with (and its {n('resolution')} / head options)")
    info = rad_info(trained)
    if info.is_rad and info.tau_convention != TAU_CONVENTION:
        raise ValueError(f"{n('init')} {path.name} uses tau convention {info.tau_convention!r}; rad-train trains "
                         f"{TAU_CONVENTION!r}: convert it or start from a fresh {n('preset')}")
    model.load_state_dict(trained.state_dict())
    log.info("--init: every parameter starts from %s", path)
    return {"name": path.name, "sha256": file_sha256(path)}


def _decodable_holdout(paths: list[Path], size: int) -> list[Path]:
    """The held-out images that decode (previews need them all); each one that does not is dropped here, when the
    set is drawn, with a warning naming it, so that no preview and no resumed run dies on it later."""
    good = []
    for path in paths:
        try:
            load_crop(path, size)
            good.append(path)
        except IMAGE_READ_ERRORS as err:
            log.warning("held-out image %s cannot be decoded (%s): left out of the previews (and of training); "
                        "replace or remove it", path, str(err).splitlines()[0][:120])
    return good


def _warn_masks(paths: list[Path], root: Path, flag: str) -> None:
    """One warning when pictures in the training folder look like masks (``data.find_masks``)."""
    found, looked = find_masks(paths)
    if found:
        examples = ", ".join(f"{p.relative_to(root) if p.is_relative_to(root) else p} ({why})"
                             for p, why in found[:3])
        log.warning("%d of %d picture(s) looked at in %s %s look like masks, not photos: %s%s; they are trained on "
                    "as pictures: move them out of the folder", len(found), looked, flag, root, examples,
                    ", ..." if len(found) > 3 else "")


def _precision(name: str, device: torch.device, n: Callable[[str], str] = API) -> torch.dtype:
    """The autocast dtype of ``--precision``. Its "auto" is the trainer's own, not ``devices.resolve_dtype``'s:
    fp16 autocast needs a grad scaler and loses range, so without bf16 training stays in fp32."""
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if name == "fp16" and device.type != "cuda":
        raise ValueError(f"{n('precision')} fp16 needs a CUDA device (this run is on {device}): use fp32 or bf16")
    return DTYPES[name]


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n:,}"


def hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Throughput:
    """Measured training speed (the first step, with its allocations and compilation, not counted) and the time
    projected for the rest of ``--steps``. Reading the clock synchronises CUDA, so it is read rarely: once after
    ``report_after`` steps, at log steps, at the end."""

    def __init__(self, step: int, steps: int, images_per_step: int, device: torch.device, report_after: int = 10):
        self.first, self.steps, self.images, self.device = step, steps, images_per_step, device
        self.report_after = report_after
        self.start = self.last_log = time.perf_counter()
        self.mark: tuple[int, float] | None = None
        self.now_step = step

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def tick(self, step: int) -> None:
        self.now_step = step
        if step == self.first + 1:
            self.mark = (step, self._now())
        elif step == self.first + 1 + self.report_after and step < self.steps:
            rate = self.steps_per_s()
            log.info("measured %.2f images/s (%.3f s per step of %d images) over steps %d-%d: %s projected for the "
                     "%d steps left to --steps %d", rate * self.images, 1 / rate, self.images, self.mark[0] + 1, step,
                     hms((self.steps - step) / rate), self.steps - step, self.steps)

    def steps_per_s(self) -> float:
        """Steps per second since the first step (including it when it is the only one)."""
        now = self._now()
        if self.mark is None or self.now_step <= self.mark[0]:
            return max(self.now_step - self.first, 1) / max(now - self.start, 1e-9)
        return (self.now_step - self.mark[0]) / max(now - self.mark[1], 1e-9)

    def since_log(self, step: int) -> float:
        now = self._now()
        seconds, self.last_log = now - self.last_log, now
        return seconds

    def report(self, device: torch.device) -> dict[str, float]:
        rate = self.steps_per_s()
        left = max(self.steps - self.first, 0)
        return {"steps": self.now_step - self.first, "measured_steps": self.now_step - (self.mark or (self.first,))[0],
                "images_per_step": self.images, "steps_s": rate, "images_s": rate * self.images,
                "peak_mib": peak_memory_mib(device), "projected_s": left / rate, "projected_steps": left}

    def summary(self) -> str:
        elapsed = time.perf_counter() - self.start
        done = self.now_step - self.first
        return (f"trained steps {self.first + 1}-{self.now_step} in {hms(elapsed)} "
                f"({done / max(elapsed, 1e-9):.3f} it/s, {done * self.images / max(elapsed, 1e-9):.2f} images/s)")


class Trainer:
    """One training run: build (or resume) it with ``Trainer(options)``, then ``fit()``, then ``export(path)``."""

    def __init__(self, options: TrainOptions, names: Callable[[str], str] = API):
        """``names``: how errors name the options (``options.API``: fields; ``options.CLI``: flags)."""
        options.check(names)
        self.opts = opts = options
        self.name = names
        device = resolve_device(opts.device)
        self.dist = Distributed.from_env(device, opts.dist_timeout)
        self.lock: RunLock | None = None
        try:
            self._build(device)
        except BaseException:
            self.dist.close()
            self.lock and self.lock.release()
            raise

    def _build(self, device: torch.device) -> None:
        opts, dist = self.opts, self.dist
        self.device = dist.device_for(device)
        self.autocast_dtype = _precision(opts.precision, self.device, self.name)
        self.is_main = dist.is_main
        self.writes = self.is_main and not opts.dry_run  # rank 0 alone writes; a dry run writes nothing
        if opts.export is not None and Path(opts.export).exists() and not opts.force and not opts.dry_run:
            raise FileExistsError(f"{self.name('export')} {opts.export} already exists: pass {self.name('force')} "
                                  "to overwrite it, or choose another name")
        self.out = Path(opts.out)
        resume = opts.resume
        if resume is None and elastic_restart() and list_checkpoints(self.out):
            resume = "latest"
            log.warning("torchrun restart %d: resuming from the newest checkpoint in %s", elastic_restart(), self.out)
        self._prepare_out(resumed=resume is not None)
        dist.barrier("waiting for rank 0 to prepare the run folder")
        state = load_checkpoint(self.out if resume == "latest" else resume) if resume else None
        self.curves = NoiseCurves()
        self.model, self.run = self._build_model()
        self.model.rad_info = RADInfo(self.curves, self.run["tau_convention"], opts.embedding,
                                      is_rad=opts.mask_sampling != "full")
        self.model.to(self.device).train()
        self.params = trainable_parameters(self.model, lora=self.run["kind"] == "lora")
        self.global_batch = opts.batch_size * dist.world * opts.grad_accum
        self.run.update(world_size=dist.world, global_batch=self.global_batch)
        self._log_parameters()

        self.size = self.run["model_config"]["image_size"]
        paths = scan_images(opts.data, self.size, opts.workers, flag=self.name("data"))
        train, self.holdout = split_holdout(paths, opts.holdout, opts.seed, Path(opts.data))
        self.holdout = _decodable_holdout(self.holdout, self.size)
        if self.is_main:
            _warn_masks(train, Path(opts.data), self.name("data"))
        log.info("%d training image(s) in %s, %d held out; %dx%d %s", len(train), opts.data, len(self.holdout),
                 self.size, self.size,
                 "resized" if opts.resize else f"crops, scale {opts.scale_range} ({opts.scale_sampling})")
        per_pixel = opts.embedding == "spatial" and opts.mask_sampling != "full"  # plain DDPM maps are uniform
        self.stream = SampleStream(train, self.size, self.curves, seed=opts.seed, batch=opts.batch_size,
                                   world=dist.world, rank=dist.rank, accum=opts.grad_accum, resize=opts.resize,
                                   scale_range=tuple(opts.scale_range), scale_sampling=opts.scale_sampling,
                                   flip=opts.flip, mask_sampling=opts.mask_sampling, per_pixel_tau=per_pixel,
                                   tau_convention=self.run["tau_convention"], color_augment=opts.color_augment,
                                   workers=opts.workers)
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=opts.lr, weight_decay=opts.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        # the EMA lives where it is written: on rank 0
        self.ema = {k: p.detach().clone() for k, p in self.params.items()} if opts.ema > 0 and self.is_main else {}
        self.step = 0
        self.interrupted: str | None = None
        self.report: dict[str, Any] = {}
        self._preview_batch = None
        self.best: dict[str, Any] | None = None  # the best validation: step and score
        self.clock: Throughput | None = None
        if state is not None:
            self._restore(state)
        self.forward = self._fast_model()
        self.validation = self._validation(opts) if self.writes and opts.val_every else None
        log_dir = Path(opts.log_dir) if opts.log_dir is not None else self.out / "tensorboard"
        self.events = EventLog(log_dir, opts.tensorboard and self.writes, self.step)

    def _fast_model(self):
        """The module the steps call: the model with --grad-checkpoint / channels-last, in DDP, compiled."""
        opts, model = self.opts, self.model
        if opts.grad_checkpoint:
            log.info("activation checkpointing of %d ResBlocks and attention blocks", enable_grad_checkpoint(model))
        self.channels_last = opts.channels_last if opts.channels_last is not None else self.device.type == "cuda"
        if self.channels_last:
            use_channels_last(model)
        forward = self.ddp = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            forward = self.ddp = DistributedDataParallel(model, device_ids=ids)  # ADMs have no buffers to broadcast
        forward = forward or model
        if opts.compile:
            forward = compile_model(forward, self.device)
        return forward

    # ------------------------------------------------------------------------------------------------ building

    def _prepare_out(self, resumed: bool) -> None:
        """Refuse to mix with another run's files unless --resume (continue) or --force (its files are deleted)."""
        if self.opts.dry_run:
            return  # writes nothing, refuses nothing: a dry run leaves the folder as it is
        if self.is_main:  # one run per folder (lock.py), before anything in it is deleted or written
            self.out.mkdir(parents=True, exist_ok=True)
            self.lock = RunLock(self.out)
        ours = list_checkpoints(self.out) + sorted((self.out / "previews").glob("step-*.png"))
        ours += [p for p in (self.out / "metrics.jsonl", self.out / "checkpoints" / BEST_NAME) if p.exists()]
        if ours and not resumed:  # every rank checks (so that all stop alike); rank 0 alone deletes
            if not self.opts.force:
                raise FileExistsError(
                    f"{self.out} already holds a training run ({len(list_checkpoints(self.out))} checkpoint(s)): "
                    "pass --resume to continue it, --force to start over (its checkpoints, previews and metrics "
                    "are deleted), or choose another --out")
            if self.is_main:
                for path in ours:
                    path.unlink()
                log.warning("--force: deleted %d file(s) of the previous run in %s", len(ours), self.out)
        if self.is_main:
            remove_partial_saves(self.out)

    def _build_model(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        opts = self.opts
        heads = {k: v for k, v in (("num_head_channels", opts.num_head_channels), ("num_heads", opts.num_heads))
                 if v is not None}
        if opts.num_heads is not None and opts.num_head_channels is None:
            heads["num_head_channels"] = -1
        if opts.resolution is not None:
            heads["image_size"] = opts.resolution
        run = {"schedule": self.curves.to_dict(), "tau_convention": TAU_CONVENTION, "embedding": opts.embedding,
               "mask_sampling": opts.mask_sampling, "ema": opts.ema, "lora_rank": None, "lora_alpha": None,
               "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(opts).items()
                           if k not in ("force", "resume", "dry_run")}}
        if opts.base is not None:
            model = load_adm(opts.base, **heads)
            cfg = model.config
            if cfg.num_classes is not None:
                raise ValueError(f"{Path(opts.base).name} is class-conditional ({cfg.num_classes} classes); "
                                 "rad-train trains on unlabelled images: use an unconditional checkpoint")
            if cfg.in_channels != 3:
                raise ValueError(f"{Path(opts.base).name} takes {cfg.in_channels} input channels, not RGB images")
            info = rad_info(model)
            if info.is_rad and info.tau_convention != TAU_CONVENTION:  # e.g. the authors' checkpoint-N/ folder
                run["tau_convention"] = info.tau_convention
                log.info("%s is a RAD model in the %r tau convention: the adapter trains in it too",
                         Path(opts.base).name, info.tau_convention)
            model.train()
            add_lora(model, opts.lora_rank, opts.lora_alpha, opts.seed)
            run.update(kind="lora", lora_rank=opts.lora_rank, lora_alpha=float(opts.lora_alpha),
                       base={"path": str(Path(opts.base).resolve()), "name": Path(opts.base).name,
                             "sha256": file_sha256(base_weights(opts.base))})
        else:
            cfg = dataclasses.replace(preset_config(opts.preset, opts.resolution, opts.learn_sigma),
                                      **{k: v for k, v in heads.items() if k != "image_size"})
            model = build_fresh(cfg, opts.seed)
            run.update(kind="full", preset=opts.preset)
            if opts.init is not None:
                run["init"] = _warm_start(model, Path(opts.init), opts.preset, self.name)
        factor = 2 ** (len(cfg.channel_mult) - 1)
        if cfg.image_size % factor:
            fit = cfg.image_size // factor * factor or factor
            raise ValueError(f"{self.name('resolution')} {cfg.image_size} is not a multiple of {factor}, which this ADM's "
                             f"{len(cfg.channel_mult)} levels need: use e.g. {fit}")
        run["model_config"] = cfg.to_dict()
        return model, run

    def _log_parameters(self) -> None:
        total = sum(p.numel() for p in self.model.parameters())
        trained = sum(p.numel() for p in self.params.values())
        how = (f"LoRA rank {self.run['lora_rank']} (alpha {self.run['lora_alpha']:g}) + time layers in full"
               if self.run["kind"] == "lora" else f"fresh preset {self.run['preset']!r}, all parameters")
        log.info("parameters: %s trained, %s frozen (%s in all, %.2f%% trained): %s", _count(trained),
                 _count(total - trained), _count(total), 100.0 * trained / total, how)
        precision = {torch.float32: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}
        opts, world = self.opts, self.dist.world
        log.info("device %s, %s, %s embedding, %s noise states, vlb weight %g", self.device,
                 precision[self.autocast_dtype], opts.embedding, opts.mask_sampling, opts.vlb_weight)
        log.info("global batch %d = %d per process x %d process(es) x %d accumulation%s", self.global_batch,
                 opts.batch_size, world, opts.grad_accum, f" ({self.dist.backend}, rank 0 writes)" if world > 1 else "")

    # -------------------------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "run": self.run,
            "trainable": {k: p.detach().to("cpu", copy=True) for k, p in self.params.items()},
            "ema": {k: e.to("cpu", copy=True) for k, e in self.ema.items()},
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "data": self.stream.state_dict(self.step), "best": self.best,
        }

    def save(self) -> Path | None:
        """A checkpoint of this step, written by rank 0 (atomically) once every rank has finished the step."""
        self.dist.barrier(f"waiting for every process to finish step {self.step} before the checkpoint")
        path = None
        if self.writes:
            path = save_checkpoint(checkpoint_path(self.out, self.step), self.state_dict(), self.opts.keep_checkpoints)
        self.dist.barrier(f"waiting for rank 0 to write the checkpoint of step {self.step}")
        return path

    def _restore(self, state: dict[str, Any]) -> None:
        diffs = [k for k in _STRUCTURE if state["run"].get(k) != self.run.get(k)]
        if self.run["kind"] == "lora" and state["run"]["base"]["sha256"] != self.run["base"]["sha256"]:
            diffs.append("base (sha256)")
        if diffs:
            raise ValueError(f"checkpoint {state['path']} is from a run with other {', '.join(diffs)} than these "
                             "options: repeat the run's --base/--preset, --resolution, head, LoRA and --embedding "
                             "options, or start a new --out")
        recipe, harmless = resume_changes(state["run"]["options"], self.run["options"])
        n = self.name
        listed = lambda changes: ", ".join(f"{n(k)} {a!r} -> {b!r}" for k, (a, b) in changes.items())  # noqa: E731
        if recipe and not self.opts.force:
            raise ValueError(f"resuming {self.out} with {listed(recipe)}: the run was trained with the first "
                             "value(s), so it would not continue exactly; repeat them (rad-train --resume reads "
                             f"them from {self.out / 'config.toml'} when the flags are left out), or pass "
                             f"{n('force')} to continue with the change")
        harmless.pop("steps", None)  # the usual way to continue a run: not worth a warning
        if recipe or harmless:
            log.warning("resuming with changed options: %s", listed({**recipe, **harmless}))
        if set(state["trainable"]) != set(self.params):
            raise ValueError(f"checkpoint {state['path']} holds other trained tensors than this model has")
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(state["trainable"][k])
            if self.ema:
                source = state["ema"] or state["trainable"]
                for k, e in self.ema.items():
                    e.copy_(source[k])
        self.optimizer.load_state_dict(state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.stream.load_state_dict(state["data"])
        self.step = int(state["step"])
        self.best = state.get("best")
        log.info("resumed %s at step %d", self.out, self.step)

    # ----------------------------------------------------------------------------------------------- training

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype,
                              enabled=self.autocast_dtype != torch.float32)

    def _micro_batch(self, micro: int) -> dict[str, torch.Tensor]:
        mb = self.stream.micro_batch(self.step, micro).to(self.device)
        x_t = q_sample(mb.x0, mb.eps, mb.terms)
        if self.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            output = self.forward(x_t, mb.tau)
        return rad_loss(output, mb.x0, mb.eps, mb.terms, self.opts.vlb_weight)

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimiser step over ``grad_accum`` micro-batches; returns loss, mse, vb (this rank's means) and the
        gradient norm as 0-d tensors on the device: reading them synchronises, so the loop does it at log time."""
        accum = self.opts.grad_accum
        totals = None
        for micro in range(accum):
            sync = micro == accum - 1 or self.ddp is None  # DDP all-reduces the gradients once per step
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                losses = self._micro_batch(micro)
                self.scaler.scale(losses["loss"] / accum).backward()
            part = torch.stack([losses["loss"].detach(), losses["mse"], losses["vb"]]) / accum
            totals = part if totals is None else totals + part
        params = list(self.params.values())
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.opts.grad_clip if self.opts.grad_clip > 0 else math.inf)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema:
            with torch.no_grad():
                for k, p in self.params.items():
                    self.ema[k].lerp_(p.detach(), 1.0 - self.opts.ema)
        self.step += 1
        return {"loss": totals[0], "mse": totals[1], "vb": totals[2], "grad_norm": grad_norm.detach()}

    def fit(self, callback: Callable[[dict], None] | None = None) -> None:
        """Train to ``steps`` (total, counting resumed ones), checkpointing and previewing as the options say; with
        ``dry_run`` only that many steps, writing nothing, then ``report`` holds the measured throughput.

        ``callback`` gets a dict per step: step, steps, seconds (of this step), images (the global batch); at log
        steps also loss, mse, vb, grad_norm (means over the steps since the last log, over all processes). A
        SIGINT/SIGTERM stops every process after the current step with a checkpoint (``interrupted`` says which).
        """
        opts = self.opts
        if self.step >= opts.steps and not opts.dry_run:
            log.info("%s is at step %d, not below --steps %d: nothing to train", self.out, self.step, opts.steps)
            return
        last = self.step + opts.dry_run if opts.dry_run else opts.steps
        self.clock = Throughput(self.step, opts.steps, self.global_batch, self.device)
        self._log_validation_cost()
        window, in_window = None, 0  # sums of the metrics since the last log, and how many steps
        saved = previewed = validated = False
        reset_peak_memory(self.device)
        with StopRequest() as stop:
            while self.step < last:
                tick = time.perf_counter()
                with self.dist.collective(f"step {self.step + 1} (its gradient all-reduce)"):
                    metrics = self.train_step()
                step_sums = torch.stack([metrics[k] for k in _LOGGED]).float()
                window = step_sums if window is None else window + step_sums  # on the device: no sync
                in_window += 1
                info = {"step": self.step, "steps": opts.steps, "seconds": time.perf_counter() - tick,
                        "images": self.global_batch}
                if self.step == last or (opts.log_every and self.step % opts.log_every == 0):
                    info.update(self._read_metrics(window, in_window))
                    window, in_window = None, 0
                self.clock.tick(self.step)
                if callback is not None:
                    callback(info)
                saved = bool(opts.save_every and self.step % opts.save_every == 0)
                if saved:
                    self._check_finite()
                    self.save()
                previewed = bool(opts.preview_every and self.step % opts.preview_every == 0)
                if previewed and self.writes:
                    self.preview()
                validated = bool(opts.val_every and self.step % opts.val_every == 0)
                if validated:
                    self.validate()
                if self.dist.any(stop.requested is not None):
                    self.interrupted = stop.requested or "a stop request of another process"
                    break
        if self.interrupted:
            if not saved:
                self._check_finite()
                self.save()
            log.warning("stopped at step %d (%s)%s", self.step, self.interrupted,
                        "" if opts.dry_run else " with a checkpoint: --resume continues the run")
            return
        if opts.dry_run:
            self.report = self.clock.report(self.device)
            return
        if not saved:
            self._check_finite()
            self.save()
        if opts.preview_every and not previewed and self.writes:
            self.preview()
        if not validated:
            self.validate()
        log.info("%s", self.clock.summary())

    def _check_finite(self) -> None:
        bad = [k for k, p in self.params.items() if not torch.isfinite(p).all()]
        if bad:
            raise FloatingPointError(f"{len(bad)} trained tensor(s) hold inf/NaN at step {self.step} (first: "
                                     f"{bad[0]}): lower {self.name('lr')}, or use {self.name('precision')} "
                                     "fp32/bf16, and resume from the last checkpoint")

    def _read_metrics(self, sums: torch.Tensor, count: int) -> dict[str, float]:
        """Means of the metrics over the ``count`` steps since the last log and over the processes, from their
        ``sums`` [4] (``_LOGGED``): the one host-device sync of the loop."""
        row = dict(zip(_LOGGED, self.dist.mean(sums / count).tolist()))
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"the loss is {row['loss']} between steps {self.step - count + 1} and "
                                     f"{self.step}: lower {self.name('lr')}, or use {self.name('precision')} "
                                     "fp32/bf16, and resume from the last checkpoint")
        if self.writes:
            seconds = self.clock.since_log(self.step)
            out = {"step": self.step, **row, "lr": self.optimizer.param_groups[0]["lr"], "ema_decay": self.opts.ema,
                   "it_s": count / max(seconds, 1e-9), "images_s": count * self.global_batch / max(seconds, 1e-9)}
            self._append_metrics(out)
            self.events.scalars(self.step, {k: v for k, v in out.items() if k != "step"}, "train/")
        return row

    # ------------------------------------------------------------------------------------- previews and export

    @contextlib.contextmanager
    def ema_weights(self):
        """Inside: the model runs with its EMA weights (when EMA is on) and in eval mode; restored on exit."""
        backup = {k: p.detach().clone() for k, p in self.params.items()} if self.ema else {}
        self.model.eval()
        try:
            with torch.no_grad():
                for k, p in self.params.items():
                    if self.ema:
                        p.copy_(self.ema[k])
            yield self.model
        finally:
            with torch.no_grad():
                for k, saved in backup.items():
                    self.params[k].copy_(saved)
            self.model.train()

    def _preview_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._preview_batch is None:
            images = torch.stack([load_crop(p, self.size) for p in self.holdout]).float() / 127.5 - 1
            g = torch.Generator().manual_seed(self.opts.seed)
            mask = masks.perlin_mask(len(self.holdout), self.size, self.size, generator=g,
                                     cell_size=(self.size / 8, self.size / 2), coverage=(0.3, 0.5))[:, None]
            self._preview_batch = images, mask
        return self._preview_batch

    def preview(self) -> Path | None:
        """A PNG grid in <out>/previews/: per held-out image, masked input | RAD result | truth. Fixed masks and
        seed; a deterministic DDIM pass of ``preview_steps`` steps with the EMA weights."""
        if not self.holdout:
            return None
        images, mask = self._preview_inputs()
        with self.ema_weights() as model, self._autocast():  # model.rad_info: its embedding, as trained
            result = sample_ddim(model, images.to(self.device), SpatialSchedule(mask), self.opts.preview_steps,
                                 torch.Generator().manual_seed(self.opts.seed)).cpu()
        masked = torch.where(mask > 0, torch.zeros_like(images), images)  # the hole in mid gray
        rows = torch.cat([masked, result, images], dim=-1)  # [N, 3, S, 3S]
        grid = torch.cat(list(rows), dim=-2)[None]
        path = self.out / "previews" / f"step-{self.step:07d}.png"
        save_image((grid + 1) / 2, path, force=True)
        self.events.image("preview", (grid[0] + 1) / 2, self.step)
        return path

    # ----------------------------------------------------------------------------------------------- validation

    def _validation(self, opts: TrainOptions) -> Validation | None:
        """The fixed validation set: --val-data's first --val-count images, else the held-out ones."""
        if opts.val_data is not None:
            paths = scan_images(opts.val_data, self.size, flag=self.name("val_data"))[:opts.val_count]
        else:
            paths = self.holdout
        if not paths:
            log.info("no validation scores: no held-out images (%s 0) and no %s", self.name("holdout"),
                     self.name("val_data"))
            return None
        return Validation.from_files(paths, self.size, steps=opts.val_steps, seed=opts.seed, batch=opts.val_batch)

    def _log_validation_cost(self) -> None:
        """Say what one validation costs, in calls and (one call timed) seconds, before the first."""
        v = self.validation
        if v is None:
            return
        per_call = v.time_call(self.model, self._autocast)
        self._val_estimate = per_call * v.calls
        log.info("validation every %d steps: %d image(s) x %d mask kinds (%s), DDIM %d steps eta 1: %d network "
                 "evaluations in %d batched calls, about %.1f s (one call: %.3f s)", self.opts.val_every,
                 v.images.shape[0], len(v.kinds), ", ".join(v.kinds), v.steps, v.evaluations, v.calls,
                 self._val_estimate, per_call)

    def validate(self) -> dict[str, dict[str, float | None]] | None:
        """Score the EMA weights on the validation set (rank 0); a new best step is saved as checkpoints/best.pt.
        Returns mask kind -> means (None without a validation set)."""
        if self.validation is None:
            return None
        tick = time.perf_counter()
        with self.ema_weights() as model, self._autocast():
            scores = self.validation.run(model)
        seconds = time.perf_counter() - tick
        value = val_score(scores)
        improved = self.best is None or value > self.best["score"]
        if improved:
            self.best = {"step": self.step, "score": value}
        self._append_metrics({"step": self.step, "val": scores, "val_score": value, "val_seconds": seconds,
                              "best_step": self.best["step"]})
        for kind, means in scores.items():
            self.events.scalars(self.step, {f"{k}/{kind}": v for k, v in means.items()}, "val/")
        self.events.scalars(self.step, {"score": value, "seconds": seconds}, "val/")
        self.events.flush()
        log.info("validation at step %d: hole PSNR %s dB, mean %.3f (best: step %d) in %.1f s", self.step,
                 " / ".join(f"{k} {s['hole_psnr']:.2f}" for k, s in scores.items() if s["hole_psnr"] is not None),
                 value, self.best["step"], seconds)
        if not getattr(self, "_val_share_logged", False) and self.clock is not None and self.opts.val_every:
            self._val_share_logged = True
            train = self.opts.val_every / self.clock.steps_per_s()
            log.info("one validation took %.1f s, %.1f%% of the training time between two (%d steps: %.1f s)",
                     seconds, 100 * seconds / (train + seconds), self.opts.val_every, train)
        if improved:
            save_checkpoint(self.out / "checkpoints" / BEST_NAME, self.state_dict())
        return scores

    def _append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def trained_tensors(self, use_ema: bool = True) -> dict[str, torch.Tensor]:
        """Adapter-file name -> trained tensor (EMA when on and ``use_ema``), on the CPU."""
        source = self.ema if (self.ema and use_ema) else {k: p.detach() for k, p in self.params.items()}
        return {k: v.to("cpu", copy=True) for k, v in source.items()}

    def export(self, path: str | Path, dtype: str | None = None, use_ema: bool = True,
               force: bool | None = None, best: bool = False,
               recommend: tuple[str, float | None] | None = None) -> Path:
        """Write the adapter (LoRA runs) or full model (fresh presets): EMA weights when on (``export.py``); with
        ``best``, those of the step with the best validation score (checkpoints/best.pt), when there is one.
        ``recommend``: (start, strength) the file records as the start it is best used with (none when None)."""
        force = self.opts.force if force is None else force
        if best:
            found = self.out / "checkpoints" / BEST_NAME
            if found.is_file():
                state = load_checkpoint(found)
                log.info("exporting the best validated step %d (mean hole PSNR %.3f dB), not the last (%d)",
                         state["step"], state["best"]["score"], self.step)
                return export_checkpoint(found, path, dtype=dtype or self.opts.export_dtype, use_ema=use_ema,
                                         force=force, recommend=recommend)
            log.warning("no validation score recorded (no %s): exporting the last step, %d", found, self.step)
        else:
            log.info("exporting the last step, %d", self.step)
        return export_weights(path, self.run, self.trained_tensors(use_ema), step=self.step,
                              ema=bool(self.ema and use_ema), dtype=dtype or self.opts.export_dtype,
                              force=force, recommend=recommend)

    def close(self) -> None:
        """Stop the data threads, leave the process group, give the run folder back."""
        self.stream.close()
        self.events.close()
        self.dist.close()
        self.lock and self.lock.release()

