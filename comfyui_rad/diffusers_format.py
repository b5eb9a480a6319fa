"""ADMs saved by diffusers: the RAD authors' checkpoints and the diffusers conversions of guided-diffusion ADMs.

What is read (shared/AUTHORS_FORMAT.md has the facts):

- an authors' training folder ``checkpoint-N/`` (its ``unet/``, or ``unet_ema/`` with ``ema=True``), or a
  ``diffusion_pytorch_model.safetensors`` / ``.bin`` with its ``config.json`` beside it: a ``LocalUNet2DModel``
  (RAD: peft LoRA tensors under ``.base_layer.`` / ``lora_A.default`` / ``lora_B.default``, 1x1-conv time layers)
  or a plain ``UNet2DModel`` (a converted guided-diffusion ADM, ``attention_legacy_order`` in its config).
- ``read_diffusers`` merges the LoRA (y = base(x) + B(A(x)), scale 1, rank from lora_A), renames the keys to
  guided-diffusion's (``to_q/to_k/to_v`` rows concatenated into ``qkv``) and returns the ``ADMConfig`` that makes
  ``ADM`` compute what the authors' network computes: diffusers' standard head split for their RAD checkpoints (their
  fork ignores ``attention_legacy_order``, so their LoRA was trained on it), the legacy split where a plain
  converted base asks for it (what the original guided-diffusion weights compute), GroupNorm eps and groups from the
  config, and the timestep embedding's ``freq_shift``, ``flip_sin_to_cos`` and ``max_period`` (their
  ``LocalTimesteps`` uses pi / num_train_timesteps when the config gives num_train_timesteps other than 1).
- Refused with what the file is and what to do: the LoRA-only ``pytorch_lora_weights.safetensors`` (no time layers),
  accelerate's pickles (never unpickled), a config that does not fit the weights, other diffusers models.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .architecture import channel_multiplier, config_from_state_dict
from .fileio import CheckpointError, read_state_dict

__all__ = ["AUTHORS_CLASS", "PLAIN_CLASS", "DiffusersADM", "is_diffusers_source", "weights_file", "read_diffusers"]

log = logging.getLogger(__name__)

AUTHORS_CLASS = "LocalUNet2DModel"
PLAIN_CLASS = "UNet2DModel"
CONFIG_NAME = "config.json"
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
LORA_ONLY_NAME = "pytorch_lora_weights.safetensors"
_PICKLES = re.compile(r"^(optimizer|scheduler|scaler)(_\d+)?\.(bin|pt|pkl)$|^random_states_\d+\.pkl$")
_OTHER_KINDS = {
    "UNet2DConditionModel": "a Stable Diffusion UNet (UNet2DConditionModel, latent space with text conditioning)",
    "AutoencoderKL": "a VAE (AutoencoderKL)", "VQModel": "a VAE (VQModel)",
    "AutoencoderTiny": "a VAE (AutoencoderTiny)",
    "UNet2DLocalConditionModel": "a conditional UNet", "Transformer2DModel": "a diffusion transformer",
}
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<name>[^.]+)\.weight$")


def _error(message: str) -> CheckpointError:
    return CheckpointError(message)


@dataclass
class DiffusersADM:
    """A diffusers ADM read as guided-diffusion: renamed (merged) tensors, the architecture, what it is."""

    state_dict: dict[str, Tensor]
    config: Any  # ADMConfig
    weights: Path  # the tensor file read
    is_rad: bool  # the authors' LocalUNet2DModel (RAD), not a plain converted base
    tau_convention: str
    lora_rank: int | None = None
    diffusers_config: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- what and where


def is_diffusers_source(path: str | os.PathLike) -> bool:
    """True for what this module reads or refuses: a folder, a diffusers weights / LoRA-only / accelerate file by
    name, or a ``.safetensors`` / ``.bin`` with a diffusers ``config.json`` beside it."""
    path = Path(path)
    if path.is_dir():
        return True
    if path.name in WEIGHT_NAMES or path.name == LORA_ONLY_NAME or _PICKLES.search(path.name):
        return True
    return path.suffix.lower() in (".safetensors", ".bin") and _is_diffusers_config(path.parent / CONFIG_NAME)


def _is_diffusers_config(path: Path) -> bool:
    try:
        data = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and ("_class_name" in data or "block_out_channels" in data)


def weights_file(path: str | os.PathLike, ema: bool = False) -> Path:
    """The tensor file behind a folder or file this module reads (refusals raise ``CheckpointError``)."""
    path = Path(path)
    if path.is_dir():
        return _weights_in_folder(path, ema)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    _refuse_by_name(path)
    if ema:
        raise _error(f"{path}: ema applies to an authors' checkpoint-N folder (its unet_ema/): pass the folder")
    return path


def _weights_in_folder(folder: Path, ema: bool) -> Path:
    sub = "unet_ema" if ema else "unet"
    if (folder / sub).is_dir():
        folder = folder / sub
    elif ema and folder.name != "unet_ema":
        raise _error(f"{folder} has no unet_ema/ (the run did not use --use_ema); its unet/ holds the trained "
                     "weights: drop the EMA choice")
    found = [folder / n for n in WEIGHT_NAMES if (folder / n).is_file()]
    if not found:
        extra = (f" It holds {LORA_ONLY_NAME}, which lacks the time layers: use the checkpoint-N folder it came from."
                 if (folder / LORA_ONLY_NAME).is_file() else "")
        raise _error(f"{folder} is not a diffusers model folder: no {' or '.join(WEIGHT_NAMES)} in it (an authors' "
                     f"checkpoint-N/ folder has unet/diffusion_pytorch_model.safetensors).{extra}")
    return found[0]


def _refuse_by_name(path: Path) -> None:
    if path.name == LORA_ONLY_NAME:
        unet = path.parent / "unet" / WEIGHT_NAMES[0]
        where = f" ({unet} is there)" if unet.is_file() else ""
        raise _error(f"{path.name} is the RAD authors' LoRA-only export: it has no time layers (trained in full), so "
                     f"the RAD model cannot be rebuilt from it. Use checkpoint-N/unet/{WEIGHT_NAMES[0]} or the "
                     f"checkpoint-N folder instead{where}")
    if _PICKLES.search(path.name):
        raise _error(f"{path.name} is an accelerate training-state pickle (optimizer, scheduler or random state), not "
                     "model weights; comfyui-rad never unpickles it. Use the checkpoint-N folder or its "
                     f"unet/{WEIGHT_NAMES[0]}")


# ------------------------------------------------------------------------------------------------------- reading


def _read_config(weights: Path) -> dict:
    cfg_path = weights.parent / CONFIG_NAME
    if not cfg_path.is_file():
        raise _error(f"{weights} is a diffusers model without its {CONFIG_NAME}: put the config.json that came with "
                     "it in the same folder")
    try:
        data = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _error(f"{cfg_path} is not valid JSON ({err}): restore the config.json that came with the model") \
            from None
    if not isinstance(data, dict):
        raise _error(f"{cfg_path} is not a diffusers model config (a JSON object): restore it")
    kind = data.get("_class_name")
    if kind in _OTHER_KINDS:
        raise _error(f"{weights.parent.name}/ holds {_OTHER_KINDS[kind]}, not a pixel-space ADM: comfyui-rad runs "
                     f"guided-diffusion ADMs ({AUTHORS_CLASS} / {PLAIN_CLASS}); load this with ComfyUI's own loaders")
    if kind not in (AUTHORS_CLASS, PLAIN_CLASS, None):
        raise _error(f"{cfg_path}: _class_name {kind!r} is not an ADM UNet ({AUTHORS_CLASS} or {PLAIN_CLASS}): "
                     "comfyui-rad cannot run it")
    _check_numbers(data, cfg_path)
    return data


_NUMBERS = {  # config.json field: (whole number?, lowest, highest); null allowed where diffusers allows it
    "layers_per_block": (True, 1, 64), "in_channels": (True, 1, 64), "out_channels": (True, 1, 128),
    "num_train_timesteps": (True, 1, 100_000), "norm_num_groups": (True, 1, 1024),
    "attn_norm_num_groups": (True, 1, 1024), "attention_head_dim": (True, 1, 8192), "sample_size": (True, 8, 8192),
    "norm_eps": (False, 1e-12, 0.1), "freq_shift": (False, 0, 4096),
}


def _number_ok(value: Any, whole: bool, lo: float, hi: float) -> bool:
    kind = numbers.Integral if whole else numbers.Real
    return (isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
            and lo <= value <= hi)


def _check_numbers(config: dict, cfg_path: Path) -> None:
    """Every number of a config.json that sizes the model or its tables: its type and range, before anything is
    built (a number written as a string, a 0 in block_out_channels, a negative norm_eps ...); one CheckpointError
    naming the file and the field."""
    def refuse(name: str, value: Any, want: str) -> CheckpointError:
        return _error(f"{cfg_path}: {name} is {value!r}: it must be {want}; restore the config.json that came with "
                      "the model")

    for name, (whole, lo, hi) in _NUMBERS.items():
        value = config.get(name)
        values = value if name == "sample_size" and isinstance(value, list) and value else [value]
        if value is not None and not all(_number_ok(v, whole, lo, hi) for v in values):
            raise refuse(name, value, f"{'a whole number' if whole else 'a number'} in [{lo:g}, {hi:g}]")
    boc = config.get("block_out_channels")
    if boc is not None and (not isinstance(boc, list) or not 1 <= len(boc) <= 16
                            or not all(_number_ok(c, True, 1, 65536) for c in boc)):
        raise refuse("block_out_channels", boc, "a list of 1 to 16 whole numbers in [1, 65536]")
    for name in ("flip_sin_to_cos", "center_input_sample", "attention_legacy_order"):
        if name in config and not isinstance(config[name], bool):
            raise refuse(name, config[name], "true or false")


def _split_lora(sd: dict[str, Tensor], source: str) -> tuple[dict[str, Tensor], dict[str, tuple[Tensor, Tensor]]]:
    """(plain tensors with ``.base_layer.`` removed, {module: (A, B)}); one peft adapter name at most."""
    plain, pairs, names = {}, {}, set()
    for key, t in sd.items():
        m = _LORA.match(key)
        if m:
            names.add(m["name"])
            pairs.setdefault(m["module"], {})[m["ab"]] = t
        elif key.endswith(".lora_A.weight") or key.endswith(".lora_B.weight") or ".lora_" in key:
            raise _error(f"{source}: {key} is a LoRA tensor in a layout comfyui-rad does not read (expected "
                         "<module>.lora_A.default.weight from peft)")
        else:
            plain[key.replace(".base_layer.", ".")] = t
    if len(names) > 1:
        raise _error(f"{source} holds several LoRA adapters ({', '.join(sorted(names))}); comfyui-rad merges one")
    broken = sorted(m for m, ab in pairs.items() if set(ab) != {"A", "B"} or m + ".weight" not in plain)
    if broken:
        raise _error(f"{source}: LoRA modules without lora_A, lora_B or their base weight: {', '.join(broken[:5])}: "
                     "the file is damaged")
    return plain, {m: (ab["A"], ab["B"]) for m, ab in pairs.items()}


def _merge_lora(plain: dict[str, Tensor], pairs: dict[str, tuple[Tensor, Tensor]], source: str) -> int | None:
    """W += B.flatten(1) @ A.flatten(1) (scale alpha / r = 1, as the authors set alpha = r), in float64, in place."""
    ranks = set()
    for module, (a, b) in pairs.items():
        w = plain[module + ".weight"]
        r = a.shape[0]
        if tuple(a.shape[1:]) != tuple(w.shape[1:]) or tuple(b.shape[:2]) != (w.shape[0], r) or b[0, 0].numel() != 1:
            raise _error(f"{source}: {module}: lora_A {list(a.shape)} / lora_B {list(b.shape)} do not fit its weight "
                         f"{list(w.shape)}: the file is damaged")
        ranks.add(r)
        delta = b.flatten(1).double() @ a.flatten(1).double()
        plain[module + ".weight"] = (w.double() + delta.reshape(w.shape)).to(w.dtype)
    return max(ranks) if ranks else None


_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_ATTN_OLD = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _rename(plain: dict[str, Tensor], nrb: int, attention_levels: set[int], levels: int,
            source: str) -> dict[str, Tensor]:
    """diffusers UNet2DModel names -> guided-diffusion UNetModel names (AUTHORS_FORMAT.md, 'Mapping')."""
    out, attn = {}, {}
    for key, t in plain.items():
        for old, new in _ATTN_OLD.items():
            key = re.sub(rf"(attentions\.\d+)\.{old}\.", rf"\1.{new}.", key)
        gd = _gd_name(key, nrb, attention_levels, levels)
        if gd is None:
            raise _error(f"{source}: {key} is not part of an ADM UNet in diffusers' layout: the file is another kind "
                         "of model or damaged")
        if re.search(r"\.to_[qkv]\.(weight|bias)$", gd):
            prefix, part, kind = gd.rsplit(".", 2)
            attn.setdefault((prefix, kind), {})[part] = t
            continue
        if re.search(r"(time_embed\.\d|emb_layers\.1)\.weight$", gd) and t.ndim == 4:
            t = t.reshape(t.shape[:2])  # 1x1 conv -> Linear: the same map
        elif re.search(r"(proj_out)\.weight$", gd) and t.ndim == 2:
            t = t[:, :, None]  # Linear -> 1x1 Conv1d
        out[gd] = t
    for (prefix, kind), parts in attn.items():
        if set(parts) != {"to_q", "to_k", "to_v"}:
            raise _error(f"{source}: attention {prefix} lacks {sorted({'to_q', 'to_k', 'to_v'} - set(parts))}")
        qkv = torch.cat([parts["to_q"], parts["to_k"], parts["to_v"]], dim=0)  # rows [q; k; v]
        out[f"{prefix}.qkv.{kind}"] = qkv[:, :, None] if kind == "weight" else qkv
    return out


def _gd_name(key: str, nrb: int, attention_levels: set[int], levels: int) -> str | None:
    fixed = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2",
             "class_embedding": "label_emb"}
    module, _, param = key.rpartition(".")
    if module in fixed:
        return f"{fixed[module]}.{param}"
    m = re.match(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$", key)
    if m:
        part, i, kind, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        if part == "down_blocks":
            block = f"input_blocks.{(i + 1) * (nrb + 1)}.0" if kind == "downsamplers" else \
                f"input_blocks.{1 + i * (nrb + 1) + j}.{int(kind == 'attentions')}"
        else:
            last = 2 if levels - 1 - i in attention_levels else 1
            block = f"output_blocks.{i * (nrb + 1) + nrb}.{last}" if kind == "upsamplers" else \
                f"output_blocks.{i * (nrb + 1) + j}.{int(kind == 'attentions')}"
        return _inner(block, kind, rest)
    m = re.match(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if m:
        index = {("resnets", "0"): 0, ("attentions", "0"): 1, ("resnets", "1"): 2}.get((m[1], m[2]))
        return None if index is None else _inner(f"middle_block.{index}", m[1], m[3])
    return None


def _inner(block: str, kind: str, rest: str) -> str | None:
    sub, _, param = rest.rpartition(".")
    if kind == "attentions":
        names = {"group_norm": "norm", "to_out.0": "proj_out", "to_q": "to_q", "to_k": "to_k", "to_v": "to_v"}
    elif kind in ("downsamplers", "upsamplers") and sub == "conv":
        return f"{block}.{'op' if kind == 'downsamplers' else 'conv'}.{param}"
    else:
        names = _RESNET
    return f"{block}.{names[sub]}.{param}" if sub in names else None


# ---------------------------------------------------------------------------------------------- the architecture


def _attention_levels(config: dict, levels: int) -> set[int]:
    down = config.get("down_block_types") or []
    return {i for i, name in enumerate(down) if "Attn" in str(name)} if len(down) == levels else set()


def _check_supported(config: dict, source: str) -> None:
    checks = [("time_embedding_type", config.get("time_embedding_type", "positional") in ("positional", "adm")),
              ("center_input_sample", not config.get("center_input_sample", False)),
              ("act_fn", config.get("act_fn", "silu") in ("silu", "swish")),
              ("mid_block_scale_factor", float(config.get("mid_block_scale_factor", 1) or 1) == 1.0),
              ("add_attention", config.get("add_attention", True) is not False),
              ("class_embed_type", config.get("class_embed_type") is None),
              ("resnet_time_scale_shift",
               config.get("resnet_time_scale_shift", "default") in ("default", "scale_shift")),
              ("downsample_padding", config.get("downsample_type", "conv") == "resnet"
               or config.get("downsample_padding", 1) == 1)]
    bad = [f"{name}={config.get(name)!r}" for name, ok in checks if not ok]
    if bad:
        raise _error(f"{source}: this diffusers UNet is not a guided-diffusion ADM ({', '.join(bad)}): comfyui-rad "
                     "cannot run it")


def _max_period(config: dict, authors: bool) -> float:
    """Their LocalTimesteps: pi / num_train_timesteps unless that is 1; diffusers' UNet2DModel: always 10000."""
    n = config.get("num_train_timesteps")
    if not authors or n in (None, 1):
        return 10000.0
    log.warning("config num_train_timesteps=%s: the authors' LocalTimesteps then embeds with max_period = pi / %s, "
                "and so does comfyui-rad", n, n)
    return math.pi / float(n)


def _config_for(sd: dict[str, Tensor], config: dict, authors: bool, source: str, overrides: dict):
    """The verified ADMConfig of renamed weights ``sd`` and their diffusers ``config``."""
    boc = [int(c) for c in config.get("block_out_channels") or []]
    nrb = config.get("layers_per_block")
    if not boc or not isinstance(nrb, int):
        raise _error(f"{source}: its {CONFIG_NAME} has no block_out_channels / layers_per_block: restore the "
                     "config.json that came with the model")
    # what each class's __init__ defaults to when a config leaves a key out (theirs: 1e-6 and 32 groups)
    defaults = {"norm_eps": 1e-6, "attn_norm_num_groups": 32} if authors else {"norm_eps": 1e-5}
    config = {**defaults, **config}
    head_dim = config.get("attention_head_dim")
    legacy = bool(config.get("attention_legacy_order", False)) and not authors
    groups = int(config.get("norm_num_groups") or 32)
    arch = {"num_res_blocks": nrb, "channel_mult": tuple(channel_multiplier(c, boc[0]) for c in boc),
            "num_head_channels": int(head_dim) if head_dim else -1, "num_heads": 1,
            "use_new_attention_order": not legacy, "image_size": int(_first(config.get("sample_size"), 256)),
            "norm_eps": float(config.get("norm_eps", 1e-5)), "norm_num_groups": groups,
            "attn_norm_num_groups": int(config.get("attn_norm_num_groups") or groups),
            "freq_shift": float(config.get("freq_shift", 0)),
            "flip_sin_to_cos": bool(config.get("flip_sin_to_cos", True)),
            "max_period": _max_period(config, authors)}
    arch.update(overrides)
    try:
        cfg = config_from_state_dict(sd, source=source, **arch)
    except CheckpointError as err:
        raise _error(f"{CONFIG_NAME} does not match the weights of {source}: {err}. Put the config.json that came "
                     "with these weights beside them") from None
    want = {"model_channels": boc[0], "in_channels": config.get("in_channels", cfg.in_channels),
            "out_channels": config.get("out_channels", cfg.out_channels),
            "attention_ds": tuple(2 ** i for i in sorted(_attention_levels(config, len(boc)))),
            "use_scale_shift_norm": config.get("resnet_time_scale_shift", "default") == "scale_shift"}
    if config.get("down_block_types"):
        want["resblock_updown"] = config.get("downsample_type", "conv") == "resnet" or any(
            "Resnet" in str(b) for b in config["down_block_types"])
    diffs = [f"{k}: config {v!r}, weights {getattr(cfg, k)!r}" for k, v in want.items() if getattr(cfg, k) != v]
    if diffs:
        raise _error(f"{CONFIG_NAME} does not match the weights of {source} ({'; '.join(diffs)}): put the config.json "
                     "that came with these weights beside them")
    return cfg


def _first(value, default):
    if isinstance(value, (list, tuple)):
        return value[0] if value else default
    return default if value is None else value


def _foreign_keys(keys: list[str]) -> str | None:
    if any(".transformer_blocks." in k or k.startswith("add_embedding.") for k in keys):
        return "a Stable Diffusion UNet (UNet2DConditionModel)"
    if any(k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")) for k in keys):
        return "a VAE"
    if any(k.startswith("unet.") and ".lora" in k for k in keys):
        return f"the RAD authors' LoRA-only export ({LORA_ONLY_NAME})"
    return None


def read_diffusers(path: str | os.PathLike, ema: bool = False, **overrides: Any) -> DiffusersADM:
    """Read an authors' checkpoint folder / diffusers weights file as a guided-diffusion state dict and config.

    ``overrides``: ADMConfig fields to force (rarely needed; the config.json decides). Raises ``CheckpointError``
    with what the file is and what to do for everything it does not read.
    """
    weights = weights_file(path, ema)
    source = f"{weights.parent.name}/{weights.name}"
    raw, _ = read_state_dict(weights)
    foreign = _foreign_keys(list(raw))
    if foreign:
        hint = (f" It lacks the time layers: use checkpoint-N/unet/{WEIGHT_NAMES[0]}." if "LoRA-only" in foreign
                else " Load it with ComfyUI's own loaders.")
        raise _error(f"{source} is {foreign}, not a pixel-space ADM.{hint}")
    config = _read_config(weights)
    _check_supported(config, source)
    plain, pairs = _split_lora(raw, source)
    rank = _merge_lora(plain, pairs, source)
    authors = config.get("_class_name") == AUTHORS_CLASS or bool(pairs)
    boc = config.get("block_out_channels") or []
    sd = _rename(plain, int(config.get("layers_per_block") or 0), _attention_levels(config, len(boc)), len(boc), source)
    cfg = _config_for(sd, config, authors, source, overrides)
    log.info("%s: %s, %s head order, GroupNorm eps %g%s", source,
             "the RAD authors' LocalUNet2DModel" if authors else "a diffusers UNet2DModel (plain ADM)",
             "standard" if cfg.use_new_attention_order else "legacy", cfg.norm_eps,
             f", LoRA rank {rank} merged" if rank else "")
    return DiffusersADM(state_dict=sd, config=cfg, weights=weights, is_rad=authors,
                        tau_convention="authors" if authors else "gd", lora_rank=rank, diffusers_config=config)
