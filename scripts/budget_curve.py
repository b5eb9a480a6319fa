#!/usr/bin/env python
"""The digits experiment's budget curve: RAD and Cfg. 2 against adapter training steps, beside flat baselines.

Issue 15, part 1, on ``scripts/digits_experiment.py``'s data, classifier, base and adapter recipes (the same seeds:
the base is that script's 800-step base). The RAD adapter and the Cfg. 2 adapter each train as one run, in stages
(``--stages``, default 700, 1,500, 3,000, 6,000 steps): each stage resumes the run's newest checkpoint
(``rad-train --resume``, exact: weights, optimiser, EMA, data and noise states) and exports the adapter at that step.
Every adapter is scored on the first ``--eval-images`` held-out digits (all 32) under box, extreme and wide masks, for
each ``--eval-seeds`` seed (masks and sampling noise), with several samplers:

- RAD: DDPM-100 (the paper's), DDPM-25, DDIM-25 and DDIM-50 at eta 0 and 1, and RAD with resampling
  (``sampling.rad_times``): DDPM-100 resampling once every 10 steps (190 calls, RePaint 100/10/2's count), three
  times (370), and DDIM-25 at eta 1 three times every 5 steps (85).
- Cfg. 2 (no spatial embedding): DDPM-100.
- On the base alone, flat lines: Cfg. 1 (RAD's steps on the base), replace (100), RePaint 100/10/2 (190 calls) and
  RePaint at its paper settings 250/10/10 (2,410 calls).

Measures are the digits experiment's: hole PSNR, SSIM, seam, classifier accuracy, Fréchet distance of classifier
features, seconds and network calls per image.

Everything is resumable: the data, classifier, base, each stage's adapter and each (method, stage, seed, mask kind)
score is a file in ``--out``, written atomically, and ``--reuse`` skips what exists; kill the run at any point and
start it again with the same command. The report (``budget.md``: one table; ``budget.png``: hole PSNR and accuracy
against adapter steps per mask kind, baselines as lines, calls in the legend; ``budget.json``: all numbers) is
rewritten in ``--out`` after every score, from whatever has been measured, and into ``--docs`` when given.
``--report-only`` writes the report from the scores on disk and computes nothing.

    python scripts/budget_curve.py --out /work/runs/budget --threads 2 --reuse      # hours on a CPU; resumable
    python scripts/budget_curve.py --out /work/runs/budget --reuse --report-only --docs docs/budget --force
    python scripts/budget_curve.py --out /tmp/budget-smoke --quick                   # the whole chain, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits_experiment as de  # noqa: E402

from comfyui_rad.checkpoints import load_adm  # noqa: E402
from comfyui_rad.devices import resolve_device  # noqa: E402
from comfyui_rad.evaluate import eval_masks, inpaint_set, write_json  # noqa: E402
from comfyui_rad.fileio import atomic_write  # noqa: E402
from comfyui_rad.sampling import SamplerSpec  # noqa: E402
from comfyui_rad.train import Trainer  # noqa: E402
from comfyui_rad.train.state import list_checkpoints  # noqa: E402

log = logging.getLogger("budget")

MASK_KINDS = de.MASK_KINDS
SIZE = de.SIZE


@dataclass(frozen=True)
class Method:
    """One evaluated method: ``model`` "rad" | "cfg2" (scored at every stage) or "base" (a flat line)."""

    name: str
    model: str
    sampler: str
    steps: int
    eta: float = 0.0
    options: tuple[tuple[str, int], ...] = ()

    @property
    def spec(self) -> SamplerSpec:
        """How it samples (checked): ``sampler``, ``steps``, ``eta``, ``options`` (resample, jump; RePaint's
        jump_length, jump_n_sample)."""
        return SamplerSpec.create(self.sampler, steps=self.steps, eta=self.eta, **dict(self.options))

    @property
    def calls(self) -> int:
        return self.spec.calls()

    @property
    def key(self) -> str:
        """A file name for its scores: model, sampler, steps, eta and options."""
        opts = "".join(f"-{k}{v}" for k, v in self.options)
        eta = f"-eta{self.eta:g}" if self.sampler == "ddim" else ""
        return f"{self.model}-{self.sampler}{self.steps}{eta}{opts}"


def methods(quick: bool = False) -> list[Method]:
    """The rows of the table, in order (``quick``: the same kinds of rows at a few steps each)."""
    n = (lambda full, small: small if quick else full)
    ddpm, few, ddim_a, ddim_b, jump = n(100, 4), n(25, 2), n(25, 3), n(50, 4), n(10, 2)

    def rs(r: int, j: int) -> tuple:
        return (("resample", r), ("jump", j))

    return [
        Method(f"RAD DDPM-{ddpm}", "rad", "ddpm", ddpm),
        Method(f"RAD DDPM-{few}", "rad", "ddpm", few),
        Method(f"RAD DDIM-{ddim_a} eta 0", "rad", "ddim", ddim_a, 0.0),
        Method(f"RAD DDIM-{ddim_a} eta 1", "rad", "ddim", ddim_a, 1.0),
        Method(f"RAD DDIM-{ddim_b} eta 0", "rad", "ddim", ddim_b, 0.0),
        Method(f"RAD DDIM-{ddim_b} eta 1", "rad", "ddim", ddim_b, 1.0),
        Method(f"RAD DDPM-{ddpm} resample 1/{jump}", "rad", "ddpm", ddpm, options=rs(1, jump)),
        Method(f"RAD DDPM-{ddpm} resample 3/{jump}", "rad", "ddpm", ddpm, options=rs(3, jump)),
        Method(f"RAD DDIM-{ddim_a} eta 1 resample 3/{n(5, 2)}", "rad", "ddim", ddim_a, 1.0, rs(3, n(5, 2))),
        Method(f"Cfg. 2 DDPM-{ddpm}", "cfg2", "ddpm", ddpm),
        Method(f"Cfg. 1 DDPM-{ddpm}", "base", "ddpm", ddpm),
        Method(f"replace {ddpm}", "base", "replace", ddpm),
        Method(f"RePaint {ddpm}/{jump}/2", "base", "repaint", ddpm,
               options=(("jump_length", jump), ("jump_n_sample", 2))),
        Method(f"RePaint {n(250, 6)}/{jump}/{n(10, 3)}", "base", "repaint", n(250, 6),
               options=(("jump_length", jump), ("jump_n_sample", n(10, 3)))),
    ]


@dataclass
class Budget:
    """The curve's knobs; the training recipes are ``digits_experiment.Settings``'."""

    stages: tuple[int, ...] = (700, 1500, 3000, 6000)
    eval_seeds: tuple[int, ...] = (0, 1)
    eval_images: int = 32
    save_every: int = 250
    digits: de.Settings = field(default_factory=de.Settings)


QUICK = Budget(stages=(2, 4), eval_seeds=(0, 1), eval_images=2, save_every=1,
               digits=dataclasses.replace(de.QUICK, eval_batch=2))


# --------------------------------------------------------------------------------------------------- training


def _write_state(path: Path, state: dict[str, torch.Tensor]) -> Path:
    from safetensors.torch import save_file

    return atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in state.items()}, str(tmp)),
                        force=True)


def classifier(out: Path, data: dict, s: de.Settings, seed: int) -> de.DigitNet:
    """The digits experiment's classifier, trained once and kept in ``classifier.safetensors``."""
    from safetensors.torch import load_file

    path = out / "classifier.safetensors"
    if path.is_file():
        net = de.DigitNet()
        net.load_state_dict(load_file(str(path)))
        return net.eval().requires_grad_(False)
    net = de.train_classifier(data["train_x"], data["train_y"], s.classifier_epochs, seed)
    _write_state(path, net.state_dict())
    return net


def train_stage(out: Path, b: Budget, args: argparse.Namespace, run: str, steps: int, export: Path) -> Path:
    """Train ``run`` ("base", "rad", "cfg2") to ``steps`` in total, resuming its newest checkpoint, and export
    the weights at that step to ``export`` (kept if it exists)."""
    if export.is_file():
        return export
    folder = out / "runs" / run
    found = list_checkpoints(folder)
    newest = int(found[-1].stem.split("-")[1]) if found else 0
    if newest > steps:
        raise SystemExit(f"{folder} is at step {newest}, past the stage {steps} whose export {export} is missing: "
                         "remove that run folder (and the later exports) to retrain it")
    options = dataclasses.replace(de.train_options(out, b.digits, args, run), steps=steps, export=export,
                                  save_every=b.save_every, keep_checkpoints=2, resume="latest" if found else None)
    log.info("training %s to step %d (from %d)", run, steps, newest)
    trainer = Trainer(options)
    try:
        trainer.fit()
    finally:
        trainer.close()
    if trainer.interrupted:  # stopped short of the stage (SIGTERM, Ctrl-C): its checkpoint resumes, no export
        raise SystemExit(f"{run} stopped at step {trainer.step} before stage {steps} ({trainer.interrupted}): "
                         "run the same command again to continue")
    return trainer.export(export)


def stage_file(out: Path, run: str, steps: int) -> Path:
    return out / "models" / f"{run}-{steps:05d}.safetensors"


# ------------------------------------------------------------------------------------------------- evaluation


def score_file(out: Path, method: Method, stage: int | None, seed: int, kind: str) -> Path:
    where = "base" if stage is None else f"{stage:05d}"
    return out / "scores" / where / f"{method.key}-seed{seed}-{kind}.json"


class Scorer:
    """Scores one (method, stage, seed) under every mask kind, each kind cached in its own file."""

    def __init__(self, out: Path, b: Budget, data: dict, net: de.DigitNet, device):
        self.out, self.b, self.net, self.device = out, b, net, device
        self.truth, self.labels = data["held_x"][:b.eval_images], data["held_y"][:b.eval_images]
        self.truth_features = de.classify(net, self.truth)[1]

    @functools.lru_cache(maxsize=3)  # noqa: B019 (one Scorer per run)
    def model(self, which: str, stage: int | None) -> torch.nn.Module:
        base = self.out / "models" / "base.safetensors"
        adapter = None if which == "base" else stage_file(self.out, which, stage)
        return load_adm(base, adapter=adapter, device=self.device)

    def __call__(self, method: Method, stage: int | None, seed: int) -> None:
        for kind in MASK_KINDS:
            path = score_file(self.out, method, stage, seed, kind)
            if path.is_file():
                continue
            mask = eval_masks(kind, self.truth.shape[0], SIZE, seed)
            tick = time.perf_counter()
            results, seconds = inpaint_set(self.model(method.model, stage), self.truth, mask, sampler=method.sampler,
                                           steps=method.steps, seed=seed, batch_size=self.b.digits.eval_batch,
                                           eta=method.eta, options=dict(method.options))
            numbers = de.score(self.net, results, self.truth, self.labels, mask, self.truth_features)
            write_json({"method": method.name, "stage": stage, "seed": seed, "kind": kind, "calls": method.calls,
                        "images": int(self.truth.shape[0]), "seconds_per_image": seconds / self.truth.shape[0],
                        **numbers}, path, force=True)
            log.info("%s, stage %s, seed %d, %s: hole PSNR %s, accuracy %.3f (%.0f s)", method.name, stage, seed,
                     kind, de.cell(numbers["hole_psnr"], ".2f"), numbers["accuracy"], time.perf_counter() - tick)


def jobs(b: Budget, quick: bool = False) -> list[tuple]:
    """The work in order, most informative first: ("train", run, steps) and ("score", method, stage, seed).

    Per stage: the RAD adapter and its DDPM-100 at every seed, then the same for Cfg. 2 (the curve itself); after
    the first stage the cheap baselines. The other RAD samplers at the first seed come with the first two stages;
    RePaint at its paper settings (first seed) after the second (or the last, with fewer). Once the curve stands to
    the last stage: the other samplers at the later stages, then every later seed of RePaint's and of the others."""
    rows = methods(quick)
    rad_main, cfg2 = rows[0], next(m for m in rows if m.model == "cfg2")
    others = [m for m in rows if m.model == "rad" and m is not rad_main]
    base = [m for m in rows if m.model == "base"]
    cheap, paper = base[:-1], base[-1:]
    first, later = b.eval_seeds[:1], b.eval_seeds[1:]
    early = min(1, len(b.stages) - 1)
    out: list[tuple] = [("train", "base", b.digits.base_steps)]
    for i, stage in enumerate(b.stages):
        for run, main in (("rad", rad_main), ("cfg2", cfg2)):  # RAD's point of the curve before Cfg. 2 trains
            out += [("train", run, stage)] + [("score", main, stage, seed) for seed in b.eval_seeds]
        if i == 0:
            out += [("score", m, None, seed) for seed in b.eval_seeds for m in cheap]
        if i <= early:
            out += [("score", m, stage, seed) for seed in first for m in others]
        if i == early:
            out += [("score", m, None, seed) for seed in first for m in paper]
    out += [("score", m, stage, seed) for stage in b.stages[early + 1:] for seed in first for m in others]
    out += [("score", m, None, seed) for seed in later for m in paper]
    out += [("score", m, stage, seed) for stage in b.stages for seed in later for m in others]
    return out


def carry_jobs(b: Budget, quick: bool = False, cfg2_until: int = 3000) -> list[tuple]:
    """The carried curve (issue 21): RAD's DDPM-100 at every stage and seed first, in stage order; then at the
    stages from 6,000 on (the last two with fewer) DDIM-25 at eta 1 and the resampling rows, first seed; then
    RePaint at its paper settings on every seed; Cfg. 2 (flat past 3,000) only up to ``cfg2_until``, last."""
    rows = methods(quick)
    rad_main = rows[0]
    keep = ("DDIM-25 eta 1", "resample 3/")
    others = [m for m in rows if m.model == "rad" and m is not rad_main and any(k in m.name for k in keep)]
    if quick:
        others = [m for m in rows if m.model == "rad" and m is not rad_main][-2:]
    cfg2 = next(m for m in rows if m.model == "cfg2")
    paper = [m for m in rows if m.model == "base"][-1:]
    late = [s for s in b.stages if s >= 6000] or list(b.stages[-2:])
    out: list[tuple] = [("train", "base", b.digits.base_steps)]
    for stage in b.stages:
        out += [("train", "rad", stage)] + [("score", rad_main, stage, seed) for seed in b.eval_seeds]
        if stage in late:
            out += [("score", m, stage, seed) for seed in b.eval_seeds[:1] for m in others]
    out += [("score", m, None, seed) for seed in b.eval_seeds for m in paper]
    for stage in (s for s in b.stages if s <= cfg2_until):
        out += [("train", "cfg2", stage)] + [("score", cfg2, stage, seed) for seed in b.eval_seeds]
    return out


# ------------------------------------------------------------------------------------------------------ report


def collect(out: Path, b: Budget, quick: bool = False) -> list[dict]:
    """Every score on disk for these methods, stages, seeds and kinds: a list of the score files' dicts."""
    found = []
    for m in methods(quick):
        for stage in ([None] if m.model == "base" else b.stages):
            for seed in b.eval_seeds:
                for kind in MASK_KINDS:
                    path = score_file(out, m, stage, seed, kind)
                    if path.is_file():
                        found.append({**json.loads(path.read_text()), "method": m.name, "model": m.model})
    return found


def averaged(scores: list[dict]) -> dict[tuple, dict]:
    """(method, stage, kind) -> means over the seeds found of hole PSNR, accuracy, SSIM, seam, Fréchet, s/img, with
    ``seeds`` (how many) and ``calls``."""
    groups: dict[tuple, list[dict]] = {}
    for r in scores:
        groups.setdefault((r["method"], r["stage"], r["kind"]), []).append(r)
    keys = ("hole_psnr", "accuracy", "ssim", "ssim_hole", "seam", "frechet", "seconds_per_image")

    def mean(values: list) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    return {k: {**{q: mean([r[q] for r in rows]) for q in keys}, "seeds": len(rows), "calls": rows[0]["calls"]}
            for k, rows in groups.items()}


def markdown(scores: list[dict], b: Budget, quick: bool = False) -> str:
    """One table: a row per method and adapter stage (baselines once), hole PSNR / accuracy per mask kind."""
    means = averaged(scores)
    head = " | ".join(f"{k} PSNR / acc." for k in MASK_KINDS)
    lines = ["# The budget curve on the digits (issue 15)", "",
             f"Mean over evaluation seeds {', '.join(map(str, b.eval_seeds))} (the seeds column says how many were "
             f"measured) of {b.eval_images} held-out digits per mask kind; hole PSNR in dB and classifier accuracy; "
             "calls = network calls per image; s/img on the machine that ran it. Cfg. 1, replace and RePaint use "
             f"only the {b.digits.base_steps}-step base, so they do not depend on the adapter's steps. "
             "A dash: not measured yet.", "",
             f"| method | adapter steps | calls | {head} | seeds | s/img |", "|" + "---|" * (6 + len(MASK_KINDS) - 1)]
    for m in methods(quick):
        for stage in ([None] if m.model == "base" else b.stages):
            cells = [means.get((m.name, stage, k)) for k in MASK_KINDS]
            if not any(cells):
                continue
            seeds = min(c["seeds"] for c in cells if c)
            secs = [c["seconds_per_image"] for c in cells if c]
            lines.append(f"| {m.name} | {'-' if stage is None else stage} | {m.calls} | " + " | ".join(
                f"{de.cell(c['hole_psnr'], '.2f')} / {c['accuracy']:.3f}" if c else "-" for c in cells)
                + f" | {seeds} | {sum(secs) / len(secs):.2f} |")
    lines += ["", "![hole PSNR and accuracy against adapter steps](budget.png)", ""]
    return "\n".join(lines)


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 0), (90, 90, 200),
           (200, 90, 90), (60, 140, 60)]


def plot(scores: list[dict], b: Budget, quick: bool = False) -> "Image.Image":
    """Hole PSNR (top) and accuracy (bottom) against adapter steps (log axis), one panel per mask kind: adapters
    as lines with dots, base-only methods as dashed flat lines; the legend names each method with its calls."""
    from PIL import Image, ImageDraw, ImageFont

    means = averaged(scores)
    rows = [m for m in methods(quick) if any((m.name, s, k) in means for s in [None, *b.stages] for k in MASK_KINDS)]
    font = ImageFont.load_default()
    pw, ph, ml, mt, gap, legend_h = 360, 240, 50, 30, 60, 18 * ((len(rows) + 1) // 2) + 40
    img = Image.new("RGB", (ml + len(MASK_KINDS) * (pw + gap), 2 * (ph + mt + 30) + legend_h), "white")
    draw = ImageDraw.Draw(img)
    xs = [math.log(s) for s in b.stages]
    x_lo, x_hi = min(xs) - 0.15, max(xs) + 0.15
    for r, (metric, label) in enumerate((("hole_psnr", "hole PSNR (dB)"), ("accuracy", "accuracy"))):
        for c, kind in enumerate(MASK_KINDS):
            values = [v[metric] for (n, s, k), v in means.items() if k == kind and v[metric] is not None]
            if not values:
                continue
            lo, hi = min(values), max(values)
            pad = max(0.05 * (hi - lo), 0.01)
            lo, hi = lo - pad, hi + pad
            x0, y0 = ml + c * (pw + gap), mt + r * (ph + mt + 30)
            draw.rectangle([x0, y0, x0 + pw, y0 + ph], outline=(0, 0, 0))
            draw.text((x0 + 4, y0 - 16), f"{kind}: {label}", fill=(0, 0, 0), font=font)

            def px(x: float, y: float) -> tuple[float, float]:
                return (x0 + (x - x_lo) / (x_hi - x_lo) * pw, y0 + ph - (y - lo) / (hi - lo) * ph)

            for i in range(5):
                yv = lo + (hi - lo) * i / 4
                draw.line([px(x_lo, yv), (px(x_lo, yv)[0] - 4, px(x_lo, yv)[1])], fill=(0, 0, 0))
                draw.text((x0 - 46, px(x_lo, yv)[1] - 6), f"{yv:.3f}" if metric == "accuracy" else f"{yv:.1f}",
                          fill=(0, 0, 0), font=font)
            for s in b.stages:
                xp, yp = px(math.log(s), lo)
                draw.line([(xp, yp), (xp, yp + 4)], fill=(0, 0, 0))
                draw.text((xp - 12, yp + 6), str(s), fill=(0, 0, 0), font=font)
            for i, m in enumerate(rows):
                color = PALETTE[i % len(PALETTE)]
                if m.model == "base":
                    v = means.get((m.name, None, kind))
                    if v:
                        _dashed(draw, px(x_lo, v[metric]), px(x_hi, v[metric]), color)
                    continue
                pts = [px(math.log(s), means[(m.name, s, kind)][metric]) for s in b.stages
                       if (m.name, s, kind) in means]
                if len(pts) > 1:
                    draw.line(pts, fill=color, width=2)
                for p in pts:
                    draw.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=color)
    ly = 2 * (ph + mt + 30) + 24
    draw.text((ml, ly - 20), "x: adapter training steps (log scale); dashed: base-only methods", fill=(0, 0, 0),
              font=font)
    for i, m in enumerate(rows):
        lx, lyy = ml + (i % 2) * 600, ly + 18 * (i // 2)
        color = PALETTE[i % len(PALETTE)]
        if m.model == "base":
            _dashed(draw, (lx, lyy + 6), (lx + 24, lyy + 6), color)
        else:
            draw.line([(lx, lyy + 6), (lx + 24, lyy + 6)], fill=color, width=2)
        draw.text((lx + 30, lyy), f"{m.name} ({m.calls} calls)", fill=(0, 0, 0), font=font)
    return img


def _dashed(draw, a, b, color, dash: float = 6.0) -> None:
    length = math.dist(a, b)
    for k in range(int(length // (2 * dash)) + 1):
        t0, t1 = min(1, 2 * k * dash / length), min(1, (2 * k + 1) * dash / length)
        draw.line([(a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0),
                   (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)], fill=color, width=2)


def write_report(out: Path, b: Budget, quick: bool, docs: Path | None = None, force: bool = False) -> list[Path]:
    """budget.md, budget.png and budget.json in ``out`` (replaced), and the first two in ``docs`` (refused over
    existing files unless ``force``)."""
    scores = collect(out, b, quick)
    text, picture = markdown(scores, b, quick), plot(scores, b, quick)
    written = []
    for folder, replace in ((out, True), *(((docs, force),) if docs else ())):
        written.append(atomic_write(folder / "budget.md", lambda tmp: tmp.write_text(text), force=replace,
                                    flag="--force"))
        written.append(atomic_write(folder / "budget.png", lambda tmp: picture.save(tmp, format="PNG"),
                                    force=replace, flag="--force"))
    write_json({"budget": dataclasses.asdict(b), "scores": scores}, out / "budget.json", force=True)
    return written


# -------------------------------------------------------------------------------------------------------- main


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated whole numbers, e.g. 700,1500") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated whole numbers >= 0, e.g. 700,1500")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="experiment folder (data, runs, models, scores, report)")
    p.add_argument("--quick", action="store_true", help="a smoke test of the whole chain (seconds)")
    p.add_argument("--reuse", action="store_true", help="continue in --out: skip every stage and score it holds")
    p.add_argument("--report-only", action="store_true", help="only write the report from the scores in --out")
    p.add_argument("--docs", type=Path, help="also write budget.md and budget.png into this folder")
    p.add_argument("--force", action="store_true", help="replace budget.md/budget.png in --docs")
    p.add_argument("--stages", type=_ints, help="adapter steps to export and score (default 700,1500,3000,6000)")
    p.add_argument("--eval-seeds", type=_ints, help="evaluation seeds (default 0,1)")
    p.add_argument("--eval-images", type=int, help="held-out digits scored (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and training, as digits_experiment (0)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--plan", choices=("full", "carry"), default="full",
                   help="full (default): every row at its stages; carry: RAD DDPM-100 at every stage first, DDIM-25 "
                        "eta 1 and resampling from 6,000 steps, RePaint 250/10/10 on every seed, Cfg. 2 to 3,000 last")
    p.add_argument("--quiet", "-q", action="store_true", help="warnings only")
    return p


def budget(args: argparse.Namespace) -> Budget:
    b = QUICK if args.quick else Budget()
    b = dataclasses.replace(b, **{k: getattr(args, k) for k in ("stages", "eval_seeds") if getattr(args, k)})
    if args.eval_images is not None:
        if args.eval_images < 1:
            raise SystemExit(f"--eval-images must be at least 1, got {args.eval_images}")
        b = dataclasses.replace(b, eval_images=args.eval_images,
                                digits=dataclasses.replace(b.digits, eval_images=args.eval_images))
    if list(b.stages) != sorted(set(b.stages)) or b.stages[0] < 1:
        raise SystemExit(f"--stages must be increasing positive steps, got {','.join(map(str, b.stages))}")
    return b


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s: %(message)s")
    b, out = budget(args), args.out
    if args.report_only:
        try:
            for path in write_report(out, b, args.quick, args.docs, args.force):
                print(path)
        except FileExistsError as err:
            print(err, file=sys.stderr)
            return 2
        return 0
    if out.exists() and any(out.iterdir()) and not args.reuse:
        print(f"{out} is not empty: pass --reuse to continue the run in it, or choose another --out",
              file=sys.stderr)
        return 2
    if args.docs:  # fail now, not after hours
        for name in ("budget.md", "budget.png"):
            if (args.docs / name).exists() and not args.force:
                print(f"{args.docs / name} already exists: pass --force to replace it", file=sys.stderr)
                return 2
    torch.set_num_threads(args.threads)
    marker = out / "budget-run.json"  # this folder is ours: a half-written data/ (killed) may be redone
    if not marker.is_file():
        write_json({"created_by": "scripts/budget_curve.py", "quick": args.quick, "seed": args.seed}, marker)
    elif (out / "data").is_dir() and not (out / "data" / "split.json").is_file():
        shutil.rmtree(out / "data")
    args.reuse = True  # digits_experiment's data step: keep what this script wrote
    data = de.prepare_data(out, b.digits, args.seed, reuse=True)
    net = classifier(out, data, b.digits, args.seed)
    scorer = None
    for job in (carry_jobs if args.plan == "carry" else jobs)(b, args.quick):
        if job[0] == "train":
            _, run, steps = job
            export = out / "models" / "base.safetensors" if run == "base" else stage_file(out, run, steps)
            train_stage(out, b, args, run, steps, export)
            continue
        _, method, stage, seed = job
        if all(score_file(out, method, stage, seed, k).is_file() for k in MASK_KINDS):
            continue
        scorer = scorer or Scorer(out, b, data, net, resolve_device(args.device))
        scorer(method, stage, seed)
        write_report(out, b, args.quick)
    for path in write_report(out, b, args.quick, args.docs, args.force):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
