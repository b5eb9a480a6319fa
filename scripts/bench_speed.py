#!/usr/bin/env python
"""Sampler speed: RAD (DDPM, DDIM) against RePaint and plain DDPM, on one model, batch and device, in one run.

Cases (``--cases``), each a full sampling run through ``comfyui_rad.sampling`` on the same model and input:

- ``rad-ddpm``    ``sample_ddpm`` at ``--ddpm-steps`` (100), a binary box hole (the centred half of each side):
                  per-pixel t with two values, so ``ADM.embed`` takes its ``onehot`` path;
- ``rad-ddim``    ``sample_ddim``, eta 0, at each of ``--ddim-steps`` (25 50), the same hole;
- ``repaint``     ``sample_repaint`` at 250 steps, jump length 10, 10 resamplings (2,410 network calls), the same
                  hole. ``--repaint-steps/--jump-length/--jump-n-sample`` shorten it; the 250/10/10 cost is then
                  extrapolated from the measured time per call, and every number that uses it says so;
- ``plain-ddpm``  ``sample_ddpm`` at ``--ddpm-steps``, an all-ones mask: every pixel in the hole, so the per-pixel t
                  is constant and ``ADM.embed`` takes the per-image path of guided-diffusion (the reference cost).

Network calls are counted by a forward pre-hook on the model and checked against the expected count (steps, or
``repaint_calls``); the embedding path of every call is recorded by wrapping ``model.embed`` and checked too.
After a warm-up (every case once, at most 4 network calls), the cases run round-robin ``--repeats`` times, so
drift hits them alike; the table gives medians. Ratios use process CPU time on CPU (on a shared machine wall time
also counts other processes; with one thread it is the run's own cost) and synchronised wall time on CUDA.
"RAD per step / plain per step" is the median over rounds of the ratio within a round (the issue's target: 1.05).

Peak memory per run: on CUDA ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (weights
included); on CPU the growth of the peak RSS over the RSS at the run's start (freed heap returned with
``malloc_trim``, VmHWM reset by writing 5 to /proc/self/clear_refs), n/a where the kernel refuses. On CUDA, or
with ``--peak-tflops``, the FLOPs of one network call are counted (``torch.utils.flop_counter``: matmul, conv,
attention) and the floor, FLOPs x calls / (``--peak-tflops`` x 1e12), is set beside the measured time.

    python scripts/bench_speed.py --preset micro64 --threads 1 --repeats 3 --json speed_cpu.json
    python scripts/bench_speed.py --preset adm256 --device cuda --dtype bf16 --batch 1 8 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from comfyui_rad import load_adm
from comfyui_rad.adm import SpatialEmbedding
from comfyui_rad.devices import DTYPES, device_name, resolve_device
from comfyui_rad.fileio import atomic_write
from comfyui_rad.sampling import SAMPLERS, repaint_calls, sample_ddim, sample_ddpm, sample_repaint
from comfyui_rad.schedule import SpatialSchedule, rad_info
from comfyui_rad.train.presets import PRESETS, build_fresh, preset_config

log = logging.getLogger("bench_speed")

REPO = Path(__file__).resolve().parents[1]

CASES = ("rad-ddpm", "rad-ddim", "rad-dpmpp", "repaint", "plain-ddpm")
REPAINT_DEFAULT = (250, 10, 10)
WARMUP_CALLS = 4
PER_STEP_TARGET = 1.05


# ------------------------------------------------------------------------------------------------ arguments


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    source = ap.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=list(PRESETS), help="a fresh model of this trainer preset, weights "
                        "initialised as guided-diffusion does (build_fresh; default micro64)")
    source.add_argument("--model", type=Path, help="a checkpoint to load with comfyui_rad.load_adm instead")
    ap.add_argument("--resolution", type=positive_int, help="image side in pixels (default: the model's image_size)")
    ap.add_argument("--batch", type=positive_int, nargs="+", default=[1], help="batch sizes, each timed in turn")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    ap.add_argument("--threads", type=positive_int, help="torch.set_num_threads (CPU); default: torch's choice")
    ap.add_argument("--repeats", type=positive_int, default=3, help="timed runs per case (median)")
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), metavar="CASE",
                    help=f"a subset of {', '.join(CASES)}")
    ap.add_argument("--ddpm-steps", type=positive_int, default=100, help="RAD DDPM and plain DDPM steps")
    ap.add_argument("--ddim-steps", type=positive_int, nargs="+", default=[25, 50], help="RAD DDIM steps (eta 0)")
    ap.add_argument("--dpmpp-steps", type=positive_int, nargs="+", default=[25],
                    help="RAD DPM-Solver++(2M) SDE steps (lambda spacing, the sampler's defaults)")
    ap.add_argument("--repaint-steps", type=positive_int, default=REPAINT_DEFAULT[0],
                    help="RePaint steps; with --jump-length/--jump-n-sample other than 250/10/10 the run is "
                         "shortened and the 250/10/10 cost is extrapolated (and labelled so)")
    ap.add_argument("--jump-length", type=positive_int, default=REPAINT_DEFAULT[1], help="RePaint jump length")
    ap.add_argument("--jump-n-sample", type=positive_int, default=REPAINT_DEFAULT[2],
                    help="RePaint resamplings per jump point")
    ap.add_argument("--peak-tflops", type=positive_float,
                    help="the device's peak TFLOP/s at --dtype, for the FLOP floor (counted on CUDA, or with this)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the results here (atomically)")
    return ap


def check_args(args: argparse.Namespace, model: torch.nn.Module) -> None:
    """Raises ValueError naming the value when the step counts or the resolution cannot run on ``model``."""
    t1 = rad_info(model).curves.T1
    for name, steps in [("--ddpm-steps", args.ddpm_steps), ("--repaint-steps", args.repaint_steps),
                        *(("--ddim-steps", n) for n in args.ddim_steps)]:
        if steps > t1:
            raise ValueError(f"{name} {steps} is more than the model's {t1} diffusion steps: use at most {t1}")
    repaint_calls(args.repaint_steps, args.jump_length, args.jump_n_sample)  # its own clear errors
    f = model.downsample_factor
    if args.resolution % f:
        raise ValueError(f"--resolution {args.resolution} is not a multiple of {f}, which this model needs")


# ----------------------------------------------------------------------------------------------------- model


def build_model(args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The model on ``device`` at ``--dtype`` and a one-line description; fills ``args.resolution``."""
    dtype = DTYPES[args.dtype]
    if args.model is not None:
        model = load_adm(args.model, device=device, dtype=dtype)
        what = f"checkpoint {args.model.name}"
    else:
        cfg = preset_config(args.preset, args.resolution)
        model = build_fresh(cfg, args.seed).to(device=device, dtype=dtype).eval().requires_grad_(False)
        what = f"preset {args.preset} (fresh weights: build_fresh, seed {args.seed})"
    args.resolution = args.resolution or model.config.image_size
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return model, f"{what}, {params:.2f} M parameters, {args.resolution}x{args.resolution}, {args.dtype}"


# ----------------------------------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One sampling run. ``sample(cap)`` runs it, shortened to at most ``cap`` network calls unless ``cap`` is None
    (warm-up, FLOP count; then it makes no jumps). ``calls``: the network calls expected in full, ``steps`` the
    sampler's steps; ``embed``: the embedding path every call takes."""

    name: str
    label: str
    sample: Callable[[int | None], torch.Tensor]
    steps: int
    calls: int
    embed: str

    def expected(self, cap: int | None = None) -> int:
        return self.calls if cap is None else min(self.steps, cap)


def make_cases(args: argparse.Namespace, model: torch.nn.Module, image: torch.Tensor) -> list[Case]:
    """The cases of ``--cases`` on ``image`` [B,3,H,W] in [-1, 1], in the order of CASES."""
    h, w = image.shape[-2:]
    box = torch.zeros(1, 1, h, w)
    box[..., h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1.0
    curves = rad_info(model).curves
    hole, full = SpatialSchedule(box, curves), SpatialSchedule(torch.ones(1, 1, h, w), curves)
    y = torch.zeros(image.shape[0], dtype=torch.long) if model.config.num_classes is not None else None

    def rad(sampler, schedule, steps, **kw):
        def sample(cap: int | None) -> torch.Tensor:
            n = steps if cap is None else min(steps, cap)
            return sampler(model, image, schedule, n, torch.Generator().manual_seed(args.seed + 1), y=y, **kw)
        return sample

    def repaint(cap: int | None) -> torch.Tensor:
        s, j, r = (args.repaint_steps, args.jump_length, args.jump_n_sample) if cap is None else \
            (min(args.repaint_steps, cap), 1, 1)
        return sample_repaint(model, image, hole, s, torch.Generator().manual_seed(args.seed + 1), y=y,
                              jump_length=j, jump_n_sample=r)

    n, cases = args.ddpm_steps, []
    if "rad-ddpm" in args.cases:
        cases.append(Case(f"rad-ddpm-{n}", f"RAD DDPM {n}", rad(sample_ddpm, hole, n), n, n, "onehot"))
    if "rad-ddim" in args.cases:
        cases += [Case(f"rad-ddim-{k}", f"RAD DDIM {k}", rad(sample_ddim, hole, k, eta=0.0), k, k, "onehot")
                  for k in dict.fromkeys(args.ddim_steps)]
    if "rad-dpmpp" in args.cases:
        cases += [Case(f"rad-dpmpp_2m_sde-{k}", f"RAD DPM++ 2M SDE {k}", rad(SAMPLERS["dpmpp_2m_sde"], hole, k), k, k,
                       "onehot") for k in dict.fromkeys(args.dpmpp_steps)]
    if "repaint" in args.cases:
        s, j, r = args.repaint_steps, args.jump_length, args.jump_n_sample
        cases.append(Case(f"repaint-{s}-{j}-{r}", f"RePaint {s}/{j}/{r}", repaint, s, repaint_calls(s, j, r),
                          "per-image"))
    if "plain-ddpm" in args.cases:
        cases.append(Case(f"plain-ddpm-{n}", f"plain DDPM {n} (all-ones mask)", rad(sample_ddpm, full, n), n,
                          n, "per-image"))
    return cases


# ------------------------------------------------------------------------------------------ counting, memory


class Probe:
    """Counts the model's network calls (a forward pre-hook) and the embedding path of each (wraps ``model.embed``:
    "per-image" or the ``SpatialEmbedding`` mode). Use as a context manager; ``take()`` returns and resets."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.calls, self.modes = model, 0, Counter()

    def __enter__(self) -> Probe:
        self._hook = self.model.register_forward_pre_hook(self._count)
        embed = self.model.embed

        def traced(*a, **k):
            emb = embed(*a, **k)
            self.modes[emb.mode if isinstance(emb, SpatialEmbedding) else "per-image"] += 1
            return emb
        self.model.embed = traced  # an instance attribute over the method, deleted on exit
        return self

    def __exit__(self, *exc) -> None:
        self._hook.remove()
        del self.model.embed

    def _count(self, module, args) -> None:
        self.calls += 1

    def take(self) -> tuple[int, dict[str, int]]:
        out = self.calls, dict(self.modes)
        self.calls, self.modes = 0, Counter()
        return out


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _malloc_trim() -> None:
    """Returns freed heap to the OS (glibc), so the RSS at a run's start is what is live."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of one run in MiB: CUDA max_memory_allocated (weights included); CPU growth of the peak RSS over
    the RSS at ``start`` (VmHWM reset by writing 5 to /proc/self/clear_refs); None where the kernel refuses."""

    def __init__(self, device: torch.device):
        self.device, self.rss0 = device, None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        _malloc_trim()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            rss, hwm = _status_kib("VmRSS"), _status_kib("VmHWM")
        except (OSError, KeyError, ValueError):
            self.rss0 = None
            return
        self.rss0 = rss if hwm <= rss + 1024 else None  # a kernel without "5" leaves the old peak

    def stop(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return None if self.rss0 is None else (_status_kib("VmHWM") - self.rss0) / 1024


# ---------------------------------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(case: Case, probe: Probe, memory: PeakMemory, device: torch.device, cap: int | None = None) -> dict:
    """One run of ``case`` (``cap``: see ``Case``): wall and CPU seconds, counted calls, embedding paths, peak MiB."""
    _sync(device)
    memory.start()
    c0, t0 = time.process_time(), time.perf_counter()
    out = case.sample(cap)
    _sync(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = memory.stop()
    calls, modes = probe.take()
    expected = case.expected(cap)
    if calls != expected or set(modes) != {case.embed}:
        log.error("%s: %d network calls (%s), expected %d (all %s)", case.name, calls, modes, expected, case.embed)
    return dict(wall_s=wall, cpu_s=cpu, calls=calls, modes=modes, peak_mib=peak,
                finite=bool(torch.isfinite(out).all()), max_abs=float(out.abs().max()))


def count_flops(case: Case, probe: Probe) -> float:
    """GFLOP (matmul, conv, attention) of one network call of ``case`` (a one-call run; the counter is slow)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        case.sample(1)
    calls, _ = probe.take()
    return counter.get_total_flops() / calls / 1e9


def bench_batch(args: argparse.Namespace, model: torch.nn.Module, device: torch.device, batch: int,
                flops: bool) -> tuple[list[dict], list[dict]]:
    """Rows (one per case) and ratios for one batch size."""
    g = torch.Generator().manual_seed(args.seed + 2)
    image = (torch.rand(batch, 3, args.resolution, args.resolution, generator=g) * 2 - 1).to(device)
    cases = make_cases(args, model, image)
    memory, runs, gflop = PeakMemory(device), {c.name: [] for c in cases}, {}
    with Probe(model) as probe:
        for case in cases:
            if flops:
                gflop[case.name] = count_flops(case, probe)
            run_once(case, probe, memory, device, cap=WARMUP_CALLS)  # warm-up
        for i in range(args.repeats):  # round-robin: drift hits every case alike
            for case in cases:
                runs[case.name].append(run_once(case, probe, memory, device))
                log.info("batch %d, round %d/%d: %s %.2f s wall, %.2f s CPU", batch, i + 1, args.repeats,
                         case.name, runs[case.name][-1]["wall_s"], runs[case.name][-1]["cpu_s"])
    rows = [summarise(case, runs[case.name], batch, gflop.get(case.name), args) for case in cases]
    return rows, ratios(rows, runs, batch, "wall" if device.type == "cuda" else "cpu")


# --------------------------------------------------------------------------------------------------- results


def summarise(case: Case, runs: list[dict], batch: int, gflop: float | None, args: argparse.Namespace) -> dict:
    wall, cpu = [r["wall_s"] for r in runs], [r["cpu_s"] for r in runs]
    modes = sum((Counter(r["modes"]) for r in runs), Counter())
    peaks = [r["peak_mib"] for r in runs if r["peak_mib"] is not None]
    row = dict(batch=batch, case=case.name, label=case.label, expected_calls=case.calls,
               calls=[r["calls"] for r in runs], calls_ok=all(r["calls"] == case.calls for r in runs),
               embed_expected=case.embed, embed_modes=dict(modes), embed_ok=set(modes) == {case.embed},
               wall_s=wall, cpu_s=cpu, s_per_image=statistics.median(wall) / batch,
               cpu_s_per_image=statistics.median(cpu) / batch, s_per_call=statistics.median(wall) / case.calls,
               cpu_s_per_call=statistics.median(cpu) / case.calls, peak_mib=max(peaks) if peaks else None,
               finite=all(r["finite"] for r in runs), max_abs=max(r["max_abs"] for r in runs))
    if gflop is not None:
        row["gflop_per_call"] = gflop
        if args.peak_tflops:
            row["floor_s_per_image"] = gflop * 1e9 * case.calls / (args.peak_tflops * 1e12) / batch
            row["measured_over_floor"] = row["s_per_image"] / row["floor_s_per_image"]
    shortened = (args.repaint_steps, args.jump_length, args.jump_n_sample) != REPAINT_DEFAULT
    if case.name.startswith("repaint") and shortened:
        calls = repaint_calls(*REPAINT_DEFAULT)
        x = row["extrapolated"] = dict(
            label="RePaint {}/{}/{}".format(*REPAINT_DEFAULT), calls=calls,
            s_per_image=row["s_per_call"] * calls / batch, cpu_s_per_image=row["cpu_s_per_call"] * calls / batch,
            note=f"{calls} calls x the time per call measured on {case.label}")
        if "floor_s_per_image" in row:
            x["floor_s_per_image"] = row["floor_s_per_image"] * calls / case.calls
    return row


def ratios(rows: list[dict], runs: dict[str, list[dict]], batch: int, basis: str) -> list[dict]:
    """RePaint / each RAD case (time per image) and RAD DDPM per step / plain DDPM per step (paired by round)."""
    key, out = ("cpu_s_per_image" if basis == "cpu" else "s_per_image"), []
    repaint = next((r for r in rows if r["case"].startswith("repaint")), None)
    if repaint is not None:
        ref = repaint.get("extrapolated", repaint)
        extrapolated = "extrapolated" in repaint
        calls = ref["calls"] if extrapolated else repaint["expected_calls"]
        for r in rows:
            if r["case"].startswith("rad-"):
                label = ref["label"] + (" (extrapolated)" if extrapolated else "")
                out.append(dict(batch=batch, name=f"{label} / {r['label']}", value=ref[key] / r[key],
                                calls_ratio=calls / r["expected_calls"], basis=basis, extrapolated=extrapolated,
                                target=None, met=None))
    rad = next((r for r in rows if r["case"].startswith("rad-ddpm")), None)
    plain = next((r for r in rows if r["case"].startswith("plain-ddpm")), None)
    if rad is not None and plain is not None:
        t = "cpu_s" if basis == "cpu" else "wall_s"
        paired = [(a[t] / a["calls"]) / (b[t] / b["calls"]) for a, b in zip(runs[rad["case"]], runs[plain["case"]])]
        value = statistics.median(paired)
        out.append(dict(batch=batch, name=f"{rad['label']} per step / {plain['label']} per step", value=value,
                        paired_rounds=paired, unpaired=rad[key] / plain[key] * plain["expected_calls"]
                        / rad["expected_calls"], calls_ratio=1.0, basis=basis, extrapolated=False,
                        target=PER_STEP_TARGET, met=value <= PER_STEP_TARGET))
    return out


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _flop_cells(row: dict, floor_s: float | None, flops: bool, floor: bool) -> str:
    cells = [_fmt(row.get("gflop_per_call"), ".2f")] if flops else []
    cells += [_fmt(floor_s, ".4f"), _fmt(row.get("measured_over_floor"), ".1f")] if floor else []
    return "".join(f" {c} |" for c in cells)


def print_tables(rows: list[dict], ratio_rows: list[dict]) -> None:
    floor = any("floor_s_per_image" in r for r in rows)
    flops = any("gflop_per_call" in r for r in rows)
    head = "| batch | case | network calls (expected) | embedding | s/image | CPU s/image | ms/call | peak MiB |"
    rule = "|---:|---|---:|---|---:|---:|---:|---:|"
    if flops:
        head, rule = head + " GFLOP/call |", rule + "---:|"
    if floor:
        head, rule = head + " floor s/image | measured / floor |", rule + "---:|---:|"
    print(head)
    print(rule)
    for r in rows:
        counted = "/".join(str(c) for c in sorted(set(r["calls"])))
        calls = f"{counted} ({r['expected_calls']})" + ("" if r["calls_ok"] else " **mismatch**")
        modes = ", ".join(r["embed_modes"]) + ("" if r["embed_ok"] else f" **expected {r['embed_expected']}**")
        line = (f"| {r['batch']} | {r['label']} | {calls} | {modes} | {r['s_per_image']:.3f} | "
                f"{r['cpu_s_per_image']:.3f} | {1e3 * r['s_per_call']:.2f} | {_fmt(r['peak_mib'], '.1f')} |")
        print(line + _flop_cells(r, r.get("floor_s_per_image"), flops, floor))
        if "extrapolated" in r:
            x = r["extrapolated"]
            line = (f"| {r['batch']} | {x['label']} (**extrapolated, not run**) | ({x['calls']}) | per-image | "
                    f"{x['s_per_image']:.3f} | {x['cpu_s_per_image']:.3f} | {1e3 * r['s_per_call']:.2f} | n/a |")
            print(line + _flop_cells(r, x.get("floor_s_per_image"), flops, floor))
    print()
    print("| batch | ratio | time ratio | network-call ratio | basis | target | met |")
    print("|---:|---|---:|---:|---|---:|---|")
    for q in ratio_rows:
        target = "" if q["target"] is None else f"<= {q['target']:.2f}"
        met = "" if q["met"] is None else ("yes" if q["met"] else "**no**")
        print(f"| {q['batch']} | {q['name']} | **{q['value']:.3f}** | {q['calls_ratio']:.2f} | {q['basis']} time | "
              f"{target} | {met} |")
    for q in ratio_rows:
        if "paired_rounds" in q:
            print(f"\nbatch {q['batch']}, {q['name']}: per round " + " / ".join(f"{v:.3f}" for v in q["paired_rounds"])
                  + f" (time ratio = their median; ratio of the medians {q['unpaired']:.3f})")


# ----------------------------------------------------------------------------------------------- environment


def loadavg() -> float | None:
    """The 1-minute load average (how busy the machine was), None where the system has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def git_commit() -> str | None:
    """The short commit of the checkout, with "+dirty" when tracked files differ from it; None outside git."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *cmd], capture_output=True, text=True, timeout=10).stdout
    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) or None


def _autogroup_nice() -> int | None:
    try:
        return int(Path("/proc/self/autogroup").read_text().split("nice")[1])
    except (OSError, IndexError, ValueError):
        return None


def environment(args: argparse.Namespace, device: torch.device, model_desc: str, argv: list[str]) -> dict:
    cuda = device.type == "cuda"
    return dict(cmd="python scripts/bench_speed.py " + " ".join(argv), model=model_desc, device=str(device),
                gpu=device_name(device) if cuda else None, cpu=device_name("cpu"), logical_cpus=os.cpu_count(),
                threads=torch.get_num_threads(), torch=torch.__version__, python=platform.python_version(),
                cuda=torch.version.cuda if cuda else None, dtype=args.dtype, repeats=args.repeats,
                warmup_calls=WARMUP_CALLS, basis="wall" if cuda else "cpu", nice=os.nice(0),
                autogroup_nice=_autogroup_nice(), commit=git_commit(), loadavg_start=loadavg())


def print_header(env: dict) -> None:
    print(f"## bench_speed: {env['model']}\n")
    gpu = f"GPU {env['gpu']} (CUDA {env['cuda']})" if env["gpu"] else "no GPU"
    print(f"- hardware: CPU {env['cpu']} ({env['logical_cpus']} logical CPUs), {gpu}; device {env['device']}")
    print(f"- software: torch {env['torch']}, Python {env['python']}, {env['threads']} torch thread(s), "
          f"commit {env['commit'] or 'unknown'}")
    print(f"- method: warm-up of every case (<= {env['warmup_calls']} network calls), then round-robin runs, "
          f"{env['repeats']} per case, medians; ratios on {env['basis']} time; nice {env['nice']}"
          + (f", autogroup nice {env['autogroup_nice']}" if env["autogroup_nice"] is not None else "")
          + f"; 1-min load average {env['loadavg_start']} at start\n")


def write_json(path: Path, result: dict) -> None:
    """Writes ``result`` to ``path`` atomically (over an earlier result)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)

    atomic_write(path, write, force=True)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = build_parser()
    args = ap.parse_args(argv)
    args.preset = args.preset or (None if args.model else "micro64")
    try:
        device = resolve_device(args.device)
        model, model_desc = build_model(args, device)
        check_args(args, model)
    except (ValueError, OSError) as err:
        ap.error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    flops = device.type == "cuda" or args.peak_tflops is not None
    if device.type == "cuda" and args.peak_tflops is None:
        log.warning("no --peak-tflops: FLOPs are counted but the floor is not computed")
    env = environment(args, device, model_desc, argv)
    print_header(env)
    rows, ratio_rows = [], []
    for batch in args.batch:
        r, q = bench_batch(args, model, device, batch, flops)
        rows += r
        ratio_rows += q
    env["loadavg_end"] = loadavg()
    print_tables(rows, ratio_rows)
    for r in rows:
        if "extrapolated" in r:
            print(f"\n{r['label']} was run shortened ({r['expected_calls']} network calls). The "
                  f"{r['extrapolated']['label']} row and the ratios marked extrapolated were not run: "
                  f"{r['extrapolated']['note']}.")
            break
    print(f"\n1-min load average {env['loadavg_start']} at start, {env['loadavg_end']} at end.")
    if not all(r["calls_ok"] and r["embed_ok"] for r in rows):
        log.error("some network-call counts or embedding paths differ from the expected ones (see the table)")
    result = dict(env=env, args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  rows=rows, ratios=ratio_rows)
    if args.json:
        write_json(args.json, result)
        print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
