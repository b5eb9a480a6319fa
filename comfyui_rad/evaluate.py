"""``rad-eval``: inpaint held-out images under generated masks and measure the results (paper §4.2's protocol).

For each mask kind (box / extreme / wide as LaMa and the paper draw them, or perlin), one mask per image is drawn
from a CPU generator seeded with ``--seed``, so every model and sampler sees the same masks. Images are used whole:
the centre square resized (bicubic) to the model's resolution. Each batch is inpainted by ``pipeline.inpaint``
(what rad-inpaint and the nodes run; kept pixels stay bit-identical) with noise seed ``seed + index of the batch's
first image``: a seed and a batch size give the same results anywhere. Measured per image (``metrics``, images in
[0,1]): hole MSE and PSNR, SSIM over the image and over the hole's bounding box, the seam measure, and LPIPS when
``--lpips-weights`` is given; per mask kind: the means, seconds per image (sampling only) and network calls per
image, and the FID against the held-out originals when ``--fid-weights`` is given (``perceptual`` lists the weight
files it takes; nothing is downloaded).

Models trained with ``--embedding scalar`` (the paper's Cfg. 2) get one timestep per image (``sampling.RADDenoiser``),
as trained; a plain ADM with ``--sampler ddpm`` is the paper's Cfg. 1 (RAD steps without RAD training).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .checks import EXIT_STATUS, ArgumentParser, check_folder, check_outputs
from .errors import run_main, setup_logging
from .settings import (
    BASELINE_SAMPLERS, DEFAULT_JUMP, DEFAULT_SAMPLER, DEFAULT_START, DEFAULT_STEPS, DEFAULTS, DTYPE_NAMES, MASK_KINDS, RAD_SAMPLERS,
    SAMPLER_NAMES, SPACING_NAMES, add_start_arguments, arg_type,
)

RAD_SAMPLER_LIST = ", ".join(RAD_SAMPLERS)
"""RAD's samplers by name, for errors."""

if TYPE_CHECKING:
    import torch

    from .sampling import SamplerSpec

# torch and the engine are imported inside the functions, so rad-eval parses its arguments (and answers --help)
# before it loads torch.

__all__ = ["METRICS", "eval_masks", "finite_mean", "load_images", "MaskRun", "inpaint_set",
           "measure", "evaluate", "sample_grid", "masked_input", "network_calls", "results_dict", "write_json",
           "main"]

log = logging.getLogger(__name__)

METRICS = ("hole_mse", "hole_psnr", "ssim", "ssim_hole", "seam", "lpips")
"""Per-image measures in the order results list them (lpips only with LPIPS weights)."""


def eval_masks(kind: str, count: int, size: int, seed: int) -> torch.Tensor:
    """``count`` masks of ``kind`` at ``size`` x ``size``, float32 [N,H,W] (1 = inpaint), the same for a seed."""
    from . import masks

    return masks.generated_mask(kind, count, size, size, seed)


def load_images(folder: str | os.PathLike, size: int, limit: int | None = None) -> tuple[list[Path], torch.Tensor]:
    """The images under ``folder`` (sorted, recursive; the first ``limit``), each its centre square resized to
    ``size``: (paths, float32 [N,3,S,S] in [0,1])."""
    import torch

    from . import image_folders

    paths = image_folders.scan_images(folder, size, flag="--images")[:limit]
    return paths, torch.stack([_decode(p, size) for p in paths]).float() / 255


def _decode(path: Path, size: int) -> torch.Tensor:
    """``image_folders.load_crop`` of one held-out image; a DataError naming it (and --images) when it does not
    decode."""
    from . import image_folders

    try:
        return image_folders.load_crop(path, size)
    except image_folders.IMAGE_READ_ERRORS as err:
        raise image_folders.DataError(f"--images: cannot decode {path} ({str(err).splitlines()[0][:120]}): the file "
                                      "is truncated or damaged; replace it or remove it from the folder") from None


def network_calls(sampler: str, steps: int, options: dict | None = None) -> int:
    """Network evaluations per image of one run of ``sampler`` (``options``: its keywords; repaint's jumps, or the
    RAD samplers' ``resample`` and ``jump``): ``SamplerSpec.calls``."""
    from .sampling import SamplerSpec

    return SamplerSpec.create(sampler, steps=steps, **(options or {})).calls()


def inpaint_set(model: torch.nn.Module, images: torch.Tensor, mask: torch.Tensor, *, sampler: str = DEFAULT_SAMPLER,
                steps: int | None = None, seed: int = 0, batch_size: int = 16, eta: float | None = None,
                options: dict | None = None, embedding: str = "auto",
                progress: Callable[[int, int], None] | None = None,
                spec: SamplerSpec | None = None, start: str = DEFAULT_START,
                start_strength: float | None = None) -> tuple[torch.Tensor, float]:
    """Inpaint images [N,3,S,S] in [0,1] (S = the model's size) under masks [N,S,S] in batches: (results [N,3,S,S]
    in [0,1], seconds spent sampling). Batch k starts at image i and uses noise seed ``seed + i``. ``embedding`` as
    ``sampling.RADDenoiser``. The sampler: ``spec``, or ``SamplerSpec.create(sampler, steps=steps, eta=eta,
    **options)`` (built once here; defaults from the one table, eta 1). ``start``, ``start_strength`` as
    ``pipeline.inpaint`` (RAD from a classical start)."""
    import torch

    from .pipeline import inpaint
    from .sampling import SamplerSpec

    spec = spec or SamplerSpec.create(sampler, steps=steps, eta=eta, **(options or {}))

    if images.shape[0] != mask.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {mask.shape[0]} masks: give one mask per image")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    out, seconds = [], 0.0
    for first in range(0, images.shape[0], batch_size):
        stop = min(first + batch_size, images.shape[0])
        tick = time.perf_counter()
        result, _ = inpaint(model, images[first:stop], mask[first:stop], spec=spec, seed=seed + first, fit="resize",
                            embedding=embedding, start=start, start_strength=start_strength)
        seconds += time.perf_counter() - tick
        out.append(result)
        if progress is not None:
            progress(stop, images.shape[0])
    return torch.cat(out), seconds


def measure(results: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor,
            lpips: torch.nn.Module | None = None, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Per-image measures (``METRICS``) of results against truth, both [N,3,H,W] in [0,1], masks [N,H,W]:
    name -> float64 [N]."""
    import torch

    from . import metrics

    out = {
        "hole_mse": metrics.hole_mse(results, truth, mask),
        "hole_psnr": metrics.hole_psnr(results, truth, mask),
        "ssim": metrics.ssim(results, truth),
        "ssim_hole": metrics.ssim(results, truth, mask),
        "seam": metrics.seam(results, truth, mask),
    }
    if lpips is not None:
        device = next(lpips.parameters()).device
        with torch.no_grad():
            out["lpips"] = torch.cat([lpips(results[i:i + batch_size].to(device), truth[i:i + batch_size].to(device))
                                      for i in range(0, results.shape[0], batch_size)]).double().cpu()
    return out


def _features(net: torch.nn.Module, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    import torch

    device = next(net.parameters()).device
    with torch.no_grad():
        return torch.cat([net(images[i:i + batch_size].to(device)).double().cpu()
                          for i in range(0, images.shape[0], batch_size)])


def finite_mean(values: torch.Tensor) -> float | None:
    """The mean of the finite values (a perfect hole's infinite PSNR is left out), None when there are none."""
    import torch

    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else None


@dataclass
class MaskRun:
    """One mask kind's evaluation: masks [N,S,S], results [N,3,S,S] in [0,1], per-image measures, timing, FID."""

    kind: str
    masks: torch.Tensor
    results: torch.Tensor
    per_image: dict[str, torch.Tensor]
    seconds: float
    calls_per_image: int
    fid: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(1, self.results.shape[0])

    def means(self) -> dict[str, float | None]:
        """Mean of each measure over the images where it is finite (a perfect hole's infinite PSNR is left out)."""
        return {k: finite_mean(v) for k, v in self.per_image.items()}


def evaluate(model: torch.nn.Module, images: torch.Tensor, kinds: list[str] | tuple[str, ...], *,
             sampler: str = DEFAULT_SAMPLER, steps: int | None = None, seed: int = 0, batch_size: int = 16,
             eta: float | None = None, options: dict | None = None, embedding: str = "auto",
             lpips: torch.nn.Module | None = None, inception: torch.nn.Module | None = None,
             progress: Callable[[str, int, int], None] | None = None,
             spec: SamplerSpec | None = None, start: str = DEFAULT_START,
             start_strength: float | None = None) -> dict[str, MaskRun]:
    """Inpaint ``images`` [N,3,S,S] in [0,1] (S = the model's size) under each mask kind and measure the results.

    The sampler: ``spec``, or ``SamplerSpec.create(sampler, steps=steps, eta=eta, **options)`` (``steps`` default
    rad-inpaint's per sampler; ``options`` repaint's jump_length, jump_n_sample or ddpm/ddim's resample, jump);
    ``embedding`` as ``sampling.RADDenoiser``; ``start``, ``start_strength`` as ``pipeline.inpaint`` (RAD from a
    classical start; "auto": the model's recommended start, ``pipeline.resolve_start``). ``inception``: a feature
    network
    (``perceptual.InceptionFeatures``) for the FID of results against ``images``.
    """
    from . import metrics
    from .pipeline import resolve_start
    from .sampling import RADDenoiser, SamplerSpec

    spec = spec or SamplerSpec.create(sampler, steps=steps, eta=eta, **(options or {}))
    start, start_strength = resolve_start(model, start, start_strength, baseline=spec.baseline)
    size = model.config.image_size
    if images.ndim != 4 or images.shape[1:] != (3, size, size):
        raise ValueError(f"images are {tuple(images.shape)}, the model needs [N, 3, {size}, {size}]: load them with "
                         "load_images(folder, model.config.image_size)")
    RADDenoiser(model, embedding=embedding)  # a bad embedding fails here, before any work
    truth_features = _features(inception, images) if inception is not None else None
    runs = {}
    for kind in kinds:
        mask = eval_masks(kind, images.shape[0], size, seed)
        tick = (lambda done, total, k=kind: progress(k, done, total)) if progress else None
        results, seconds = inpaint_set(model, images, mask, spec=spec, seed=seed, batch_size=batch_size,
                                       embedding=embedding, progress=tick, start=start,
                                       start_strength=start_strength)
        calls = 0 if start != "noise" and start_strength == 0 else spec.calls()
        run = MaskRun(kind, mask, results, measure(results, images, mask, lpips), seconds, calls)
        if inception is not None:
            run.fid = metrics.frechet_distance(_features(inception, results), truth_features)
        log.info("%s: %s, %.3f s per image", kind, ", ".join(f"{k} {v:.4f}" for k, v in run.means().items()
                                                              if v is not None), run.seconds_per_image)
        runs[kind] = run
    return runs


# ------------------------------------------------------------------------------------------------------ outputs


def sample_grid(columns: list[torch.Tensor], gap: int = 2, background: float = 1.0) -> torch.Tensor:
    """Images side by side: ``columns`` of [N,3,H,W] in [0,1] (one per method) -> one picture [3, H', W'] with row
    i holding image i of every column, separated by ``gap`` pixels of ``background``."""
    import torch

    n, c, h, w = columns[0].shape
    if any(col.shape != columns[0].shape for col in columns):
        raise ValueError(f"grid columns must share one shape, got {[tuple(col.shape) for col in columns]}")
    grid = torch.full((c, n * h + (n - 1) * gap, len(columns) * w + (len(columns) - 1) * gap), background)
    for j, col in enumerate(columns):
        for i in range(n):
            grid[:, i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = col[i].float()
    return grid


def masked_input(images: torch.Tensor, mask: torch.Tensor, fill: float = 0.5) -> torch.Tensor:
    """What the sampler is given, for pictures: images [N,3,H,W] with the hole (mask [N,H,W] > 0) in ``fill``."""
    import torch

    return torch.where(mask[:, None] > 0, torch.full_like(images, fill), images)


def _json_number(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def results_dict(runs: dict[str, MaskRun], config: dict, names: list[str] | None = None) -> dict:
    """The JSON document of an evaluation: config, then per mask kind the means, timing, FID and per-image rows."""
    out = {"format": "comfyui-rad.eval", "version": 1, "config": config, "masks": {}}
    for kind, run in runs.items():
        rows = []
        for i in range(run.results.shape[0]):
            row = {"index": i, "hole_fraction": float(run.masks[i].gt(0.5).float().mean())}
            if names is not None:
                row["file"] = names[i]
            row.update({k: _json_number(float(v[i])) for k, v in run.per_image.items()})
            rows.append(row)
        out["masks"][kind] = {"count": run.results.shape[0], "mean": run.means(), "fid": run.fid,
                              "seconds_per_image": run.seconds_per_image, "network_calls_per_image":
                              run.calls_per_image, **run.extra, "per_image": rows}
    return out


def write_json(data: dict, path: str | os.PathLike, force: bool = False) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (``fileio.atomic_write``); an existing file is refused
    (FileExistsError) unless ``force``."""
    from .fileio import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "x") as f:
            json.dump(data, f, indent=1, allow_nan=False)
            f.write("\n")

    return atomic_write(path, write, force=force)


# ---------------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="rad-eval",
        description="Evaluate inpainting on held-out images: generated box/extreme/wide/perlin masks, one sampler, "
                    "per-image and mean hole PSNR/MSE, SSIM, seam, optional LPIPS and FID, seconds per image.",
        epilog=EXIT_STATUS,
    )
    p.add_argument("--model", required=True, type=Path,
                   help="guided-diffusion ADM checkpoint (.pt or .safetensors), a RAD model (rad-train, rad-convert), "
                        "or the RAD authors' checkpoint-N folder (its unet/ and config; see --ema)")
    p.add_argument("--ema", action="store_true", help="with an authors' checkpoint-N folder: use its unet_ema/")
    p.add_argument("--adapter", type=Path, help="RAD adapter .safetensors for --model (from rad-train)")
    p.add_argument("--strength", type=arg_type("strength"), default=1.0,
                   help="adapter strength in [0, 2] (default 1.0)")
    p.add_argument("--images", required=True, type=Path, help="folder of held-out images (recursive)")
    p.add_argument("--out", "-o", required=True, type=Path, help="results JSON to write")
    p.add_argument("--masks", default="box,extreme,wide",
                   help=f"comma-separated mask kinds of {', '.join(MASK_KINDS)} (default box,extreme,wide)")
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default=DEFAULT_SAMPLER,
                   help=f"RAD's {', '.join(RAD_SAMPLERS)} (default {DEFAULT_SAMPLER}), "
                        "repaint or replace (baselines on any ADM)")
    p.add_argument("--steps", type=arg_type("steps"),
                   help="reverse steps (default " + ", ".join(f"{n} {k}" for k, n in DEFAULT_STEPS.items()) + ")")
    p.add_argument("--eta", type=arg_type("eta"), default=DEFAULTS["eta"],
                   help="ddim, euler_ancestral, dpmpp_2m_sde: eta in [0, 1] (default 1, as rad-inpaint; 0 = "
                        "deterministic)")
    p.add_argument("--spacing", choices=("auto", *SPACING_NAMES), default="auto",
                   help="step spacing: uniform, lambda or karras (default auto: the sampler's own, as rad-inpaint)")
    p.add_argument("--jump-length", type=arg_type("jump_length"), default=10,
                   help="RePaint jump length (default 10)")
    p.add_argument("--jump-n-sample", type=arg_type("jump_n_sample"), default=10,
                   help="RePaint resamplings per jump point (default 10)")
    p.add_argument("--resample", type=arg_type("resample"), default=DEFAULTS["resample"],
                   help="RAD's samplers: RAD with resampling, how often each stretch of --jump steps is denoised again "
                        "(default 0 = off)")
    p.add_argument("--jump", type=arg_type("jump"), default=DEFAULT_JUMP,
                   help=f"RAD's samplers with --resample: steps each jump goes back up (default {DEFAULT_JUMP})")
    add_start_arguments(p)
    p.add_argument("--embedding", choices=("auto", "spatial", "scalar"), default="auto",
                   help="how the model takes timesteps: auto (from its metadata), spatial, scalar (Cfg. 2)")
    p.add_argument("--seed", type=arg_type("seed"), default=0, help="mask and noise seed, 0 to 2**63-1 (default 0)")
    p.add_argument("--limit", type=arg_type("limit"), help="use only the first N images (default: all)")
    p.add_argument("--batch-size", type=arg_type("batch_size"), default=16,
                   help="images per sampler call (default 16)")
    p.add_argument("--grids", type=Path, help="folder for sample grids: <mask>.png, masked | result | truth rows")
    p.add_argument("--grid-rows", type=arg_type("grid_rows"), default=8, help="images per grid (default 8)")
    p.add_argument("--lpips-weights", type=Path, nargs="+",
                   help="local LPIPS (AlexNet v0.1) weights: one lpips state dict, or torchvision's AlexNet and "
                        "lpips's alex.pth heads (see comfyui_rad.perceptual)")
    p.add_argument("--fid-weights", type=Path,
                   help="local pytorch-fid InceptionV3 weights (pt_inception-2015-12-05-6726825d.pth)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=("auto", *DTYPE_NAMES), default="auto",
                   help="model weights' precision (auto: bf16/fp16 on GPU, fp32 on CPU)")
    p.add_argument("--threads", type=arg_type("threads"), default=0,
                   help="CPU threads for torch on the CPU (default 0 = auto: the CPUs other processes leave free, 1 "
                        "to 4, as rad-inpaint)")
    p.add_argument("--num-head-channels", type=arg_type("num_head_channels"),
                   help="attention head width (guided-diffusion's; default 64)")
    p.add_argument("--num-heads", type=arg_type("num_heads"),
                   help="attention head count (with --num-head-channels -1; default: set by the head width)")
    p.add_argument("--force", action="store_true", help="overwrite the results JSON and grids")
    p.add_argument("--quiet", "-q", action="store_true", help="only the results table")
    return p


def _check_args(args: argparse.Namespace) -> list[str]:
    from . import imaging

    kinds = [k.strip() for k in args.masks.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in MASK_KINDS]
    if not kinds or unknown:
        raise ValueError(f"--masks {args.masks!r}: use comma-separated kinds of {', '.join(MASK_KINDS)}")
    for name, value in (("--batch-size", args.batch_size), ("--grid-rows", args.grid_rows),
                        ("--limit", 1 if args.limit is None else args.limit)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0, got {args.threads}")
    if args.start not in ("auto", "noise") and args.sampler in BASELINE_SAMPLERS:
        raise ValueError(f"--start {args.start} works with RAD's samplers (--sampler {RAD_SAMPLER_LIST}), not "
                         f"{args.sampler} (binary masks only): use --start noise or auto")
    if args.sampler == "repaint" and args.jump_n_sample > 1:
        steps = args.steps if args.steps is not None else DEFAULT_STEPS["repaint"]
        if args.jump_length >= steps:
            raise ValueError(f"--jump-length {args.jump_length} must be below --steps {steps} to jump back: lower "
                             "--jump-length, or pass --jump-n-sample 1 (no jumps)")
    inputs = [("--model", args.model), ("--adapter", args.adapter), ("--fid-weights", args.fid_weights),
              *(("--lpips-weights", p) for p in args.lpips_weights or [])]
    for what, path in inputs:
        if what == "--model" and path.is_dir():  # the RAD authors' checkpoint-N folders (load_adm says if not)
            continue
        if path is not None and path.is_dir():
            raise ValueError(f"{what} {path} is a folder, not a file: give the weights file itself")
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"{what} file {path} does not exist")
    if args.images.exists() and not args.images.is_dir():
        raise ValueError(f"--images {args.images} is a file: point --images at a folder of held-out images")
    outputs = [("--out", args.out)]
    if args.grids is not None:
        check_folder(args.grids, "--grids")
        outputs += [("--grids", args.grids / f"{kind}.png") for kind in kinds]
    check_outputs(outputs, [*inputs, ("--images", args.images)])  # nothing written into the held-out images
    if args.out.exists() and not args.force:
        raise FileExistsError(f"--out {args.out} already exists: choose another name or pass --force")
    if args.grids is not None:
        for kind in kinds:
            imaging.check_writable(args.grids / f"{kind}.png", force=args.force, flag="--force")
    return kinds


EVAL_FLAGS = {"sampler": "--sampler", "steps": "--steps", "eta": "--eta", "resample": "--resample", "jump": "--jump",
              "spacing": "--spacing"}


def sampler_spec(args: argparse.Namespace) -> tuple[SamplerSpec, dict]:
    """The run's ``SamplerSpec`` from the sampler flags, built and checked once in the flags' names, and the
    options the results JSON records (repaint: jump_length, jump_n_sample; ddpm/ddim: resample, jump when on)."""
    from .sampling import SamplerSpec

    if args.sampler == "repaint":
        options = {"jump_length": args.jump_length, "jump_n_sample": args.jump_n_sample}
        return SamplerSpec.create("repaint", steps=args.steps, eta=args.eta, names=EVAL_FLAGS, **options), options
    if args.resample and args.sampler in BASELINE_SAMPLERS:
        raise ValueError(f"--resample works with RAD's samplers (--sampler {RAD_SAMPLER_LIST}), not {args.sampler} "
                         "(RePaint resamples by --jump-length and --jump-n-sample)")
    jumps = {"resample": args.resample, "jump": args.jump} if args.sampler != "replace" else {}
    if args.spacing != "auto":
        jumps["spacing"] = args.spacing
    spec = SamplerSpec.create(args.sampler, steps=args.steps, eta=args.eta, names=EVAL_FLAGS, **jumps)
    options = {"resample": spec.resample, "jump": spec.jump} if spec.resample else {}
    return spec, options | ({"spacing": spec.spacing} if spec.spacing != "uniform" else {})


def _table(runs: dict[str, MaskRun]) -> str:
    keys = [k for k in METRICS if any(k in r.per_image for r in runs.values())]
    head = ["mask", *keys, "fid", "s/image", "calls"]
    lines = ["  ".join(f"{h:>10}" for h in head)]
    for kind, run in runs.items():
        means = run.means()
        cells = [kind, *(f"{means[k]:.4f}" if means.get(k) is not None else "-" for k in keys),
                 f"{run.fid:.3f}" if run.fid is not None else "-", f"{run.seconds_per_image:.3f}",
                 str(run.calls_per_image)]
        lines.append("  ".join(f"{c:>10}" for c in cells))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> tuple[Path, dict[str, MaskRun]]:
    """Evaluate as the arguments say; returns (the results JSON written, the runs)."""
    import torch

    from . import __version__, imaging
    from .checkpoints import load_adm
    from .devices import auto_threads, resolve_device, resolve_dtype
    from .perceptual import load_inception, load_lpips
    from .pipeline import resolve_start
    from .sampling import RADDenoiser
    from .schedule import rad_info

    kinds = _check_args(args)
    spec, options = sampler_spec(args)
    device = resolve_device(args.device)
    if device.type == "cpu":  # rad-eval's own process: the setting holds for the run
        torch.set_num_threads(args.threads or auto_threads())
    dtype = resolve_dtype(args.dtype, device)
    overrides = {k: v for k, v in (("num_head_channels", args.num_head_channels), ("num_heads", args.num_heads))
                 if v is not None}
    model = load_adm(args.model, adapter=args.adapter, strength=args.strength, device=device, dtype=dtype,
                     ema=args.ema, **overrides)
    lpips = load_lpips(args.lpips_weights, device) if args.lpips_weights else None
    inception = load_inception(args.fid_weights, device) if args.fid_weights else None
    paths, images = load_images(args.images, model.config.image_size, args.limit)

    def progress(kind, done, total):
        if not args.quiet:
            print(f"{kind}: {done}/{total} images", file=sys.stderr, flush=True)

    start, start_strength = resolve_start(model, args.start, args.start_strength, baseline=spec.baseline,
                                          names=("--start", "--start-strength"))
    runs = evaluate(model, images, kinds, spec=spec, seed=args.seed, batch_size=args.batch_size,
                    embedding=args.embedding, lpips=lpips, inception=inception, progress=progress, start=args.start,
                    start_strength=args.start_strength)
    config = {"model": str(args.model), "adapter": str(args.adapter) if args.adapter else None,
              "strength": args.strength, "embedding": RADDenoiser(model, embedding=args.embedding).embedding,
              "is_rad": rad_info(model).is_rad, "images": str(args.images),
              "count": len(paths), "image_size": model.config.image_size, "sampler": spec.name, "steps": spec.steps,
              "eta": spec.eta if "eta" in spec.sampler.settings else None, "options": options, "seed": args.seed,
              "start": start, "start_strength": start_strength if start != "noise" else None,
              "start_asked": args.start,
              "batch_size": args.batch_size, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
              "threads": torch.get_num_threads(), "lpips": bool(lpips), "fid": bool(inception),
              "created_by": f"comfyui-rad {__version__}"}
    names = [p.relative_to(args.images).as_posix() for p in paths]
    out = write_json(results_dict(runs, config, names), args.out, force=args.force)
    if args.grids is not None:
        for kind, r in runs.items():
            k = min(args.grid_rows, images.shape[0])
            grid = sample_grid([masked_input(images[:k], r.masks[:k]), r.results[:k], images[:k]])
            imaging.save_image(grid, args.grids / f"{kind}.png", force=args.force)
    print(_table(runs))
    return out, runs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # before torch is imported: --help and bad flags answer at once
    setup_logging(args.quiet)

    def body() -> None:
        out, _ = run(args)
        print(out)

    return run_main("rad-eval", body, interrupted="no results written")


if __name__ == "__main__":
    sys.exit(main())
