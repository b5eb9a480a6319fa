"""Checkpoint files: guided-diffusion ADM state dicts, RAD adapters and RAD models (RAD_NOTES §4, §5).

- ``config_from_state_dict``: the ``ADMConfig`` a guided-diffusion ``UNetModel`` state dict was built with, read from
  key names and shapes and verified against ``ADM(cfg)`` built on the meta device. The attention head layout is not
  in the weights: it defaults to 64 channels per head (every public ADM checkpoint) and is overridable.
- Adapter files (one ``.safetensors``): LoRA pairs ``<module>.lora_A.weight`` / ``<module>.lora_B.weight`` with
  delta = (alpha / r) * (B.flatten(1) @ A.flatten(1)).reshape(W.shape) (peft's convention), fully trained tensors under
  their plain keys (the time layers), and metadata naming the base checkpoint (file and weights sha256), its
  architecture, the schedule and the timestep convention. ``merge_adapter`` is plain tensor math: no peft.
- ``load_adm``: read, infer and verify, strict load, optional adapter merge, ``model.rad_info`` (a
  ``schedule.RADInfo``, read from the files' metadata by ``RADInfo.from_metadata``). Diffusers ADMs (the RAD
  authors' ``checkpoint-N/`` folders, converted guided-diffusion bases) go through ``diffusers_format``.

Files are read by ``fileio.read_state_dict`` (``.safetensors`` with metadata, or ``.pt/.pth/.ckpt/.bin`` with
``weights_only``, memory-mapped) and written by ``fileio.atomic_write``; dtypes are ``devices``'. ``DEFAULT_MODEL`` is
the checkpoint the pack ships (rad-inpaint and the loader node use it when none is chosen).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from . import diffusers_format
from .adm import ADM, ADMConfig, AttentionBlock, ResBlock
from .checks import check_real
from .devices import resolve_dtype
from .fileio import CheckpointError, atomic_write, read_state_dict
from .schedule import TAU_CONVENTIONS, NoiseCurves, RADInfo, rad_info

__all__ = [
    "ADAPTER_FORMAT", "MODEL_FORMAT", "Adapter", "CheckpointError",
    "config_from_state_dict", "lora_target_modules", "time_layer_keys",
    "file_sha256", "weights_sha256", "save_adapter", "read_adapter", "merge_adapter", "save_model", "load_adm",
]

log = logging.getLogger(__name__)

ADAPTER_FORMAT = "comfyui-rad.adapter"
MODEL_FORMAT = "comfyui-rad.model"
FORMAT_VERSION = "1"
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(ADMConfig))
HEAD_FIELDS = ("num_heads", "num_head_channels", "num_heads_upsample", "use_new_attention_order")
_JSON_FIELDS = ("base_architecture", "architecture", "schedule", "target_modules", "full_keys")
_ADAPTER_REQUIRED = ("base_architecture", "base_sha256", "base_weights_sha256", "base_name", "schedule",
                     "tau_convention", "lora_rank", "lora_alpha", "target_modules", "full_keys")
_TIME_KEY = re.compile(r"(^|\.)(time_embed\.\d+|emb_layers\.1)\.(weight|bias)$")


# ------------------------------------------------------------------------------------------ architecture inference


def _foreign_kind(sd: Mapping[str, Any], metadata: Mapping[str, str]) -> str | None:
    """Why ``sd`` is not a guided-diffusion ADM state dict, or None when it looks like one."""
    if metadata.get("format") == ADAPTER_FORMAT:
        return "this is a RAD adapter; load the base ADM and pass this file as the adapter"
    if not sd:
        return "it holds no tensors (an empty state dict)"
    keys = list(sd)
    if any(k.startswith("unet.") and ".lora" in k for k in keys):
        return ("this is the RAD authors' LoRA-only export (pytorch_lora_weights.safetensors): it has no time layers, "
                "so the model cannot be rebuilt from it: use checkpoint-N/unet/diffusion_pytorch_model.safetensors "
                "or the checkpoint-N folder")
    if "conv_in.weight" in sd or any(k.startswith(("down_blocks.", "conv_in.")) for k in keys):
        return ("this is a diffusers UNet (conv_in, down_blocks.*) without its config.json: put the config.json "
                "that came with it in the same folder (an authors' RAD checkpoint: pass its checkpoint-N folder)")
    lora_marks = (".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.")
    if any(k.startswith(("lora_unet_", "lora_te")) or any(m in k for m in lora_marks) for k in keys):
        return ("this is a LoRA file (lora_* keys), not a model: a LoRA needs its base model, and comfyui-rad only "
                "takes its own adapters (format comfyui-rad.adapter) on top of a guided-diffusion ADM")
    ldm = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")
    found = sorted({prefix for prefix in ldm for k in keys if k.startswith(prefix)})
    if found:
        return (f"this is a Stable Diffusion checkpoint ({', '.join(p + '*' for p in found)} keys), not a "
                "guided-diffusion ADM: load it with ComfyUI's checkpoint loader")
    missing = [k for k in ("time_embed.0.weight", "input_blocks.0.0.weight") if k not in sd]
    if missing:
        return f"not a guided-diffusion ADM: no {' / '.join(missing)} (its first keys: {', '.join(keys[:3])})"
    return None


@dataclass
class _Diff:
    """Keys and shapes of a state dict against those of ``ADM(cfg)``."""

    missing: list[str]
    unexpected: list[str]
    wrong: list[str]

    @property
    def size(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.wrong)

    def describe(self) -> str:
        parts = []
        for what, items in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape mismatch", self.wrong)):
            if items:
                more = f" and {len(items) - 5} more" if len(items) > 5 else ""
                parts.append(f"{len(items)} {what}: {'; '.join(items[:5])}{more}")
        return ", ".join(parts)


@lru_cache(maxsize=32)
def _meta_shapes(cfg: ADMConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``ADM(cfg)``, built on the meta device (no memory, milliseconds)."""
    with torch.device("meta"):
        model = ADM(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _compare(cfg: ADMConfig, shapes: Mapping[str, tuple[int, ...]]) -> _Diff:
    # Keys and shapes do not depend on the head layout: compare with one that always builds.
    expected = _meta_shapes(dataclasses.replace(cfg, num_heads=1, num_head_channels=-1, num_heads_upsample=-1))
    return _Diff(
        missing=[k for k in expected if k not in shapes],
        unexpected=[k for k in shapes if k not in expected],
        wrong=[f"{k} is {list(shapes[k])} in the file but {list(v)} in the model"
               for k, v in expected.items() if k in shapes and tuple(shapes[k]) != v],
    )


def _verify(cfg: ADMConfig, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raise unless the state dict has exactly ADM(cfg)'s keys and shapes, and the head layout builds."""
    try:
        diff = _compare(cfg, shapes)
    except (ValueError, RuntimeError) as err:
        raise CheckpointError(f"{source}: the ADM layout {_summary(cfg)} cannot be built: {err}") from None
    if diff.size:
        raise CheckpointError(
            f"{source} does not match the ADM layout {_summary(cfg)}: {diff.describe()}. The file is damaged or "
            "not a guided-diffusion UNetModel (or an override is wrong)"
        )
    try:
        _meta_shapes(cfg)
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None


def _summary(cfg: ADMConfig) -> str:
    return (f"(model_channels={cfg.model_channels}, num_res_blocks={cfg.num_res_blocks}, "
            f"channel_mult={cfg.channel_mult}, attention_ds={cfg.attention_ds})")


def _check_override_names(overrides: Mapping[str, Any]) -> None:
    unknown = sorted(set(overrides) - set(CONFIG_FIELDS))
    if unknown:
        raise TypeError(f"unknown ADM override(s) {', '.join(unknown)}: valid names are {', '.join(CONFIG_FIELDS)}")


def _overridden(overrides: Mapping[str, Any]) -> set[str]:
    """Fields the caller set; ``num_heads`` alone means guided-diffusion's ``num_head_channels=-1``."""
    names = set(overrides)
    return names | {"num_head_channels"} if "num_heads" in names else names


def _with_overrides(cfg: ADMConfig, overrides: Mapping[str, Any]) -> ADMConfig:
    over = dict(overrides)
    if "num_heads" in over and "num_head_channels" not in over:
        over["num_head_channels"] = -1  # a head count is only used when the width per head is unset
    return dataclasses.replace(cfg, **over)


def config_from_state_dict(state_dict: Mapping[str, Tensor], *, metadata: Mapping[str, str] | None = None,
                           source: str = "state dict", **overrides: Any) -> ADMConfig:
    """The ``ADMConfig`` of a guided-diffusion ``UNetModel`` state dict, verified key by key and shape by shape.

    ``overrides`` are ``ADMConfig`` field names (guided-diffusion's): the head layout (``num_head_channels``, default
    64; ``num_heads``, ``num_heads_upsample``, ``use_new_attention_order``) and ``image_size`` (default 2**(levels+2):
    256 for 6 levels) are not in the weights. A comfyui-rad.model file's stored architecture (``metadata``) is used
    instead of inference. ``source`` names the file in errors.
    """
    metadata = metadata or {}
    _check_override_names(overrides)
    reason = _foreign_kind(state_dict, metadata)
    if reason:
        raise CheckpointError(f"{source}: {reason}")
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    if metadata.get("format") == MODEL_FORMAT and "architecture" in metadata:
        cfg = _with_overrides(_config_from_json(metadata["architecture"], source), overrides)
    else:
        cfg = _infer(shapes, overrides, source)
    _verify(cfg, shapes, source)
    return cfg


def _infer(shapes: Mapping[str, tuple[int, ...]], overrides: Mapping[str, Any], source: str) -> ADMConfig:
    """Try each (levels, num_res_blocks) with levels * (num_res_blocks + 1) blocks; keep the one that fits."""
    counts = {_block_count(shapes, "input_blocks"), _block_count(shapes, "output_blocks")}
    layouts = sorted({(lv, n // lv - 1) for n in counts for lv in range(1, n + 1) if n % lv == 0 and n // lv >= 2},
                     key=lambda c: (c[1], -c[0]))  # more levels first: guided-diffusion's presets have 4 to 7
    if "num_res_blocks" in overrides:
        layouts = [c for c in layouts if c[1] == overrides["num_res_blocks"]]
    if "channel_mult" in overrides:
        layouts = [c for c in layouts if c[0] == len(overrides["channel_mult"])]
    # Layouts whose upsampler positions match the keys are tried first; the rest only when none fits exactly.
    ups = _upsampler_blocks(shapes)
    likely = [c for c in layouts if not ups or ups == {(c[0] - 1 - lv) * (c[1] + 1) + c[1] for lv in range(1, c[0])}]
    fits = _try_layouts(shapes, likely, overrides, source)
    if not any(diff.size == 0 for diff, _ in fits):
        fits += _try_layouts(shapes, [c for c in layouts if c not in likely], overrides, source)
    if not fits:
        raise CheckpointError(
            f"{source}: no ADM layout fits its {sorted(counts)} input/output blocks: the file is damaged or not a "
            "guided-diffusion UNetModel; if it is one, pass num_res_blocks= and channel_mult="
        )
    best = min(fits, key=lambda f: f[0].size)  # stable: ties keep the order above
    exact = [cfg for diff, cfg in fits if diff.size == 0]
    if len(exact) > 1:
        log.warning("%s: the weights fit several layouts (%s); using %s. Pass num_res_blocks= and channel_mult= "
                    "to choose", source, "; ".join(_summary(c) for c in exact), _summary(exact[0]))
    return best[1]


def _try_layouts(shapes: Mapping[str, tuple[int, ...]], layouts: list[tuple[int, int]],
                 overrides: Mapping[str, Any], source: str) -> list[tuple[_Diff, ADMConfig]]:
    fits = []
    for levels, nrb in layouts:
        try:
            cfg = _with_overrides(_derive(shapes, levels, nrb), overrides)
            fits.append((_compare(cfg, shapes), cfg))
        except (ValueError, KeyError, RuntimeError) as err:  # this layout cannot even be built
            log.debug("%s: layout levels=%d num_res_blocks=%d rejected: %s", source, levels, nrb, err)
    return fits


def _upsampler_blocks(shapes: Mapping[str, Any]) -> set[int]:
    """Output blocks holding an upsampler with weights (a ResBlock or a conv after the first sub-block)."""
    found = set()
    for k in shapes:
        m = re.match(r"output_blocks\.(\d+)\.([1-9]\d*)\.(in_layers|out_layers|emb_layers|conv)\.", k)
        if m:
            found.add(int(m.group(1)))
    return found


def _block_count(shapes: Mapping[str, Any], prefix: str) -> int:
    return 1 + max((int(k.split(".")[1]) for k in shapes if k.startswith(prefix + ".")), default=-1)


def _res_out(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> int | None:
    """Output channels of the ResBlock under ``prefix`` ('input_blocks.4.0.'), from whichever key is there."""
    for name in ("in_layers.2.weight", "out_layers.3.weight", "out_layers.0.weight", "in_layers.2.bias",
                 "out_layers.3.bias", "out_layers.0.bias"):
        if prefix + name in shapes:
            return shapes[prefix + name][0]
    return None


def _mult(channels: int, model_channels: int) -> float:
    """A channel multiplier m with int(m * model_channels) == channels, as ADM computes it (0.5 allowed)."""
    if channels % model_channels == 0:
        return channels // model_channels
    m = channels / model_channels
    return m if int(m * model_channels) == channels else math.nextafter(m, math.inf)


def _derive(shapes: Mapping[str, tuple[int, ...]], levels: int, nrb: int) -> ADMConfig:
    """The config that ``levels`` levels of ``nrb`` ResBlocks imply for these keys (checked by the caller)."""
    mc = shapes["time_embed.0.weight"][1]
    mults, attention, resample = [], [], Counter()
    for level in range(levels):
        inputs = [f"input_blocks.{1 + level * (nrb + 1) + i}" for i in range(nrb)]
        outputs = [f"output_blocks.{(levels - 1 - level) * (nrb + 1) + i}" for i in range(nrb + 1)]
        out = next((c for b in inputs + outputs if (c := _res_out(shapes, b + ".0.")) is not None), None)
        if out is None:
            raise ValueError(f"no ResBlock keys at level {level}")
        mults.append(_mult(out, mc))
        if any(f"{b}.1.{n}.weight" in shapes for b in inputs + outputs for n in ("qkv", "proj_out")):
            attention.append(2 ** level)
        if level < levels - 1:
            resample[_resample_kind(shapes, f"input_blocks.{(level + 1) * (nrb + 1)}.", down=True)] += 1
        if level > 0:
            resample[_resample_kind(shapes, outputs[-1] + ".", down=False)] += 1
    kind = resample.most_common(1)[0][0] if resample else "resblock"
    return ADMConfig(
        model_channels=mc, num_res_blocks=nrb, channel_mult=tuple(mults), attention_ds=tuple(attention),
        in_channels=shapes["input_blocks.0.0.weight"][1],
        out_channels=shapes.get("out.2.weight", (6,))[0],
        num_classes=shapes["label_emb.weight"][0] if "label_emb.weight" in shapes else None,
        use_scale_shift_norm=_scale_shift(shapes),
        resblock_updown=kind == "resblock", conv_resample=kind != "none",
        image_size=2 ** (levels + 2),
    )


def _resample_kind(shapes: Mapping[str, Any], prefix: str, down: bool) -> str:
    """'resblock' (ResBlock up/down), 'conv' (strided / 3x3 conv) or 'none' (AvgPool / nearest) at a block."""
    rest = [k[len(prefix):] for k in shapes if k.startswith(prefix)]
    if not down:  # an upsampler sits after the ResBlock (and attention) of the level's last output block
        rest = [r for r in rest if not r.startswith("0.") and ".qkv." not in r and ".proj_out." not in r
                and ".norm." not in r]
    if any(re.match(r"\d+\.(in_layers|out_layers|emb_layers)\.", r) for r in rest):
        return "resblock"
    return "conv" if any(re.match(r"\d+\.(op|conv)\.", r) for r in rest) else "none"


def _scale_shift(shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """FiLM (scale and shift) when a ResBlock's emb_layers.1 has twice its output channels."""
    prefixes = ["middle_block.0."] + sorted({k.rsplit("emb_layers.1.weight", 1)[0] for k in shapes
                                             if k.endswith("emb_layers.1.weight")})
    for prefix in prefixes:
        emb, out = shapes.get(prefix + "emb_layers.1.weight"), _res_out(shapes, prefix)
        if emb is not None and out is not None:
            return emb[0] == 2 * out
    return True


def _config_json(cfg: ADMConfig) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)


def _config_from_json(text: str | Mapping[str, Any], source: str) -> ADMConfig:
    try:
        data = dict(json.loads(text) if isinstance(text, str) else text)
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: its stored architecture is not valid JSON ({err})") from None
    unknown = sorted(set(data) - set(CONFIG_FIELDS))
    if unknown:
        log.warning("%s: ignoring unknown architecture fields %s (made by a newer comfyui-rad?)", source, unknown)
    known = {k: v for k, v in data.items() if k in CONFIG_FIELDS}
    try:
        return ADMConfig(**known)
    except TypeError as err:
        raise CheckpointError(f"{source}: its stored architecture is incomplete ({err})") from None


def _config_diff(want: ADMConfig, have: ADMConfig, ignore: tuple[str, ...] = ("image_size",)) -> list[str]:
    return [f"{f} (adapter {getattr(want, f)!r}, base {getattr(have, f)!r})" for f in CONFIG_FIELDS
            if f not in ignore and getattr(want, f) != getattr(have, f)]


# ------------------------------------------------------------------------------------------------ adapter targets


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
        keys = _meta_shapes(model_or_state_dict).keys()
    elif isinstance(model_or_state_dict, nn.Module):
        keys = model_or_state_dict.state_dict().keys()
    else:
        keys = model_or_state_dict.keys()
    return [k for k in keys if _TIME_KEY.search(k)]


# ---------------------------------------------------------------------------------------------------------- hashes

_HASHES: dict[tuple, str] = {}


def _stat_key(kind: str, path: str | os.PathLike) -> tuple:
    st = os.stat(path)
    return kind, str(Path(path).resolve()), st.st_size, st.st_mtime_ns


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, cached in-process per (path, size, mtime)."""
    key = _stat_key("file", path)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def weights_sha256(state_dict: Mapping[str, Tensor]) -> str:
    """sha256 over sorted key names, shapes and float32 values: the same for a .pt and its .safetensors copy."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach()
        h.update(json.dumps([key, list(t.shape)]).encode())
        h.update(t.to("cpu", torch.float32).contiguous().reshape(-1).numpy())
    return h.hexdigest()


def _file_weights_sha256(path: str | os.PathLike, state_dict: Mapping[str, Tensor] | None = None) -> str:
    key = _stat_key("weights", path)
    if key not in _HASHES:
        _HASHES[key] = weights_sha256(state_dict if state_dict is not None else read_state_dict(path)[0])
    return _HASHES[key]


# -------------------------------------------------------------------------------------------------- adapter files


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


def _check_tau(tau: str) -> str:
    if tau not in TAU_CONVENTIONS:
        raise ValueError(f"tau_convention must be one of {TAU_CONVENTIONS}, got {tau!r}")
    return tau


def _parse_metadata(raw: Mapping[str, str], source: str) -> dict[str, Any]:
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
    return meta


def read_adapter(path: str | os.PathLike) -> Adapter:
    """Read a comfyui-rad adapter, or a full fine-tuned ADM state dict to interpolate towards."""
    path = Path(path)
    sd, raw = read_state_dict(path)
    fmt = raw.get("format")
    if fmt == ADAPTER_FORMAT:
        return _adapter_from(sd, raw, path.name)
    if fmt == MODEL_FORMAT or (fmt is None and _foreign_kind(sd, raw) is None):
        return Adapter(lora={}, full=sd, metadata=_parse_metadata(raw, path.name), name=path.name, kind="full")
    if fmt is not None:
        raise CheckpointError(f"{path.name}: metadata format {fmt!r} is not a comfyui-rad adapter "
                              f"({ADAPTER_FORMAT!r}) nor a comfyui-rad model ({MODEL_FORMAT!r})")
    raise CheckpointError(f"{path.name} is not a comfyui-rad adapter (no metadata format {ADAPTER_FORMAT!r}) nor a "
                          f"full ADM state dict: {_foreign_kind(sd, raw)}")


def _adapter_from(sd: dict[str, Tensor], raw: Mapping[str, str], name: str) -> Adapter:
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{name}: adapter format_version {version!r} is not the one this comfyui-rad reads "
                              f"({FORMAT_VERSION!r}): update comfyui-rad or re-export the adapter")
    missing = [k for k in _ADAPTER_REQUIRED if k not in raw]
    if missing:
        raise CheckpointError(f"{name}: adapter metadata lacks {', '.join(missing)}: re-export the adapter")
    meta = _parse_metadata(raw, name)
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


def _created_by() -> str:
    from . import __version__

    return f"comfyui-rad {__version__}"


def _save_safetensors(tensors: dict[str, Tensor], metadata: dict[str, str], path: Path, force: bool,
                      protect: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Write a safetensors file with ``fileio.atomic_write`` (never half a file; refused without ``force``)."""
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path}: comfyui-rad writes .safetensors files: use a name ending in .safetensors")
    if any(p is not None and Path(p).exists() and path.exists() and path.samefile(p) for p in protect):
        raise FileExistsError(f"{path} is the base checkpoint itself: choose another output name")
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), force=force, flag="force=True")
    log.info("wrote %s (%d tensors)", path, len(tensors))
    return path


def _merge_extra(metadata: dict[str, str], extra: Mapping[str, Any] | None) -> dict[str, str]:
    clash = sorted(set(extra or {}) & set(metadata))
    if clash:
        raise ValueError(f"extra_metadata may not set {', '.join(clash)}: these are written by comfyui-rad")
    return {**metadata, **{str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()}}


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
    path = Path(path)
    info = RADInfo(NoiseCurves.from_dict(schedule), _check_tau(tau_convention), embedding)
    base_path, base_sd = _read_base(base_path)
    base_shapes = {k: tuple(v.shape) for k, v in base_sd.items()}
    _verify(base_config, base_shapes, f"base {Path(base_path).name}")
    _raise_problems(_adapter_problems(lora, full, int(rank), base_shapes), "adapter",
                    "the LoRA/trained tensors must come from a model with the base's architecture")
    tensors = {f"{m}.lora_{ab}.weight": t for m, pair in lora.items() for ab, t in zip("AB", pair)}
    tensors.update(full)
    tensors = {k: t.detach().to("cpu").contiguous().clone() for k, t in tensors.items()}
    metadata = {
        "format": ADAPTER_FORMAT, "format_version": FORMAT_VERSION,
        "base_architecture": _config_json(base_config),
        "base_sha256": file_sha256(base_path),
        "base_weights_sha256": _file_weights_sha256(base_path, base_sd),
        "base_name": Path(base_path).name,
        **info.to_metadata(),
        "lora_rank": str(int(rank)), "lora_alpha": repr(float(alpha)),
        "target_modules": json.dumps(list(lora)), "full_keys": json.dumps(sorted(full)),
        "created_by": _created_by(),
    }
    return _save_safetensors(tensors, _merge_extra(metadata, extra_metadata), path, force, protect=(base_path,))


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
    strength = check_real(strength, "strength", 0.0, 2.0)
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


def _check_adapter_base(adapter: Adapter, cfg: ADMConfig, base_path: Path, base_sd: Mapping[str, Tensor]) -> None:
    """Refuse an adapter made for another base (file sha256 or weights hash must match) or architecture."""
    meta = adapter.metadata
    arch = meta.get("base_architecture") or meta.get("architecture")
    diffs = _config_diff(_config_from_json(arch, adapter.name), cfg) if arch else []
    want_file, want_weights = meta.get("base_sha256"), meta.get("base_weights_sha256")
    if want_file or want_weights:
        have_file = file_sha256(base_path)
        if want_file != have_file:
            have_weights = _file_weights_sha256(base_path, base_sd)
            if want_weights != have_weights:
                also = f"; the architectures differ too: {', '.join(diffs)}" if diffs else ""
                raise CheckpointError(
                    f"adapter {adapter.name} was made for base {meta.get('base_name')!r} (sha256 "
                    f"{str(want_file)[:12]}, weights {str(want_weights)[:12]}), not for {base_path.name!r} (sha256 "
                    f"{have_file[:12]}, weights {have_weights[:12]}){also}: load it on the base it was trained on"
                )
    if diffs:
        raise CheckpointError(f"adapter {adapter.name} was made for another ADM architecture than {base_path.name}: "
                              f"{', '.join(diffs)}: drop or fix the differing overrides")


def _adapter_head_layout(adapter: Adapter, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The head layout (not in the weights) and image size the adapter was trained with, less those the caller set."""
    arch = adapter.metadata.get("base_architecture") or adapter.metadata.get("architecture")
    if not arch:
        return {}
    stored, mine = _config_from_json(arch, adapter.name), _overridden(overrides)
    return {f: getattr(stored, f) for f in (*HEAD_FIELDS, "image_size") if f not in mine}


# ------------------------------------------------------------------------------------------------- whole models


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
        info = dataclasses.replace(info, tau_convention=_check_tau(tau_convention))
    sd = model.state_dict()
    _verify(model.config, {k: tuple(v.shape) for k, v in sd.items()}, "model")
    meta = {
        "format": MODEL_FORMAT, "format_version": FORMAT_VERSION,
        "architecture": _config_json(model.config),
        **info.to_metadata(),
        "created_by": _created_by(),
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    return _save_safetensors(tensors, _merge_extra(meta, metadata), Path(path), force)


BUILTIN_WEIGHTS = Path(__file__).resolve().parent / "weights"
"""The pack's own model folder (listed by the ComfyUI loader too)."""
DEFAULT_MODEL = BUILTIN_WEIGHTS / "rad_default.safetensors"
"""The small RAD model ``rad-inpaint`` and the nodes use when no model is chosen (once it ships)."""


def _read_gd_base(path: Path, adapter: Adapter | None, overrides: dict[str, Any]):
    """(state dict, ADMConfig, RADInfo) of a guided-diffusion checkpoint or comfyui-rad file."""
    sd, raw = read_state_dict(path)
    if adapter is not None:
        overrides = {**_adapter_head_layout(adapter, overrides), **overrides}
    cfg = config_from_state_dict(sd, metadata=raw, source=path.name, **overrides)
    is_model_file = raw.get("format") == MODEL_FORMAT
    meta = _parse_metadata(raw, path.name) if is_model_file else {}
    info = RADInfo.from_metadata(meta, is_rad=is_model_file, base=path.name, strength=1.0 if is_model_file else 0.0)
    return sd, cfg, info


def _read_diffusers_base(path: Path, ema: bool, overrides: dict[str, Any]):
    """(state dict, ADMConfig, RADInfo, tensor file) of a diffusers ADM: the authors' RAD checkpoint (their tau
    convention, T1 = T2 = 1000 linear 1e-4 .. 0.02: DDPM's curves) or a plain converted guided-diffusion ADM."""
    read = diffusers_format.read_diffusers(path, ema=ema, **overrides)
    name = path.name if path.is_dir() else f"{read.weights.parent.name}/{read.weights.name}"
    info = RADInfo(NoiseCurves(), read.tau_convention, "spatial", is_rad=read.is_rad, base=name,
                   strength=1.0 if read.is_rad else 0.0)
    return read.state_dict, read.config, info, read.weights


def load_adm(path: str | os.PathLike, adapter: Adapter | str | os.PathLike | None = None, strength: float = 1.0, *,
             device: torch.device | str = "cpu", dtype: torch.dtype | str | None = None, ema: bool = False,
             **overrides: Any) -> ADM:
    """A guided-diffusion ADM (or comfyui-rad.model) from a file, optionally with a RAD adapter merged in.

    Also reads diffusers ADMs (``diffusers_format``): an authors' RAD ``checkpoint-N/`` folder (its ``unet/``, or
    ``unet_ema/`` with ``ema=True``), a ``diffusion_pytorch_model.safetensors`` with its ``config.json`` beside it,
    and diffusers conversions of guided-diffusion ADMs (``.safetensors`` or ``.bin``); their LoRA is merged and
    the network computes what the authors' code computes (tau convention "authors", T1 = T2 = 1000).

    ``overrides``: ``ADMConfig`` fields, e.g. ``num_head_channels=64`` or ``num_heads=4`` (see
    ``config_from_state_dict``). ``dtype`` None means float32. The model is in eval mode without gradients and
    carries ``model.rad_info``, a ``RADInfo``: curves, tau_convention ("gd" | "authors"), embedding ("spatial", or
    "scalar" for rad-train's Cfg. 2 ablation: the samplers' ``RADDenoiser`` drives it so), is_rad, base, adapter,
    strength. Weights rad-train trained with ``--mask-sampling full`` (a plain DDPM) are not RAD (is_rad False).
    """
    path = Path(path)
    _check_override_names(overrides)
    strength = check_real(strength, "strength", 0.0, 2.0)
    if adapter is not None:
        adapter = adapter if isinstance(adapter, Adapter) else read_adapter(adapter)
    if diffusers_format.is_diffusers_source(path):
        sd, cfg, info, path = _read_diffusers_base(path, ema, overrides)
    else:
        if ema:
            raise CheckpointError(f"{path.name}: ema applies to the RAD authors' checkpoint-N folders (unet_ema/)")
        sd, cfg, info = _read_gd_base(path, adapter, overrides)
    if adapter is not None:
        _check_adapter_base(adapter, cfg, path, sd)
        sd = merge_adapter(sd, adapter, strength)
        info = _with_adapter_facts(info, adapter, strength)
    with torch.device("meta"):
        model = ADM(cfg)
    model.load_state_dict(sd, strict=True, assign=True)  # the model takes the (memory-mapped) tensors: no copy
    model = model.to(device=device, dtype=resolve_dtype(dtype, device)).eval().requires_grad_(False)
    model.rad_info = info
    log.info("loaded %s%s: %s, %s", path.name, f" + {info.adapter} x{strength:g}" if info.adapter else "",
             _summary(cfg), "RAD" if info.is_rad else "plain ADM")
    return model


def _with_adapter_facts(info: RADInfo, adapter: Adapter, strength: float) -> RADInfo:
    """The RAD facts of a base with ``adapter`` merged in: the adapter's curves and tau convention where it records
    them (else the base's), its embedding and whether it is RAD-trained."""
    meta = adapter.metadata
    merged = {"schedule": meta.get("schedule", info.curves.to_metadata()),
              "tau_convention": meta.get("tau_convention", info.tau_convention),
              **{k: meta[k] for k in ("train_embedding", "train_mask_sampling") if k in meta}}
    return RADInfo.from_metadata(merged, base=info.base, adapter=adapter.name, strength=float(strength))
