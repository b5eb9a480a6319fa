#!/usr/bin/env python
"""Samplers against network calls on the digits (issue 22, part 2): RAD's DDPM-100 beside the per-pixel Euler
ancestral, DPM-Solver++(2M) and DPM-Solver++(2M) SDE (and DDIM at eta 1) at 10 / 15 / 20 / 25 / 50 calls, on one RAD adapter of the
budget curve (``scripts/budget_curve.py``'s data, classifier and base; its scorer: hole PSNR, classifier accuracy,
Fréchet distance of classifier features, on the first 32 held-out digits under box, extreme and wide masks).

Every (method, seed, mask kind) score is a JSON file in ``--out`` (a second run skips those that exist), so the
run can be stopped and started again. The report (``sampler_table.md``, ``sampler_table.png``: hole PSNR against calls
per mask kind, DDPM-100 as a dashed line) is rewritten after every score.

    python scripts/sampler_table.py --budget /work/runs/budget \
        --adapter /work/runs/budget/models/rad-12000.safetensors --out /work/runs/samplers --seeds 0 1 --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import budget_curve as bc  # noqa: E402
import digits_experiment as de  # noqa: E402

from comfyui_rad.checkpoints import load_adm  # noqa: E402
from comfyui_rad.evaluate import eval_masks, inpaint_set, write_json  # noqa: E402

log = logging.getLogger("sampler_table")

CALLS = (10, 15, 20, 25, 50)
SAMPLERS = ("euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde")


@dataclass(frozen=True)
class Row:
    """One method: a sampler, its steps (one network call each) and its step spacing (None: the sampler's)."""

    sampler: str
    steps: int
    spacing: str | None = None
    eta: float = 1.0

    @property
    def name(self) -> str:
        return f"{self.sampler}-{self.steps}" + (f" {self.spacing}" if self.spacing else "")

    @property
    def key(self) -> str:
        return self.name.replace(" ", "-")


def rows(spacings: tuple[str, ...]) -> list[Row]:
    out = [Row("ddpm", 100)] + [Row("ddim", n) for n in CALLS]
    for sampler in SAMPLERS:
        for spacing in spacings:
            out += [Row(sampler, n, spacing) for n in CALLS]
    return out


def score(out: Path, model, row: Row, seed: int, kind: str, truth, labels, net, truth_features) -> dict:
    path = out / "scores" / f"{row.key}-seed{seed}-{kind}.json"
    if path.is_file():
        return json.loads(path.read_text())
    mask = eval_masks(kind, truth.shape[0], de.SIZE, seed)
    options = {"spacing": row.spacing} if row.spacing else None
    tick = time.perf_counter()
    results, seconds = inpaint_set(model, truth, mask, sampler=row.sampler, steps=row.steps, seed=seed,
                                   batch_size=32, eta=row.eta, options=options)
    numbers = de.score(net, results, truth, labels, mask, truth_features)
    record = {"method": row.name, "sampler": row.sampler, "steps": row.steps, "spacing": row.spacing, "seed": seed,
              "kind": kind, "calls": row.steps, "seconds_per_image": seconds / truth.shape[0], **numbers}
    write_json(record, path, force=True)
    log.info("%s seed %d %s: hole PSNR %.2f, accuracy %.3f (%.0f s)", row.name, seed, kind, numbers["hole_psnr"],
             numbers["accuracy"], time.perf_counter() - tick)
    return record


def report(out: Path, records: list[dict], adapter: str) -> None:
    """sampler_table.md (means over seeds) and sampler_table.png."""
    table: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        table.setdefault((r["method"], r["kind"]), []).append(r)
    methods = list(dict.fromkeys(r["method"] for r in records))
    lines = [f"Adapter `{adapter}`; 32 held-out digits; seeds {sorted({r['seed'] for r in records})}; "
             "hole PSNR (dB) / accuracy / Fréchet per mask kind, mean over seeds.", "",
             "| method | calls | " + " | ".join(de.MASK_KINDS) + " |", "|---|---:|" + "---|" * len(de.MASK_KINDS)]
    for m in methods:
        cells = []
        for kind in de.MASK_KINDS:
            rs = table.get((m, kind), [])
            if not rs:
                cells.append("-")
                continue
            mean = {k: sum(r[k] for r in rs) / len(rs) for k in ("hole_psnr", "accuracy", "frechet")}
            cells.append(f"{mean['hole_psnr']:.2f} / {mean['accuracy']:.3f} / {mean['frechet']:.2f}")
        calls = next(r["calls"] for r in records if r["method"] == m)
        lines.append(f"| {m} | {calls} | " + " | ".join(cells) + " |")
    (out / "sampler_table.md").write_text("\n".join(lines) + "\n")
    # the plot: each sampler at its default spacing (lambda; DDIM and DDPM uniform), the other spacings only in the table
    plot(out, table, [m for m in methods if not m.endswith((" uniform", " karras"))])


def plot(out: Path, table: dict, methods: list[str]) -> None:
    from PIL import Image, ImageDraw

    colours = {"euler_ancestral": (31, 119, 180), "dpmpp_2m": (255, 127, 14), "dpmpp_2m_sde": (44, 160, 44),
               "ddim": (148, 103, 189)}
    w, h, pad = 360, 260, 40
    img = Image.new("RGB", (w * len(de.MASK_KINDS), h + 60), "white")
    draw = ImageDraw.Draw(img)
    for k, kind in enumerate(de.MASK_KINDS):
        points = {m: (sum(r["calls"] for r in table[m, kind]) / len(table[m, kind]),
                      sum(r["hole_psnr"] for r in table[m, kind]) / len(table[m, kind]))
                  for m in methods if (m, kind) in table}
        if not points:
            continue
        lo = min(p for _, p in points.values()) - 0.3
        hi = max(p for _, p in points.values()) + 0.3
        x0 = k * w

        def xy(calls, psnr):
            return (x0 + pad + (calls - 10) / 90 * (w - 2 * pad), h - pad - (psnr - lo) / (hi - lo) * (h - 2 * pad))

        draw.rectangle([x0 + pad, pad, x0 + w - pad, h - pad], outline="black")
        draw.text((x0 + pad, 8), f"{kind}: hole PSNR (dB) vs calls", fill="black")
        draw.text((x0 + pad, h - pad + 4), "10", fill="black")
        draw.text((x0 + w - pad - 20, h - pad + 4), "100", fill="black")
        draw.text((x0 + 2, pad), f"{hi:.1f}", fill="black")
        draw.text((x0 + 2, h - pad - 10), f"{lo:.1f}", fill="black")
        if "ddpm-100" in points:
            y = xy(10, points["ddpm-100"][1])[1]
            for xs in range(x0 + pad, x0 + w - pad, 8):
                draw.line([xs, y, xs + 4, y], fill="red")
        for m, (calls, psnr) in points.items():
            sampler = m.split("-")[0]
            colour = colours.get(sampler, (0, 0, 0))
            same = sorted((c, p) for mm, (c, p) in points.items() if mm.split(" ")[0].rsplit("-", 1)[0] == sampler
                          and mm.split(" ")[1:] == m.split(" ")[1:])
            if len(same) > 1:
                draw.line([xy(*p) for p in same], fill=colour, width=2)
            cx, cy = xy(calls, psnr)
            draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
    legend = "red dashed: DDPM-100; blue: euler_ancestral; orange: dpmpp_2m; green: dpmpp_2m_sde; purple: ddim (eta 1)"
    draw.text((8, h + 20), legend, fill="black")
    img.save(out / "sampler_table.png")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=Path, default=Path("/work/runs/budget"), help="budget_curve's --out")
    ap.add_argument("--adapter", type=Path, required=True, help="a RAD adapter on the budget's base")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--spacings", nargs="+", default=["lambda"], help="step spacings to try for the new samplers")
    ap.add_argument("--only", nargs="*", help="only these method names (e.g. ddpm-100 'dpmpp_2m_sde-25 lambda')")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    (args.out / "scores").mkdir(parents=True, exist_ok=True)
    settings = bc.Budget().digits
    data = de.prepare_data(args.budget, settings, 0, reuse=True)
    net = bc.classifier(args.budget, data, settings, 0)
    truth, labels = data["held_x"][:32], data["held_y"][:32]
    truth_features = de.classify(net, truth)[1]
    model = load_adm(args.budget / "models" / "base.safetensors", adapter=args.adapter, device="cpu")
    records = []
    for seed in args.seeds:
        for row in rows(tuple(args.spacings)):
            if args.only and row.name not in args.only:
                continue
            for kind in de.MASK_KINDS:
                records.append(score(args.out, model, row, seed, kind, truth, labels, net, truth_features))
            report(args.out, records, str(args.adapter))
    print(args.out / "sampler_table.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
