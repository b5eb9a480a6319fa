"""Files in, a model out: ``load_adm``, ``save_model`` and the model the pack ships (``DEFAULT_MODEL``).

- ``load_adm``: read (``fileio.read_state_dict``, or ``diffusers_format`` for diffusers ADMs: the RAD authors'
  ``checkpoint-N/`` folders, converted guided-diffusion bases), infer and verify the architecture
  (``architecture.config_from_state_dict``), strict load, optional adapter merge (``adapters``), ``model.rad_info``
  (a ``schedule.RADInfo``, read from the files' metadata by ``RADInfo.from_metadata``).
- ``save_model``: a whole ADM as a comfyui-rad.model safetensors file with its architecture and RAD facts
  (``fileio.write_safetensors``).

Adapter files and their merge live in ``adapters``; hashes and the file formats' names in ``fileio``; dtypes are
``devices``'. ``DEFAULT_MODEL`` is the checkpoint the pack ships (rad-inpaint and the loader node use it when none is
chosen).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import diffusers_format, settings
from .adapters import Adapter, merge_adapter, parse_metadata, read_adapter
from .adm import ADM
from .architecture import check_overrides, config_from_state_dict, config_json, config_summary, verify_config
from .devices import resolve_dtype
from .fileio import MODEL_FORMAT, CheckpointError, read_state_dict, write_safetensors
from .schedule import NoiseCurves, RADInfo, rad_info

__all__ = ["DEFAULT_MODEL", "BUILTIN_WEIGHTS", "CheckpointError", "save_model", "load_adm"]

log = logging.getLogger(__name__)


def save_model(path: str | os.PathLike, model: nn.Module, *, schedule: Mapping[str, Any] | None = None,
               tau_convention: str | None = None, metadata: Mapping[str, Any] | None = None,
               force: bool = False) -> Path:
    """Write a whole ADM (e.g. a trained RAD model) as a comfyui-rad.model safetensors file with its architecture.

    Its RAD facts are ``rad_info(model)``'s (``RADInfo.to_metadata``); ``schedule`` (``NoiseCurves`` fields) and
    ``tau_convention`` replace theirs.
    """
    if not isinstance(model, ADM):
        raise TypeError(f"save_model takes an ADM, got {type(model).__name__}: merge and unwrap peft layers first "
                        "(model.merge_and_unload())")
    info = rad_info(model)
    if schedule:
        info = dataclasses.replace(info, curves=NoiseCurves.from_dict(schedule))
    if tau_convention:
        info = dataclasses.replace(info, tau_convention=tau_convention)
    sd = model.state_dict()
    verify_config(model.config, {k: tuple(v.shape) for k, v in sd.items()}, "model")
    meta = {"architecture": config_json(model.config), **info.to_metadata()}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    return write_safetensors(path, tensors, MODEL_FORMAT, meta, extra=metadata, force=force)


BUILTIN_WEIGHTS, DEFAULT_MODEL = settings.BUILTIN_WEIGHTS, settings.DEFAULT_MODEL
"""The pack's own model folder (listed by the ComfyUI loader too), and the small RAD model in it that rad-inpaint
and the nodes use when no model is chosen."""


def _read_gd_base(path: Path, adapter: Adapter | None, overrides: dict[str, Any]):
    """(state dict, ADMConfig, RADInfo) of a guided-diffusion checkpoint or comfyui-rad file."""
    sd, raw = read_state_dict(path)
    is_model_file = raw.get("format") == MODEL_FORMAT
    meta = parse_metadata(raw, path.name) if is_model_file else {}  # the schedule's numbers checked first
    try:
        info = RADInfo.from_metadata(meta, is_rad=is_model_file, base=path.name,
                                     strength=1.0 if is_model_file else 0.0)
    except ValueError as err:  # a file's schedule, tau convention or embedding
        raise CheckpointError(f"{path.name}: {err}") from None
    if adapter is not None:
        overrides = {**adapter.head_layout(overrides), **overrides}
    cfg = config_from_state_dict(sd, metadata=raw, source=path.name, **overrides)
    return sd, cfg, info


def _read_diffusers_base(path: Path, ema: bool, overrides: dict[str, Any]):
    """(state dict, ADMConfig, RADInfo, tensor file) of a diffusers ADM: the authors' RAD checkpoint (their tau
    convention, T1 = T2 = 1000 linear 1e-4 .. 0.02: DDPM's curves) or a plain converted guided-diffusion ADM."""
    read = diffusers_format.read_diffusers(path, ema=ema, **overrides)
    name = path.name if path.is_dir() else f"{read.weights.parent.name}/{read.weights.name}"
    info = RADInfo(NoiseCurves(), read.tau_convention, "spatial", is_rad=read.is_rad, base=name,
                   strength=1.0 if read.is_rad else 0.0)
    return read.state_dict, read.config, info, read.weights


def _copy_off_the_file(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Every weight of ``model`` copied into memory on ``device`` (floating ones in ``dtype``), one tensor at a time.

    Read tensors are memory-mapped to their file; a model still mapped to it dies with SIGBUS (the whole process,
    no message) when the file is rewritten in place (cp over it, a download manager), so none is kept. One tensor
    at a time, the peak is the model plus its largest tensor, on the device it will live on.
    """
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        copy = tensor.detach().to(device=device, dtype=dtype if tensor.is_floating_point() else None, copy=True)
        setattr(module, leaf, nn.Parameter(copy, requires_grad=False) if isinstance(tensor, nn.Parameter) else copy)


def load_adm(path: str | os.PathLike, adapter: Adapter | str | os.PathLike | None = None, strength: float = 1.0, *,
             device: torch.device | str = "cpu", dtype: torch.dtype | str | None = None, ema: bool = False,
             **overrides: Any) -> ADM:
    """A guided-diffusion ADM (or comfyui-rad.model) from a file, optionally with a RAD adapter merged in.

    Also reads diffusers ADMs (``diffusers_format``): an authors' RAD ``checkpoint-N/`` folder (its ``unet/``, or
    ``unet_ema/`` with ``ema=True``), a ``diffusion_pytorch_model.safetensors`` with its ``config.json`` beside it,
    and diffusers conversions of guided-diffusion ADMs (``.safetensors`` or ``.bin``); their LoRA is merged and
    the network computes what the authors' code computes (tau convention "authors", T1 = T2 = 1000).

    ``overrides``: ``ADMConfig`` fields, e.g. ``num_head_channels=64`` or ``num_heads=4`` (see
    ``architecture.config_from_state_dict``). ``dtype`` None means float32. The model is in eval mode without
    gradients and carries ``model.rad_info``, a ``RADInfo``: curves, tau_convention ("gd" | "authors"), embedding
    ("spatial", or "scalar" for rad-train's Cfg. 2 ablation: the samplers' ``RADDenoiser`` drives it so), is_rad,
    base, adapter, strength. Weights rad-train trained with ``--mask-sampling full`` (a plain DDPM) are not RAD
    (is_rad False). The weights are copied into memory on ``device`` (none stays mapped to the file, which may then
    be replaced while the model is in use).
    """
    path = Path(path)
    check_overrides(overrides)
    strength = settings.check("strength", strength)
    if adapter is not None:
        adapter = adapter if isinstance(adapter, Adapter) else read_adapter(adapter)
    if diffusers_format.is_diffusers_source(path):
        sd, cfg, info, path = _read_diffusers_base(path, ema, overrides)
    else:
        if ema:
            raise CheckpointError(f"{path.name}: ema applies to the RAD authors' checkpoint-N folders (unet_ema/)")
        sd, cfg, info = _read_gd_base(path, adapter, overrides)
    if adapter is not None:
        adapter.check_base(cfg, path, sd)
        sd = merge_adapter(sd, adapter, strength)
        info = adapter.rad_facts(info, strength)
    with torch.device("meta"):
        model = ADM(cfg)
    model.load_state_dict(sd, strict=True, assign=True)  # the model takes the (memory-mapped) tensors: no copy
    del sd
    _copy_off_the_file(model, torch.device(device), resolve_dtype(dtype, device))
    model = model.eval().requires_grad_(False)
    model.rad_info = info
    log.info("loaded %s%s: %s, %s", path.name, f" + {info.adapter} x{strength:g}" if info.adapter else "",
             config_summary(cfg), "RAD" if info.is_rad else "plain ADM")
    return model
