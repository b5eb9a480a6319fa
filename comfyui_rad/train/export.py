"""Exports of a training run: a RAD adapter (LoRA runs) or a full comfyui-rad model (fresh presets).

Both are written by ``adapters.save_adapter`` / ``checkpoints.save_model`` and load with ``load_adm`` as they are:
``load_adm(base, adapter=path)`` and ``rad-inpaint --adapter`` for an adapter, ``load_adm(path)`` for a model. Their
RAD facts (curves, tau convention, embedding: ``schedule.RADInfo``) travel in the metadata, so a scalar-embedding
(Cfg. 2) model is sampled as trained everywhere.
Exporting works from the trained tensors alone (adapter-file names, see ``lora.py``): no peft needed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from .. import diffusers_format
from ..adm import ADM
from ..adapters import save_adapter
from ..architecture import config_from_json
from ..checkpoints import save_model
from ..devices import DTYPES
from ..fileio import CheckpointError, file_sha256
from ..schedule import NoiseCurves, RADInfo, recommendation_metadata
from .state import load_checkpoint

__all__ = ["export_weights", "export_checkpoint", "base_weights"]

log = logging.getLogger(__name__)

_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")
# The options written into an export's metadata: the recipe, not the machine's paths or devices.
_RECIPE = ("preset", "resolution", "lora_rank", "lora_alpha", "lr", "weight_decay", "grad_clip", "ema", "batch_size",
           "grad_accum", "seed", "precision", "embedding", "mask_sampling", "vlb_weight", "resize", "scale_range",
           "scale_sampling", "color_augment", "flip", "learn_sigma")


def base_weights(path: str | os.PathLike) -> Path:
    """The tensor file of a base: the file itself, or the weights inside an authors' ``checkpoint-N/`` folder (its
    ``unet/``), whose sha256 identifies the base."""
    return diffusers_format.weights_file(path) if Path(path).is_dir() else Path(path)


def _metadata(run: dict[str, Any], step: int, ema: bool) -> dict[str, Any]:
    """Training facts written beside comfyui-rad's own metadata (all strings; the embedding is one of the RAD facts
    ``RADInfo.to_metadata`` writes)."""
    options = run.get("options", {})
    world = run.get("world_size", 1)
    global_batch = run.get("global_batch", options.get("batch_size", 0) * world * options.get("grad_accum", 1))
    return {"trainer": "rad-train", "train_steps": str(step),
            "train_mask_sampling": run["mask_sampling"], "train_ema": str(run["ema"] if ema else 0.0),
            "train_global_batch": str(global_batch), "train_world_size": str(world),
            "train_options": json.dumps({k: v for k, v in run.get("options", {}).items() if k in _RECIPE},
                                        sort_keys=True)}


def export_weights(path: str | os.PathLike, run: dict[str, Any], tensors: dict[str, torch.Tensor], *, step: int,
                   ema: bool, base: str | os.PathLike | None = None, dtype: str = "fp32",
                   force: bool = False, recommend: tuple[str, float | None] | None = None) -> Path:
    """Write the trained ``tensors`` of ``run`` as an adapter (LoRA runs) or a full model (fresh runs).

    ``base``: where the base checkpoint is now (default: where it was when training); it must be the same file
    (sha256). ``dtype``: fp32 (default), fp16 or bf16 for the written tensors. ``recommend``: (start, strength)
    recorded as the start the export is best used with (``schedule.recommendation_metadata``: what ``--start auto``
    runs); None records none.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown export dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    cast = {k: v.detach().to("cpu", DTYPES[dtype]) for k, v in tensors.items()}
    cfg = config_from_json(run.get("model_config", {}), "the training checkpoint's model_config")  # checked numbers
    meta = _metadata(run, step, ema)
    if recommend is not None:
        meta.update(recommendation_metadata(*recommend))
    if run["kind"] == "full":
        with torch.device("meta"):
            model = ADM(cfg)
        model.load_state_dict(cast, strict=True, assign=True)
        model.rad_info = RADInfo(NoiseCurves.from_dict(run["schedule"]), run["tau_convention"], run["embedding"])
        return save_model(path, model, metadata=meta, force=force)
    base_path = Path(base or run["base"]["path"])
    if not base_path.exists():
        raise FileNotFoundError(f"base checkpoint {base_path} not found: pass --base with its current location")
    have = file_sha256(base_weights(base_path))
    if have != run["base"]["sha256"]:
        raise CheckpointError(
            f"{base_path.name} (sha256 {have[:12]}) is not the base this run was trained on "
            f"({run['base']['name']}, sha256 {run['base']['sha256'][:12]}): pass the original base with --base")
    lora = {k[: -len(_LORA_SUFFIXES[0])]: (cast[k], cast[k[: -len(_LORA_SUFFIXES[0])] + _LORA_SUFFIXES[1]])
            for k in cast if k.endswith(_LORA_SUFFIXES[0])}
    full = {k: v for k, v in cast.items() if not k.endswith(_LORA_SUFFIXES)}
    return save_adapter(path, lora=lora, full=full, base_path=base_path, base_config=cfg, rank=run["lora_rank"],
                        alpha=run["lora_alpha"], schedule=run["schedule"], tau_convention=run["tau_convention"],
                        embedding=run["embedding"], extra_metadata=meta, force=force)


def export_checkpoint(checkpoint: str | os.PathLike, path: str | os.PathLike, *, base: str | os.PathLike | None = None,
                      dtype: str = "fp32", use_ema: bool = True, force: bool = False,
                      recommend: tuple[str, float | None] | None = None) -> Path:
    """Export a training checkpoint (or a run folder's newest one): its EMA weights when it has them and
    ``use_ema``, else the raw trained weights. ``recommend``: as ``export_weights``."""
    state = load_checkpoint(checkpoint)
    ema = bool(use_ema and state["ema"])
    return export_weights(path, state["run"], state["ema"] if ema else state["trainable"], step=state["step"],
                          ema=ema, base=base, dtype=dtype, force=force, recommend=recommend)
