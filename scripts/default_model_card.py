"""Held-out results for the model card of the built-in default model (``comfyui_rad/weights/rad_default.md``).

For each picture in ``--heldout`` (images the model never saw in training) and each mask kind, inpaint at the
model's own resolution (the picture's centre square resized to it) with the CLI's defaults (DDPM, 100 steps,
seed 0), and compare the hole with two fills that need no model: the mean colour of the kept pixels, and a
harmonic fill (the kept pixels diffused into the hole, the smoothest fill there is). Writes a grid
(masked input | harmonic | RAD | truth per row) and prints a markdown table of hole PSNR and time per image.

    python scripts/default_model_card.py --heldout /tmp/rad-data/heldout --grid docs/default_model_heldout.png

PSNR on the hole rewards blur, so the harmonic fill is a hard number to beat for any sampler that invents detail;
the table is there to show where the model stands, not to flatter it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from comfyui_rad import imaging, load_adm, masks, metrics
from comfyui_rad.checkpoints import DEFAULT_MODEL
from comfyui_rad.pipeline import inpaint

MASKS = ("box", "wide", "perlin")


def make_mask(kind: str, size: int, seed: int) -> torch.Tensor:
    """One mask [1,H,W] (1 = inpaint) of ``kind`` at ``size``, seeded."""
    g = torch.Generator().manual_seed(seed)
    if kind == "box":
        return masks.box_mask(1, size, size, center=True)
    if kind == "wide":
        return masks.wide_mask(1, size, size, generator=g)
    if kind == "perlin":
        return masks.perlin_mask(1, size, size, generator=g, cell_size=(size / 8, size / 2), coverage=0.3)
    raise ValueError(f"unknown mask kind {kind!r}: use one of {', '.join(MASKS)}")


def harmonic_fill(image: torch.Tensor, mask: torch.Tensor, iterations: int = 2000) -> torch.Tensor:
    """Fill mask==1 by repeated 3x3 averaging with the kept pixels held fixed (Laplace's equation, Jacobi)."""
    keep = (mask[:, None] == 0).float()
    fill = (image * keep).sum((2, 3), keepdim=True) / keep.sum((2, 3), keepdim=True).clamp_min(1)
    x = image * keep + fill * (1 - keep)
    kernel = torch.full((3, 1, 3, 3), 1 / 9)
    for _ in range(iterations):
        x = image * keep + F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3) * (1 - keep)
    return x


def centre_square(image: torch.Tensor, size: int) -> torch.Tensor:
    _, _, h, w = image.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return F.interpolate(image[:, :, top:top + s, left:left + s], size=(size, size), mode="bicubic",
                         antialias=True, align_corners=False).clamp(0, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--heldout", type=Path, required=True, help="folder of held-out pictures")
    parser.add_argument("--grid", type=Path, help="write the picture grid here (PNG, refuses to overwrite)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.grid is not None:
        imaging.check_writable(args.grid, 1)
    model = load_adm(args.model, device="cpu", dtype=torch.float32)
    size = model.config.image_size
    files = sorted(p for p in args.heldout.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not files:
        raise SystemExit(f"no pictures in {args.heldout}")
    rows, tiles = [], []
    for path in files:
        truth = centre_square(imaging.load_image(path), size)
        for kind in MASKS:
            mask = make_mask(kind, size, args.seed)
            tick = time.perf_counter()
            result, _ = inpaint(model, truth, mask, steps=args.steps, seed=args.seed, fit="resize")
            seconds = time.perf_counter() - tick
            smooth = harmonic_fill(truth, mask)
            mean = harmonic_fill(truth, mask, iterations=0)
            psnr = [float(metrics.hole_psnr(fill, truth, mask)) for fill in (mean, smooth, result)]
            rows.append((path.stem, kind, float(mask.mean()), *psnr, seconds))
            shown = truth * (1 - mask[:, None]) + 0.5 * mask[:, None]
            tiles.append(torch.cat([shown, smooth, result, truth], dim=3))
    print(f"model {args.model.name}, {size}x{size}, DDPM {args.steps} steps, seed {args.seed}, CPU "
          f"{torch.get_num_threads()} thread(s)\n")
    print("| picture | mask | hole | PSNR mean fill | PSNR harmonic fill | PSNR RAD | s/image |")
    print("|---|---|---|---|---|---|---|")
    for name, kind, cover, p_mean, p_smooth, p_rad, seconds in rows:
        print(f"| {name} | {kind} | {cover:.0%} | {p_mean:.2f} | {p_smooth:.2f} | {p_rad:.2f} | {seconds:.1f} |")
    if args.grid is not None:
        grid = torch.cat(tiles, dim=2)
        grid = F.interpolate(grid, scale_factor=3, mode="nearest")
        for written in imaging.save_image(grid, args.grid):
            print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
