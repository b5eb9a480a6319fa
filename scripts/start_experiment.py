#!/usr/bin/env python
"""RAD from a classical start against RAD from noise (issue 21, part 1): which start, at which strength, per model.

Every method fills the same holes; each is measured over the hole by PSNR, SSIM (the hole's bounding box) and seam
(``metrics.seam``), the means over images and seeds:

- ``photos``: the built-in model (``--model``) on native 64x64 windows of the held-out photos (``--heldout``,
  ``scripts/make_default_data.py``'s chelsea and coffee, never seen in training): ``--windows`` windows per photo at
  the model card's places (``default_model_card.window_places``), under the card's centred holes of 6.25 % and
  25 %. All windows of one configuration run as one batch (``fit=crop`` on a window of the model's size: nothing
  is resized).
- ``digits``: the digits experiment's base and RAD adapter (``--budget``: ``scripts/budget_curve.py``'s run folder;
  its newest adapter among ``--stages``) on the 32 held-out digits under the budget curve's box, extreme and wide
  masks (``evaluate.eval_masks``, seeded like the curve), batched and seeded as the curve scores them, so the plain
  start at a seed is the curve's number; plus the digits classifier's accuracy.

Methods: the mean fill (the kept pixels' mean colour), the harmonic fill (``fill.harmonic_fill``), and per sampler
(``--samplers``, e.g. ``ddpm-100 ddim-25 dpmpp_2m_sde-25``; DDIM at eta 1, the package's default) RAD from noise
(the plain start) and RAD from the harmonic fill at each ``--strengths`` (``pipeline.inpaint(start="harmonic",
start_strength=s)``). Every (sampler, hole, seed, start) is one file in ``--out`` (scores and the results), written
atomically and kept: run the same command again to go on. ``report`` prints the markdown tables from what is on
disk and writes one grid per part (``--grid``: masked | harmonic fill | RAD plain | RAD from the fill at each
strength | truth, first seed, one row per image and hole). Each run logs its wall time and the machine's load.

    export OMP_NUM_THREADS=1
    python scripts/start_experiment.py photos --out /work/runs/start --heldout /tmp/rad-data/heldout --windows 4
    python scripts/start_experiment.py digits --out /work/runs/start --budget /work/runs/budget
    python scripts/start_experiment.py report --out /work/runs/start --grid docs/start
    python scripts/start_experiment.py recommend -o rad_default.new.safetensors --recommend-start harmonic \
        --recommend-start-strength 0.5      # the built-in model, its tensors untouched
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import default_model_card as card  # noqa: E402
import digits_experiment as de  # noqa: E402

from comfyui_rad import imaging, load_adm, metrics  # noqa: E402
from comfyui_rad.checkpoints import DEFAULT_MODEL  # noqa: E402
from comfyui_rad.evaluate import eval_masks, inpaint_set, write_json  # noqa: E402
from comfyui_rad.fileio import atomic_write  # noqa: E402
from comfyui_rad.fill import harmonic_fill  # noqa: E402
from comfyui_rad.pipeline import inpaint  # noqa: E402
from comfyui_rad.sampling import SamplerSpec  # noqa: E402

log = logging.getLogger("start")

STRENGTHS = (0.1, 0.25, 0.5, 0.75)
SAMPLERS = ("ddpm-100", "ddim-25", "dpmpp_2m_sde-25")
SEEDS = (0, 1)
DIGIT_STAGES = (24000, 12000, 6000)
"""The digits adapters tried, best first: the newest the budget run has exported."""


def sampler_spec(text: str) -> SamplerSpec:
    """``ddpm-100`` -> the spec (eta 1 where a sampler has one: the package's default)."""
    name, _, steps = text.rpartition("-")
    return SamplerSpec.create(name, steps=int(steps))


def measures(result: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> dict[str, list[float]]:
    """Per-image hole PSNR, SSIM and seam."""
    mask = mask.expand(result.shape[0], -1, -1)
    return {"psnr": metrics.hole_psnr(result, truth, mask).tolist(), "ssim": metrics.ssim(result, truth, mask).tolist(),
            "seam": metrics.seam(result, truth, mask).tolist()}


def starts(strengths) -> list[tuple[str, str, float]]:
    """(method name, start, strength): the plain start, then the fill at each strength."""
    return [("RAD plain", "noise", 1.0)] + [(f"RAD from fill {s:g}", "harmonic", s) for s in strengths]


def load() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def save(path: Path, numbers: dict, result: torch.Tensor | None) -> None:
    """The scores (JSON) and, with them, the results (uint8, for the grids), each written atomically."""
    if result is not None:
        pixels = (result.clamp(0, 1) * 255).round().to(torch.uint8)
        atomic_write(path.with_suffix(".pt"), lambda tmp: torch.save(pixels, tmp), force=True)
    write_json(numbers, path, force=True)


# ------------------------------------------------------------------------------------------------------ photos


def photo_windows(heldout: Path, count: int, size: int, seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """The model card's native windows: ``count`` per held-out photo -> (names, [N,3,S,S])."""
    files = sorted(p for p in heldout.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not files:
        raise SystemExit(f"no pictures in {heldout}")
    names, out = [], []
    for path in files:
        picture = imaging.load_image(path)
        for t, l in card.window_places(*picture.shape[-2:], size, count, seed):
            names.append(f"{path.stem} {t},{l}")
            out.append(picture[:, :, t:t + size, l:l + size])
    return names, torch.cat(out)


def photos(args: argparse.Namespace) -> None:
    model = load_adm(args.model, device="cpu", dtype=torch.float32)
    size = model.config.image_size
    names, truth = photo_windows(args.heldout, args.windows, size)
    folder = args.out / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    write_json({"model": str(args.model), "windows": names, "size": size}, folder / "setup.json", force=True)
    for hole_name, fraction in card.WINDOW_HOLES:
        mask = card.centred_hole(size, fraction)
        tag = hole_name.split()[-1]
        for fill_name, fill in (("mean fill", card.mean_fill), ("harmonic fill", harmonic_fill)):
            path = folder / f"{tag}-{fill_name.split()[0]}.json"
            if not path.is_file():
                save(path, {"method": fill_name, "hole": hole_name, **measures(fill(truth, mask), truth, mask)},
                     fill(truth, mask))
        for sampler in args.samplers:
            spec = sampler_spec(sampler)
            for seed in args.seeds:
                for method, start, strength in starts(args.strengths):
                    path = folder / f"{tag}-{sampler}-seed{seed}-{start}{strength:g}.json"
                    if path.is_file():
                        continue
                    tick = time.perf_counter()
                    result, _ = inpaint(model, truth, mask, spec=spec, seed=seed, fit="crop", start=start,
                                        start_strength=strength)
                    wall = time.perf_counter() - tick
                    numbers = measures(result, truth, mask)
                    save(path, {"method": method, "hole": hole_name, "sampler": sampler, "seed": seed,
                                "start": start, "strength": strength, "images": truth.shape[0], "wall_s": wall,
                                "load": os.getloadavg(), **numbers}, result)
                    log.info("photos %s %s seed %d %s: PSNR %.2f (%.0f s, %s)", hole_name, sampler, seed, method,
                             sum(numbers["psnr"]) / len(numbers["psnr"]), wall, load())


# ------------------------------------------------------------------------------------------------------ digits


def digits(args: argparse.Namespace) -> None:
    run = args.budget
    stage = next((s for s in args.stages if (run / "models" / f"rad-{s:05d}.safetensors").is_file()), None)
    if stage is None:
        raise SystemExit(f"no adapter rad-NNNNN.safetensors for --stages {args.stages} in {run / 'models'}")
    s = de.Settings()
    data = de.prepare_data(run, s, json.loads((run / "budget-run.json").read_text())["seed"], reuse=True)
    from safetensors.torch import load_file

    net = de.DigitNet()
    net.load_state_dict(load_file(str(run / "classifier.safetensors")))
    net = net.eval().requires_grad_(False)
    truth, labels = data["held_x"][:s.eval_images], data["held_y"][:s.eval_images]
    truth_features = de.classify(net, truth)[1]
    model = load_adm(run / "models" / "base.safetensors", adapter=run / "models" / f"rad-{stage:05d}.safetensors",
                     device="cpu")
    folder = args.out / "digits"
    folder.mkdir(parents=True, exist_ok=True)
    write_json({"budget": str(run), "stage": stage, "images": int(truth.shape[0])}, folder / "setup.json", force=True)

    def scores(result, mask):  # means over the digits (a hole the fill gets exactly has PSNR inf: left out)
        return de.score(net, result, truth, labels, mask, truth_features)

    for kind in de.MASK_KINDS:
        for seed in args.seeds:
            mask = eval_masks(kind, truth.shape[0], de.SIZE, seed)
            for fill_name, fill in (("mean fill", card.mean_fill), ("harmonic fill", harmonic_fill)):
                path = folder / f"{kind}-{fill_name.split()[0]}-seed{seed}.json"
                if not path.is_file():
                    filled = fill(truth, mask)
                    save(path, {"method": fill_name, "kind": kind, "seed": seed, **scores(filled, mask)}, filled)
            for sampler in args.samplers:
                spec = sampler_spec(sampler)
                for method, start, strength in starts(args.strengths):
                    path = folder / f"{kind}-{sampler}-seed{seed}-{start}{strength:g}.json"
                    if path.is_file():
                        continue
                    tick = time.perf_counter()
                    result, _ = inpaint_set(model, truth, mask, spec=spec, seed=seed, batch_size=s.eval_batch,
                                            start=start, start_strength=strength)
                    wall = time.perf_counter() - tick
                    numbers = scores(result, mask)
                    save(path, {"method": method, "kind": kind, "sampler": sampler, "seed": seed, "start": start,
                                "strength": strength, "stage": stage, "wall_s": wall, "load": os.getloadavg(),
                                **numbers}, result)
                    log.info("digits %s %s seed %d %s: PSNR %.2f, accuracy %.3f (%.0f s, %s)", kind, sampler, seed,
                             method, numbers["hole_psnr"], numbers["accuracy"], wall, load())


# ------------------------------------------------------------------------------------------------------ report


def mean(values: list[float]) -> float:
    finite = [v for v in values if v == v and abs(v) != float("inf")]
    return sum(finite) / len(finite) if finite else float("nan")


def gather(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) | {"file": p} for p in sorted(folder.glob("*.json")) if p.name != "setup.json"]


def table(rows: list[dict], group: str, groups: list[str], columns: list[tuple[str, str]], title: str) -> str:
    """One markdown table: a row per (sampler, method), a cell per group (hole or mask kind) holding the columns'
    means over images and seeds, and the seconds of one run (all images, one seed)."""
    methods: dict[tuple, dict] = {}
    for r in rows:
        key = (r.get("sampler", ""), r["method"])
        methods.setdefault(key, {}).setdefault(r[group], []).append(r)
    out = [title, "", "| sampler | method | " + " | ".join(f"{g}: " + " / ".join(c for c, _ in columns)
                                                        for g in groups) + " | s per run |",
           "|---|---|" + "---|" * (len(groups) + 1)]
    order = sorted(methods, key=lambda k: (k[0] != "", k[0], k[1] != "RAD plain", k[1]))
    for key in order:
        cells, walls = [], []
        for g in groups:
            found = methods[key].get(g, [])
            walls += [r["wall_s"] for r in found if "wall_s" in r]
            values = [mean([v for r in found for v in (r[k] if isinstance(r[k], list) else [r[k]])])
                      for _, k in columns] if found else []
            seeds = len({r.get("seed", 0) for r in found})
            cells.append(" / ".join(f"{v:.3f}" if k in ("ssim", "seam", "accuracy") else f"{v:.2f}"
                                    for v, (_, k) in zip(values, columns)) + (f" ({seeds})" if found else "-"))
        wall = f"{mean(walls):.0f}" if walls else ""
        out.append(f"| {key[0] or '-'} | {key[1]} | " + " | ".join(cells) + f" | {wall} |")
    return "\n".join(out)


def grid(rows: list[dict], group: str, groups: list[str], sampler: str, strengths, scale: int,
         pick: list[int]) -> torch.Tensor | None:
    """masked | harmonic fill | RAD plain | RAD from the fill at each strength | truth, first seed, the images
    ``pick`` of each group."""
    def pixels(method: str, g: str) -> torch.Tensor | None:
        for r in rows:
            if r["method"] == method and r[group] == g and r.get("sampler", sampler) == sampler \
                    and r.get("seed", 0) == 0 and r["file"].with_suffix(".pt").is_file():
                return torch.load(r["file"].with_suffix(".pt"), weights_only=True).float()[pick] / 255
        return None

    lines = []
    for g in groups:
        columns = [pixels(m, g) for m in ("harmonic fill", "RAD plain", *(f"RAD from fill {s:g}" for s in strengths))]
        truth = pixels("truth", g)
        if any(c is None for c in columns) or truth is None:
            continue
        mask = pixels("mask", g)
        masked = truth * (1 - mask[:, :1]) + 0.5 * mask[:, :1]
        lines.append(torch.cat([masked, *columns, truth], dim=3))
    if not lines:
        return None
    picture = torch.cat([torch.cat(list(x), dim=1) for x in lines], dim=1)[None]
    return F.interpolate(picture, scale_factor=scale, mode="nearest")


def report(args: argparse.Namespace) -> None:
    strengths = args.strengths
    photo_rows, digit_rows = gather(args.out / "photos"), gather(args.out / "digits")
    holes = [name for name, _ in card.WINDOW_HOLES]
    if photo_rows:
        setup = json.loads((args.out / "photos" / "setup.json").read_text())
        print(table(photo_rows, "hole", holes, [("PSNR", "psnr"), ("SSIM", "ssim"), ("seam", "seam")],
                    f"### The built-in model, {len(setup['windows'])} native {setup['size']}x{setup['size']} windows "
                    "(hole PSNR dB / SSIM / seam; (seeds))"))
    if digit_rows:
        setup = json.loads((args.out / "digits" / "setup.json").read_text())
        print()
        print(table(digit_rows, "kind", list(de.MASK_KINDS), [("PSNR", "hole_psnr"), ("acc", "accuracy")],
                    f"### Digits, RAD adapter at {setup['stage']} steps, {setup['images']} held-out digits "
                    "(hole PSNR dB / classifier accuracy; (seeds))"))
    if args.grid is None:
        return
    args.grid.mkdir(parents=True, exist_ok=True)
    for part, rows, group, groups, scale, truth_mask in (
            ("photos", photo_rows, "hole", holes, 2, _photo_truth),
            ("digits", digit_rows, "kind", list(de.MASK_KINDS), 3, _digit_truth)):
        if not rows:
            continue
        rows = rows + truth_mask(args, groups)
        per_photo = len(json.loads((args.out / part / "setup.json").read_text()).get("windows", [])) // 2
        pick = ([i + k * per_photo for k in range(2) for i in range(args.grid_images // 2)] if part == "photos"
                else list(range(args.grid_images)))  # photos: the first windows of each of the two
        ran = sorted({r["sampler"] for r in rows if r.get("sampler")})
        sampler = args.grid_sampler if args.grid_sampler in ran else ran[0]  # the digits ran DDIM-25 only
        picture = grid(rows, group, groups, sampler, strengths, scale, pick)
        if picture is not None:
            for written in imaging.save_image(picture, args.grid / f"{part}.png", force=True):
                print(written)


def _pictures(method: str, group: str, g: str, x: torch.Tensor, folder: Path) -> dict:
    path = folder / f"_{method}-{g.replace(' ', '_').replace('%', '')}.json"
    save(path, {"method": method, group: g}, x)
    return {"method": method, group: g, "file": path}


def _photo_truth(args, holes) -> list[dict]:
    setup = json.loads((args.out / "photos" / "setup.json").read_text())
    _, truth = photo_windows(args.heldout, len(setup["windows"]) // 2, setup["size"])
    out = []
    for name, fraction in card.WINDOW_HOLES:
        mask = card.centred_hole(setup["size"], fraction).expand(truth.shape[0], -1, -1)
        out += [_pictures("truth", "hole", name, truth, args.out / "grid"),
                _pictures("mask", "hole", name, mask[:, None].expand(-1, 3, -1, -1), args.out / "grid")]
    return out


def _digit_truth(args, kinds) -> list[dict]:
    run = args.budget
    s = de.Settings()
    data = de.prepare_data(run, s, json.loads((run / "budget-run.json").read_text())["seed"], reuse=True)
    truth = data["held_x"][:s.eval_images]
    out = []
    for kind in kinds:
        mask = eval_masks(kind, truth.shape[0], de.SIZE, 0)
        out += [_pictures("truth", "kind", kind, truth, args.out / "grid"),
                _pictures("mask", "kind", kind, mask[:, None].expand(-1, 3, -1, -1), args.out / "grid")]
    return out


def recommend(args: argparse.Namespace) -> None:
    """``--model``'s file written to ``--output`` with the recommended start recorded in its metadata
    (``schedule.recommendation_metadata``): the same tensors, the same other metadata (rad-convert rewrites a model
    from its weights; this keeps the file as trained). Refuses an existing output and the input itself."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from comfyui_rad.checks import check_outputs
    from comfyui_rad.fileio import file_weights_sha256
    from comfyui_rad.schedule import recommendation_metadata

    check_outputs([("--output", args.output)], [("--model", args.model)])
    with safe_open(str(args.model), "pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    metadata.update(recommendation_metadata(args.recommend_start, args.recommend_start_strength))
    atomic_write(args.output, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    assert file_weights_sha256(args.output) == file_weights_sha256(args.model)
    print(args.output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("recommend", help="write a copy of --model recording its recommended start")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--output", "-o", type=Path, required=True)
    p.add_argument("--recommend-start", required=True, choices=("noise", "harmonic"))
    p.add_argument("--recommend-start-strength", type=float)
    p.add_argument("--threads", type=int, default=1)
    for name in ("photos", "digits", "report"):
        p = sub.add_parser(name)
        p.add_argument("--out", type=Path, required=True, help="the experiment's folder (resumable)")
        p.add_argument("--strengths", type=float, nargs="+", default=list(STRENGTHS))
        p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), help="name-steps, e.g. ddim-25")
        p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
        p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
        p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="photos: the model")
        p.add_argument("--heldout", type=Path, default=Path("/tmp/rad-data/heldout"), help="photos: held-out photos")
        p.add_argument("--windows", type=int, default=4, help="photos: windows per photo")
        p.add_argument("--budget", type=Path, default=Path("/work/runs/budget"), help="digits: the budget run")
        p.add_argument("--stages", type=int, nargs="+", default=list(DIGIT_STAGES),
                       help="digits: adapter steps to use, the first found")
        p.add_argument("--grid", type=Path, help="report: write photos.png and digits.png in this folder")
        p.add_argument("--grid-sampler", default="ddpm-100",
                       help="report: the sampler the grids show (where it ran; else the first that did)")
        p.add_argument("--grid-images", type=int, default=4,
                       help="report: images per hole or mask in the grids (photos: half from each photo)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    tick = time.perf_counter()
    {"photos": photos, "digits": digits, "report": report, "recommend": recommend}[args.part](args)
    log.info("%s: %.0f s wall, %s", args.part, time.perf_counter() - tick, load())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
