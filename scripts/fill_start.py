"""RAD from a classical start against RAD from noise, with the built-in model (issue 21, part 1).

Native 64x64 windows of the held-out photos (never seen in training; ``scripts/make_default_data.py`` writes them
to ``heldout/``), ``--windows`` seeded places per photo, at the model's own resolution (``fit=crop`` over a window of
the model's size: nothing is resized), under a centred hole of 6.25 % (16x16) and 25 % (32x32). Each window is
filled by the harmonic fill alone, by RAD from noise (the plain start) and by RAD from the harmonic fill at
``--strengths``; ``--samples`` samples per window, hole PSNR, SSIM (the hole's bounding box) and seam
(``metrics.seam``), each the mean over windows and samples. Prints a markdown table; ``--grid`` writes a picture
of the first sample of every window, one row per window and hole (masked | fill | RAD from noise | each strength |
truth).

    python scripts/fill_start.py --heldout /tmp/rad-data/heldout --windows 4 --samples 1 --grid fill_start.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from comfyui_rad import imaging, load_adm, metrics
from comfyui_rad.checkpoints import DEFAULT_MODEL
from comfyui_rad.fill import harmonic_fill
from comfyui_rad.pipeline import inpaint

HOLES = {"6.25 %": 16, "25 %": 32}
"""Centred square holes of a 64-pixel window: name -> side."""


def windows(picture: torch.Tensor, count: int, size: int, seed: int) -> torch.Tensor:
    """``count`` seeded ``size`` x ``size`` windows [count,3,size,size] of ``picture`` [1,3,H,W], at native scale."""
    g = torch.Generator().manual_seed(seed)
    _, _, height, width = picture.shape
    tops = torch.randint(0, height - size + 1, (count,), generator=g).tolist()
    lefts = torch.randint(0, width - size + 1, (count,), generator=g).tolist()
    return torch.cat([picture[:, :, t:t + size, l:l + size] for t, l in zip(tops, lefts)])


def centred_hole(size: int, side: int) -> torch.Tensor:
    mask = torch.zeros(1, size, size)
    start = (size - side) // 2
    mask[:, start:start + side, start:start + side] = 1
    return mask


def measures(result: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"psnr": metrics.hole_psnr(result, truth, mask), "ssim": metrics.ssim(result, truth, mask),
            "seam": metrics.seam(result, truth, mask)}


def run(model, truth: torch.Tensor, mask: torch.Tensor, args) -> tuple[dict[str, dict[str, float]], torch.Tensor]:
    """Every method on windows ``truth`` [N,3,S,S] under ``mask`` [1,S,S]: mean measures per method, and the grid
    rows [N,3,S,(methods+2)*S] (first sample)."""
    smooth = harmonic_fill(truth, mask)
    rows = {"harmonic fill": measures(smooth, truth, mask)}
    shown = [truth * (1 - mask[:, None]) + 0.5 * mask[:, None], smooth]
    starts = [("RAD from noise", "noise", 1.0)] + [(f"RAD from harmonic, {s:g}", "harmonic", s)
                                                   for s in args.strengths if s < 1]  # 1: RAD from noise
    batch = truth.repeat(args.samples, 1, 1, 1)  # independent samples: one batch, its own noise
    for name, start, strength in starts:
        tick = time.perf_counter()
        result, _ = inpaint(model, batch, mask, sampler=args.sampler, steps=args.steps, eta=args.eta,
                            seed=args.seed, fit="crop", start=start, start_strength=strength)
        rows[name] = measures(result, batch, mask)
        shown.append(result[:len(truth)])
        print(f"  {name}: {time.perf_counter() - tick:.1f} s", file=sys.stderr)
    means = {name: {k: float(v.mean()) for k, v in m.items()} for name, m in rows.items()}
    return means, torch.cat([*shown, truth], dim=3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--heldout", type=Path, required=True, help="folder of held-out pictures")
    parser.add_argument("--windows", type=int, default=8, help="windows per picture (default 8)")
    parser.add_argument("--samples", type=int, default=2, help="samples per window (default 2)")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.25, 0.5, 0.75],
                        help="start strengths below 1 (1 is RAD from noise, bit for bit)")
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--eta", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--grid", type=Path, help="write the pictures here (PNG, refuses to overwrite)")
    args = parser.parse_args(argv)
    if args.grid is not None:
        imaging.check_writable(args.grid, 1)
    torch.set_num_threads(args.threads)
    model = load_adm(args.model, device="cpu", dtype=torch.float32)
    size = model.config.image_size
    files = sorted(p for p in args.heldout.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not files:
        raise SystemExit(f"no pictures in {args.heldout}")
    truth = torch.cat([windows(imaging.load_image(p), args.windows, size, args.seed + i) for i, p in enumerate(files)])
    tables, grid = {}, []
    for hole, side in HOLES.items():
        print(f"hole {hole}", file=sys.stderr)
        tables[hole], rows = run(model, truth, centred_hole(size, side), args)
        grid.append(rows)
    print(f"{args.model.name}; {len(files)} pictures x {args.windows} native {size}x{size} windows x {args.samples} "
          f"samples; {args.sampler.upper()}-{args.steps}" + (f" eta {args.eta:g}" if args.sampler == "ddim" else "")
          + f", seed {args.seed}; CPU {torch.get_num_threads()} thread(s)\n")
    print("| method | " + " | ".join(f"hole {h}: PSNR / SSIM / seam" for h in HOLES) + " |")
    print("|---|" + "---|" * len(HOLES))
    for name in tables[next(iter(HOLES))]:
        cells = [f"{t[name]['psnr']:.2f} / {t[name]['ssim']:.3f} / {t[name]['seam']:.3f}" for t in tables.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.grid is not None:
        picture = torch.cat([row for rows in grid for row in rows], dim=1)[None]  # one row per window and hole
        for written in imaging.save_image(F.interpolate(picture, scale_factor=2, mode="nearest"), args.grid):
            print(written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
