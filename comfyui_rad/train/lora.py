"""LoRA on a guided-diffusion ADM through peft, and the trained tensors under the adapter file's key names.

peft is imported here only, and only when a LoRA run is asked for. Targets are ``adapters.lora_target_modules``
(RAD_NOTES §4); the time layers (``adapters.time_layer_keys``) are trained in full. Trainable tensors are named as
in an adapter file: ``<module>.lora_A.weight`` / ``<module>.lora_B.weight`` and plain ADM keys, so checkpoints and
exports never depend on peft's naming (and exporting needs no peft).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..adm import ADM
from ..adapters import lora_target_modules, time_layer_keys
from ..errors import MissingPackage, install_hint

__all__ = ["require_peft", "add_lora", "trainable_parameters"]

_PEFT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.default\.weight$")


def require_peft():
    """The peft package, or a MissingPackage (an ImportError) that says how to get it."""
    try:
        import peft
    except ImportError as err:
        raise MissingPackage(f"LoRA training (--base) needs peft, which is not installed: {install_hint('train')}  "
                             "(or: pip install peft)") from err
    return peft


def add_lora(model: ADM, rank: int, alpha: float, seed: int) -> list[str]:
    """Inject LoRA layers (rank, alpha; B = 0 so the model is unchanged) into ``model`` in place; returns the targets.

    peft draws A from torch's global RNG: done under a forked RNG seeded by ``seed``, so a run is reproducible and
    the caller's RNG untouched.
    """
    if rank < 1:
        raise ValueError(f"--lora-rank must be at least 1, got {rank}")
    peft = require_peft()
    targets = lora_target_modules(model)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=targets)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft.inject_adapter_in_model(config, model)
    wrapped = {m.group("module") for name, _ in model.named_parameters() if (m := _PEFT_KEY.match(name))}
    if wrapped != set(targets):
        raise RuntimeError(f"peft wrapped {sorted(wrapped ^ set(targets))[:5]} differently from the LoRA targets: "
                           f"this peft version ({peft.__version__}) is not supported")
    return targets


def trainable_parameters(model: nn.Module, lora: bool) -> dict[str, nn.Parameter]:
    """Adapter-file name -> parameter of what a run trains, with requires_grad set on exactly those.

    lora: LoRA A/B and the time layers (the rest frozen); otherwise every parameter of the model.
    """
    params = dict(model.named_parameters())
    if not lora:
        for p in params.values():
            p.requires_grad_(True)
        return params
    out = {}
    for name, p in params.items():
        m = _PEFT_KEY.match(name)
        p.requires_grad_(m is not None)
        if m:
            out[f"{m.group('module')}.lora_{m.group('ab')}.weight"] = p
    for key in time_layer_keys(model.state_dict()):
        p = params[key]
        p.data = p.data.clone()  # the base may be memory-mapped from its file: train a private copy
        p.requires_grad_(True)
        out[key] = p
    return out
