"""``rad-train``: train a RAD adapter (LoRA on a guided-diffusion ADM) or a small RAD model, and export it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch

from ..checks import EXIT_STATUS, ArgumentParser, check_outputs
from ..devices import DTYPES
from ..errors import describe_error, run_main, setup_logging
from ..fileio import atomic_write
from ..settings import add_recommend_start_arguments
from .distributed import CollectiveError
from .export import export_checkpoint
from .loop import EMBEDDINGS, PRECISIONS, Trainer, TrainOptions, hms
from .noising import MASK_SAMPLINGS
from .options import CLI, CONFIG_NAME, RANGES, config_text, read_config
from .presets import PRESETS
from .state import BEST_NAME
from .stream import COLOR_AUGMENTS, SCALE_SAMPLINGS

log = logging.getLogger("comfyui_rad")

EXAMPLES = """examples:
  LoRA on a guided-diffusion checkpoint (the paper's practice):
    rad-train --data faces/ --base ffhq_10m.pt --out runs/ffhq --steps 300000 --batch-size 16 --resize \\
              --export rad-ffhq.safetensors
  a small model from scratch on the CPU:
    rad-train --data photos/ --preset small64 --out runs/s64 --steps 50000 --export rad-small64.safetensors
  a plain DDPM base (no RAD), then RAD as LoRA on it:
    rad-train --data photos/ --preset small64 --mask-sampling full --out runs/base --export base.safetensors
    rad-train --data photos/ --base base.safetensors --out runs/rad --export rad-on-base.safetensors
  8 GPUs on one machine (--batch-size is per process: a global batch of 8 x 16 = 128), or check first:
    torchrun --standalone --nproc_per_node 8 -m comfyui_rad.train --data faces/ --base ffhq_10m.pt \\
             --out runs/ffhq8 --steps 100000 --batch-size 16 --resize --export rad-ffhq.safetensors
    rad-train --data faces/ --base ffhq_10m.pt --out runs/ffhq --batch-size 16 --resize --dry-run
  continue a run (its settings come from runs/s64/config.toml), export a checkpoint:
    rad-train --out runs/s64 --resume --steps 80000
    rad-train --export-from runs/s64 --export rad-small64.safetensors
  a settings file (flags override it), accelerate instead of torchrun, the scores in TensorBoard:
    rad-train --print-config > run.toml; rad-train --config run.toml --steps 2000
    accelerate launch --multi_gpu --num_processes 8 -m comfyui_rad.train --config run.toml
    tensorboard --logdir runs/
  the whole path at toy scale, a few minutes on one CPU thread (a 16 px plain base, a RAD adapter on it):
    rad-train --data photos/ --preset tiny --mask-sampling full --out runs/toy-base --steps 200 \\
              --batch-size 8 --val-every 0 --export toy-base.safetensors
    rad-train --data photos/ --base toy-base.safetensors --out runs/toy-rad --steps 200 --batch-size 8 \\
              --val-every 100 --val-steps 10 --export toy-rad.safetensors --export-best
    rad-inpaint --model toy-base.safetensors --adapter toy-rad.safetensors --image photo.png --mask box -o out.png
"""


def R(field: str):
    """The argparse type of a numeric option, from the one range table (``options.RANGES``)."""
    return RANGES[field].argtype()


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="rad-train", epilog=EXAMPLES + "\n" + EXIT_STATUS.replace("Ctrl-C:", "Ctrl-C: --resume continues;"),
        description="Train RAD (region-aware diffusion) inpainting: LoRA on a guided-diffusion ADM (--base) or a "
                    "fresh model (--preset), with the paper's two-phase per-pixel noise and Perlin masks.",
    )
    d = TrainOptions()
    g = p.add_argument_group("settings file")
    g.add_argument("--config", type=Path, metavar="FILE.toml",
                   help="read settings from this TOML file (any option, under its name with _ for -: batch_size = "
                        "8; paths relative to the working folder); flags on the command line override it")
    g.add_argument("--print-config", action="store_true",
                   help="print a complete commented settings file (every option at its default) and exit: "
                        "rad-train --print-config > run.toml")
    g = p.add_argument_group("data")
    g.add_argument("--data", type=Path, help="folder of training images (recursive; png/jpg/jpeg/webp)")
    g.add_argument("--resize", action="store_true",
                   help="use each image whole: centre square resized to the resolution (default: random crops)")
    g.add_argument("--scale-range", type=R("scale_range"),
                   nargs=2, metavar=("LOW", "HIGH"), default=d.scale_range,
                   help="random crops span this fraction of the image's short side, uniformly (never fewer source "
                        "pixels than the resolution), then are resized: a random downscale (default 0.5 1.0)")
    g.add_argument("--scale-sampling", choices=SCALE_SAMPLINGS, default=d.scale_sampling,
                   help="how the crop side is drawn in --scale-range: uniform (default), or log: log-uniformly, so "
                        "every zoom level comes as often and a low bound under the resolution gives many crops at "
                        "native resolution, the windows that fit=crop and tiles feed a model (e.g. --scale-range "
                        "0.05 1 --scale-sampling log)")
    g.add_argument("--color-augment", choices=COLOR_AUGMENTS, default=d.color_augment,
                   help="off (default), or palette: recolour each crop as a whole (channel permutation, hue "
                        "rotation, colour gains, gamma, grey, each at random) so that the model cannot learn the "
                        "training pictures' palette and takes a hole's colours from the pixels around it")
    g.add_argument("--no-flip", dest="flip", action="store_false", help="no random horizontal flips")
    g.add_argument("--holdout", type=R("holdout"), default=d.holdout,
                   help=f"images held out for previews, never trained on (default {d.holdout})")
    g.add_argument("--workers", type=R("workers"), default=d.workers,
                   help=f"threads decoding images (default {d.workers}; 0 = in the training thread)")

    g = p.add_argument_group("model")
    g.add_argument("--base", type=Path, help="guided-diffusion ADM checkpoint to fine-tune with LoRA")
    g.add_argument("--preset", choices=sorted(PRESETS), help="train a fresh model of this layout instead")
    g.add_argument("--init", type=Path, metavar="MODEL",
                   help="start the --preset model from this trained one (same layout, e.g. the built-in "
                        "rad_default.safetensors) and train every parameter: a warm start instead of a fresh init")
    g.add_argument("--resolution", type=R("resolution"), help="training image size (default: the model's image_size)")
    g.add_argument("--num-head-channels", type=R("num_head_channels"),
                   help="attention head width (default 64 for --base)")
    g.add_argument("--num-heads", type=R("num_heads"),
                   help="attention head count (guided-diffusion's num_heads)")
    g.add_argument("--no-learn-sigma", dest="learn_sigma", action="store_false",
                   help="fresh models predict eps only (3 outputs, MSE loss; default: eps and variance)")
    g.add_argument("--lora-rank", type=R("lora_rank"), default=d.lora_rank, help=f"LoRA rank (default {d.lora_rank})")
    g.add_argument("--lora-alpha", type=R("lora_alpha"), default=d.lora_alpha,
                   help=f"LoRA alpha (default {d.lora_alpha:g})")

    g = p.add_argument_group("RAD recipe")
    g.add_argument("--embedding", choices=EMBEDDINGS, default=d.embedding,
                   help="spatial: per-pixel timestep map (RAD, default); scalar: one timestep per image, that of "
                        "the mean noise level (the paper's Cfg. 2 ablation)")
    g.add_argument("--mask-sampling", choices=MASK_SAMPLINGS, default=d.mask_sampling,
                   help="perlin: binary Perlin mask + uniform step (the paper, default); async: mean noise level "
                        "and spatial spread drawn separately (AsyncPatch-style soft states); mixed: half each; "
                        "full: every pixel at one uniform step, i.e. plain DDPM training (a non-RAD base model, "
                        "the paper's pretrained ADM)")
    g.add_argument("--vlb-weight", type=R("vlb_weight"), default=d.vlb_weight,
                   help=f"weight of the variance VLB term in bits/dim (default {d.vlb_weight:g}, guided-diffusion's; "
                        "0 = eps MSE only)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=R("steps"), default=d.steps, help=f"optimiser steps in total (default {d.steps})")
    g.add_argument("--batch-size", type=R("batch_size"), default=d.batch_size,
                   help=f"images per micro-batch ({d.batch_size})")
    g.add_argument("--grad-accum", type=R("grad_accum"), default=d.grad_accum,
                   help="micro-batches per optimiser step (1)")
    g.add_argument("--lr", type=R("lr"), default=d.lr, help=f"AdamW learning rate (default {d.lr:g})")
    g.add_argument("--weight-decay", type=R("weight_decay"), default=d.weight_decay,
                   help=f"AdamW weight decay ({d.weight_decay:g})")
    g.add_argument("--grad-clip", type=R("grad_clip"), default=d.grad_clip, help="gradient norm clip (1.0; 0 = off)")
    g.add_argument("--ema", type=R("ema"), default=d.ema,
                   help=f"EMA decay (default {d.ema:g}; 0 = off)")
    g.add_argument("--seed", type=R("seed"), default=d.seed, help="seed of everything random (default 0)")
    g.add_argument("--device", default=d.device, help="auto (cuda if available), cpu, cuda, cuda:N")
    g.add_argument("--threads", type=R("threads"), default=0,
                   help="CPU threads for torch (default: torch's choice; 1 is often faster on a busy machine)")
    g.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="autocast dtype: auto = bf16 on CUDA when supported, else fp32; fp16 uses a grad scaler")

    g = p.add_argument_group("speed and scale (torchrun: one process per GPU, gloo on CPU, NCCL on CUDA)")
    g.add_argument("--grad-checkpoint", action="store_true",
                   help="recompute ResBlock/attention activations in the backward pass: less memory, ~30%% more "
                        "compute, the same gradients")
    g.add_argument("--channels-last", dest="channels_last", action="store_true", default=None,
                   help="NHWC memory format (default: on for CUDA, off on the CPU)")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="keep NCHW on CUDA")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA with triton; off by default)")
    g.add_argument("--dist-timeout", type=R("dist_timeout"), default=d.dist_timeout,
                   help=f"seconds a process waits for the others before it stops with an error (default "
                        f"{d.dist_timeout:g}); torchrun only")
    g.add_argument("--dry-run", nargs="?", type=R("dry_run"), const=5, default=0, metavar="STEPS",
                   help="build everything, train STEPS steps (default 5), print the throughput, memory peak and the "
                        "time projected for --steps; writes nothing")

    g = p.add_argument_group("run folder")
    g.add_argument("--out", type=Path, help="run folder: checkpoints/, previews/, metrics.jsonl")
    g.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                   help="continue the run in --out (its newest checkpoint, or this one) up to --steps")
    g.add_argument("--save-every", type=R("save_every"), default=d.save_every,
                   help=f"checkpoint period in steps ({d.save_every}; 0 = at the end only)")
    g.add_argument("--keep-checkpoints", type=R("keep_checkpoints"), default=d.keep_checkpoints,
                   help=f"newest checkpoints kept (default {d.keep_checkpoints}; 0 = all)")
    g.add_argument("--preview-every", type=R("preview_every"), default=d.preview_every,
                   help=f"preview grid period ({d.preview_every}; 0 = none): masked | result | truth per "
                        "held-out image")
    g.add_argument("--preview-steps", type=R("preview_steps"), default=d.preview_steps,
                   help=f"DDIM steps of previews ({d.preview_steps})")
    g.add_argument("--log-every", type=R("log_every"), default=d.log_every,
                   help=f"period of metrics.jsonl, TensorBoard scalars and the progress bar's loss ({d.log_every})")
    g.add_argument("--log-dir", type=Path,
                   help="TensorBoard event files (default <out>/tensorboard; view with tensorboard --logdir runs/)")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                   help="write no TensorBoard events (on by default when the tensorboard package is installed)")

    g = p.add_argument_group("validation (EMA weights, fixed images, masks and seeds, DDIM eta 1)")
    g.add_argument("--val-every", type=R("val_every"), default=d.val_every,
                   help=f"validation period in steps ({d.val_every}; 0 = none): hole PSNR and SSIM per mask kind "
                        "(box, extreme, wide, perlin) in metrics.jsonl and TensorBoard; the best step is kept")
    g.add_argument("--val-data", type=Path,
                   help="folder of validation images (default: the --holdout images)")
    g.add_argument("--val-count", type=R("val_count"), default=d.val_count,
                   help=f"images taken from --val-data (its first, sorted; default {d.val_count})")
    g.add_argument("--val-steps", type=R("val_steps"), default=d.val_steps,
                   help=f"DDIM steps of a validation sample (default {d.val_steps})")
    g.add_argument("--val-batch", type=R("val_batch"), default=d.val_batch,
                   help=f"images per validation batch (default {d.val_batch})")
    g.add_argument("--force", action="store_true", help="overwrite an existing run in --out and the --export file")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar, warnings only")

    g = p.add_argument_group("export")
    g.add_argument("--export", type=Path, help="write the adapter (--base) or model (--preset) here at the end")
    g.add_argument("--export-from", metavar="CHECKPOINT",
                   help="only export: a checkpoint file or run folder (its newest checkpoint) to --export")
    g.add_argument("--export-dtype", choices=sorted(DTYPES), default=d.export_dtype,
                   help="dtype of exported tensors (default fp32)")
    g.add_argument("--no-ema", dest="use_ema", action="store_false", help="export the raw weights, not the EMA")
    g.add_argument("--export-best", action="store_true",
                   help="export the step with the best validation score (checkpoints/best.pt) instead of the last")
    add_recommend_start_arguments(g, "the export")
    return p


_NOT_SAVED = ("config", "print_config", "resume", "force", "dry_run", "export_from", "recommend_start",
              "recommend_start_strength")
"""Options of one command, not settings of the run: left out of <out>/config.toml."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line over the settings files: defaults < the run's <out>/config.toml (with --resume) < --config
    FILE < flags on the command line. ValueError naming the file and key for a bad setting."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.print_config:
        return args
    layers = read_config(args.config, parser) if args.config is not None else {}
    out = args.out if args.out is not None else layers.get("out")
    resume = args.resume if args.resume is not None else layers.get("resume")
    saved = Path(out) / CONFIG_NAME if out is not None else None
    if resume is not None and saved is not None and saved.is_file():
        layers = {**read_config(saved, parser), **layers}
        log.info("--resume: settings from %s (flags and --config override them)", saved)
    if layers:
        parser.set_defaults(**layers)
        args = parser.parse_args(argv)
    return args


def write_settings(path: Path, args: argparse.Namespace, step: int) -> Path:
    """The resolved settings of a run (every option, commented) to ``path`` atomically: what --resume reads."""
    header = (f"rad-train settings of the run in {args.out}, as resolved when it started (at step {step}).\n"
              "rad-train --out DIR --resume reads them; flags and --config override them.")
    text = config_text(build_parser(), vars(args), skip=_NOT_SAVED, header=header)
    return atomic_write(path, lambda tmp: tmp.write_text(text), force=True)


def _options(args: argparse.Namespace) -> TrainOptions:
    names = {f for f in TrainOptions.__dataclass_fields__}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["scale_range"] = tuple(values["scale_range"])
    return TrainOptions(**values)


class TrainProgress:
    """A progress bar on stderr: global step, images/s, the loss of the last --log-every row of metrics.jsonl (its
    mean over the steps since the one before) and the time left; redrawn in place (at most twice a second) on a terminal, one line every ``every`` steps otherwise."""

    def __init__(self, enabled: bool, every: int = 50):
        self.enabled, self.every, self.tty = enabled, max(1, every), sys.stderr.isatty()
        self.loss = self.rate = None
        self.drawn = 0.0

    def __call__(self, m: dict) -> None:
        rate = m["images"] / max(m["seconds"], 1e-9)
        self.rate = rate if self.rate is None else 0.9 * self.rate + 0.1 * rate
        if "loss" in m:
            self.loss = m["loss"]  # the mean since the last log step: metrics.jsonl's "loss" of this step
        step, steps = m["step"], m["steps"]
        now = time.perf_counter()
        due = step == steps or step % self.every == 0 or (self.tty and now - self.drawn > 0.5)
        if not self.enabled or not due:
            return
        self.drawn = now
        left = (steps - step) * m["images"] / self.rate
        bar = "#" * (24 * step // steps)
        loss = f"loss {self.loss:.4f} " if self.loss is not None else ""
        line = (f"[{bar:<24}] step {step}/{steps} {loss}{self.rate:.1f} images/s, {hms(left)} left")
        sys.stderr.write(("\r" + line + ("\n" if step == steps else "")) if self.tty else line + "\n")
        sys.stderr.flush()


def print_dry_run(trainer: Trainer) -> None:
    r = trainer.report
    print(f"dry run: {r['steps']} step(s) of {r['images_per_step']} images, nothing written\n"
          f"  throughput {r['images_s']:.2f} images/s ({1 / r['steps_s']:.3f} s per step, over the last "
          f"{r['measured_steps']} step(s); the first is not counted when there are more)\n"
          f"  peak memory {r['peak_mib']:.0f} MiB ({'CUDA allocated' if trainer.device.type == 'cuda' else 'RSS'})\n"
          f"  projected {hms(r['projected_s'])} for {r['projected_steps']} step(s) to --steps {trainer.opts.steps}")


def run(args: argparse.Namespace) -> list[Path]:
    """Train and/or export as the arguments say; returns the exported paths (rank 0; none on the others)."""
    if args.recommend_start_strength is not None and args.recommend_start is None:
        raise ValueError("--recommend-start-strength needs --recommend-start: the start it is the strength of")
    recommend = None if args.recommend_start is None else (args.recommend_start, args.recommend_start_strength)
    if args.export_from:
        if args.export is None:
            raise ValueError("--export-from needs --export PATH.safetensors: where to write the export")
        source = Path(args.export_from)
        source = source / "checkpoints" if source.is_dir() else source  # what it reads
        check_outputs([("--export", args.export)], [("--export-from", source), ("--base", args.base)])
        if args.export.exists() and not args.force:
            raise FileExistsError(f"--export {args.export} already exists: pass --force to overwrite it, or choose "
                                  "another name")
        source = Path(args.export_from)
        if args.export_best and source.is_dir():
            source = source / "checkpoints" / BEST_NAME
            if not source.is_file():
                raise FileNotFoundError(f"--export-best: {source} does not exist (the run recorded no validation "
                                        "score): drop --export-best to export its newest checkpoint")
        return [export_checkpoint(source, args.export, base=args.base, dtype=args.export_dtype,
                                  use_ema=args.use_ema, force=args.force, recommend=recommend)]
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    trainer = Trainer(_options(args), names=CLI)
    try:
        if trainer.writes:
            write_settings(trainer.out / CONFIG_NAME, args, trainer.step)
        trainer.fit(TrainProgress(not args.quiet and trainer.is_main, args.log_every))
        if trainer.interrupted:
            raise KeyboardInterrupt
        if args.dry_run:
            if trainer.is_main:
                print_dry_run(trainer)
            return []
        if not (args.export and trainer.is_main):
            return []
        return [trainer.export(args.export, use_ema=args.use_ema, best=args.export_best, recommend=recommend)]
    finally:
        trainer.close()


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as err:
        print(f"rad-train: error: {describe_error(err)}", file=sys.stderr)
        return 2
    if args.print_config:
        print(config_text(build_parser(), skip=_NOT_SAVED,
                          header="rad-train settings: every option at its default. Edit, then: rad-train --config "
                                 "run.toml (flags override it)."), end="")
        return 0
    rank = int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0
    where = f"[rank {rank}] " if "WORLD_SIZE" in os.environ and os.environ["WORLD_SIZE"] != "1" else ""
    setup_logging(args.quiet or rank != 0, where)

    def body() -> None:
        for path in run(args):
            print(path)

    return run_main("rad-train", body, where=where, also=(CollectiveError, FloatingPointError),
                    interrupted="stopped; --resume continues from the last checkpoint")


if __name__ == "__main__":
    sys.exit(main())
