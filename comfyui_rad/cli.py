"""``rad-inpaint``: inpaint an image with a guided-diffusion ADM and a RAD adapter, from the command line."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .checks import EXIT_STATUS, ArgumentParser, check_outputs
from .errors import UserError, run_main, setup_logging
from .settings import (
    BASELINE_SAMPLERS, DEFAULT_JUMP, DEFAULT_MODEL, DEFAULT_SAMPLER, DEFAULT_STEPS, DEFAULTS, DTYPE_NAMES, FIT_NAMES,
    MASK_KINDS, MASK_MODES, RAD_SAMPLERS, SAMPLER_DEFAULTS, SAMPLER_NAMES, SPACING_NAMES, add_start_arguments, arg_type,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger("comfyui_rad")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="rad-inpaint",
        description="Inpaint an image with RAD (region-aware diffusion): one reverse pass, about 100 network calls.",
        epilog=EXIT_STATUS,
    )
    p.add_argument("--model", type=Path, default=None,
                   help="guided-diffusion ADM checkpoint (.pt or .safetensors), a full RAD model, or the RAD "
                        "authors' checkpoint-N folder (default: the pack's built-in rad_default.safetensors)")
    p.add_argument("--ema", action="store_true", help="with an authors' checkpoint-N folder: use its unet_ema/")
    p.add_argument("--adapter", type=Path, help="RAD adapter .safetensors made for this base (from rad-train)")
    p.add_argument("--strength", type=arg_type("strength"), default=1.0,
                   help="adapter strength in [0, 2] (default 1.0)")
    p.add_argument("--image", required=True, type=Path, help="image to inpaint (png/jpg/webp), any size")
    p.add_argument("--mask",
                   help="mask image (white or transparent = inpaint), or one of: " + ", ".join(MASK_KINDS)
                        + " (optional with --outpaint). A file without transparency that looks like a photo (colour, "
                        "or many grey levels) is refused in binary mode (a JPEG passed as its own mask) and warned "
                        "about in soft mode")
    p.add_argument("--outpaint", metavar="LEFT,TOP,RIGHT,BOTTOM",
                   help="extend the canvas by these many pixels on each side (e.g. 0,0,256,0) and fill the new "
                        "border; with --mask, the mask also applies inside the original picture")
    p.add_argument("--invert-mask", action="store_true", help="the mask file uses black = inpaint")
    p.add_argument("--mask-mode", choices=MASK_MODES, default="binary",
                   help="binary: threshold the mask (default); soft: a mask value is how much a pixel is regenerated")
    p.add_argument("--threshold", type=arg_type("threshold"), default=0.5,
                   help="binary mode: mask values above this are inpainted, in [0, 1) (0 = any nonzero pixel; "
                        "default 0.5)")
    p.add_argument("--output", "-o", required=True, type=Path,
                   help="where to write the result (png/jpg/webp); never one of the input files, nor --save-mask")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--save-mask", type=Path, help="also write the mask that was used")
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default=DEFAULT_SAMPLER,
                   help=f"{DEFAULT_SAMPLER} (default: ComfyUI's DPM++ 2M SDE per pixel, 15 steps), ddpm (the paper's, "
                        "100 steps), ddim, euler_ancestral (15), dpmpp_2m (25), or the baselines for any ADM: repaint (2,410 network calls at 250) and "
                        "replace (plain DDPM, the known region replaced after each step)")
    p.add_argument("--steps", type=arg_type("steps"), default=None,
                   help="reverse steps (default " + ", ".join(f"{n} {k}" for k, n in DEFAULT_STEPS.items()) + ")")
    p.add_argument("--eta", type=arg_type("eta"), default=DEFAULTS["eta"],
                   help="ddim, euler_ancestral, dpmpp_2m_sde: fresh noise per step in [0, 1]: 1 (default) adds "
                        "DDPM-like noise, which washes out model error (DDIM-25 comes close to DDPM-100); 0 = "
                        "deterministic, much worse with small models")
    p.add_argument("--spacing", choices=("auto", *SPACING_NAMES), default="auto",
                   help="how the steps are spread over the noise levels: uniform in t (the paper's), uniform in the "
                        "hole's log-SNR (lambda) or Karras et al.'s (default auto: the sampler's own, uniform for "
                        "ddpm and ddim, " + ", ".join(f"{k} {v['spacing']}" for k, v in SAMPLER_DEFAULTS.items()
                                                      if v.get("spacing")) + ")")
    p.add_argument("--resample", type=arg_type("resample"), default=DEFAULTS["resample"],
                   help="RAD's samplers: RAD with resampling: every --jump steps the hole goes back up --jump steps of "
                        "its own schedule and is denoised again, this many times (default 0 = off; 1 with "
                        "--jump 10 at 100 steps makes 190 network calls)")
    p.add_argument("--jump", type=arg_type("jump"), default=DEFAULT_JUMP,
                   help=f"with --resample: steps each jump goes back up, below --steps (default {DEFAULT_JUMP})")
    add_start_arguments(p)
    p.add_argument("--seed", type=arg_type("seed"), default=0,
                   help="noise seed, 0 to 2**63-1: the same seed gives the same result anywhere")
    p.add_argument("--samples", type=arg_type("samples"), default=1,
                   help="number of results (written as name_00000.png, ...)")
    p.add_argument("--fit", choices=FIT_NAMES, default="crop",
                   help="fit the model's resolution: crop a window around the mask and stitch back (default; a "
                        "hole larger than the window is filled region by region, as tiles), resize the whole image, "
                        "pad it to a square, or tiles: overlapping windows at the model's own resolution")
    p.add_argument("--class-label", type=arg_type("class_label"),
                   help="class label for class-conditional checkpoints (default: none, for an unconditional model)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, mps ...")
    p.add_argument("--dtype", choices=["auto", *DTYPE_NAMES], default="auto",
                   help="weights' precision (auto: bf16/fp16 on GPU, fp32 on CPU)")
    p.add_argument("--threads", type=arg_type("threads"), default=0,
                   help="CPU threads for torch while sampling on the CPU (default 0 = auto: the CPUs other "
                        "processes leave free, 1 to 4; torch's own choice, one per CPU, is many times slower on a "
                        "busy machine)")
    p.add_argument("--num-head-channels", type=arg_type("num_head_channels"),
                   help="attention head width (guided-diffusion's name; default 64)")
    p.add_argument("--num-heads", type=arg_type("num_heads"),
                   help="attention head count (use with --num-head-channels -1; default: set by the head width)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    return p


OUTPAINT_MAX = 16384
"""The most pixels --outpaint adds on one side."""


def parse_outpaint(text: str) -> tuple[int, int, int, int]:
    """``LEFT,TOP,RIGHT,BOTTOM`` in pixels -> the four ints; UserError naming the value otherwise."""
    example = "e.g. --outpaint 0,0,256,0 to extend the picture 256 pixels to the right"
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise UserError(f"--outpaint must be four whole numbers of pixels LEFT,TOP,RIGHT,BOTTOM, got {text!r} "
                       f"({example})")
    sides = tuple(int(p) for p in parts)
    if not any(sides):
        raise UserError(f"--outpaint {text} adds no pixel: give at least one side above 0 ({example})")
    if max(sides) > OUTPAINT_MAX:
        raise UserError(f"--outpaint {text}: at most {OUTPAINT_MAX} pixels per side")
    return sides


def outpaint_canvas(image: torch.Tensor, mask: torch.Tensor | None,
                    sides: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """image [B,3,H,W] and mask [B,H,W] or None -> the canvas extended by (left, top, right, bottom) pixels
    (the new border repeats the edge pixels; the sampler never reads them) and its mask: 1 on the new border,
    the given mask (or 0) inside."""
    import torch
    import torch.nn.functional as F

    left, top, right, bottom = sides
    if mask is None:
        mask = torch.zeros(image.shape[0], *image.shape[-2:])
    canvas = F.pad(image, (left, right, top, bottom), mode="replicate")
    return canvas, F.pad(mask, (left, right, top, bottom), value=1.0)


def _mask(args, height: int, width: int) -> torch.Tensor:
    """[1, H, W] in [0, 1], 1 = inpaint, from a file or generated at the image's size."""
    from . import imaging, masks

    if args.mask in MASK_KINDS:
        mask = masks.generated_mask(args.mask, 1, height, width, args.seed, centred_box=True)
    else:
        path = Path(args.mask)
        if not path.exists():
            raise UserError(f"--mask file {path} does not exist (or use one of: {', '.join(MASK_KINDS)})")
        if path.is_dir():
            raise UserError(f"--mask {path} is a folder: give a mask image file")
        _check_photo_mask(path, args.mask_mode)
        mask = imaging.load_mask(path, invert=args.invert_mask)
        mask = imaging.normalize_mask(mask, 1, height, width)  # warns when the aspect ratio differs
    if args.mask_mode == "binary":
        masks.check_threshold(args.threshold, "--threshold")
    mask = masks.prepare(mask, args.mask_mode, args.threshold)
    if args.sampler in BASELINE_SAMPLERS and not masks.is_binary(mask):
        raise UserError(f"--sampler {args.sampler} needs a binary mask, but --mask-mode soft left values between 0 "
                       "and 1: use --mask-mode binary (with --threshold)")
    return mask


def _check_photo_mask(path: Path, mode: str) -> None:
    """Refuse (binary mode) or warn about (soft mode) a mask file without transparency that looks like a photo."""
    from . import imaging

    reason = imaging.photo_mask_reason(path)
    if reason is None:
        return
    text = (f"--mask {path} has no transparent pixels and looks like a photo, not a mask ({reason}): white = "
            "inpaint, so its bright pixels would be inpainted")
    if mode == "soft":
        log.warning("%s; --mask-mode soft takes its grey levels as how much to regenerate", text)
        return
    raise UserError(f"{text}. Give a black-and-white mask, or a PNG/WEBP whose transparent pixels are the hole; "
                   "if its grey levels are meant as a soft mask, pass --mask-mode soft")


def _check_outputs(args) -> None:
    """Every output path is writable, differs from the others and from every input: before any work."""
    from . import imaging

    outputs = [("--output", p) for p in imaging.output_paths(args.output, args.samples)]
    if args.save_mask is not None:
        outputs.append(("--save-mask", args.save_mask))
    mask_file = None if args.mask in MASK_KINDS else args.mask
    check_outputs(outputs, [("--image", args.image), ("--mask", mask_file), ("--model", args.model),
                            ("--adapter", args.adapter)])
    imaging.check_writable(args.output, args.samples, force=args.force, flag="--force")
    if args.save_mask is not None:
        imaging.check_writable(args.save_mask, force=args.force, flag="--force")


def _check_class_label(model, label: int | None) -> None:
    classes = model.config.num_classes
    if classes is None and label is not None:
        raise UserError(f"--class-label {label}: this model is unconditional (no classes): leave --class-label out")
    if classes is not None and label is None:
        raise UserError(f"this model is class-conditional ({classes} classes): pass --class-label 0..{classes - 1}")
    if classes is not None and label >= classes:
        raise UserError(f"--class-label {label} is out of range: this model has classes 0..{classes - 1}")


class Progress:
    """A progress bar on stderr (steps, rate, time left): redrawn in place on a terminal, every 10 % otherwise."""

    def __init__(self, enabled: bool):
        self.enabled, self.start = enabled, time.perf_counter()
        self.tty = sys.stderr.isatty()

    def __call__(self, info: dict) -> None:
        done, total = info["step"] + 1, info["total"]
        if not self.enabled or not (self.tty or done == total or done % max(1, total // 10) == 0):
            return
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (total - done) / rate if rate else 0.0
        where = f" ({info['phase']})" if "phase" in info else ""  # tiles: "coarse pass", "window 3/9"
        line = f"[{'#' * (30 * done // total):<30}] {done}/{total}{where} {rate:.2f} it/s, {left:.0f}s left"
        sys.stderr.write(("\r" + line + ("\n" if done == total else "")) if self.tty else line + "\n")
        sys.stderr.flush()


RAD_SAMPLER_LIST = ", ".join(n for n in SAMPLER_NAMES if n not in BASELINE_SAMPLERS)
"""RAD's samplers by name, for errors."""

SPEC_FLAGS = {"sampler": "--sampler", "steps": "--steps", "eta": "--eta", "resample": "--resample", "jump": "--jump",
              "spacing": "--spacing"}
"""How rad-inpaint (and rad-eval) call the ``SamplerSpec`` fields in their errors."""


def sampler_spec(args):
    """The run's ``sampling.SamplerSpec`` from --sampler, --steps, --eta, --resample and --jump: built and checked
    once, in the flags' names (UserError). The baselines (repaint, replace) keep their own jumps: --resample is
    refused for them."""
    from .sampling import SamplerSpec

    baseline = args.sampler in BASELINE_SAMPLERS
    if args.resample and baseline:
        raise UserError(f"--resample works with RAD's samplers (--sampler {RAD_SAMPLER_LIST}), not {args.sampler}: "
                        "RePaint resamples on its own (2,410 calls at its defaults)")
    jumps = {} if baseline else {"resample": args.resample, "jump": args.jump}
    if args.spacing != "auto":
        jumps["spacing"] = args.spacing
    try:
        spec = SamplerSpec.create(args.sampler, steps=args.steps, eta=args.eta, names=SPEC_FLAGS, **jumps)
    except ValueError as err:
        if baseline and not jumps and args.steps is not None:  # RePaint's own jumps (10, 9 times): no flags here
            default = SamplerSpec(args.sampler)
            raise UserError(f"--sampler {args.sampler} jumps back {default.jump} steps: give --steps above "
                            f"{default.jump} (default {default.steps})") from None
        raise UserError(str(err)) from None
    if spec.resample and not baseline:
        log.info("resampling: %d x every %d steps, %d network calls per image", spec.resample, spec.jump,
                 spec.calls())
    return spec


def run(args: argparse.Namespace) -> list[Path]:
    """Inpaint as the arguments say; returns the written paths."""
    from . import imaging
    from .checkpoints import load_adm
    from .devices import cpu_threads, resolve_device, resolve_dtype
    from .pipeline import inpaint

    if args.model is None:
        if not DEFAULT_MODEL.exists():
            raise UserError(f"no --model given and the built-in default model is not installed ({DEFAULT_MODEL}): "
                           "pass --model with a guided-diffusion checkpoint (and --adapter) or a RAD model")
        args.model = DEFAULT_MODEL
    for path, what in ((args.model, "--model"), (args.image, "--image"), (args.adapter, "--adapter")):
        if path is not None and not path.exists():
            raise UserError(f"{what} file {path} does not exist")
        if path is not None and path.is_dir() and what != "--model":  # --model: the authors' checkpoint-N folders
            raise UserError(f"{what} {path} is a folder, not a file: give the "
                           + ("checkpoint file (.safetensors, .pt)" if what != "--image" else "image file"))
    _check_outputs(args)  # fail before minutes of sampling
    if args.start not in ("auto", "noise") and args.sampler in BASELINE_SAMPLERS:
        raise UserError(f"--start {args.start} works with RAD's samplers (--sampler {', '.join(RAD_SAMPLERS)}), not "
                        f"{args.sampler} (binary masks only): use --start noise or auto")
    sides = parse_outpaint(args.outpaint) if args.outpaint is not None else None
    if args.mask is None and sides is None:
        raise UserError("give --mask (a mask file, or one of: " + ", ".join(MASK_KINDS) + "), or --outpaint")
    image = imaging.load_image(args.image)
    _, _, height, width = image.shape
    mask = _mask(args, height, width) if args.mask is not None else None
    if sides is not None:
        image, mask = outpaint_canvas(image, mask, sides)
        log.info("outpainting: %dx%d -> %dx%d", width, height, image.shape[3], image.shape[2])
    if not bool((mask > 0).any()):
        raise UserError("the mask is empty: nothing to inpaint (white or transparent pixels mark what to inpaint; "
                       "try --invert-mask)")
    if args.start not in ("auto", "noise") and (args.start_strength is None or args.start_strength < 1) \
            and bool((mask >= 1).flatten(1).all(1).any()):  # auto: noise there (pipeline.plan_inpaint)
        raise UserError(f"--start {args.start} fills the hole from the pixels around it, but the mask covers the "
                        "whole image: use --start noise, or leave some pixels unmasked")
    image = image.expand(args.samples, -1, -1, -1)
    spec = sampler_spec(args)  # before the model loads

    device = resolve_device(args.device)
    overrides = {k: v for k, v in (("num_head_channels", args.num_head_channels), ("num_heads", args.num_heads))
                 if v is not None}
    model = load_adm(args.model, adapter=args.adapter, strength=args.strength, device=device,
                     dtype=resolve_dtype(args.dtype, device), ema=args.ema, **overrides)
    _check_class_label(model, args.class_label)
    with cpu_threads(args.threads, device) as threads:
        if device.type == "cpu":
            log.info("%d CPU thread(s) (--threads)", threads)
        out, _ = inpaint(model, image, mask, spec=spec, seed=args.seed, fit=args.fit,
                         callback=Progress(not args.quiet), y=args.class_label, start=args.start,
                         start_strength=args.start_strength)
    written = imaging.save_image(out, args.output, force=args.force)
    if args.save_mask:
        written += imaging.save_image(mask[:, None].expand(-1, 3, -1, -1), args.save_mask, force=args.force)
    return written


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # before torch is imported: --help and bad flags answer at once
    setup_logging(args.quiet)

    def body() -> None:
        for path in run(args):
            print(path)

    return run_main("rad-inpaint", body, interrupted="stopped without writing a partial file")


if __name__ == "__main__":
    sys.exit(main())
