#!/usr/bin/env python
"""Training speed of rad-train's step: images/s, peak memory and model FLOPs utilisation, per recipe and setting.

Recipes (``--recipes``):

- ``adm256-lora``   guided-diffusion's 256x256_diffusion_uncond layout (the ``adm256`` preset, 553 M parameters)
                    with rad-train's LoRA (rank ``--lora-rank``, alpha = rank) on its attention/conv targets and the
                    time layers trained in full: what ``rad-train --base 256x256_diffusion_uncond.pt`` trains;
- ``ffhq10m-lora``  the same on the layout of RAD's FFHQ checkpoints (``bench_embedding.LAYOUTS['ffhq10m']``);
- ``tiny``, ``digits32``, ``micro64``, ``small64``, ``small128``: fresh presets, every parameter trained.

Weights are random (``bench_embedding.build_model``, or ``build_fresh`` for presets): the costs are the real ones.
One step is rad-train's: a batch with Perlin noise states and per-pixel timesteps (prepared once, on the device:
the data pipeline runs ahead in worker threads in rad-train and is not timed here), autocast forward, the hybrid loss
(eps MSE + VLB), backward, gradient clipping, AdamW, the EMA update. Settings: ``--dtypes`` (fp32 / bf16 autocast),
``--grad-checkpoint off on``, ``--compile off on`` (CUDA only; skipped elsewhere, and said so).

Model FLOPs of one step (forward + backward as executed without checkpointing: frozen weights get no weight
gradients; the recomputation of --grad-checkpoint is reported apart, not counted in the MFU) are counted with
``torch.utils.flop_counter`` (matmul, conv, attention; elementwise ops, the optimiser and the EMA not counted) on
the device; ``--flops-on-meta`` counts them on the meta device instead, with one timestep per image (torch.unique of
the per-pixel path cannot run there; the spatial embedding's extra matmuls are < 1 % of the step), which gives the
FLOPs of 256x256 steps on a machine too slow to run them. MFU = FLOPs per step x steps/s / (``--peak-tflops`` x
1e12). Peak memory: CUDA max_memory_allocated (weights included); on the CPU the growth of the peak RSS over the
case's start (``bench_speed.PeakMemory``).

    python scripts/bench_train.py --recipes tiny micro64 small64 --batch 8 --steps 3 --threads 2 --json cpu.json
    python scripts/bench_train.py --recipes adm256-lora ffhq10m-lora --flops-on-meta --batch 16 --json flops.json
    python scripts/bench_train.py --device cuda --recipes adm256-lora ffhq10m-lora small64 --batch 16 \\
        --dtypes fp32 bf16 --grad-checkpoint off on --compile off on --peak-tflops 989 --json gpu_train.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from comfyui_rad.adm import ADM, ADMConfig
from comfyui_rad.devices import device_name, resolve_device
from comfyui_rad.fileio import atomic_write
from comfyui_rad.schedule import NoiseCurves
from comfyui_rad.train.lora import add_lora, trainable_parameters
from comfyui_rad.train.losses import q_sample, rad_loss, step_terms
from comfyui_rad.train.noising import perlin_states
from comfyui_rad.train.presets import PRESETS, build_fresh, preset_config
from comfyui_rad.train.speed import compile_model, enable_grad_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks, also when loaded by path
from bench_embedding import LAYOUTS  # noqa: E402
from bench_embedding import build_model as random_adm  # noqa: E402
from bench_speed import PeakMemory, git_commit, loadavg  # noqa: E402

LORA_RECIPES = {"adm256-lora": "uncond256", "ffhq10m-lora": "ffhq10m"}
RECIPES = [*LORA_RECIPES, *(p for p in PRESETS if p != "adm256")]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", choices=RECIPES, default=RECIPES, metavar="RECIPE",
                    help=f"a subset of {', '.join(RECIPES)}")
    ap.add_argument("--resolution", type=int, help="image side (default: 256 for the LoRA recipes, each preset's own)")
    ap.add_argument("--batch", type=int, default=8, help="images per step (default 8)")
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["fp32"], help="autocast dtypes")
    ap.add_argument("--grad-checkpoint", nargs="+", choices=["off", "on"], default=["off"])
    ap.add_argument("--compile", nargs="+", choices=["off", "on"], default=["off"])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per case (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    ap.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s at the dtype, for the MFU")
    ap.add_argument("--flops-on-meta", action="store_true",
                    help="only count FLOPs per step, on the meta device (no timing): for sizes too slow to run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the results here (atomically)")
    return ap


def resolution(recipe: str, args: argparse.Namespace) -> int:
    return args.resolution or (256 if recipe in LORA_RECIPES else PRESETS[recipe].image_size)


def build(recipe: str, args: argparse.Namespace, device: torch.device) -> tuple[ADM, dict]:
    """The model of ``recipe`` on ``device`` in train mode, and its trained parameters (rad-train's choice)."""
    size = resolution(recipe, args)
    if recipe in LORA_RECIPES:
        if device.type == "meta":
            with torch.device("meta"):
                model = ADM(ADMConfig(**LAYOUTS[LORA_RECIPES[recipe]], num_head_channels=64, image_size=size))
        else:
            model = random_adm(LORA_RECIPES[recipe], device, torch.float32, args.seed)
        add_lora(model, args.lora_rank, float(args.lora_rank), args.seed)
        params = trainable_parameters(model, lora=True)
    else:
        cfg = preset_config(recipe, size)
        if device.type == "meta":
            with torch.device("meta"):
                model = ADM(cfg)
        else:
            model = build_fresh(cfg, args.seed)
        params = trainable_parameters(model, lora=False)
    return model.to(device).train(), params


def batch_on(device: torch.device, batch: int, size: int, seed: int, per_pixel: bool = True) -> dict:
    """A training batch as rad-train prepares it: x0, eps, tau and the per-pixel StepTerms, on ``device``."""
    curves = NoiseCurves()
    g = torch.Generator().manual_seed(seed)
    mask, t = perlin_states(batch, size, size, curves, g)
    terms, abar = step_terms(curves, mask, t)
    tau = curves.timestep(abar) if per_pixel else curves.timestep(abar.mean((1, 2, 3)))
    x0 = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    if device.type == "meta":
        return {"x0": x0.to("meta"), "eps": eps.to("meta"), "tau": tau.float().to("meta"), "terms": terms.to("meta")}
    return {"x0": x0.to(device), "eps": eps.to(device), "tau": tau.to(device), "terms": terms.to(device)}


def make_step(model, forward, params: dict, data: dict, dtype: torch.dtype, device: torch.device):
    """rad-train's optimiser step on a fixed batch (``Trainer.train_step`` without DDP and accumulation)."""
    opt = torch.optim.AdamW(list(params.values()), lr=1e-5)
    ema = {k: p.detach().clone() for k, p in params.items()}
    use_autocast = dtype != torch.float32 and device.type != "meta"

    def step():
        x_t = q_sample(data["x0"], data["eps"], data["terms"])
        with torch.autocast(device.type if device.type != "meta" else "cpu", dtype=dtype, enabled=use_autocast):
            out = forward(x_t, data["tau"])
        loss = rad_loss(out, data["x0"], data["eps"], data["terms"])["loss"]
        loss.backward()
        if device.type == "meta":
            return loss
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for k, p in params.items():
                ema[k].lerp_(p.detach(), 0.001)
        return loss

    return step


def count_flops(step) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(recipe: str, dtype: str, ckpt: str, compiled: str, args: argparse.Namespace,
             device: torch.device) -> dict:
    size = resolution(recipe, args)
    row = {"recipe": recipe, "resolution": size, "batch": args.batch, "dtype": dtype, "grad_checkpoint": ckpt,
           "compile": compiled}
    if compiled == "on":
        try:
            compile_model(torch.nn.Identity(), device)
        except ValueError as err:
            return {**row, "skipped": str(err)}
    model, params = build(recipe, args, device)
    row["params_trained"] = sum(p.numel() for p in params.values())
    row["params_total"] = sum(p.numel() for p in model.parameters())
    data = batch_on(device, args.batch, size, args.seed, per_pixel=device.type != "meta")
    flops = count_flops(make_step(model, model, params, data, DTYPES[dtype], device))  # model FLOPs: no recompute
    row.update(flops_per_step=flops, gflop_per_image=flops / args.batch / 1e9, counted_on=str(device))
    if device.type == "meta":
        return row
    if ckpt == "on":
        enable_grad_checkpoint(model)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    forward = compile_model(model, device) if compiled == "on" else model
    step = make_step(model, forward, params, data, DTYPES[dtype], device)
    memory = PeakMemory(device)
    memory.start()
    for _ in range(args.warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync(device)
    seconds = (time.perf_counter() - t0) / args.steps
    peak = memory.stop()
    row.update(s_per_step=seconds, images_s=args.batch / seconds, peak_mib=peak,
               achieved_tflops=flops / seconds / 1e12, loss_finite=bool(torch.isfinite(loss).item()))
    if ckpt == "on" and compiled == "off":
        row["executed_flops_per_step"] = count_flops(step)  # with the recomputation
    if args.peak_tflops:
        row["mfu"] = row["achieved_tflops"] / args.peak_tflops
    return row


def environment(args: argparse.Namespace, device: torch.device, argv: list[str]) -> dict:
    cuda = device.type == "cuda"
    return dict(cmd="python scripts/bench_train.py " + " ".join(argv), device=str(device),
                gpu=device_name(device) if cuda else None, cpu=device_name("cpu"), logical_cpus=os.cpu_count(),
                threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version(),
                cuda=torch.version.cuda if cuda else None, commit=git_commit(), loadavg_start=loadavg(),
                peak_tflops=args.peak_tflops, steps=args.steps, warmup=args.warmup)


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def print_table(rows: list[dict]) -> None:
    print("| recipe | size | batch | dtype | ckpt | compile | trained / total params | s/step | images/s | peak MiB "
          "| GFLOP/image | TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        head = (f"| {r['recipe']} | {r['resolution']} | {r['batch']} | {r['dtype']} | {r['grad_checkpoint']} | "
                f"{r['compile']} |")
        if "skipped" in r:
            print(f"{head} skipped: {r['skipped']} |||||||")
            continue
        params = f"{r['params_trained'] / 1e6:.2f} M / {r['params_total'] / 1e6:.1f} M"
        print(f"{head} {params} | {_fmt(r.get('s_per_step'), '.3f')} | {_fmt(r.get('images_s'), '.2f')} | "
              f"{_fmt(r.get('peak_mib'), '.0f')} | {r['gflop_per_image']:.2f} | "
              f"{_fmt(r.get('achieved_tflops'), '.3f')} | {_fmt(r.get('mfu'), '.1%')} |")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name, value in (("--batch", args.batch), ("--steps", args.steps), ("--lora-rank", args.lora_rank)):
        if value < 1:
            raise SystemExit(f"bench_train.py: {name} must be at least 1, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("meta") if args.flops_on_meta else resolve_device(args.device)
    rows = []
    for recipe in args.recipes:
        for dtype in args.dtypes:
            for ckpt in args.grad_checkpoint:
                for compiled in args.compile:
                    rows.append(run_case(recipe, dtype, ckpt, compiled, args, device))
                    print(json.dumps(rows[-1]), file=sys.stderr)
    result = {"env": environment(args, device, argv), "rows": rows}
    print_table(rows)
    if args.json:
        atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(result, indent=1)), force=True)
    return result


if __name__ == "__main__":
    main()
