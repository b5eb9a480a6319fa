"""The RAD training loop (paper §3.4, §4.2; RAD_NOTES §4): LoRA on a guided-diffusion ADM, or a fresh preset.

Per optimiser step and micro-batch, in this order: a batch of crops (the image stream's generator), one noise state
per image (mask and step, ``noising``) and the noise eps (the trainer's noise generator), the per-pixel forward step
(``losses.step_terms``), tau (spatial map, or one scalar per image) in guided-diffusion's convention, the model, the
hybrid loss. Then AdamW with gradient clipping and an EMA of the trained tensors. All random draws come from two CPU
``torch.Generator``s (data: seeded ``seed``; noise: ``seed + 1``) whose states the checkpoints hold, so a resumed run
continues exactly (bitwise on CPU). LoRA A and fresh weights are initialised from ``seed``; the held-out split and
the preview masks and noise use ``seed`` too, from generators of their own.
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
from ..checkpoints import file_sha256, load_adm
from ..devices import DTYPES, resolve_device
from ..imaging import load_crop, save_image, scan_images
from ..sampling import sample_ddim
from ..schedule import EMBEDDINGS, NoiseCurves, RADInfo, SpatialSchedule
from .data import ImageStream, split_holdout
from .export import export_weights
from .lora import add_lora, trainable_parameters
from .losses import q_sample, rad_loss, step_terms
from .noising import MASK_SAMPLINGS, sample_states
from .presets import PRESETS, build_fresh, preset_config
from .state import checkpoint_path, list_checkpoints, load_checkpoint, save_checkpoint

__all__ = ["TrainOptions", "Trainer", "EMBEDDINGS", "PRECISIONS"]

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TAU_CONVENTION = "gd"
# What the trained tensors depend on: a checkpoint only resumes under the same values.
_STRUCTURE = ("kind", "model_config", "lora_rank", "lora_alpha", "schedule", "tau_convention", "embedding")


@dataclass
class TrainOptions:
    """A training run; field names match ``rad-train``'s options (``rad-train --help`` explains each)."""

    data: Path | None = None
    out: Path | None = None
    base: Path | None = None
    preset: str | None = None
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

    def check(self) -> None:
        """Raise ValueError naming the first bad option."""
        if (self.base is None) == (self.preset is None):
            raise ValueError("give exactly one of --base CKPT (LoRA fine-tuning of a guided-diffusion ADM) or "
                             f"--preset NAME (a fresh model: {', '.join(PRESETS)})")
        if self.data is None or self.out is None:
            raise ValueError("--data DIR and --out DIR are required to train")
        if self.resolution is not None and self.resolution < 1:
            raise ValueError(f"--resolution must be a positive number of pixels, got {self.resolution}")
        positive = {"--steps": self.steps, "--batch-size": self.batch_size, "--grad-accum": self.grad_accum,
                    "--preview-steps": self.preview_steps, "--lora-rank": self.lora_rank}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        for name, value in {"--save-every": self.save_every, "--preview-every": self.preview_every,
                            "--log-every": self.log_every, "--workers": self.workers, "--holdout": self.holdout,
                            "--keep-checkpoints": self.keep_checkpoints, "--vlb-weight": self.vlb_weight,
                            "--weight-decay": self.weight_decay, "--grad-clip": self.grad_clip}.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"--ema must be in [0, 1) (0 = off), got {self.ema}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        choices = {"--embedding": (self.embedding, EMBEDDINGS), "--mask-sampling": (self.mask_sampling, MASK_SAMPLINGS),
                   "--precision": (self.precision, PRECISIONS), "--export-dtype": (self.export_dtype, DTYPES)}
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name} {value!r} is not one of {', '.join(allowed)}")
        if self.export is not None and Path(self.export).suffix.lower() != ".safetensors":
            raise ValueError(f"--export {self.export}: exports are .safetensors files: use a name ending in "
                             ".safetensors")


def _precision(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype of ``--precision``. Its "auto" is the trainer's own, not ``devices.resolve_dtype``'s:
    fp16 autocast needs a grad scaler and loses range, so without bf16 training stays in fp32."""
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if name == "fp16" and device.type != "cuda":
        raise ValueError(f"--precision fp16 needs a CUDA device (this run is on {device}): use fp32 or bf16")
    return DTYPES[name]


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n:,}"


class Trainer:
    """One training run: build (or resume) it with ``Trainer(options)``, then ``fit()``, then ``export(path)``."""

    def __init__(self, options: TrainOptions):
        options.check()
        self.opts = opts = options
        self.device = resolve_device(opts.device)
        self.autocast_dtype = _precision(opts.precision, self.device)
        if opts.export is not None and Path(opts.export).exists() and not opts.force:
            raise FileExistsError(f"--export {opts.export} already exists: pass --force to overwrite it, or choose "
                                  "another name")
        state = load_checkpoint(opts.out if opts.resume == "latest" else opts.resume) if opts.resume else None
        self.out = Path(opts.out)
        self._prepare_out(resumed=state is not None)
        self.curves = NoiseCurves()
        self.model, self.run = self._build_model()
        self.model.rad_info = RADInfo(self.curves, TAU_CONVENTION, opts.embedding, is_rad=opts.mask_sampling != "full")
        self.model.to(self.device).train()
        self.params = trainable_parameters(self.model, lora=self.run["kind"] == "lora")
        self._log_parameters()

        self.size = self.run["model_config"]["image_size"]
        paths = scan_images(opts.data, self.size, opts.workers)
        train, self.holdout = split_holdout(paths, opts.holdout, opts.seed, Path(opts.data))
        log.info("%d training image(s) in %s, %d held out; %dx%d %s", len(train), opts.data, len(self.holdout),
                 self.size, self.size, "resized" if opts.resize else f"crops, scale {opts.scale_range}")
        self.stream = ImageStream(train, self.size, seed=opts.seed, resize=opts.resize,
                                  scale_range=tuple(opts.scale_range), flip=opts.flip, workers=opts.workers)
        self.noise = torch.Generator().manual_seed(opts.seed + 1)
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=opts.lr, weight_decay=opts.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)
        self.ema = {k: p.detach().clone() for k, p in self.params.items()} if opts.ema > 0 else {}
        self.step = 0
        self._preview_batch = None
        if state is not None:
            self._restore(state)

    # ------------------------------------------------------------------------------------------------ building

    def _prepare_out(self, resumed: bool) -> None:
        """Refuse to mix with another run's files unless --resume (continue) or --force (its files are deleted)."""
        ours = list_checkpoints(self.out) + sorted((self.out / "previews").glob("step-*.png"))
        ours += [p for p in (self.out / "metrics.jsonl",) if p.exists()]
        if ours and not resumed:
            if not self.opts.force:
                raise FileExistsError(
                    f"{self.out} already holds a training run ({len(list_checkpoints(self.out))} checkpoint(s)): "
                    "pass --resume to continue it, --force to start over (its checkpoints, previews and metrics "
                    "are deleted), or choose another --out")
            for path in ours:
                path.unlink()
            log.warning("--force: deleted %d file(s) of the previous run in %s", len(ours), self.out)
        self.out.mkdir(parents=True, exist_ok=True)

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
                           if k not in ("force", "resume")}}
        if opts.base is not None:
            model = load_adm(opts.base, **heads)
            cfg = model.config
            if cfg.num_classes is not None:
                raise ValueError(f"{Path(opts.base).name} is class-conditional ({cfg.num_classes} classes); "
                                 "rad-train trains on unlabelled images: use an unconditional checkpoint")
            if cfg.in_channels != 3:
                raise ValueError(f"{Path(opts.base).name} takes {cfg.in_channels} input channels, not RGB images")
            model.train()
            add_lora(model, opts.lora_rank, opts.lora_alpha, opts.seed)
            run.update(kind="lora", lora_rank=opts.lora_rank, lora_alpha=float(opts.lora_alpha),
                       base={"path": str(Path(opts.base).resolve()), "name": Path(opts.base).name,
                             "sha256": file_sha256(opts.base)})
        else:
            cfg = dataclasses.replace(preset_config(opts.preset, opts.resolution, opts.learn_sigma),
                                      **{k: v for k, v in heads.items() if k != "image_size"})
            model = build_fresh(cfg, opts.seed)
            run.update(kind="full", preset=opts.preset)
        factor = 2 ** (len(cfg.channel_mult) - 1)
        if cfg.image_size % factor:
            fit = cfg.image_size // factor * factor or factor
            raise ValueError(f"--resolution {cfg.image_size} is not a multiple of {factor}, which this ADM's "
                             f"{len(cfg.channel_mult)} levels need: use e.g. {fit}")
        run["model_config"] = cfg.to_dict()
        return model, run

    def _log_parameters(self) -> None:
        total = sum(p.numel() for p in self.model.parameters())
        trained = sum(p.numel() for p in self.params.values())
        how = (f"LoRA rank {self.run['lora_rank']} (alpha {self.run['lora_alpha']:g}) + time layers in full"
               if self.run["kind"] == "lora" else f"fresh preset {self.run['preset']!r}, all parameters")
        log.info("training %s of %s parameters (%.2f%%): %s", _count(trained), _count(total),
                 100.0 * trained / total, how)
        precision = {torch.float32: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}
        log.info("device %s, %s, batch %d x %d accumulation, %s embedding, %s noise states, vlb weight %g",
                 self.device, precision[self.autocast_dtype], self.opts.batch_size,
                 self.opts.grad_accum, self.opts.embedding, self.opts.mask_sampling, self.opts.vlb_weight)

    # -------------------------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "run": self.run,
            "trainable": {k: p.detach().to("cpu", copy=True) for k, p in self.params.items()},
            "ema": {k: e.to("cpu", copy=True) for k, e in self.ema.items()},
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": {"noise": self.noise.get_state()}, "data": self.stream.state_dict(),
        }

    def save(self) -> Path:
        return save_checkpoint(checkpoint_path(self.out, self.step), self.state_dict(), self.opts.keep_checkpoints)

    def _restore(self, state: dict[str, Any]) -> None:
        diffs = [k for k in _STRUCTURE if state["run"].get(k) != self.run.get(k)]
        if self.run["kind"] == "lora" and state["run"]["base"]["sha256"] != self.run["base"]["sha256"]:
            diffs.append("base (sha256)")
        if diffs:
            raise ValueError(f"checkpoint {state['path']} is from a run with other {', '.join(diffs)} than these "
                             "options: repeat the run's --base/--preset, --resolution, head, LoRA and --embedding "
                             "options, or start a new --out")
        changed = {k: (v, self.run["options"].get(k)) for k, v in state["run"]["options"].items()
                   if self.run["options"].get(k) != v and k not in ("steps", "workers")}
        if changed:
            log.warning("resuming with changed options: %s",
                        ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
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
        self.noise.set_state(state["rng"]["noise"])
        self.stream.load_state_dict(state["data"])
        self.step = int(state["step"])
        log.info("resumed %s at step %d", self.out, self.step)

    # ----------------------------------------------------------------------------------------------- training

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype,
                              enabled=self.autocast_dtype != torch.float32)

    def _micro_batch(self) -> dict[str, torch.Tensor]:
        opts, size = self.opts, self.size
        x0 = self.stream.next_batch(opts.batch_size)
        mask, t = sample_states(opts.batch_size, size, size, self.curves, self.noise, opts.mask_sampling)
        eps = torch.randn(x0.shape, generator=self.noise)
        terms, abar = step_terms(self.curves, mask, t)
        if opts.embedding == "spatial" and opts.mask_sampling != "full":
            tau = self.curves.timestep(abar, TAU_CONVENTION)
        else:  # one timestep per image: Cfg. 2, or plain DDPM states (their maps are uniform: the same, cheaper)
            tau = self.curves.scalar_timestep(abar, TAU_CONVENTION)
        x0, eps, tau, terms = x0.to(self.device), eps.to(self.device), tau.to(self.device), terms.to(self.device)
        with self._autocast():
            output = self.model(q_sample(x0, eps, terms), tau)
        return rad_loss(output, x0, eps, terms, self.opts.vlb_weight)

    def train_step(self) -> dict[str, float]:
        """One optimiser step over ``grad_accum`` micro-batches; returns loss, mse, vb and the gradient norm."""
        accum = self.opts.grad_accum
        totals = {"loss": 0.0, "mse": 0.0, "vb": 0.0}
        for _ in range(accum):
            losses = self._micro_batch()
            if not torch.isfinite(losses["loss"]):
                raise FloatingPointError(f"the loss is {losses['loss'].item()} at step {self.step + 1}: lower --lr, "
                                         "or use --precision fp32/bf16, and resume from the last checkpoint")
            self.scaler.scale(losses["loss"] / accum).backward()
            for k in totals:
                totals[k] += losses[k].item() / accum
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
        return {**totals, "grad_norm": float(grad_norm)}

    def fit(self, callback: Callable[[dict], None] | None = None) -> None:
        """Train to ``steps`` (total, counting resumed ones), checkpointing and previewing as the options say.

        ``callback`` gets a dict per step: step, steps, loss, mse, vb, grad_norm, seconds (of this step).
        """
        opts = self.opts
        if self.step >= opts.steps:
            log.info("%s is at step %d, not below --steps %d: nothing to train", self.out, self.step, opts.steps)
            return
        window, start, first = [], time.perf_counter(), self.step
        saved = previewed = False
        while self.step < opts.steps:
            tick = time.perf_counter()
            metrics = self.train_step()
            metrics.update(step=self.step, steps=opts.steps, seconds=time.perf_counter() - tick)
            window.append(metrics)
            if callback is not None:
                callback(metrics)
            if opts.log_every and (self.step % opts.log_every == 0 or self.step == opts.steps):
                self._write_metrics(window)
                window = []
            saved = bool(opts.save_every and self.step % opts.save_every == 0)
            if saved:
                self.save()
            previewed = bool(opts.preview_every and self.step % opts.preview_every == 0)
            if previewed:
                self.preview()
        if not saved:
            self.save()
        if opts.preview_every and not previewed:
            self.preview()
        elapsed = time.perf_counter() - start
        log.info("trained steps %d-%d in %.0f s (%.3f it/s)", first + 1, self.step, elapsed,
                 (self.step - first) / elapsed)

    def _write_metrics(self, window: list[dict]) -> None:
        keys = ("loss", "mse", "vb", "grad_norm")
        row = {"step": self.step, **{k: sum(m[k] for m in window) / len(window) for k in keys},
               "it_s": len(window) / max(sum(m["seconds"] for m in window), 1e-9)}
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

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
        return path

    def trained_tensors(self, use_ema: bool = True) -> dict[str, torch.Tensor]:
        """Adapter-file name -> trained tensor (EMA when on and ``use_ema``), on the CPU."""
        source = self.ema if (self.ema and use_ema) else {k: p.detach() for k, p in self.params.items()}
        return {k: v.to("cpu", copy=True) for k, v in source.items()}

    def export(self, path: str | Path, dtype: str | None = None, use_ema: bool = True,
               force: bool | None = None) -> Path:
        """Write the adapter (LoRA runs) or full model (fresh presets): EMA weights when on (``export.py``)."""
        return export_weights(path, self.run, self.trained_tensors(use_ema), step=self.step,
                              ema=bool(self.ema and use_ema), dtype=dtype or self.opts.export_dtype,
                              force=self.opts.force if force is None else force)

    def close(self) -> None:
        self.stream.close()

