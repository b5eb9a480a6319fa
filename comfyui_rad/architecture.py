"""Which ADM a state dict is: guided-diffusion ``UNetModel`` weights (or a comfyui-rad.model file) -> ``ADMConfig``.

- ``config_from_state_dict``: the ``ADMConfig`` a guided-diffusion ``UNetModel`` state dict was built with, read from
  key names and shapes and verified against ``ADM(cfg)`` built on the meta device (``adm_shapes``,
  ``verify_config``). The attention head layout is not in the weights: it defaults to 64 channels per head (every
  public ADM checkpoint) and is overridable (``check_overrides``: ``ADMConfig`` field names). A comfyui-rad.model
  file's stored architecture (``config_json`` / ``config_from_json``) is used instead of inference.
- ``check_config``: every number a file declares (metadata, config.json, key indices, shapes) has its type and a
  sane range, and the layout's cost (parameters, ``sampling_bytes`` at its window) is not absurd: checked before
  anything is built, one ``CheckpointError`` naming the file, the field, the value and the limit.
- ``foreign_kind``: what a file is when it is not an ADM (an adapter, a LoRA, a diffusers UNet, Stable Diffusion).
- ``channel_multiplier``: ADM's per-level multiplier for a channel count (fractions allowed); ``diffusers_format``
  uses it for diffusers' ``block_out_channels``.

Files are read elsewhere (``fileio``, ``diffusers_format``); this module sees tensor shapes and metadata only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from .adm import ADM, ADMConfig
from .checks import memory_limit
from .fileio import ADAPTER_FORMAT, MODEL_FORMAT, CheckpointError

__all__ = [
    "CONFIG_FIELDS", "HEAD_FIELDS", "MAX_PARAMETERS", "MAX_BLOCKS", "check_config", "sampling_bytes",
    "config_from_state_dict", "foreign_kind", "adm_shapes", "verify_config",
    "config_summary", "check_overrides", "overridden_fields", "channel_multiplier", "config_json", "config_from_json",
]

log = logging.getLogger(__name__)

CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(ADMConfig))
HEAD_FIELDS = ("num_heads", "num_head_channels", "num_heads_upsample", "use_new_attention_order")


def foreign_kind(sd: Mapping[str, Any], metadata: Mapping[str, str]) -> str | None:
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


# ------------------------------------------------------------------------------------- what a file may declare

MAX_PARAMETERS = 4_000_000_000
"""The most parameters a declared layout may have (16 GB in float32; the largest public ADM has 559 M)."""
MAX_BLOCKS = 256
"""The most input (or output) blocks: levels x (num_res_blocks + 1); public ADMs have 12 to 28."""

_INT, _REAL, _BOOL = "a whole number", "a number", "true or false"
_FIELDS: dict[str, tuple[str, float | None, float | None, tuple]] = {
    # field: (kind, lowest, highest, other values allowed)
    "model_channels": (_INT, 1, 8192, ()),
    "num_res_blocks": (_INT, 1, 64, ()),
    "in_channels": (_INT, 1, 64, ()),
    "out_channels": (_INT, 1, 128, ()),
    "num_classes": (_INT, 1, 1_000_000, (None,)),
    "num_heads": (_INT, 1, 4096, ()),
    "num_head_channels": (_INT, 1, 8192, (-1,)),
    "num_heads_upsample": (_INT, 1, 4096, (-1,)),
    "use_scale_shift_norm": (_BOOL, None, None, ()),
    "resblock_updown": (_BOOL, None, None, ()),
    "conv_resample": (_BOOL, None, None, ()),
    "use_new_attention_order": (_BOOL, None, None, ()),
    "image_size": (_INT, 8, 8192, ()),
    "norm_eps": (_REAL, 1e-12, 0.1, ()),
    "norm_num_groups": (_INT, 1, 1024, ()),
    "attn_norm_num_groups": (_INT, 1, 1024, (None,)),
    "freq_shift": (_REAL, 0, 4096, ()),
    "flip_sin_to_cos": (_BOOL, None, None, ()),
    "max_period": (_REAL, 1e-9, 1e9, ()),
}


def _field_ok(value: Any, kind: str, lo: float | None, hi: float | None, also: tuple) -> bool:
    if any(value is a or (a is not None and type(value) is type(a) and value == a) for a in also):
        return True
    if kind == _BOOL:
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, numbers.Real if kind == _REAL else numbers.Integral):
        return False
    return math.isfinite(value) and lo <= value <= hi


def _describe(kind: str, lo: float | None, hi: float | None, also: tuple) -> str:
    text = kind if kind == _BOOL else f"{kind} in [{lo:g}, {hi:g}]"
    return text + "".join(f" or {'null' if a is None else a}" for a in also)


def check_config(cfg: ADMConfig, source: str) -> ADMConfig:
    """``cfg`` when every field a file declared has its type and a sane range, the layout is consistent (heads
    divide channels, GroupNorm groups divide them) and its cost is not absurd (``MAX_PARAMETERS`` parameters, the
    activations of one sampling call at ``image_size`` within ``checks.memory_limit()``); else one
    ``CheckpointError`` naming ``source``, the field, the value and the limit. Checked before anything is built."""
    for name, (kind, lo, hi, also) in _FIELDS.items():
        value = getattr(cfg, name)
        if not _field_ok(value, kind, lo, hi, also):
            raise CheckpointError(f"{source}: architecture field {name} is {value!r}: it must be "
                                  f"{_describe(kind, lo, hi, also)}")
    mults, ds = cfg.channel_mult, cfg.attention_ds
    if not 1 <= len(mults) <= 16 or not all(_field_ok(m, _REAL, 1e-3, 256, ()) for m in mults) or any(
            int(m * cfg.model_channels) < 1 for m in mults):
        raise CheckpointError(f"{source}: architecture field channel_mult is {list(mults)!r}: it must be 1 to 16 "
                              "positive numbers (each level's channels / model_channels)")
    if not all(_field_ok(d, _INT, 1, 2 ** 16, ()) for d in ds):
        raise CheckpointError(f"{source}: architecture field attention_ds is {list(ds)!r}: it must be downsampling "
                              "factors 1, 2, 4, ...")
    if len(mults) * (cfg.num_res_blocks + 1) > MAX_BLOCKS:
        raise CheckpointError(f"{source}: {len(mults)} levels of num_res_blocks {cfg.num_res_blocks} make "
                              f"{len(mults) * (cfg.num_res_blocks + 1)} blocks, over the {MAX_BLOCKS} allowed")
    half = cfg.model_channels // 2
    if cfg.freq_shift >= half:
        raise CheckpointError(f"{source}: architecture field freq_shift is {cfg.freq_shift!r}: it must be below "
                              f"model_channels / 2 = {half} (the embedding divides by their difference)")
    try:
        shapes = adm_shapes(cfg)  # the meta device: no memory; heads and GroupNorm groups checked here
    except (ValueError, RuntimeError) as err:
        raise CheckpointError(f"{source}: the ADM layout {config_summary(cfg)} cannot be built: {err}") from None
    params = sum(math.prod(s) for s in shapes.values())
    if params > MAX_PARAMETERS:
        raise CheckpointError(f"{source}: the declared layout {config_summary(cfg)} has {params:,} parameters, over "
                              f"the {MAX_PARAMETERS:,} allowed: the file is damaged or not a model to run here")
    need, limit = sampling_bytes(cfg), memory_limit()
    if need > limit:
        raise CheckpointError(f"{source}: architecture field image_size is {cfg.image_size}: one sampling call at "
                              f"that window needs about {need / 2**30:,.1f} GiB of activations, over the "
                              f"{limit / 2**30:.1f} GiB allowed (a window of 256 or 512 pixels is what ADMs use)")
    return cfg


def sampling_bytes(cfg: ADMConfig, batch: int = 1) -> int:
    """About the peak activation memory (float32 bytes) of one network call on ``batch`` windows of
    ``cfg.image_size`` pixels: the skips kept for the decoder and a block's temporaries at the widest level
    (attention runs through ``scaled_dot_product_attention``, whose kernels do not hold tokens x tokens)."""
    skips = work = 0
    for level, mult in enumerate(cfg.channel_mult):
        channels, pixels = int(mult * cfg.model_channels), math.ceil(cfg.image_size / 2 ** level) ** 2
        skips += (cfg.num_res_blocks + 1) * channels * pixels
        work = max(work, 6 * channels * pixels)
    return 4 * batch * (skips + work)


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
def adm_shapes(cfg: ADMConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``ADM(cfg)``, built on the meta device (no memory, milliseconds)."""
    with torch.device("meta"):
        model = ADM(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _compare(cfg: ADMConfig, shapes: Mapping[str, tuple[int, ...]]) -> _Diff:
    # Keys and shapes do not depend on the head layout: compare with one that always builds.
    expected = adm_shapes(dataclasses.replace(cfg, num_heads=1, num_head_channels=-1, num_heads_upsample=-1))
    return _Diff(
        missing=[k for k in expected if k not in shapes],
        unexpected=[k for k in shapes if k not in expected],
        wrong=[f"{k} is {list(shapes[k])} in the file but {list(v)} in the model"
               for k, v in expected.items() if k in shapes and tuple(shapes[k]) != v],
    )


def verify_config(cfg: ADMConfig, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Raise unless the state dict has exactly ADM(cfg)'s keys and shapes, and the head layout builds."""
    try:
        diff = _compare(cfg, shapes)
    except (ValueError, RuntimeError) as err:
        raise CheckpointError(f"{source}: the ADM layout {config_summary(cfg)} cannot be built: {err}") from None
    if diff.size:
        raise CheckpointError(
            f"{source} does not match the ADM layout {config_summary(cfg)}: {diff.describe()}. The file is damaged or "
            "not a guided-diffusion UNetModel (or an override is wrong)"
        )
    try:
        adm_shapes(cfg)
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None


def config_summary(cfg: ADMConfig) -> str:
    """The layout fields that tell ADMs apart, for messages: "(model_channels=..., ..., attention_ds=...)"."""
    return (f"(model_channels={cfg.model_channels}, num_res_blocks={cfg.num_res_blocks}, "
            f"channel_mult={cfg.channel_mult}, attention_ds={cfg.attention_ds})")


def check_overrides(overrides: Mapping[str, Any]) -> None:
    """Raise TypeError for override names that are not ``ADMConfig`` fields (a misspelt keyword argument)."""
    unknown = sorted(set(overrides) - set(CONFIG_FIELDS))
    if unknown:
        raise TypeError(f"unknown ADM override(s) {', '.join(unknown)}: valid names are {', '.join(CONFIG_FIELDS)}")


def overridden_fields(overrides: Mapping[str, Any]) -> set[str]:
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
    check_overrides(overrides)
    reason = foreign_kind(state_dict, metadata)
    if reason:
        raise CheckpointError(f"{source}: {reason}")
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    if metadata.get("format") == MODEL_FORMAT and "architecture" in metadata:
        cfg = _with_overrides(config_from_json(metadata["architecture"], source), overrides)
    else:
        cfg = _infer(shapes, overrides, source)
    check_config(cfg, source)  # every declared number in range, the cost sane: before the layout is compared
    verify_config(cfg, shapes, source)
    return cfg


def _infer(shapes: Mapping[str, tuple[int, ...]], overrides: Mapping[str, Any], source: str) -> ADMConfig:
    """Try each (levels, num_res_blocks) with levels * (num_res_blocks + 1) blocks; keep the one that fits."""
    counts = {_block_count(shapes, "input_blocks", source), _block_count(shapes, "output_blocks", source)}
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
                    "to choose", source, "; ".join(config_summary(c) for c in exact), config_summary(exact[0]))
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


def _block_count(shapes: Mapping[str, Any], prefix: str, source: str = "state dict") -> int:
    """How many ``prefix`` blocks the keys hold: indices 0 .. n-1, each with a weight (a key index is a number a file
    supplies: ``input_blocks.1000000.0.weight`` alone is refused, not a million-block model)."""
    indices = {k.split(".")[1] for k in shapes if k.startswith(prefix + ".")}
    if not all(i.isdigit() for i in indices):
        raise CheckpointError(f"{source}: keys {prefix}.<index> with a non-numeric index: the file is damaged")
    numbers_ = {int(i) for i in indices}
    count = 1 + max(numbers_, default=-1)
    if count > MAX_BLOCKS or count > 2 * len(numbers_):  # gaps: only weightless (AvgPool) resamplers
        raise CheckpointError(f"{source}: its {prefix} keys go up to index {count - 1} but hold {len(numbers_)} "
                              f"block(s) (at most {MAX_BLOCKS}, numbered from 0): the file is damaged or crafted")
    return count


def _res_out(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> int | None:
    """Output channels of the ResBlock under ``prefix`` ('input_blocks.4.0.'), from whichever key is there."""
    for name in ("in_layers.2.weight", "out_layers.3.weight", "out_layers.0.weight", "in_layers.2.bias",
                 "out_layers.3.bias", "out_layers.0.bias"):
        if prefix + name in shapes:
            return shapes[prefix + name][0]
    return None


def channel_multiplier(channels: int, model_channels: int) -> float:
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
        mults.append(channel_multiplier(out, mc))
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


def config_json(cfg: ADMConfig) -> str:
    """``cfg`` as the JSON a comfyui-rad file stores it under ``architecture`` / ``base_architecture``."""
    return json.dumps(cfg.to_dict(), sort_keys=True)


def config_from_json(text: str | Mapping[str, Any], source: str) -> ADMConfig:
    """The ``ADMConfig`` a file stores (``config_json``'s text, or its parsed dict); fields a newer comfyui-rad added
    are ignored with a warning. ``source`` names the file in errors (``CheckpointError``)."""
    try:
        data = dict(json.loads(text) if isinstance(text, str) else text)
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: its stored architecture is not valid JSON ({err})") from None
    unknown = sorted(set(data) - set(CONFIG_FIELDS))
    if unknown:
        log.warning("%s: ignoring unknown architecture fields %s (made by a newer comfyui-rad?)", source, unknown)
    known = {k: v for k, v in data.items() if k in CONFIG_FIELDS}
    for name in ("channel_mult", "attention_ds"):
        if name in known and not isinstance(known[name], (list, tuple)):
            raise CheckpointError(f"{source}: architecture field {name} is {known[name]!r}: it must be a list")
    try:
        cfg = ADMConfig(**known)
    except TypeError as err:
        raise CheckpointError(f"{source}: its stored architecture is incomplete ({err})") from None
    return check_config(cfg, source)
