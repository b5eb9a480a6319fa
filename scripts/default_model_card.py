"""Held-out results for the model card of the built-in default model (``comfyui_rad/weights/rad_default.md``).

Pictures in ``--heldout`` were never seen in training. Every model (``--model``, and ``--compare`` ones beside it)
is measured in two uses, with the CLI's defaults (DDPM, 100 steps, seed 0) and against two fills that need no model:
the mean colour of the kept pixels, and the harmonic fill (``comfyui_rad.fill.harmonic_fill``: the kept pixels
diffused into the hole, the smoothest fill there is; before issue 21 this script had its own, a 3x3 average iterated
2,000 times, whose numbers differ slightly):

- **model size**: the picture's centre square resized to the model's resolution (``fit=resize``), under a centred
  box (25 %), LaMa's "wide" strokes and boxes, and a Perlin blob;
- **native** (``--native``): the whole picture at its own resolution, as ``rad-inpaint`` and the sampler nodes run it
  (``fit=crop``): 48-pixel boxes at three seeded places (inside one 64-pixel window) and one 128-pixel box (region
  by region, ``tiles``).

- **windows** (``--windows N``): N native-resolution windows of the model's size per picture (seeded places),
  under a centred square hole of 6.25 % and of 25 % of the window, each window inpainted whole (as ``rad-inpaint``
  runs a picture of the model's size); every model from the plain start and, for each ``--fill-strength`` s, from
  the harmonic fill regenerated at strength s (the fill in the hole, the mask scaled to s: RAD's per-pixel
  schedule regenerates each pixel by its mask value).

Measures over the hole: PSNR, SSIM (the hole's bounding box) and seam (``metrics.seam``). Prints markdown tables,
writes the grids (masked input | harmonic | each model | truth per row) and, with ``--json``, every number.

    python scripts/default_model_card.py --heldout /tmp/rad-data/heldout --grid docs/default_model_heldout.png \
        --native --native-grid docs/default_model_native.png --compare old.safetensors --json card.json

PSNR on the hole rewards blur, so the harmonic fill is a hard number to beat for any sampler that invents detail;
the tables are there to show where the model stands, not to flatter it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from comfyui_rad import imaging, load_adm, masks, metrics
from comfyui_rad.checkpoints import DEFAULT_MODEL
from comfyui_rad.fill import harmonic_fill
from comfyui_rad.pipeline import inpaint
from comfyui_rad.sampling import SamplerSpec

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


def mean_fill(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hole (mask > 0; mask [B or 1,H,W]) painted in the mean colour of each image's kept pixels."""
    keep = (mask[:, None] <= 0).to(image.dtype).expand(image.shape[0], 1, -1, -1)
    mean = (image * keep).sum((2, 3), keepdim=True) / keep.sum((2, 3), keepdim=True).clamp_min(1)
    return image * keep + mean * (1 - keep)


def centre_square(image: torch.Tensor, size: int) -> torch.Tensor:
    _, _, h, w = image.shape
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return F.interpolate(image[:, :, top:top + s, left:left + s], size=(size, size), mode="bicubic",
                         antialias=True, align_corners=False).clamp(0, 1)


WINDOW_HOLES = (("centre 6.25%", 0.25), ("centre 25%", 0.5))
"""Centred square holes in a native window: (name, side as a fraction of the window's side)."""


def window_places(height: int, width: int, size: int, count: int, seed: int) -> list[tuple[int, int]]:
    """``count`` seeded (top, left) places of a ``size`` window inside a picture, distinct."""
    g = torch.Generator().manual_seed(2000 + seed)
    places: list[tuple[int, int]] = []
    while len(places) < count:
        place = (int(torch.randint(0, height - size + 1, (1,), generator=g)),
                 int(torch.randint(0, width - size + 1, (1,), generator=g)))
        if place not in places:
            places.append(place)
    return places


def centred_hole(size: int, fraction: float) -> torch.Tensor:
    """A centred square hole [1,S,S] (1 = inpaint) whose side is ``fraction`` of ``size``."""
    side = round(size * fraction)
    mask = torch.zeros(1, size, size)
    top = (size - side) // 2
    mask[:, top:top + side, top:top + side] = 1
    return mask


def run_windows(models: dict, pictures: dict[str, torch.Tensor], size: int, args) -> tuple[list, list]:
    """Native windows of every picture under each centred hole: rows of measures (each the mean over windows and
    samples) per method, and per hole a grid tile row (masked | harmonic | each method's first sample | truth) of
    the first windows."""
    windows = torch.cat([picture[:, :, t:t + size, l:l + size]
                         for picture in pictures.values()
                         for t, l in window_places(*picture.shape[-2:], size, args.windows, args.seed)])
    rows, tiles_ = [], []
    for name, fraction in WINDOW_HOLES:
        if args.hole and name.split()[-1].rstrip("%") not in args.hole:
            continue
        hole = centred_hole(size, fraction)
        smooth = harmonic_fill(windows, hole)
        methods = {"mean fill": mean_fill(windows, hole), "harmonic fill": smooth}
        truth = windows.repeat_interleave(args.samples, 0)  # each window's samples side by side
        for model_name, model in models.items():
            starts = [("plain", truth, hole)] * (not args.no_plain) + [(f"fill s={s:g}", smooth.repeat_interleave(args.samples, 0),
                                                   hole * s) for s in args.fill_strength]
            for start, image, mask in starts:
                tick = time.perf_counter()
                result, _ = inpaint(model, image, mask, sampler="ddpm", steps=args.steps, seed=args.seed, fit="crop",
                                    start="noise")  # the fill start is made here, by hand
                methods[f"{model_name} {start}"] = result
                print(f"{name} {model_name} {start}: {time.perf_counter() - tick:.0f} s", file=sys.stderr)
        row = {"picture": "+".join(pictures), "mask": name, "hole": float(hole.mean()),
               "windows": windows.shape[0]}
        for method, filled in methods.items():
            reference = windows if filled.shape[0] == windows.shape[0] else truth
            row[method] = measures(filled, reference, hole)
        rows.append(row)
        first = lambda x: x[::args.samples] if x.shape[0] > windows.shape[0] else x  # noqa: E731
        masked = windows * (1 - hole[:, None]) + 0.5 * hole[:, None]
        shown = [first(x) for x in methods.values() if x is not methods["mean fill"]]
        tiles_.append(torch.cat([torch.cat([masked, *shown, windows], dim=3)[i:i + 1]
                                 for i in range(min(args.grid_windows, windows.shape[0]))], dim=2))
    return rows, tiles_


NATIVE = (("box48", 48, 0), ("box48", 48, 1), ("box48", 48, 2), ("box128", 128, 0))
"""Native-resolution holes: (name, side, seed of the place)."""


def native_mask(height: int, width: int, side: int, seed: int) -> torch.Tensor:
    """A ``side`` x ``side`` box [1,H,W] (1 = inpaint) at a seeded place at least 8 px inside the picture."""
    g = torch.Generator().manual_seed(1000 + seed)
    top = int(torch.randint(8, height - side - 8 + 1, (1,), generator=g))
    left = int(torch.randint(8, width - side - 8 + 1, (1,), generator=g))
    mask = torch.zeros(1, height, width)
    mask[:, top:top + side, left:left + side] = 1
    return mask


def measures(fill: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Hole PSNR, SSIM and seam, each the mean over the batch of ``fill`` (samples of one picture)."""
    truth = truth.expand_as(fill)
    return {"psnr": float(metrics.hole_psnr(fill, truth, mask).mean()),
            "ssim": float(metrics.ssim(fill, truth, mask).mean()),
            "seam": float(metrics.seam(fill, truth, mask).mean())}


def around(image: torch.Tensor, mask: torch.Tensor, size: int = 96) -> torch.Tensor:
    """The square of twice the hole's side around it (inside the picture), resized to ``size`` for a grid."""
    ys, xs = torch.nonzero(mask[0] > 0, as_tuple=True)
    top, bottom, left, right = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    side = min(2 * max(bottom - top, right - left), *image.shape[-2:])
    cy, cx = (top + bottom) // 2, (left + right) // 2
    y0 = max(0, min(cy - side // 2, image.shape[-2] - side))
    x0 = max(0, min(cx - side // 2, image.shape[-1] - side))
    return F.interpolate(image[:, :, y0:y0 + side, x0:x0 + side], size=(size, size), mode="bilinear",
                         antialias=True, align_corners=False).clamp(0, 1)


def run_case(models: dict, truth: torch.Tensor, mask: torch.Tensor, fit: str, args) -> tuple[dict, list]:
    """Every fill of one (picture, mask): measures per method, and the pictures (harmonic, each model)."""
    smooth = harmonic_fill(truth, mask)
    mean = mean_fill(truth, mask)
    numbers = {"mean fill": measures(mean, truth, mask), "harmonic fill": measures(smooth, truth, mask)}
    shown = [smooth]
    for name, model in models.items():
        tick = time.perf_counter()
        batch = truth.expand(args.samples, -1, -1, -1).clone()  # independent samples: one batch, its own noise
        result, _ = inpaint(model, batch, mask, spec=SamplerSpec.create("ddpm", steps=args.steps), seed=args.seed,
                            fit=fit, start="noise")  # the plain start, whatever the model recommends
        numbers[name] = {**measures(result, truth, mask), "seconds": time.perf_counter() - tick}
        shown.append(result[:1])
    return numbers, shown


def print_table(title: str, rows: list[dict], methods: list[str]) -> None:
    print(f"\n### {title}\n")
    print("| picture | mask | hole | " + " | ".join(f"{m} PSNR / SSIM / seam" for m in methods) + " |")
    print("|---|---|---|" + "---|" * len(methods))
    for r in rows:
        cells = [f"{r[m]['psnr']:.2f} / {r[m]['ssim']:.3f} / {r[m]['seam']:.3f}" for m in methods]
        print(f"| {r['picture']} | {r['mask']} | {r['hole']:.0%} | " + " | ".join(cells) + " |")
    means = [f"{sum(r[m]['psnr'] for r in rows) / len(rows):.2f} / {sum(r[m]['ssim'] for r in rows) / len(rows):.3f}"
             f" / {sum(r[m]['seam'] for r in rows) / len(rows):.3f}" for m in methods]
    print("| **mean** | | | " + " | ".join(means) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--compare", type=Path, action="append", default=[],
                        help="another model measured beside --model (repeatable), e.g. the previous built-in one")
    parser.add_argument("--heldout", type=Path, required=True, help="folder of held-out pictures")
    parser.add_argument("--grid", type=Path, help="write the model-size grid here (PNG, refuses to overwrite)")
    parser.add_argument("--native", action="store_true", help="also measure whole pictures at native resolution")
    parser.add_argument("--native-grid", type=Path, help="write the native grid here (PNG, refuses to overwrite)")
    parser.add_argument("--json", type=Path, help="write every number here (refuses to overwrite)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=4,
                        help="samples per picture and mask, measured and averaged (default 4; one sample's hole "
                             "PSNR swings by dB)")
    parser.add_argument("--windows", type=int, default=0,
                        help="native windows of the model's size per picture under centred 6.25 %% and 25 %% holes "
                             "(0 = none)")
    parser.add_argument("--fill-strength", type=float, action="append", default=[],
                        help="with --windows: also start each model from the harmonic fill at this strength "
                             "(repeatable)")
    parser.add_argument("--hole", action="append", choices=("6.25", "25"), default=[],
                        help="with --windows: only this centred hole (repeatable; default both)")
    parser.add_argument("--no-plain", action="store_true",
                        help="with --windows: only the --fill-strength starts, not the plain one")
    parser.add_argument("--windows-grid", type=Path, help="write the windows' grid here (PNG, refuses to overwrite)")
    parser.add_argument("--grid-windows", type=int, default=6, help="windows per hole shown in --windows-grid")
    parser.add_argument("--skip-standard", action="store_true",
                        help="only the --windows measurement: skip the model-size (and --native) cases")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for path in (args.grid, args.native_grid, args.windows_grid):
        if path is not None:
            imaging.check_writable(path, 1)
    if args.json is not None and args.json.exists():
        raise SystemExit(f"--json {args.json} already exists: remove it or choose another name")
    models = {}
    for path in (args.model, *args.compare):
        name = path.stem if path.stem not in models else str(path)
        models[name] = load_adm(path, device="cpu", dtype=torch.float32)
    size = next(iter(models.values())).config.image_size
    files = sorted(p for p in args.heldout.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not files:
        raise SystemExit(f"no pictures in {args.heldout}")
    methods = ["mean fill", "harmonic fill", *models]
    small, native, small_tiles, native_tiles, windows, window_tiles = [], [], [], [], [], []
    if args.windows:
        pictures = {path.stem: imaging.load_image(path) for path in files}
        windows, window_tiles = run_windows(models, pictures, size, args)
        names = [m for m in windows[0] if isinstance(windows[0][m], dict)]
        print_table(f"Native {size}x{size} windows ({windows[0]['windows']} of {', '.join(pictures)}), centred "
                    f"holes, mean of {args.samples} samples per window", windows, names)
    for path in [] if args.skip_standard else files:
        picture = imaging.load_image(path)
        truth = centre_square(picture, size)
        for kind in MASKS:
            mask = make_mask(kind, size, args.seed)
            numbers, shown = run_case(models, truth, mask, "resize", args)
            small.append({"picture": path.stem, "mask": kind, "hole": float(mask.mean()), **numbers})
            masked = truth * (1 - mask[:, None]) + 0.5 * mask[:, None]
            small_tiles.append(torch.cat([masked, *shown, truth], dim=3))
        if not args.native:
            continue
        for kind, side, place in NATIVE:
            mask = native_mask(picture.shape[-2], picture.shape[-1], side, place)
            numbers, shown = run_case(models, picture, mask, "crop", args)
            native.append({"picture": path.stem, "mask": f"{kind} #{place}", "hole": float(mask.mean()), **numbers})
            masked = picture * (1 - mask[:, None]) + 0.5 * mask[:, None]
            native_tiles.append(torch.cat([around(x, mask) for x in (masked, *shown, picture)], dim=3))
            log_line = ", ".join(f"{m} {numbers[m]['psnr']:.2f}" for m in methods)
            print(f"{path.stem} {kind} #{place}: {log_line}", file=sys.stderr)
    print(f"models {', '.join(models)}; {size}x{size}; DDPM {args.steps} steps, seed {args.seed}, "
          f"mean of {args.samples} samples per case, CPU "
          f"{torch.get_num_threads()} thread(s); hole PSNR (dB) / SSIM / seam")
    if small:
        print_table("At the model's size (centre square resized, fit=resize)", small, methods)
    if native:
        print_table("At native resolution (whole picture, fit=crop)", native, methods)
    for grid_path, tiles_, scale in ((args.grid, small_tiles, 3), (args.native_grid, native_tiles, 2),
                                     (args.windows_grid, window_tiles, 2)):
        if grid_path is not None and tiles_:
            grid = F.interpolate(torch.cat(tiles_, dim=2), scale_factor=scale, mode="nearest")
            for written in imaging.save_image(grid, grid_path):
                print(written)
    if args.json is not None:
        args.json.write_text(json.dumps({"models": {k: str(p) for k, p in zip(models, (args.model, *args.compare))},
                                         "model_size": small, "native": native,
                                         "windows": windows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
