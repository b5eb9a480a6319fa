"""Seams of region-by-region inpainting ("tiles") against today's downscaling and naive hard-edged tiling.

On held-out photos (``scripts/make_default_data.py`` writes them to ``heldout/``), a square hole of ``--hole`` times
the model's window (default 3x: 192 px for the built-in 64x64 model) in the middle of each photo is filled by

- ``downscale``: fit="crop" as it was before tiles: the hole plus context shrunk into one window, upscaled back;
- ``naive``: hard-edged tiling: a grid of windows (context as tiles, no overlap kept), each inpainted from the
  input alone, as if it were the only one, and pasted over its neighbours;
- ``tiles-hard``: tiles whose overlap is frozen (soft 0): each window continues the earlier ones exactly;
- ``tiles``: the overlap ramped to a soft mask of at most 0.5 (``comfyui_rad.tiles``), no coarse pass;
- ``tiles-soft1``: the overlap fully regenerated next to the new pixels (ramp up to 1), no coarse pass;
- ``tiles+coarse``: the default, tiles after a downscaled pass of the whole hole as the windows' start (mask 0.8).

and measured against the photo: hole PSNR, ``metrics.seam`` at the hole's border, and ``metrics.region_seam`` at
the borders between the regions different windows generated (``window``), beside the same measure between pixels of
one window (``inside``, the level without any border); ``window / inside`` above 1 is a visible grid. ``detail``:
the mean gradient magnitude in the hole against the photo's there (1: as sharp as the photo; a downscaled fill is
blurred, below 1). For
``downscale`` (one window) the window borders are those of ``tiles``, the places a grid would show. Writes
``results.json``, ``results.md`` and a picture per photo (the hole and 32 px around, each method side by side).

    python scripts/make_default_data.py /tmp/rad-data
    python scripts/tiles_seams.py --images /tmp/rad-data/heldout --out docs/tiles --force
    python scripts/tiles_seams.py --images /tmp/rad-data/heldout --out /tmp/seams-fill --methods tiles+coarse \
        --start harmonic --start-strength 0.1      # the tiles from a fill start (the downscale method: plain only)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import secrets
import time
from pathlib import Path

import torch

from comfyui_rad import imaging, metrics, plan, settings, tiles
from comfyui_rad.checkpoints import DEFAULT_MODEL, load_adm
from comfyui_rad.pipeline import inpaint
from comfyui_rad.sampling import RADDenoiser, SamplerSpec, sample
from comfyui_rad.schedule import SpatialSchedule

log = logging.getLogger("tiles_seams")

METHODS = {
    "downscale": None,
    "naive": tiles.TileSettings(overlap=0, soft=0.0, independent=True),
    "tiles-hard": tiles.TileSettings(soft=0.0, coarse=False),
    "tiles": tiles.TileSettings(coarse=False),
    "tiles-soft1": tiles.TileSettings(soft=1.0, coarse=False),
    "tiles+coarse": tiles.TileSettings(coarse=True),  # the default
}
PICTURED = ("downscale", "naive", "tiles", "tiles+coarse")


def downscaled(model, image, mask, steps: int, sampler: str, seed: int) -> torch.Tensor:
    """fit="crop" before tiles: one window around the hole, downscaled to the model, upscaled back."""
    model_image, model_mask, fitted = plan.fit_crop(image, mask, model.config.image_size)
    result = sample(SamplerSpec.create(sampler, steps=steps), RADDenoiser(model), imaging.to_model_range(model_image),
                    SpatialSchedule(model_mask[:, None]), torch.Generator().manual_seed(seed))
    return plan.stitch(imaging.from_model_range(result.float().cpu()), image, mask, fitted)


def hole_mask(height: int, width: int, side: int) -> torch.Tensor:
    """A centred square hole of ``side`` pixels, [1,H,W]."""
    mask = torch.zeros(1, height, width)
    top, left = (height - side) // 2, (width - side) // 2
    mask[:, top:top + side, left:left + side] = 1
    return mask


def detail(result: torch.Tensor, truth: torch.Tensor, hole: torch.Tensor) -> float:
    """Mean |horizontal| + |vertical| difference inside the hole, result over truth (pairs with both pixels in)."""
    def energy(x):
        dx = (x[..., :, 1:] - x[..., :, :-1]).abs()[..., (hole[:, 1:] & hole[:, :-1])]
        dy = (x[..., 1:, :] - x[..., :-1, :]).abs()[..., (hole[1:, :] & hole[:-1, :])]
        return float(dx.mean() + dy.mean())
    return energy(result.double()) / energy(truth.double())


def measure(result, image, mask, owners) -> dict:
    hole = mask[0] > 0
    window = float(metrics.region_seam(result, image, owners, hole)[0])
    inside = float(metrics.region_seam(result, image, owners, hole, across=False)[0])
    return {"psnr": float(metrics.hole_psnr(result, image, mask)[0]),
            "border_seam": float(metrics.seam(result, image, mask)[0]),
            "window_seam": window, "inside": inside, "ratio": window / inside if inside > 0 else math.nan,
            "detail": detail(result, image, hole)}


def run_photo(model, path: Path, args) -> tuple[dict, dict]:
    image = imaging.load_image(path)
    size = model.config.image_size
    mask = hole_mask(image.shape[2], image.shape[3], args.hole * size)
    default_owners = tiles.owner_map(mask[0], tiles.plan_tiles(mask[0], size), tiles.TileSettings())  # = tiles's
    rows, pictures = {}, {}
    for name, settings in METHODS.items():
        if args.methods and name not in args.methods:
            continue
        started, seen = time.perf_counter(), []
        if settings is None:
            result, calls, windows, owners = downscaled(model, image, mask, args.steps, args.sampler, args.seed), \
                args.steps, 1, default_owners
        else:
            result, _ = inpaint(model, image, mask, steps=args.steps, sampler=args.sampler, seed=args.seed,
                                fit="tiles", tile_settings=settings, callback=seen.append,
                                start=args.start, start_strength=args.start_strength)
            calls, windows = seen[-1]["total"], seen[-1]["windows"]
            owners = tiles.owner_map(mask[0], tiles.plan_tiles(mask[0], size, settings), settings)
        keep = (mask == 0)[:, None].expand_as(image)
        assert torch.equal(result[keep], image[keep]), f"{name}: kept pixels changed"
        rows[name] = measure(result, image, mask, owners) | {"windows": windows, "calls": calls,
                                                             "seconds": round(time.perf_counter() - started, 1)}
        pictures[name] = result
        log.info("%s %s: %s", path.stem, name, rows[name])
    return rows, {"image": image, "mask": mask, **pictures}


def strip(pictures: dict, side: int, margin: int = 32) -> torch.Tensor:
    """The hole and ``margin`` px around it: the input (hole gray), then each pictured method, 8 px apart."""
    image, mask = pictures["image"], pictures["mask"]
    rows, cols = torch.nonzero(mask[0] > 0, as_tuple=True)
    y0, x0 = max(int(rows.min()) - margin, 0), max(int(cols.min()) - margin, 0)
    y1, x1 = int(rows.max()) + 1 + margin, int(cols.max()) + 1 + margin
    shown = [torch.where(mask[:, None] > 0, 0.5, image)] + [pictures[n] for n in PICTURED if n in pictures]
    gap = torch.ones(1, 3, y1 - y0, 8)
    parts = []
    for picture in shown:
        parts += [picture[:, :, y0:y1, x0:x1], gap]
    return torch.cat(parts[:-1], dim=3)


def write_text(path: Path, text: str, force: bool) -> None:
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists: pass --force to replace it")
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def table(results: dict, args) -> str:
    lines = [f"Hole: a centred square of {args.hole}x the model's window; {args.sampler}, {args.steps} steps, seed "
             f"{args.seed}. Seams in 0..1 units (lower is better); ratio = window / inside (1: no grid).", ""]
    for photo, rows in results.items():
        lines += [f"### {photo}", "", "| method | windows | calls | hole PSNR (dB) | border seam | window seam "
                  "| inside | ratio | detail | s |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            lines.append(f"| {name} | {r['windows']} | {r['calls']} | {r['psnr']:.2f} | {r['border_seam']:.4f} | "
                         f"{r['window_seam']:.4f} | {r['inside']:.4f} | {r['ratio']:.2f} | {r['detail']:.2f} | "
                         f"{r['seconds']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, required=True, help="folder of held-out photos (png/jpg)")
    p.add_argument("--out", type=Path, default=Path("docs/tiles"), help="where results and pictures go")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a RAD model (default: the built-in one)")
    p.add_argument("--hole", type=int, default=3, help="hole side in model windows (default 3)")
    p.add_argument("--sampler", default="ddim", choices=["ddpm", "ddim"])
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--start", default="noise", choices=settings.START_NAMES,
                   help="where the hole starts (default noise: the plain start the tables in docs/TILES.md used)")
    p.add_argument("--start-strength", type=float, default=None,
                   help="the strength of a fill start (default: the model's recommended one, else 0.5)")
    p.add_argument("--methods", nargs="*", help=f"a subset of {', '.join(METHODS)}")
    p.add_argument("--force", action="store_true", help="replace existing results")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    model = load_adm(args.model, device=torch.device("cpu"), dtype=torch.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    if (args.out / "results.json").exists() and not args.force:
        raise SystemExit(f"{args.out / 'results.json'} exists: pass --force to replace it")
    results = {}
    for path in sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")):
        results[path.stem], pictures = run_photo(model, path, args)
        imaging.save_image(strip(pictures, model.config.image_size), args.out / f"{path.stem}.jpg", force=args.force)
        write_text(args.out / "results.json", json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                                          "results": results}, indent=2) + "\n", True)
    write_text(args.out / "results.md", table(results, args), args.force)


if __name__ == "__main__":
    main()
