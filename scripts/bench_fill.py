"""How fast the harmonic fill is (``comfyui_rad.fill.harmonic_fill``): a 64x64 window and a 4K picture.

Each case: a seeded random picture (the solver's work does not depend on the content) under a centred box hole of
6.25 % and 25 % of the picture and a Perlin mask (35 %, many holes, some touching the edge); the best of
``--repeats`` runs after one warm-up, as wall time and as the process's CPU time (the better number on a shared
machine: other processes' load does not count), and the solver's iterations. Run on one thread by default, as the
pack's numbers are quoted:

    python scripts/bench_fill.py            # 64x64 and 3840x2160, 1 thread
    python scripts/bench_fill.py --sizes 64x64 512x512 --threads 2
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from comfyui_rad import fill, masks


def centred_box(height: int, width: int, fraction: float) -> torch.Tensor:
    """[1,H,W] with a centred box of about ``fraction`` of the picture (same aspect ratio) set to 1."""
    h, w = round(height * fraction ** 0.5), round(width * fraction ** 0.5)
    mask = torch.zeros(1, height, width)
    mask[:, (height - h) // 2:(height - h) // 2 + h, (width - w) // 2:(width - w) // 2 + w] = 1
    return mask


def cases(height: int, width: int) -> dict[str, torch.Tensor]:
    cell = max(height, width) / 8
    perlin = masks.perlin_mask(1, height, width, generator=torch.Generator().manual_seed(0), cell_size=(cell, cell),
                               coverage=0.35)
    return {"box 6.25 %": centred_box(height, width, 0.0625), "box 25 %": centred_box(height, width, 0.25),
            "perlin 35 %": perlin}


class Iterations(logging.Handler):
    """Keeps the solver's last debug line (its iteration count)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage().split(": ", 1)[-1]


def shown(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return height, width


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=size, default=[(64, 64), (2160, 3840)], help="WxH, e.g. 64x64")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    counter = Iterations()
    fill.log.addHandler(counter)
    fill.log.setLevel(logging.DEBUG)
    print(f"harmonic fill, 3 channels, float32, CPU {torch.get_num_threads()} thread(s), best of {args.repeats}")
    print("| picture | mask | hole pixels | wall time | CPU time | solver |\n|---|---|---|---|---|---|")
    for height, width in args.sizes:
        image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
        for name, mask in cases(height, width).items():
            fill.harmonic_fill(image, mask)
            wall = cpu = float("inf")
            for _ in range(args.repeats):
                tick, tock = time.perf_counter(), time.process_time()
                fill.harmonic_fill(image, mask)
                wall, cpu = min(wall, time.perf_counter() - tick), min(cpu, time.process_time() - tock)
            print(f"| {width}x{height} | {name} | {int((mask > 0).sum())} | {shown(wall)} | {shown(cpu)} | "
                  f"{counter.last} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
