"""``rad-convert``: the RAD authors' checkpoint (or a diffusers ADM) as one self-contained comfyui-rad model file.

    rad-convert checkpoint-300000/ -o rad_ffhq256.safetensors [--dtype fp16|bf16|fp32] [--ema] [--force]
        [--recommend-start noise|harmonic [--recommend-start-strength S]]

The file holds the merged weights under guided-diffusion's names and, in its metadata, the architecture (attention
head order, GroupNorm eps and groups, the timestep embedding), the tau convention and the schedule, so
``load_adm`` (and the ComfyUI loader, from ``models/rad``) gives the same outputs as from the folder: bit-identical
in fp32. Written atomically; an existing file is kept unless ``--force``; the source itself (or a file in its folder)
is never written, even with ``--force``. ``--recommend-start`` records the start the model is best used with (what
``--start auto`` runs: ``settings.RECOMMENDED_START_KEYS``), only when given: measure it first (docs/EXPERIMENTS.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .checks import EXIT_STATUS, ArgumentParser, check_outputs
from .errors import UserError, run_main, setup_logging
from .settings import DTYPE_NAMES, add_recommend_start_arguments

__all__ = ["convert", "main"]

log = logging.getLogger("comfyui_rad")


def convert(source: str | Path, output: str | Path, dtype: str = "fp32", ema: bool = False,
            force: bool = False, recommend_start: str | None = None,
            recommend_start_strength: float | None = None) -> Path:
    """Load ``source`` with ``load_adm`` (LoRA merged, in float32) and write it as a comfyui-rad.model file.

    ``recommend_start`` (``settings.STARTS``) and ``recommend_start_strength`` (in [0, 1], with a fill): the start
    the file records as the one the model is best used with (``--start auto``); none is recorded unless given, not
    even one the source records.

    ``dtype``: fp32 (default, exact), fp16 or bf16 (half the size; rounded once, from the merged float32 weights).
    Refused (ValueError, FileNotFoundError, FileExistsError naming the argument) before anything is loaded: an
    unknown ``dtype``, a missing ``source``, an ``output`` that is not .safetensors or exists (unless ``force``).
    """
    from .checkpoints import load_adm, save_model
    from .devices import DTYPES
    from .schedule import rad_info, recommendation_metadata

    source, output = Path(source), Path(output)
    if recommend_start is None and recommend_start_strength is not None:
        raise ValueError("recommend_start_strength needs recommend_start: the start it is the strength of")
    recommended = {} if recommend_start is None else recommendation_metadata(recommend_start,
                                                                            recommend_start_strength)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist: pass an authors' checkpoint-N folder or a "
                                "diffusion_pytorch_model.safetensors with its config.json")
    if output.suffix.lower() != ".safetensors":
        raise ValueError(f"output {output}: the output must be a .safetensors file")
    check_outputs([("output", output)], [("source", source)])  # never onto or into the source, even with force
    if output.exists() and not force:
        raise FileExistsError(f"{output} already exists: pass force=True to overwrite it, or choose another output")
    model = load_adm(source, ema=ema)  # float32: the LoRA merged exactly once
    if dtype != "fp32":
        model = model.to(DTYPES[dtype])
    info = rad_info(model)
    metadata = {"converted_from": source.name, "converted_ema": json.dumps(bool(ema)), **recommended}
    if not info.is_rad:
        metadata["train_mask_sampling"] = "full"  # a plain ADM stays a plain ADM (not RAD) once converted
    return save_model(output, model, metadata=metadata, force=force)  # its RADInfo: curves, tau convention


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="rad-convert",
        description="Convert the RAD authors' checkpoint-N folder (or a diffusers ADM with its config.json) into one "
                    "comfyui-rad model file for ComfyUI/models/rad.",
        epilog=EXIT_STATUS,
    )
    p.add_argument("source", type=Path,
                   help="an authors' checkpoint-N/ folder, or a diffusion_pytorch_model.safetensors/.bin with its "
                        "config.json beside it")
    p.add_argument("-o", "--output", required=True, type=Path, help="the .safetensors file to write")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32",
                   help="weights' precision in the file (default fp32: exact; fp16/bf16: half the size)")
    p.add_argument("--ema", action="store_true", help="use the folder's unet_ema/ instead of unet/")
    add_recommend_start_arguments(p, "the file")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--quiet", "-q", action="store_true", help="warnings and errors only")
    return p


def run(args: argparse.Namespace) -> Path:
    """Convert as the arguments say (the output checked in the flags' names first); returns the file written."""
    check_outputs([("-o", args.output)], [("source", args.source)])  # never written onto its input
    if args.output.suffix.lower() != ".safetensors":
        raise UserError(f"-o {args.output}: the output must be a .safetensors file")
    if args.output.exists() and not args.force:
        raise UserError(f"-o {args.output} already exists: pass --force to overwrite it, or choose another -o")
    if args.recommend_start_strength is not None and args.recommend_start is None:
        raise UserError("--recommend-start-strength needs --recommend-start: the start it is the strength of")
    return convert(args.source, args.output, args.dtype, args.ema, args.force, args.recommend_start,
                   args.recommend_start_strength)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # before torch is imported: --help and bad flags answer at once
    setup_logging(args.quiet)
    return run_main("rad-convert", lambda: print(run(args)), interrupted="no file written")


if __name__ == "__main__":
    sys.exit(main())
