"""Fresh-model presets for ``rad-train --preset`` (the paper's plain formulation: every parameter trained).

Each preset is an ``ADMConfig`` with guided-diffusion's ADM choices (scale-shift norm, ResBlock up/down, learned
sigma, legacy attention head order), so a trained model is an ordinary ADM that ``load_adm`` reads back.

| preset   | size | channels | res blocks | channel_mult    | attention at | params | fp16 file |
|----------|------|----------|------------|-----------------|--------------|--------|-----------|
| tiny     | 16   | 32       | 1          | (1, 2)          | 8x8          | 0.83 M | 1.7 MB    |
| digits32 | 32   | 32       | 1          | (1, 2, 2)       | 8            | 1.37 M | 2.7 MB    |
| micro64  | 64   | 32       | 1          | (1, 2, 2, 2)    | 8            | ~2 M   | ~4 MB     |
| small64  | 64   | 64       | 1          | (1, 2, 2, 2)    | 16, 8        | 7.83 M | 15.7 MB   |
| small128 | 128  | 64       | 1          | (1, 1, 2, 2, 4) | 16, 8        | 15.6 M | 31 MB     |
| adm256   | 256  | 256      | 2          | (1,1,2,2,4,4)   | 32, 16, 8    | 553 M  | 1.1 GB    |

``digits32`` is a small 32x32 layout (0.61 GFLOP per image and forward pass) for the CPU experiment on
scikit-learn's digits (``scripts/digits_experiment.py``). ``micro64`` is small64 at half the width with attention
only at 8x8: a quarter of its cost per step, what a CPU trains in an hour (the built-in default model). ``small64`` is the default small model for GPU training: one ResBlock per level (not two) keeps it under 10 M parameters, so it
trains on a CPU and ships under 20 MB in fp16/bf16; 32 channels per attention head. ``adm256`` is guided-diffusion's
``256x256_diffusion_uncond`` layout (the checkpoints of RAD_NOTES §5), for training from scratch on a GPU.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..adm import ADM, ADMConfig, AttentionBlock, ResBlock

__all__ = ["PRESETS", "preset_config", "build_fresh"]

PRESETS: dict[str, ADMConfig] = {
    "tiny": ADMConfig(model_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_ds=(2,),
                      num_head_channels=16, image_size=16),
    "digits32": ADMConfig(model_channels=32, num_res_blocks=1, channel_mult=(1, 2, 2), attention_ds=(4,),
                          num_head_channels=32, image_size=32),
    "micro64": ADMConfig(model_channels=32, num_res_blocks=1, channel_mult=(1, 2, 2, 2), attention_ds=(8,),
                         num_head_channels=32, image_size=64),
    "small64": ADMConfig(model_channels=64, num_res_blocks=1, channel_mult=(1, 2, 2, 2), attention_ds=(4, 8),
                         num_head_channels=32, image_size=64),
    "small128": ADMConfig(model_channels=64, num_res_blocks=1, channel_mult=(1, 1, 2, 2, 4), attention_ds=(8, 16),
                          num_head_channels=32, image_size=128),
    "adm256": ADMConfig(model_channels=256, num_res_blocks=2, channel_mult=(1, 1, 2, 2, 4, 4),
                        attention_ds=(8, 16, 32), num_head_channels=64, image_size=256),
}


def preset_config(name: str, resolution: int | None = None, learn_sigma: bool = True) -> ADMConfig:
    """The ``ADMConfig`` of preset ``name``; ``resolution`` overrides its image size, ``learn_sigma`` its outputs."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    return dataclasses.replace(cfg, image_size=resolution or cfg.image_size, out_channels=6 if learn_sigma else 3)


def _zero(module: nn.Module) -> None:
    for p in module.parameters():
        nn.init.zeros_(p)


def build_fresh(cfg: ADMConfig, seed: int) -> ADM:
    """A new ADM initialised as guided-diffusion does: torch's default init (seeded by ``seed``, without touching
    the global RNG) with the last conv of every ResBlock, every attention ``proj_out`` and the output conv zeroed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ADM(cfg)
    for module in model.modules():
        if isinstance(module, ResBlock):
            _zero(module.out_layers[-1])
        elif isinstance(module, AttentionBlock):
            _zero(module.proj_out)
    _zero(model.out[-1])
    return model
