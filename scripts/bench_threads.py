"""Time the README's first command (rad-inpaint on the example cat, built-in model) per sampler, steps and CPU
threads, on a quiet machine and with one core kept busy by another process (issue 22, part 3).

Each case runs ``python -m comfyui_rad.cli`` in a fresh process (model loading included, as a user sees it) and
records the wall time, the network calls (from the progress lines), the threads rad-inpaint chose and the 1-minute
load average before the run. ``--busy`` starts one ``while True: pass`` process for the busy rows and stops it
afterwards. Rows go to stdout as a Markdown table and to ``--json``.

    python scripts/bench_threads.py --case ddpm:100 --case dpmpp_2m_sde:25 --threads 0 1 2 --busy --json t.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAT = ROOT / "example_workflows" / "input" / "rad_example_cat.png"


def run_case(sampler: str, steps: int | None, threads: int, out: Path) -> dict:
    """One rad-inpaint run on the cat; returns its row."""
    cmd = [sys.executable, "-m", "comfyui_rad.cli", "--image", str(CAT), "--mask", str(CAT), "-o", str(out),
           "--force", "--sampler", sampler, "--threads", str(threads), "--device", "cpu"]
    if steps is not None:
        cmd += ["--steps", str(steps)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # let --threads decide, as for a user without them
        env.pop(name, None)
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode:
        raise SystemExit(f"rad-inpaint failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    totals = re.findall(r"\] \d+/(\d+)", proc.stderr)
    used = re.findall(r"(\d+) CPU thread\(s\)", proc.stderr)
    return {"sampler": sampler, "steps": steps, "calls": int(totals[-1]) if totals else None,
            "threads_flag": threads, "threads": int(used[-1]) if used else None, "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu, 2), "load_before": round(load, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", action="append", required=True, metavar="SAMPLER[:STEPS]",
                    help="a sampler and its steps (default steps when left out); repeat")
    ap.add_argument("--threads", type=int, nargs="+", default=[0, 1, 2], help="--threads values (0 = auto)")
    ap.add_argument("--busy", action="store_true", help="also run every case with one core kept busy")
    ap.add_argument("--repeats", type=int, default=1, help="runs per case (the table gives the fastest)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args(argv)
    cases = [(c.split(":")[0], int(c.split(":")[1]) if ":" in c else None) for c in args.case]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "x.png"
        for busy in ([False, True] if args.busy else [False]):
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                if hog is not None:
                    time.sleep(2)
                for sampler, steps in cases:
                    for threads in args.threads:
                        runs = [run_case(sampler, steps, threads, out) for _ in range(args.repeats)]
                        best = min(runs, key=lambda r: r["seconds"])
                        rows.append(best | {"busy": busy, "all_seconds": [r["seconds"] for r in runs]})
                        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            finally:
                if hog is not None:
                    hog.terminate()
                    hog.wait()
    print("| sampler | steps | calls | --threads | threads | one core busy | seconds | CPU seconds | load before |")
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps'] or 'default'} | {r['calls']} | {r['threads_flag']} | {r['threads']} | "
              f"{'yes' if r['busy'] else 'no'} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
              f"{r['load_before']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine_cpus": os.cpu_count(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
