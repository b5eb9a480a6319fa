"""RAD adapters: which layers RAD trains, the adapter file, and merging it into a base ADM (RAD_NOTES §4, §5).

- Targets: ``lora_target_modules`` (LoRA on the input and output convs, every ResBlock's two 3x3 convs, qkv,
  proj_out) and ``time_layer_keys`` (the time layers, trained in full).
- The file (one ``.safetensors``, ``ADAPTER_FORMAT``): LoRA pairs ``<module>.lora_A.weight`` /
  ``<module>.lora_B.weight`` with delta = (alpha / r) * (B.flatten(1) @ A.flatten(1)).reshape(W.shape) (peft's
  convention), fully trained tensors under their plain keys (the time layers), and metadata naming the base
  checkpoint (file and weights sha256), its architecture, the schedule and the timestep convention. Written by
  ``save_adapter``, read by ``read_adapter`` into an ``Adapter`` (which checks its base, gives the head layout it was
  trained with and the RAD facts of base + adapter).
- ``merge_adapter`` is plain tensor math: no peft. ``checkpoints.load_adm`` is the one caller that loads a model.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import diffusers_format, settings
from .adm import ADM, ADMConfig, AttentionBlock, ResBlock
from .architecture import (
    CONFIG_FIELDS, HEAD_FIELDS, adm_shapes, config_from_json, config_json, foreign_kind, overridden_fields,
    verify_config,
)
from .fileio import (
    ADAPTER_FORMAT, FORMAT_VERSION, MODEL_FORMAT, CheckpointError, file_sha256, file_weights_sha256, read_state_dict,
    write_safetensors,
)
from .schedule import TAU_CONVENTIONS, NoiseCurves, RADInfo
from .settings import RECOMMENDED_START_KEYS

__all__ = [
    "Adapter", "lora_target_modules", "time_layer_keys", "parse_metadata", "read_adapter", "save_adapter",
    "merge_adapter",
]

_JSON_FIELDS = ("base_architecture", "architecture", "schedule", "target_modules", "full_keys")
_ADAPTER_REQUIRED = ("base_architecture", "base_sha256", "base_weights_sha256", "base_name", "schedule",
                     "tau_convention", "lora_rank", "lora_alpha", "target_modules", "full_keys")
_TIME_KEY = re.compile(r"(^|\.)(time_embed\.\d+|emb_layers\.1)\.(weight|bias)$")


# ------------------------------------------------------------------------------------------------------ targets


def _as_model(cfg_or_model: ADMConfig | nn.Module) -> nn.Module:
    if isinstance(cfg_or_model, ADMConfig):
        with torch.device("meta"):
            return ADM(cfg_or_model)
    if isinstance(cfg_or_model, ADM):
        return cfg_or_model
    raise TypeError(f"expected an ADMConfig or an ADM, got {type(cfg_or_model).__name__} "
                    "(for a peft-wrapped model pass model.get_base_model())")


def lora_target_modules(cfg_or_model: ADMConfig | nn.Module) -> list[str]:
    """RAD's LoRA targets (RAD_NOTES §4): input conv, output conv, every ResBlock's two 3x3 convs, qkv, proj_out."""
    targets = ["input_blocks.0.0"]
    for name, module in _as_model(cfg_or_model).named_modules():
        if isinstance(module, ResBlock):
            targets += [f"{name}.in_layers.2", f"{name}.out_layers.3"]
        elif isinstance(module, AttentionBlock):
            targets += [f"{name}.qkv", f"{name}.proj_out"]
    return targets + ["out.2"]


def time_layer_keys(model_or_state_dict: ADMConfig | nn.Module | Mapping[str, Any]) -> list[str]:
    """The parameters RAD trains in full: ``time_embed.*`` and every ResBlock's ``emb_layers.1.*``."""
    if isinstance(model_or_state_dict, ADMConfig):
        keys = adm_shapes(model_or_state_dict).keys()
    elif isinstance(model_or_state_dict, nn.Module):
        keys = model_or_state_dict.state_dict().keys()
    else:
        keys = model_or_state_dict.keys()
    return [k for k in keys if _TIME_KEY.search(k)]


# ------------------------------------------------------------------------------------------------- adapter files


@dataclass
class Adapter:
    """What an adapter file holds: LoRA pairs per module, fully trained tensors, parsed metadata.

    ``kind`` is "adapter" (format comfyui-rad.adapter) or "full" (a whole fine-tuned state dict: a
    comfyui-rad.model file or a plain ADM state dict with the base's keys; strength interpolates base -> it).
    """

    lora: dict[str, tuple[Tensor, Tensor]]
    full: dict[str, Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    name: str = "adapter"
    kind: str = "adapter"

    @property
    def rank(self) -> int | None:
        return self.metadata.get("lora_rank")

    @property
    def alpha(self) -> float | None:
        return self.metadata.get("lora_alpha")

    def base_config(self) -> ADMConfig | None:
        """The architecture of the base it was made for, as its metadata records it (None where it records none)."""
        arch = self.metadata.get("base_architecture") or self.metadata.get("architecture")
        return config_from_json(arch, self.name) if arch else None

    def head_layout(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """The head layout (not in the weights) and image size it was trained with, less those the caller set."""
        stored, mine = self.base_config(), overridden_fields(overrides)
        if stored is None:
            return {}
        return {f: getattr(stored, f) for f in (*HEAD_FIELDS, "image_size") if f not in mine}

    def check_base(self, cfg: ADMConfig, base_path: Path, base_sd: Mapping[str, Tensor]) -> None:
        """Refuse a base other than the one it was made for (file sha256 or weights hash must match) or another
        architecture."""
        meta, stored = self.metadata, self.base_config()
        diffs = _config_diff(stored, cfg) if stored is not None else []
        want_file, want_weights = meta.get("base_sha256"), meta.get("base_weights_sha256")
        if want_file or want_weights:
            have_file = file_sha256(base_path)
            if want_file != have_file:
                have_weights = file_weights_sha256(base_path, base_sd)
                if want_weights != have_weights:
                    also = f"; the architectures differ too: {', '.join(diffs)}" if diffs else ""
                    raise CheckpointError(
                        f"adapter {self.name} was made for base {meta.get('base_name')!r} (sha256 "
                        f"{str(want_file)[:12]}, weights {str(want_weights)[:12]}), not for {base_path.name!r} "
                        f"(sha256 {have_file[:12]}, weights {have_weights[:12]}){also}: load it on the base it was "
                        "trained on"
                    )
        if diffs:
            raise CheckpointError(f"adapter {self.name} was made for another ADM architecture than "
                                  f"{base_path.name}: {', '.join(diffs)}: drop or fix the differing overrides")

    def rad_facts(self, base: RADInfo, strength: float) -> RADInfo:
        """The RAD facts of ``base`` with this adapter merged in: its curves and tau convention where it records
        them (else the base's), its embedding, whether it is RAD-trained and its recommended start (the adapter's
        own: a base's recommendation was measured without it)."""
        meta = self.metadata
        merged = {"schedule": meta.get("schedule", base.curves.to_metadata()),
                  "tau_convention": meta.get("tau_convention", base.tau_convention),
                  **{k: meta[k] for k in ("train_embedding", "train_mask_sampling", *RECOMMENDED_START_KEYS)
                     if k in meta}}
        return RADInfo.from_metadata(merged, base=base.base, adapter=self.name, strength=float(strength))


def _config_diff(want: ADMConfig, have: ADMConfig, ignore: tuple[str, ...] = ("image_size",)) -> list[str]:
    return [f"{f} (adapter {getattr(want, f)!r}, base {getattr(have, f)!r})" for f in CONFIG_FIELDS
            if f not in ignore and getattr(want, f) != getattr(have, f)]


def parse_metadata(raw: Mapping[str, str], source: str) -> dict[str, Any]:
    """The metadata of a comfyui-rad adapter or model file with its JSON fields, rank and alpha parsed and its tau
    convention checked; ``CheckpointError`` naming ``source`` for what does not parse."""
    meta: dict[str, Any] = dict(raw)
    for name in _JSON_FIELDS:
        if name in meta:
            try:
                meta[name] = json.loads(meta[name])
            except (json.JSONDecodeError, TypeError):
                raise CheckpointError(f"{source}: metadata {name!r} is not valid JSON: {meta[name]!r:.80}") from None
    try:
        if "lora_rank" in meta:
            meta["lora_rank"] = int(meta["lora_rank"])
        if "lora_alpha" in meta:
            meta["lora_alpha"] = float(meta["lora_alpha"])
    except ValueError:
        raise CheckpointError(f"{source}: metadata lora_rank={meta['lora_rank']!r} / lora_alpha="
                              f"{meta.get('lora_alpha')!r} are not numbers") from None
    if "tau_convention" in meta and meta["tau_convention"] not in TAU_CONVENTIONS:
        raise CheckpointError(f"{source}: metadata tau_convention={meta['tau_convention']!r} is not one of "
                              f"{TAU_CONVENTIONS}")
    if "lora_rank" in meta and not 1 <= meta["lora_rank"] <= 4096:  # the merge divides alpha by it
        raise CheckpointError(f"{source}: metadata lora_rank is {meta['lora_rank']}: it must be in [1, 4096]")
    if "lora_alpha" in meta and not math.isfinite(meta["lora_alpha"]):
        raise CheckpointError(f"{source}: metadata lora_alpha is {meta['lora_alpha']}: it must be a finite number")
    try:  # the schedule's numbers size tables: checked here, before any model is built
        RADInfo.from_metadata({k: meta[k] for k in ("schedule", "tau_convention", "train_embedding",
                                                    *RECOMMENDED_START_KEYS) if k in meta})
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None
    return meta


def read_adapter(path: str | os.PathLike) -> Adapter:
    """Read a comfyui-rad adapter, or a full fine-tuned ADM state dict to interpolate towards."""
    path = Path(path)
    sd, raw = read_state_dict(path)
    fmt = raw.get("format")
    if fmt == ADAPTER_FORMAT:
        return _adapter_from(sd, raw, path.name)
    if fmt == MODEL_FORMAT or (fmt is None and foreign_kind(sd, raw) is None):
        return Adapter(lora={}, full=sd, metadata=parse_metadata(raw, path.name), name=path.name, kind="full")
    if fmt is not None:
        raise CheckpointError(f"{path.name}: metadata format {fmt!r} is not a comfyui-rad adapter "
                              f"({ADAPTER_FORMAT!r}) nor a comfyui-rad model ({MODEL_FORMAT!r})")
    raise CheckpointError(f"{path.name} is not a comfyui-rad adapter (no metadata format {ADAPTER_FORMAT!r}) nor a "
                          f"full ADM state dict: {foreign_kind(sd, raw)}")


def _adapter_from(sd: dict[str, Tensor], raw: Mapping[str, str], name: str) -> Adapter:
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{name}: adapter format_version {version!r} is not the one this comfyui-rad reads "
                              f"({FORMAT_VERSION!r}): update comfyui-rad or re-export the adapter")
    missing = [k for k in _ADAPTER_REQUIRED if k not in raw]
    if missing:
        raise CheckpointError(f"{name}: adapter metadata lacks {', '.join(missing)}: re-export the adapter")
    meta = parse_metadata(raw, name)
    a, b, full = {}, {}, {}
    for key, t in sd.items():
        if key.endswith(".lora_A.weight"):
            a[key[: -len(".lora_A.weight")]] = t
        elif key.endswith(".lora_B.weight"):
            b[key[: -len(".lora_B.weight")]] = t
        else:
            full[key] = t
    unpaired = sorted(set(a) ^ set(b))
    if unpaired:
        raise CheckpointError(f"{name}: LoRA modules without both lora_A and lora_B: {', '.join(unpaired[:5])}")
    if set(a) != set(meta["target_modules"]) or set(full) != set(meta["full_keys"]):
        raise CheckpointError(f"{name}: its tensors do not match its metadata target_modules / full_keys "
                              "(a damaged or hand-edited file): re-export the adapter")
    return Adapter(lora={m: (a[m], b[m]) for m in a}, full=full, metadata=meta, name=name)


def _adapter_problems(lora: Mapping[str, tuple[Tensor, Tensor]], full: Mapping[str, Tensor], rank: int | None,
                      shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """What in an adapter does not fit a base with these key shapes (empty when it fits)."""
    problems = []
    for module, (a, b) in lora.items():
        w = shapes.get(module + ".weight")
        if w is None:
            problems.append(f"LoRA target {module} has no {module}.weight in the base")
            continue
        r = a.shape[0]
        want_a, want_b = (r, *w[1:]), (w[0], r, *[1] * (len(w) - 2))
        if rank is not None and r != rank:
            problems.append(f"{module}: lora_A has rank {r} but lora_rank is {rank}")
        elif tuple(a.shape) != want_a or tuple(b.shape) != want_b:
            problems.append(f"{module}: lora_A {list(a.shape)} / lora_B {list(b.shape)} do not fit its weight "
                            f"{list(w)} (expected {list(want_a)} / {list(want_b)})")
    for key, t in full.items():
        if key not in shapes:
            problems.append(f"{key} is not in the base")
        elif tuple(t.shape) != tuple(shapes[key]):
            problems.append(f"{key} is {list(t.shape)} in the adapter but {list(shapes[key])} in the base")
    return problems


def _raise_problems(problems: list[str], source: str, hint: str) -> None:
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CheckpointError(f"{source} does not fit the base: {'; '.join(problems[:5])}{more}: {hint}")


def save_adapter(path: str | os.PathLike, *, lora: Mapping[str, tuple[Tensor, Tensor]], full: Mapping[str, Tensor],
                 base_path: str | os.PathLike, base_config: ADMConfig, rank: int, alpha: float,
                 schedule: Mapping[str, Any] | None = None, tau_convention: str = "gd", embedding: str = "spatial",
                 extra_metadata: Mapping[str, Any] | None = None, force: bool = False) -> Path:
    """Write one adapter file: LoRA pairs ``{module: (A, B)}``, fully trained tensors, and the base's identity.

    A is [r, in, kh, kw] / [r, in, 1] / [r, in]; B is [out, r, 1, 1] / [out, r, 1] / [out, r] for Conv2d / Conv1d /
    Linear targets; delta = (alpha / r) * B.flatten(1) @ A.flatten(1). Checked against ``base_config`` and the base.
    ``schedule`` (``NoiseCurves`` fields, default DDPM's), ``tau_convention`` and ``embedding``: the RAD facts the
    adapter is trained for, written by ``RADInfo.to_metadata``.
    """
    info = RADInfo(NoiseCurves.from_dict(schedule), tau_convention, embedding)
    base_path, base_sd = _read_base(base_path)
    base_shapes = {k: tuple(v.shape) for k, v in base_sd.items()}
    verify_config(base_config, base_shapes, f"base {Path(base_path).name}")
    _raise_problems(_adapter_problems(lora, full, int(rank), base_shapes), "adapter",
                    "the LoRA/trained tensors must come from a model with the base's architecture")
    tensors = {f"{m}.lora_{ab}.weight": t for m, pair in lora.items() for ab, t in zip("AB", pair)}
    tensors.update(full)
    tensors = {k: t.detach().to("cpu").contiguous().clone() for k, t in tensors.items()}
    metadata = {
        "base_architecture": config_json(base_config),
        "base_sha256": file_sha256(base_path),
        "base_weights_sha256": file_weights_sha256(base_path, base_sd),
        "base_name": Path(base_path).name,
        **info.to_metadata(),
        "lora_rank": str(int(rank)), "lora_alpha": repr(float(alpha)),
        "target_modules": json.dumps(list(lora)), "full_keys": json.dumps(sorted(full)),
    }
    return write_safetensors(path, tensors, ADAPTER_FORMAT, metadata, extra=extra_metadata, force=force,
                             protect=(base_path,))


def _read_base(path: str | os.PathLike) -> tuple[Path, dict[str, Tensor]]:
    """(the tensor file, its guided-diffusion-named state dict) of a base checkpoint in either format."""
    if diffusers_format.is_diffusers_source(path):
        read = diffusers_format.read_diffusers(path)
        return read.weights, read.state_dict
    return Path(path), read_state_dict(path)[0]


def merge_adapter(state_dict: Mapping[str, Tensor], adapter: Adapter | str | os.PathLike,
                  strength: float = 1.0) -> dict[str, Tensor]:
    """A new state dict: W + strength * delta for LoRA targets, lerp(base, trained, strength) for full tensors.

    Computed in float32, cast back to each base tensor's dtype; untouched tensors are shared, not copied.
    """
    strength = settings.check("strength", strength)
    if not isinstance(adapter, Adapter):
        adapter = read_adapter(adapter)
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    problems = _adapter_problems(adapter.lora, adapter.full, adapter.rank, shapes)
    if adapter.kind == "full":
        problems += [f"{k} is missing from it" for k in state_dict if k not in adapter.full]
    _raise_problems(problems, f"adapter {adapter.name}", "use an adapter made for this base checkpoint")
    merged, strength = dict(state_dict), float(strength)
    if strength == 0.0:
        return merged
    if adapter.lora and adapter.alpha is None:
        raise CheckpointError(f"adapter {adapter.name} has LoRA tensors but no lora_alpha in its metadata")
    for module, (a, b) in adapter.lora.items():
        w = state_dict[module + ".weight"]
        delta = b.to(w.device).flatten(1).float() @ a.to(w.device).flatten(1).float()
        scale = strength * adapter.alpha / a.shape[0]
        merged[module + ".weight"] = (w.float() + scale * delta.reshape(w.shape)).to(w.dtype)
    for key, trained in adapter.full.items():
        base = state_dict[key]
        trained = trained.to(base.device)
        merged[key] = (trained.to(base.dtype) if strength == 1.0
                       else torch.lerp(base.float(), trained.float(), strength).to(base.dtype))
    return merged

