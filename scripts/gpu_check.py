#!/usr/bin/env python
"""Everything that needs a GPU, in one command (< 10 min on one H100/H200-class GPU); all numbers as JSON in --out.

    python scripts/gpu_check.py --out gpu_results/            # on a CUDA machine
    python scripts/gpu_check.py --smoke --out /tmp/smoke/     # the same checks at toy sizes on the CPU, in seconds

Parts, each writing ``<out>/<part>.json`` (``summary.json`` lists them with pass/fail and their time):

1. ``precision``: CUDA fp16 and bf16 forwards against fp32 on the real layouts (guided-diffusion 256x256 uncond and
   the FFHQ ADM, random variance-preserving weights, 256x256, a binary per-pixel timestep map and one timestep per
   image): max |low - fp32| / max |fp32|; pass below 2e-2 (fp16) and 5e-2 (bf16).
2. ``train``: a short DDP-free bf16 ``rad-train`` run (preset small64, batch 16, 300 steps on generated images) whose
   loss must fall: mean of the last tenth of metrics.jsonl below 0.7 x that of the first tenth.
3. ``bench_train``: ``scripts/bench_train.py`` on the adm256 and ffhq10m LoRA recipes and small64 at 256 / 64,
   batch 16, fp32 / bf16, grad checkpointing off / on; ``bench_train_compile``: bf16 with --compile.
4. ``bench_speed_b1`` / ``bench_speed_b8``: ``scripts/bench_speed.py`` on adm256 (bf16) at batch 1 and 8.
5. ``bench_embedding``: ``scripts/bench_embedding.py`` on the FFHQ layout at 256 (fp16).

``--peak-tflops`` (default: 989 for H100/H200, 312 for A100, from the GPU's name; dense bf16) goes to the benchmarks
for their MFU / FLOP floors. ``--smoke`` runs on the CPU at toy sizes (tests/test_gpu_check.py runs it in CI); its
numbers mean nothing but that every part runs and writes its JSON. ``--skip PART`` leaves parts out.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import comfyui_rad
from comfyui_rad.fileio import atomic_write

REPO = Path(comfyui_rad.__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))  # the sibling benchmarks, also when loaded by path
from bench_embedding import binary_map, build_model, to_t  # noqa: E402

PARTS = ("precision", "train", "bench_train", "bench_train_compile", "bench_speed_b1", "bench_speed_b8",
         "bench_embedding")
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0}
TOLERANCE = {"fp16": 2e-2, "bf16": 5e-2}


def write_json(path: Path, data) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)), force=True)


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


# ------------------------------------------------------------------------------------------------------- parts


@torch.no_grad()
def precision(args, device: torch.device) -> dict:
    """Low-precision forwards against fp32 on the real layouts (module doc, part 1)."""
    layouts, size, dtypes = (["small"], 32, ["bf16"]) if args.smoke else (["uncond256", "ffhq10m"], 256,
                                                                          ["fp16", "bf16"])
    rows = []
    for layout in layouts:
        model = build_model(layout, device, torch.float32, seed=0)
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
        maps = {"per-pixel": to_t(binary_map(2, size, seed=2)).to(device),
                "per-image": torch.tensor([500.3, 20.0], device=device)}
        reference = {k: model(x, t).float() for k, t in maps.items()}
        for dtype in dtypes:
            low = build_model(layout, device, getattr(torch, {"fp16": "float16", "bf16": "bfloat16"}[dtype]), 0)
            for k, t in maps.items():
                out = low(x.to(low.dtype), t).float()
                err = ((out - reference[k]).abs().max() / reference[k].abs().max()).item()
                rows.append({"layout": layout, "size": size, "dtype": dtype, "t": k, "rel_max_err": err,
                             "finite": bool(torch.isfinite(out).all()), "ok": err < TOLERANCE[dtype]})
            del low
        del model
    return {"rows": rows, "ok": all(r["ok"] and r["finite"] for r in rows)}


def _images(folder: Path, count: int, size: int, seed: int = 0) -> None:
    """Learnable generated images: smooth colour gradients with a few discs."""
    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        a, b, c = rng.rand(3, 3)
        img = np.stack([a[j] * xx + b[j] * yy + c[j] * 0.3 for j in range(3)], -1)
        for _ in range(3):
            cx, cy, r = rng.rand(3) * [1, 1, 0.3]
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.rand(3)
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(folder / f"img{i:03d}.png")


def train(args, device: torch.device) -> dict:
    """A short bf16 rad-train run on one device whose loss falls (module doc, part 2)."""
    from comfyui_rad.train import Trainer, TrainOptions  # noqa: PLC0415 - only this part trains

    smoke = args.smoke
    preset, size, steps, batch = ("tiny", 16, 30, 4) if smoke else ("small64", 64, 300, 16)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _images(tmp / "data", 24, size * 2)
        opts = TrainOptions(data=tmp / "data", out=tmp / "run", preset=preset, steps=steps, batch_size=batch,
                            lr=2e-3 if smoke else 2e-4, precision="bf16", device=str(device), holdout=2,
                            preview_every=0, save_every=0, log_every=1, ema=0.0, workers=0 if smoke else 4,
                            )
        trainer = Trainer(opts)
        start = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - start
        trainer.close()
        records = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in records if "loss" in r]  # the validation's lines hold scores, not a loss
    tenth = max(1, len(losses) // 10)
    first, last = float(np.mean(losses[:tenth])), float(np.mean(losses[-tenth:]))
    return {"preset": preset, "steps": steps, "batch": batch, "precision": "bf16", "seconds": seconds,
            "images_s": steps * batch / seconds, "loss_first_tenth": first, "loss_last_tenth": last,
            "ok": bool(np.isfinite(losses).all() and last < 0.7 * first)}


def _script(name: str, argv: list[str], json_path: Path, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(SCRIPTS / name), *argv, "--json", str(json_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    result = {"cmd": " ".join(cmd[1:]), "returncode": done.returncode, "ok": done.returncode == 0}
    if done.returncode:
        result["stderr_tail"] = done.stderr[-3000:]
    return result


def bench_argv(part: str, args, device: torch.device, peak: float | None) -> tuple[str, list[str]]:
    """The script and arguments of a benchmark part (toy sizes with --smoke)."""
    dev = ["--device", str(device)]
    tf = ["--peak-tflops", str(peak)] if peak else []
    if args.smoke:
        quick = {"bench_train": ("bench_train.py", ["--recipes", "tiny", "--batch", "2", "--steps", "1", "--warmup",
                                                    "1", "--grad-checkpoint", "off", "on", "--threads", "1"]),
                 "bench_train_compile": ("bench_train.py", ["--recipes", "tiny", "--batch", "2", "--steps", "1",
                                                            "--compile", "on"]),
                 "bench_speed_b1": ("bench_speed.py", ["--preset", "tiny", "--batch", "1", "--repeats", "1",
                                                       "--ddpm-steps", "2", "--ddim-steps", "2", "--repaint-steps",
                                                       "4", "--jump-length", "2", "--jump-n-sample", "2",
                                                       "--dpmpp-steps", "2", "--threads", "1"]),
                 "bench_embedding": ("bench_embedding.py", ["--layout", "small", "--size", "32", "--repeats", "1",
                                                            "--threads", "1"])}
        quick["bench_speed_b8"] = ("bench_speed.py", [*quick["bench_speed_b1"][1][:2], "--batch", "2",
                                                      *quick["bench_speed_b1"][1][4:]])
        name, argv = quick[part]
        return name, argv + dev
    full = {"bench_train": ("bench_train.py", ["--recipes", "adm256-lora", "ffhq10m-lora", "small64", "--batch", "16",
                                               "--dtypes", "fp32", "bf16", "--grad-checkpoint", "off", "on",
                                               "--steps", "5"]),
            "bench_train_compile": ("bench_train.py", ["--recipes", "adm256-lora", "ffhq10m-lora", "--batch", "16",
                                                       "--dtypes", "bf16", "--compile", "on", "--steps", "5",
                                                       "--warmup", "3"]),
            "bench_speed_b1": ("bench_speed.py", ["--preset", "adm256", "--dtype", "bf16", "--batch", "1",
                                                  "--repeats", "2", "--repaint-steps", "50"]),
            "bench_speed_b8": ("bench_speed.py", ["--preset", "adm256", "--dtype", "bf16", "--batch", "8",
                                                  "--repeats", "2", "--repaint-steps", "50"]),
            "bench_embedding": ("bench_embedding.py", ["--layout", "ffhq10m", "--size", "256", "--dtype", "fp16",
                                                       "--repeats", "5"])}
    name, argv = full[part]
    return name, argv + dev + (tf if name != "bench_embedding.py" else [])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the JSON files (created)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: checks that every part runs")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    ap.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU (default: from its name)")
    ap.add_argument("--skip", nargs="+", choices=PARTS, default=[], metavar="PART", help=f"of {', '.join(PARTS)}")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check.py: no CUDA device here: run it on a GPU machine, or use --smoke on the CPU")
    if args.smoke:
        torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    peak = args.peak_tflops or peak_tflops(device)
    summary = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "torch": torch.__version__, "smoke": args.smoke, "peak_tflops": peak, "parts": {}}
    for part in PARTS:
        if part in args.skip:
            continue
        start = time.perf_counter()
        path = args.out / f"{part}.json"
        if part in ("precision", "train"):
            try:
                result = {"precision": precision, "train": train}[part](args, device)
            except Exception as err:  # noqa: BLE001 - a failed part is reported, the others still run
                result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            write_json(path, result)
        else:
            name, script_argv = bench_argv(part, args, device, peak)
            result = _script(name, script_argv, path, timeout=600)
        summary["parts"][part] = {"ok": bool(result["ok"]), "seconds": round(time.perf_counter() - start, 1),
                                  "json": path.name if path.exists() else None}
        print(f"{part}: {'ok' if result['ok'] else 'FAILED'} ({summary['parts'][part]['seconds']} s)", flush=True)
    summary["ok"] = all(p["ok"] for p in summary["parts"].values())
    write_json(args.out / "summary.json", summary)
    return summary


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
