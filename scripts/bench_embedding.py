#!/usr/bin/env python
"""Cost of RAD's spatial noise embedding in ``comfyui_rad.ADM`` (per-pixel t) against the per-image forward.

Cases, all on the same random-weight model and the same input x (``SpatialEmbedding.mode`` in brackets):

1. ``scalar``        t [B] at 500.3: the plain guided-diffusion forward (the reference cost);
2. ``binary``        t [B,1,H,W], 2 values: a box hole + Perlin-like blob at 500.3, the rest at -1 ("onehot");
3. ``binary-dense``  the same map with ``dense_embedding=True`` ("dense", the paper's literal definition);
4. ``soft``          a Gaussian-blurred box mapped by t = -1 + 501.3*m, thousands of distinct values ("taps");
5. ``soft-dense``    the same map with ``dense_embedding=True`` ("dense");
6. ``train-batch``   a training batch: the binary map with each image's hole at its own t (100.3 .. 900.3), 2 values
                     per image, 2B in the batch ("onehot" over each image's own values);
7. ``train-batch-dense`` the same map with ``dense_embedding=True`` ("dense").

Targets (issue): binary <= 1.05x scalar and equal to binary-dense within 1e-5; soft <= 1.3x scalar.

It prints a markdown table: median ms per forward over ``--repeats`` rounds, cases interleaved round-robin so
drift hits them alike; the verdict uses the median over rounds of case/scalar from the same round ("paired"), on
process CPU time on CPU and on synchronised wall time on CUDA.  It also prints max |binary - binary-dense| and
max |soft - soft-dense|, and the peak CUDA memory per case.  ``--flops`` counts matmul/conv/attention FLOPs per
case (with ``--repeats 0`` only that, one forward per case); ``--profile`` adds a torch.profiler breakdown of one
forward per case; ``--json PATH`` writes the results.

    python scripts/bench_embedding.py --layout ffhq10m --size 256 --repeats 5 --threads 1 --profile
    python scripts/bench_embedding.py --layout uncond256 --size 256 --device cuda --dtype fp16 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from comfyui_rad.adm import ADM, ADMConfig, SpatialEmbedding
from comfyui_rad.devices import DTYPES, device_name

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks, also when loaded by path
from bench_speed import loadavg  # noqa: E402

LAYOUTS = {
    # guided-diffusion 256x256_diffusion_uncond (ImageNet 256, unconditional)
    "uncond256": dict(model_channels=256, num_res_blocks=2, channel_mult=(1, 1, 2, 2, 4, 4), attention_ds=(8, 16, 32)),
    # the ADM layout of RAD's FFHQ checkpoints (128 channels, 1 res block, attention at 16x down)
    "ffhq10m": dict(model_channels=128, num_res_blocks=1, channel_mult=(1, 1, 2, 2, 4, 4), attention_ds=(16,)),
    # a small model for quick runs
    "small": dict(model_channels=64, num_res_blocks=2, channel_mult=(1, 2, 2, 2), attention_ds=(4, 8)),
}
T_HOLE, T_KEEP = 500.3, -1.0
TARGETS = {"binary": 1.05, "soft": 1.30}
EXACT = (("binary", "binary-dense"), ("soft", "soft-dense"), ("train-batch", "train-batch-dense"))


# ------------------------------------------------------------------------------------------------ model and inputs


@torch.no_grad()
def build_model(layout: str, device: torch.device, dtype: torch.dtype, seed: int) -> ADM:
    """ADM with random variance-preserving weights, built straight on ``device`` (no CPU init pass).

    Conv/linear weights ~ N(0, 1/fan_in), biases 0, GroupNorm affine = identity; the last conv of every residual
    branch is scaled by 0.5 so the UNet's activations stay O(1-10) and fp16 cannot overflow.
    """
    cfg = ADMConfig(**LAYOUTS[layout], num_head_channels=64)
    with torch.device("meta"):
        model = ADM(cfg)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim == 1:
            p.zero_()
        else:
            fan_in = p[0].numel()
            p.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=gen)
            if "out_layers.3" in name or "proj_out" in name or name.startswith("out."):
                p.mul_(0.5)
    for m in model.modules():
        if isinstance(m, torch.nn.GroupNorm):
            m.weight.fill_(1.0)
            m.bias.fill_(0.0)
    return model.to(dtype).eval()


def binary_map(batch: int, size: int, seed: int) -> torch.Tensor:
    """[B,1,S,S] float32 hole mask in {0,1}: a box plus a thresholded Perlin-like blob (smooth value noise)."""
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(batch, 1, size, size)
    s = size // 4
    m[:, :, s: 2 * s + s // 2, s: 2 * s + s // 2] = 1.0  # box hole
    noise = sum(  # value noise: random lattices at a few scales, bicubic-upsampled
        F.interpolate(torch.rand(batch, 1, c, c, generator=g), size=(size, size), mode="bicubic", align_corners=False)
        / (i + 1)
        for i, c in enumerate((4, 8, 16))
    )
    blob = noise > torch.quantile(noise.flatten(1), 0.8, dim=1)[:, None, None, None]  # top 20 % of the noise
    return torch.maximum(m, blob.float())


def soft_map(batch: int, size: int) -> torch.Tensor:
    """[B,1,S,S] float32 in [0,1]: a centred box (half the side) Gaussian-blurred with sigma = S/16."""
    m = torch.zeros(batch, 1, size, size, dtype=torch.float64)
    m[:, :, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1.0
    sigma = size / 16
    r = int(3 * sigma)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
    k = k / k.sum()
    m = F.conv2d(F.pad(m, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    m = F.conv2d(F.pad(m, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return m.clamp(0, 1).float()


def to_t(m: torch.Tensor) -> torch.Tensor:
    """Mask in [0,1] -> per-pixel timesteps: 0 -> -1 (kept), 1 -> 500.3 (hole)."""
    return T_KEEP + (T_HOLE - T_KEEP) * m



# ------------------------------------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mode_of(model: ADM, x: torch.Tensor, t: torch.Tensor, dense: bool) -> str:
    emb = model.embed(t, None, x, dense=dense)
    return emb.mode if isinstance(emb, SpatialEmbedding) else "per-image"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layout", choices=sorted(LAYOUTS), default="uncond256")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU); default: torch's choice")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--profile", action="store_true", help="torch.profiler breakdown of one forward per case")
    ap.add_argument("--flops", action="store_true",
                    help="count matmul/conv/attention FLOPs per case (torch.utils.flop_counter; gathers and "
                         "elementwise ops are not counted); with --repeats 0 only this is done")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    dev_name = device_name(device)
    env = dict(torch=torch.__version__, python=platform.python_version(), device=str(device), device_name=dev_name,
               threads=torch.get_num_threads(), dtype=args.dtype, layout=args.layout, size=args.size,
               batch=args.batch, repeats=args.repeats, warmup=args.warmup, cmd=" ".join(sys.argv),
               loadavg_start=loadavg())
    print(f"torch {env['torch']} | device {device} ({dev_name}) | threads {env['threads']} | {args.dtype} | "
          f"layout {args.layout} {LAYOUTS[args.layout]} | {args.batch}x3x{args.size}x{args.size}")

    model = build_model(args.layout, device, dtype, args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device)
    t_bin = to_t(binary_map(args.batch, args.size, args.seed)).to(device)
    t_soft = to_t(soft_map(args.batch, args.size)).to(device)
    levels = torch.linspace(100.3, 900.3, args.batch)[:, None, None, None]  # a training batch: its own t per image
    t_per = (T_KEEP + (levels - T_KEEP) * binary_map(args.batch, args.size, args.seed)).to(device)
    cases = {  # name: (t, dense_embedding, the SpatialEmbedding mode it must take)
        "scalar": (torch.full((args.batch,), T_HOLE, device=device), False, "per-image"),
        "binary": (t_bin, False, "onehot"),
        "binary-dense": (t_bin, True, "dense"),
        "soft": (t_soft, False, "taps"),
        "soft-dense": (t_soft, True, "dense"),
        "train-batch": (t_per, False, "onehot"),
        "train-batch-dense": (t_per, True, "dense"),
    }

    def run(name):
        t, dense, _ = cases[name]
        return model(x, t, dense_embedding=dense)

    info, outputs, peaks, flops = {}, {}, {}, {}
    times = {name: [] for name in cases}
    cpu_times = {name: [] for name in cases}
    with torch.inference_mode():
        for name, (t, dense, expected) in cases.items():
            mode = mode_of(model, x, t, dense)
            if mode != expected:
                raise RuntimeError(f"case {name} took the {mode!r} path, expected {expected!r}")
            info[name] = dict(mode=mode, distinct_t=int(torch.unique(t).numel()))
        if args.flops:
            from torch.utils.flop_counter import FlopCounterMode

            for name in cases:
                counter = FlopCounterMode(display=False)
                with counter:
                    outputs[name] = run(name).float().cpu()
                flops[name] = counter.get_total_flops() / 1e9
        if args.repeats > 0:
            for name in cases:  # warm-up, outputs for the accuracy checks, peak memory per case
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                for _ in range(max(args.warmup, 1)):
                    out = run(name)
                sync(device)
                if cuda:
                    peaks[name] = torch.cuda.max_memory_allocated(device) / 2**20
                outputs[name] = out.float().cpu()
                del out
            for _ in range(args.repeats):  # round-robin so slow drift (thermal, neighbours) hits every case alike
                for name in cases:
                    sync(device)
                    c0, t0 = time.process_time(), time.perf_counter()
                    run(name)
                    sync(device)
                    times[name].append((time.perf_counter() - t0) * 1e3)
                    cpu_times[name].append((time.process_time() - c0) * 1e3)

    checks = {"max_abs_out": outputs["scalar"].abs().max().item()}
    checks.update({f"{a} vs {b}": (outputs[a] - outputs[b]).abs().max().item() for a, b in EXACT})

    # On CPU the verdict uses process CPU time: on a shared machine, wall time also counts the time other
    # processes hold the cores.  With --threads 1 CPU time is the forward's own cost; with more threads it also
    # counts OpenMP spin-waiting.  On CUDA the verdict uses synchronised wall time.
    judge = "cpu" if not cuda else "wall"
    src = cpu_times if judge == "cpu" else times
    rows = []
    for name in cases:
        row = dict(case=name, **info[name], peak_mib=peaks.get(name))
        if flops:
            row.update(gflop=flops[name], flop_ratio=flops[name] / flops["scalar"])
        if args.repeats > 0:
            med, cpu = statistics.median(times[name]), statistics.median(cpu_times[name])
            paired = [a / b for a, b in zip(src[name], src["scalar"])]  # per round: case / scalar of that round
            ratio, target = statistics.median(paired), TARGETS.get(name)
            row.update(median_ms=med, cpu_ms=cpu, ratio_wall=med / statistics.median(times["scalar"]),
                       ratio_cpu=cpu / statistics.median(cpu_times["scalar"]), ratio_paired=ratio,
                       paired_rounds=paired, judged_on=judge, target=target,
                       met=None if target is None else ratio <= target,
                       times_ms=times[name], cpu_times_ms=cpu_times[name])
        rows.append(row)

    if flops:
        print("\n| case | mode | distinct t | GFLOP (matmul, conv, attention) | x scalar |")
        print("|---|---|---:|---:|---:|")
        for r in rows:
            print(f"| {r['case']} | {r['mode']} | {r['distinct_t']} | {r['gflop']:.1f} | {r['flop_ratio']:.3f} |")
    if args.repeats > 0:
        print_timing(rows, judge)
        print("\nper-round paired ratios: " + "; ".join(
            f"{r['case']} " + " / ".join(f"{v:.3f}" for v in r["paired_rounds"]) for r in rows if r["target"]))
    print()
    fp32 = dtype == torch.float32
    for a, b in EXACT:
        d = checks[f"{a} vs {b}"]
        verdict = (" (<= 1e-5: yes)" if d <= 1e-5 else " (<= 1e-5: **no**)") if fp32 else ""
        print(f"max |{a} - {b}| = {d:.3g}{verdict}")
    print(f"max |out| = {checks['max_abs_out']:.3g}")

    env["loadavg_end"] = loadavg()
    if args.repeats > 0:
        print(f"\nwall and CPU times are medians over {args.repeats} rounds; 'paired' = median over rounds of "
              f"(case / scalar of the same round); met = paired ratio <= target ({judge} time).")
    print(f"1-min load average: {env['loadavg_start']} at start, {env['loadavg_end']} at end "
          f"({os.cpu_count()} CPUs).")
    result = dict(env=env, rows=rows, checks=checks)
    if args.profile:
        result["profile"] = profile(model, list(cases), device, run)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.json}")
    return result


def print_timing(rows, judge: str) -> None:
    print(f"\n| case | mode | distinct t | wall ms | CPU ms | x scalar (wall) | x scalar (CPU) | x scalar (paired {judge}) "
          f"| target | met | peak MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        tgt = "" if r["target"] is None else f"<= {r['target']:.2f}"
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        peak = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        print(f"| {r['case']} | {r['mode']} | {r['distinct_t']} | {r['median_ms']:.1f} | {r['cpu_ms']:.1f} | "
              f"{r['ratio_wall']:.3f} | {r['ratio_cpu']:.3f} | **{r['ratio_paired']:.3f}** | {tgt} | {met} | {peak} |")


# ----------------------------------------------------------------------------------------------------- profiling


@contextlib.contextmanager
def _labelled(model: ADM):
    """Wrap the embedding stages in record_function ranges (class methods restored afterwards)."""
    from torch.profiler import record_function

    def wrap(label, fn):
        def inner(*a, **k):
            with record_function(label):
                return fn(*a, **k)
        return inner

    patched = [("_resized", "rad::resize"), ("_taps", "rad::resize"), ("project", "rad::project")]
    saved = [(name, SpatialEmbedding.__dict__[name]) for name, _ in patched]
    for name, label in patched:
        setattr(SpatialEmbedding, name, wrap(label, SpatialEmbedding.__dict__[name]))
    model.embed = wrap("rad::embed", model.embed)  # instance attribute, removed below
    try:
        yield
    finally:
        for name, fn in saved:
            setattr(SpatialEmbedding, name, fn)
        del model.embed


def profile(model, names, device, run) -> dict:
    """One warm forward per case under torch.profiler; the embedding's share of the forward."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    tot_attr = "device_time_total" if cuda else "cpu_time_total"
    self_attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    report = {}
    print(f"\nprofile (one forward per case under torch.profiler, {tot_attr} in ms; profiler overhead inflates all):")
    print("| case | forward | embed (time MLP, gather, SiLU) | resize / tap tables | project excl. resize | "
          "embedding share | top self ops |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in names:
        with torch.inference_mode():
            run(name)  # warm
            with tprofile(activities=acts) as prof:
                with _labelled(model), torch.profiler.record_function("rad::forward"):
                    run(name)
                sync(device)
        ev = prof.key_averages()
        tot = {e.key: getattr(e, tot_attr) / 1e3 for e in ev}
        fwd, emb, rsz, proj = (tot.get(k, 0.0) for k in ("rad::forward", "rad::embed", "rad::resize", "rad::project"))
        top = sorted((e for e in ev if not e.key.startswith("rad::")), key=lambda e: -getattr(e, self_attr))[:6]
        row = dict(forward=fwd, embed=emb, resize=rsz, project_excl_resize=proj - rsz,
                   share=(emb + proj) / fwd if fwd else None,
                   top_self=[(e.key, getattr(e, self_attr) / 1e3) for e in top])
        report[name] = row
        tops = ", ".join(f"{k} {v:.0f}" for k, v in row["top_self"])
        share = "" if row["share"] is None else f"{100 * row['share']:.1f} %"
        print(f"| {name} | {fwd:.0f} | {emb:.0f} | {rsz:.0f} | {proj - rsz:.0f} | {share} | {tops} |")
    return report


if __name__ == "__main__":
    main()
