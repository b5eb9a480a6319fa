#!/usr/bin/env python
"""RAD against its ablations and baselines on scikit-learn's handwritten digits, end to end on a CPU.

A miniature of the paper's Tables 1-3 (RAD, Cfg. 1, Cfg. 2, RePaint) plus the plain "replace" baseline, with every
model trained here from nothing in about half an hour on two CPU cores at the defaults. Phases:

1. data: ``sklearn.datasets.load_digits`` (1,797 images, 8x8, 17 gray levels 0..16), scaled to 0..255 and upscaled
   to 32x32 with PIL's bilinear filter (a triangle kernel: smooth strokes, no ringing, values stay in range), split
   by ``--seed`` into train and held-out (``--heldout`` images), written as gray PNGs under ``data/{train,heldout}/
   <digit>/``.
2. classifier: a small CNN (pure torch) trained on the train split with +-2 px shifts; it scores inpainted digits
   (accuracy: does the digit keep its class?) and gives the 32-d features of the Fréchet distance.
3. base: the trainer (``train.TrainOptions``) as ``rad-train --preset digits32 --mask-sampling full``: a plain DDPM,
   this experiment's "pretrained ADM".
4. RAD: as ``rad-train --base base.safetensors``: RAD's recipe (two-phase noise, Perlin masks, spatial embedding) as
   a LoRA adapter (+ the time layers in full) on the base, as the paper fine-tunes ADM.
5. Cfg. 2: the same with ``--embedding scalar`` (one timestep per image: RAD without the spatial embedding).
6. evaluation, on the first ``--eval-images`` held-out digits under box / extreme / wide masks (the same masks for
   every method, seeded): RAD (DDPM, ``--steps``), Cfg. 2 (same sampler), Cfg. 1 (RAD steps on the base), RePaint
   on the base (``--repaint-steps`` with jumps), replace on the base (``--steps``). Per method and mask: hole PSNR,
   SSIM over the hole's bounding box, seam, classifier accuracy, Fréchet distance of classifier features to the
   originals, seconds and network calls per image; rows for the originals and for the masked input (hole in gray)
   bound the scale.
7. report: ``results.json``, ``results.md`` (tables, phase times) and ``samples.png`` (per mask kind, rows of
   masked | RAD | Cfg. 2 | Cfg. 1 | RePaint | replace | original).

Cost at the defaults, measured on two free vCPUs (AMD EPYC, Zen 3) with ``--threads 2``, torch 2.13 CPU: data and
classifier 18 s, base 800 steps 358 s (2.2 it/s), RAD 700 steps 349 s (2.0 it/s), Cfg. 2 700 steps 329 s,
evaluation 493 s (3 masks x 32 digits x 590 network calls); 25 min 52 s of wall time in all, under the 30 min
target. On a busy machine it takes longer: the first run, with other jobs on the cores, took 39 min at smaller
settings. ``--quick`` shrinks everything to a smoke test of the whole chain: ~21 s of CPU. Phase times, wall and
CPU, are printed and written to the report.

The adapters train at lr 1e-3, ten times the paper's 1e-4, because they get 700 steps instead of 300K: in a pilot on
the same base, lr 1e-3 reached at 600 steps what 5e-4 reached at about 1,000 (docs/EXPERIMENTS.md).

``--reuse`` keeps the data and models in ``--out`` and only evaluates again: with ``--eval-seed`` on other masks and
noise, with ``--methods`` for some methods only (e.g. RePaint at its paper defaults on a few digits).

    pip install -e ".[experiments]"    # the package and scikit-learn (or PYTHONPATH=. from a checkout)
    python scripts/digits_experiment.py --out runs/digits --threads 2
    python scripts/digits_experiment.py --out runs/digits-s1 --reuse --eval-seed 1   # a copy of runs/digits
    python scripts/digits_experiment.py --out /tmp/digits-smoke --quick
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from comfyui_rad import imaging
from comfyui_rad.checkpoints import load_adm
from comfyui_rad.devices import resolve_device
from comfyui_rad.evaluate import (
    eval_masks,
    finite_mean,
    inpaint_set,
    masked_input,
    measure,
    sample_grid,
    write_json,
)
from comfyui_rad.metrics import frechet_distance
from comfyui_rad.sampling import SamplerSpec
from comfyui_rad.train import Trainer, TrainOptions

log = logging.getLogger("digits")

SIZE = 32
MASK_KINDS = ("box", "extreme", "wide")
METHODS = ("RAD", "Cfg. 2", "Cfg. 1", "RePaint", "replace")


@dataclass
class Settings:
    """Every knob of the experiment; ``--quick`` replaces them with ``QUICK``."""

    heldout: int = 360
    train_limit: int = 0  # 0 = all training images
    classifier_epochs: int = 20
    base_steps: int = 800
    base_lr: float = 5e-4
    rad_steps: int = 700
    rad_lr: float = 1e-3
    lora_rank: int = 8
    batch_size: int = 16
    ema_base: float = 0.99
    ema_rad: float = 0.98
    eval_images: int = 32
    steps: int = 100
    repaint_steps: int = 100
    jump_length: int = 10
    jump_n_sample: int = 2
    eval_batch: int = 32
    grid_rows: int = 6


QUICK = Settings(heldout=8, train_limit=64, classifier_epochs=1, base_steps=2, rad_steps=2, lora_rank=4,
                 batch_size=4, eval_images=4, steps=4, repaint_steps=4, jump_length=2, jump_n_sample=2,
                 eval_batch=4, grid_rows=2)


class Clock:
    """Wall and CPU seconds of each phase."""

    def __init__(self):
        self.phases: dict[str, dict[str, float]] = {}

    def __call__(self, name: str):
        clock = self

        class Phase:
            def __enter__(self):
                self.wall, self.cpu = time.perf_counter(), time.process_time()
                log.info("== %s", name)

            def __exit__(self, *exc):
                spent = {"wall_s": time.perf_counter() - self.wall, "cpu_s": time.process_time() - self.cpu}
                clock.phases[name] = spent
                log.info("== %s done: %.1f s wall, %.1f s CPU", name, spent["wall_s"], spent["cpu_s"])

        return Phase()


# ------------------------------------------------------------------------------------------------------- data


def upscale(digits: np.ndarray, size: int = SIZE) -> np.ndarray:
    """sklearn digits [N,8,8] (0..16) -> uint8 [N,size,size]: 0..255, then PIL's bilinear upscale."""
    levels = np.clip(np.rint(np.asarray(digits, dtype=np.float64) * (255 / 16)), 0, 255).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(d).resize((size, size), Image.Resampling.BILINEAR)) for d in levels])


def split(count: int, heldout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): a permutation by ``seed``; the held-out ones sorted."""
    if not 0 < heldout < count:
        raise ValueError(f"--heldout must be between 1 and {count - 1}, got {heldout}")
    order = np.random.RandomState(seed).permutation(count)
    return np.sort(order[heldout:]), np.sort(order[:heldout])


def write_digits(folder: Path, pixels: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
    for i in indices:
        path = folder / str(labels[i]) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i]).save(path)


def prepare_data(out: Path, s: Settings, seed: int, reuse: bool = False) -> dict:
    """Write data/train and data/heldout (kept as they are with ``reuse``, or replaced when this script wrote
    them: ``data/split.json``); returns tensors for the classifier and the evaluation."""
    import shutil

    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels, labels = upscale(digits.images), digits.target
    train, held = split(len(labels), s.heldout, seed)
    if s.train_limit:
        train = train[:s.train_limit]
    folder, split_file = out / "data", out / "data" / "split.json"
    if folder.exists() and not split_file.is_file():
        raise SystemExit(f"{folder} exists but was not written by this script: choose another --out")
    if not (reuse and split_file.is_file()):
        shutil.rmtree(folder, ignore_errors=True)
        write_digits(folder / "train", pixels, labels, train)
        write_digits(folder / "heldout", pixels, labels, held)
        split_file.write_text(json.dumps({"seed": seed, "train": train.tolist(), "heldout": held.tolist()}))
    elif json.loads(split_file.read_text())["heldout"] != held.tolist():
        raise SystemExit(f"--reuse: {split_file} holds another split than these settings: drop --reuse")
    as_rgb = torch.from_numpy(pixels).float().div(255)[:, None].expand(-1, 3, -1, -1)
    log.info("%d training and %d held-out digits, 8x8 -> %dx%d bilinear", len(train), len(held), SIZE, SIZE)
    return {"train_x": as_rgb[train], "train_y": torch.from_numpy(labels[train]), "held_x": as_rgb[held],
            "held_y": torch.from_numpy(labels[held]), "held_index": held}


# ------------------------------------------------------------------------------------------------- classifier


class DigitNet(nn.Module):
    """A small CNN on 32x32 gray digits: images [N,3,32,32] in [0,1] -> logits [N,10]; ``features`` -> [N,32]."""

    def __init__(self, features: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(256, features), nn.ReLU(),
        )
        self.head = nn.Linear(features, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.float().mean(dim=1, keepdim=True) * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _shift(x: torch.Tensor, generator: torch.Generator, pixels: int = 2) -> torch.Tensor:
    """Each image moved by a random whole number of pixels in [-pixels, pixels] per axis (zeros come in)."""
    out = torch.zeros_like(x)
    size = x.shape[-1]
    for i, (dy, dx) in enumerate(torch.randint(-pixels, pixels + 1, (x.shape[0], 2), generator=generator).tolist()):
        ys, yd = slice(max(0, -dy), size - max(0, dy)), slice(max(0, dy), size - max(0, -dy))
        xs, xd = slice(max(0, -dx), size - max(0, dx)), slice(max(0, dx), size - max(0, -dx))
        out[i, :, yd, xd] = x[i, :, ys, xs]
    return out


def train_classifier(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, batch: int = 64) -> DigitNet:
    """AdamW (lr 3e-3, cosine to 0) with random shifts; deterministic for a seed."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = DigitNet()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    total = epochs * -(-x.shape[0] // batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + np.cos(np.pi * min(k, total) / total)))
    net.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=g)
        for k in range(0, x.shape[0], batch):
            idx = order[k:k + batch]
            loss = nn.functional.cross_entropy(net(_shift(x[idx], g)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval().requires_grad_(False)


@torch.no_grad()
def classify(net: DigitNet, x: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted labels [N], features [N,32]) of images [N,3,32,32] in [0,1]."""
    feats = torch.cat([net.features(x[k:k + batch]) for k in range(0, x.shape[0], batch)])
    return net.head(feats).argmax(dim=1), feats


# ------------------------------------------------------------------------------------------------------ models


def train_options(out: Path, s: Settings, args: argparse.Namespace, run: str) -> TrainOptions:
    """The trainer's options for one of the three runs: "base", "rad" or "cfg2"."""
    common = dict(data=out / "data" / "train", out=out / "runs" / run, resize=True, flip=False, holdout=0,
                  preview_every=0, save_every=0, batch_size=s.batch_size, seed=args.seed, device=args.device,
                  workers=0, log_every=25, force=True, export=out / "models" / f"{run}.safetensors")
    if run == "base":
        return TrainOptions(**common, preset="digits32", mask_sampling="full", steps=s.base_steps, lr=s.base_lr,
                            ema=s.ema_base)
    return TrainOptions(**common, base=out / "models" / "base.safetensors", steps=s.rad_steps, lr=s.rad_lr,
                        ema=s.ema_rad, lora_rank=s.lora_rank, lora_alpha=float(s.lora_rank),
                        embedding="scalar" if run == "cfg2" else "spatial")


def train_model(out: Path, s: Settings, args: argparse.Namespace, run: str) -> Path:
    """Train (or, with ``--reuse``, keep) one run's model and export it; returns the exported file."""
    path = out / "models" / f"{run}.safetensors"
    if args.reuse and path.is_file():
        log.info("reusing %s", path)
        return path
    options = train_options(out, s, args, run)
    trainer = Trainer(options)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer.export(options.export)


def _final_loss(out: Path, run: str) -> float | None:
    path = out / "runs" / run / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[-1]["loss"] if rows else None


# -------------------------------------------------------------------------------------------------- evaluation


def methods(out: Path, s: Settings, device, names: tuple[str, ...] = METHODS
            ) -> dict[str, tuple[torch.nn.Module, str, int, dict]]:
    """name -> (model to sample, sampler, steps, sampler options), for the methods ``names`` (each model loaded
    only when a method needs it, the base once)."""
    models = out / "models"
    base = functools.cache(lambda: load_adm(models / "base.safetensors", device=device))
    repaint = {"jump_length": s.jump_length, "jump_n_sample": s.jump_n_sample}
    make = {
        "RAD": lambda: (load_adm(models / "base.safetensors", adapter=models / "rad.safetensors", device=device),
                        "ddpm", s.steps, {}),
        "Cfg. 2": lambda: (load_adm(models / "base.safetensors", adapter=models / "cfg2.safetensors", device=device),
                           "ddpm", s.steps, {}),  # one timestep per image, as trained (its rad_info says so)
        "Cfg. 1": lambda: (base(), "ddpm", s.steps, {}),
        "RePaint": lambda: (base(), "repaint", s.repaint_steps, repaint),
        "replace": lambda: (base(), "replace", s.steps, {}),
    }
    return {name: make[name]() for name in METHODS if name in names}


def parse_methods(text: str) -> tuple[str, ...]:
    """``--methods``: a comma-separated subset of ``METHODS``, e.g. "RePaint" or "RAD,Cfg. 1"."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(map(repr, unknown)) or '(none given)'}: "
                                         f"choose from {', '.join(METHODS)}, comma-separated")
    return names


def score(net: DigitNet, results: torch.Tensor, truth: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
          truth_features: torch.Tensor) -> dict[str, float]:
    """Means of the image measures plus classifier accuracy and Fréchet distance to the originals' features."""
    m = measure(results, truth, mask)
    predicted, feats = classify(net, results)

    mean = finite_mean
    return {"hole_psnr": mean(m["hole_psnr"]), "hole_mse": mean(m["hole_mse"]), "ssim": mean(m["ssim"]),
            "ssim_hole": mean(m["ssim_hole"]), "seam": mean(m["seam"]),
            "accuracy": float((predicted == labels).float().mean()),
            "frechet": frechet_distance(feats, truth_features)}


def evaluate_all(out: Path, s: Settings, data: dict, net: DigitNet, args, clock: Clock) -> tuple[dict, dict]:
    """Every method under every mask kind: (numbers, pictures for the grid)."""
    device = resolve_device(args.device)
    truth, labels = data["held_x"][:s.eval_images], data["held_y"][:s.eval_images]
    _, truth_features = classify(net, truth)
    runs = methods(out, s, device, args.methods)
    numbers, pictures = {}, {}
    for kind in MASK_KINDS:
        mask = eval_masks(kind, truth.shape[0], SIZE, args.eval_seed)
        masked = masked_input(truth, mask)
        numbers[kind] = {"original": score(net, truth, truth, labels, mask, truth_features),
                         "masked input": score(net, masked, truth, labels, mask, truth_features)}
        pictures[kind] = {"masked": masked}
        for name, (model, sampler, steps, options) in runs.items():
            with clock(f"eval {kind} {name}"):
                spec = SamplerSpec.create(sampler, steps=steps, **options)
                results, seconds = inpaint_set(model, truth, mask, spec=spec, seed=args.eval_seed,
                                               batch_size=s.eval_batch)
            numbers[kind][name] = {**score(net, results, truth, labels, mask, truth_features),
                                   "seconds_per_image": seconds / truth.shape[0],
                                   "calls_per_image": spec.calls(),
                                   "sampler": sampler, "steps": steps, **options}
            pictures[kind][name] = results
        pictures[kind]["original"] = truth
    return numbers, pictures


# ------------------------------------------------------------------------------------------------------ report


def cell(value, fmt: str) -> str:
    """A report cell: ``value`` formatted, "-" for None."""
    return "-" if value is None else format(value, fmt)


def markdown(numbers: dict, phases: dict, s: Settings, extra: dict) -> str:
    """The report: one table per mask kind, then the training and phase summary."""
    lines = ["# RAD on scikit-learn digits (32x32)", "",
             f"{s.eval_images} held-out digits per mask kind, the same masks for every method; DDPM {s.steps} "
             f"steps for RAD, Cfg. 2, Cfg. 1 and replace; RePaint {s.repaint_steps} steps, jump length "
             f"{s.jump_length}, {s.jump_n_sample} samples per jump. Classifier accuracy on clean held-out digits: "
             f"{extra['classifier_accuracy']:.3f}. Fréchet distance: of the 32-d classifier features, to the "
             "originals' (0 for the originals themselves; biased upwards by the small sample)."
             + (f" Masks and sampling noise: seed {extra['eval_seed']}."
                if "eval_seed" in extra else ""),
             ""]
    head = ("| method | calls/img | hole PSNR ↑ | SSIM hole box ↑ | SSIM ↑ | seam ↓ | accuracy ↑ | Fréchet ↓ | "
            "s/img |")
    for kind, rows in numbers.items():
        lines += [f"## {kind} masks", "", head, "|" + "---|" * 9]
        for name, r in rows.items():
            lines.append(f"| {name} | {r.get('calls_per_image', '-')} | {cell(r['hole_psnr'], '.2f')} | "
                         f"{cell(r['ssim_hole'], '.3f')} | {cell(r['ssim'], '.3f')} | {cell(r['seam'], '.4f')} | "
                         f"{r['accuracy']:.3f} | {cell(r['frechet'], '.2f')} | "
                         f"{cell(r.get('seconds_per_image'), '.3f')} |")
        lines.append("")
    lines += ["## Training", "", "| model | steps | final loss |", "|---|---|---|"]
    for run, info in extra["training"].items():
        lines.append(f"| {run} | {info['steps']} | {cell(info['final_loss'], '.4f')} |")
    lines += ["", "## Phases", "", "| phase | wall s | CPU s |", "|---|---|---|"]
    lines += [f"| {name} | {t['wall_s']:.1f} | {t['cpu_s']:.1f} |" for name, t in phases.items()]
    total = sum(t["wall_s"] for name, t in phases.items() if not name.startswith("eval "))
    lines += ["", f"Total {total:.0f} s wall.", "", "![samples](samples.png)", ""]
    return "\n".join(lines)


def samples_picture(pictures: dict, rows: int) -> torch.Tensor:
    """Per mask kind, ``rows`` digits: masked | the methods | original; kinds stacked with a gray band."""
    blocks = []
    for kind, cols in pictures.items():
        order = ["masked", *[m for m in METHODS if m in cols], "original"]
        blocks.append(sample_grid([cols[k][:rows] for k in order]))
        blocks.append(torch.full((3, 6, blocks[-1].shape[-1]), 0.5))
    return torch.cat(blocks[:-1], dim=1)


# -------------------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="experiment folder (data, runs, models, report)")
    p.add_argument("--quick", action="store_true", help="a smoke test of every phase (about a minute)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, training, masks and noise (0)")
    p.add_argument("--eval-seed", type=int, default=None,
                   help="seed of the evaluation's masks and sampling noise only (default: --seed); with --reuse, "
                        "rescores the same models on other masks and noise")
    p.add_argument("--methods", type=parse_methods, default=METHODS,
                   help=f"comma-separated methods to evaluate (default all: {','.join(METHODS)}); e.g. with "
                        "--reuse --methods RePaint --repaint-steps 250 --jump-n-sample 10 --eval-images 8")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--reuse", action="store_true", help="keep data and models already in --out (re-evaluate)")
    p.add_argument("--force", action="store_true", help="overwrite the report in --out")
    p.add_argument("--quiet", "-q", action="store_true", help="warnings and the summary only")
    d = Settings()
    for f in dataclasses.fields(Settings):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(d, f.name)), default=None,
                       help=f"default {getattr(d, f.name)} ({getattr(QUICK, f.name)} with --quick)")
    return p


def settings(args: argparse.Namespace) -> Settings:
    base = QUICK if args.quick else Settings()
    return dataclasses.replace(base, **{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
                                        if getattr(args, f.name) is not None})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.eval_seed = args.seed if args.eval_seed is None else args.eval_seed
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s: %(message)s")
    s, out = settings(args), args.out
    report = [out / "results.json", out / "results.md", out / "samples.png"]
    if any(p.exists() for p in report) and not args.force:
        print(f"{out} already holds a report: pass --force to replace it (with --reuse to keep the models)",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    clock = Clock()
    with clock("data"):
        data = prepare_data(out, s, args.seed, args.reuse)
    with clock("classifier"):
        net = train_classifier(data["train_x"], data["train_y"], s.classifier_epochs, args.seed)
        clean = float((classify(net, data["held_x"])[0] == data["held_y"]).float().mean())
        log.info("classifier accuracy on the %d clean held-out digits: %.3f", len(data["held_y"]), clean)
    for run in ("base", "rad", "cfg2"):
        with clock(f"train {run}"):
            train_model(out, s, args, run)
    with clock("evaluation"):
        numbers, pictures = evaluate_all(out, s, data, net, args, clock)
    extra = {"classifier_accuracy": clean, "eval_seed": args.eval_seed, "training": {
        run: {"steps": s.base_steps if run == "base" else s.rad_steps, "final_loss": _final_loss(out, run)}
        for run in ("base", "rad", "cfg2")}}
    phases = clock.phases
    write_json({"settings": dataclasses.asdict(s), "seed": args.seed, "eval_seed": args.eval_seed,
                "methods": list(args.methods), "threads": args.threads,
                "device": args.device, **extra, "results": numbers, "phases": phases}, out / "results.json",
               force=True)
    (out / "results.md").write_text(markdown(numbers, phases, s, extra))
    imaging.save_image(samples_picture(pictures, s.grid_rows), out / "samples.png", force=True)
    print(markdown(numbers, phases, s, extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
