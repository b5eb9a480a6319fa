#!/usr/bin/env python
"""Tiles one window after the other against waves (independent windows in one batch of network calls), on the CPU.

The built-in model (or ``--model``) fills the example cat picture region by region (``fit="tiles"``) twice per
round, with ``batch_limit=1`` (the windows one after the other, as before waves) and with the default
(``tiles.wave_limit``), on two masks: ``holes``, ``--holes`` square holes of ``--hole`` pixels spread over the
picture (far apart: one window each, all in one wave), and ``readme``, the README's own mask (one 85x85 hole: a grid
of overlapping windows, waves of 4, 2, 2 and 1). Each row gives the wall and process CPU seconds (medians over
``--repeats`` rounds, the modes alternating so drift hits both), the forward passes and images the network saw
(a forward pre-hook), the largest difference between the two results and the 1-minute load average before the
run. Set ``OMP_NUM_THREADS`` / ``--threads`` to the threads you mean to measure (1 on a shared machine).

    OMP_NUM_THREADS=1 python scripts/bench_waves.py --sampler dpmpp_2m_sde --steps 25 --repeats 3 --json waves.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

import torch

from comfyui_rad import imaging, load_adm
from comfyui_rad.checkpoints import DEFAULT_MODEL
from comfyui_rad.fileio import atomic_write
from comfyui_rad.pipeline import plan_inpaint, run_plan
from comfyui_rad.sampling import RADDenoiser, SamplerSpec
from comfyui_rad.tiles import wave_limit

ROOT = Path(__file__).resolve().parents[1]
CAT = ROOT / "example_workflows" / "input" / "rad_example_cat.png"
MODES = {"one after the other": 1, "waves": None}


def spread_holes(height: int, width: int, count: int, side: int) -> torch.Tensor:
    """``count`` square holes of ``side`` pixels on a grid over the picture, as far apart as it allows: [1,H,W]."""
    mask = torch.zeros(1, height, width)
    cols = max(1, round((count * width / height) ** 0.5))
    rows = -(-count // cols)
    for i in range(count):
        r, c = divmod(i, cols)
        top = round((r + 0.5) * height / rows - side / 2)
        left = round((c + 0.5) * width / cols - side / 2)
        mask[:, max(top, 0):top + side, max(left, 0):left + side] = 1
    return mask


def run(model, plan, spec: SamplerSpec, limit: int | None, seed: int) -> tuple[torch.Tensor, dict]:
    """One fill; returns the result and its row (seconds, passes, images)."""
    seen = []
    hook = model.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0]))
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        out = run_plan(model, plan, spec, seed=seed, batch_limit=limit)
    finally:
        hook.remove()
    return out, {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "passes": len(seen),
                 "images": sum(seen), "largest_batch": max(seen), "load_before": load}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model file (default: the built-in one)")
    ap.add_argument("--sampler", default="dpmpp_2m_sde", help="sampler name")
    ap.add_argument("--steps", type=int, default=25, help="sampler steps")
    ap.add_argument("--holes", type=int, default=4, help="far-apart holes of the holes mask")
    ap.add_argument("--hole", type=int, default=40, help="side of each hole in pixels")
    ap.add_argument("--masks", nargs="+", default=["holes", "readme"], choices=["holes", "readme"])
    ap.add_argument("--repeats", type=int, default=3, help="rounds (the table gives medians)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the rows here too")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    model = load_adm(args.model).eval()
    spec = SamplerSpec.create(args.sampler, steps=args.steps)
    image = imaging.load_image(CAT)
    height, width = image.shape[-2:]
    masks = {"holes": spread_holes(height, width, args.holes, args.hole), "readme": imaging.load_mask(CAT)}
    rows = []
    for name in args.masks:
        plan = plan_inpaint(model, image, masks[name], fit="tiles")
        limit = wave_limit(RADDenoiser(model))
        waves = plan.waves(spec, limit)
        timings, results = {mode: [] for mode in MODES}, {}
        for _ in range(args.repeats):
            for mode, batch_limit in MODES.items():
                results[mode], row = run(model, plan, spec, batch_limit, args.seed)
                timings[mode].append(row)
        diff = float((results["waves"] - results["one after the other"]).abs().max())
        for mode in MODES:
            runs = timings[mode]
            rows.append({"mask": name, "mode": mode, "sampler": spec.describe(), "windows": plan.sampled_windows(spec),
                         "waves": [len(w) for w in waves] if MODES[mode] is None else None,
                         "window_calls": plan.calls(spec), "passes": runs[0]["passes"],
                         "largest_batch": runs[0]["largest_batch"],
                         "wall_s": round(statistics.median(r["wall_s"] for r in runs), 2),
                         "cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 2),
                         "load_before": [round(r["load_before"], 2) for r in runs], "max_abs_diff": diff,
                         "threads": torch.get_num_threads(), "repeats": args.repeats})
    print("| mask | mode | windows (waves) | window calls | forward passes (largest batch) | wall s | CPU s | "
          "load before | max diff |")
    print("|---|---|---|---:|---:|---:|---:|---|---:|")
    for r in rows:
        waves = f"{r['windows']}" + (f" ({'+'.join(map(str, r['waves']))})" if r["waves"] else "")
        print(f"| {r['mask']} | {r['mode']} | {waves} | {r['window_calls']} | {r['passes']} ({r['largest_batch']}) | "
              f"{r['wall_s']} | {r['cpu_s']} | {', '.join(map(str, r['load_before']))} | {r['max_abs_diff']:.1e} |")
    result = {"torch": torch.__version__, "cpus": os.cpu_count(), "rows": rows}
    if args.json:
        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"), force=True)
    return result


if __name__ == "__main__":
    main()
