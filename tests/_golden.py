"""Shared helpers for the guided-diffusion golden-value fixtures.

Used by both ``scripts/make_golden_adm.py`` (which computes the reference
outputs with an external guided-diffusion checkout) and
``tests/test_adm_golden.py`` (which checks our ADM UNet against them), so that
both sides build bit-identical weights from nothing but the stored key shapes
and a seed.
"""

from __future__ import annotations

import math

import torch


def random_state_dict(shapes: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        w = torch.randn(shape, generator=g, dtype=torch.float64)
        if len(shape) >= 2:            # conv / linear / embedding weights
            w = w / math.sqrt(math.prod(shape[1:]))
        elif key.endswith("weight"):   # GroupNorm scale
            w = 1.0 + 0.1 * w
        else:                          # biases
            w = 0.1 * w
        out[key] = w.float()
    return out


def weights_checksum(state_dict: dict) -> str:
    """A float64 sum of |w| over all tensors, as a repr string.

    Stored in the fixtures so a change in torch's CPU generator (which would
    silently change every weight) is reported as such, not as a model bug.
    """
    total = 0.0
    for key in sorted(state_dict):
        total += float(state_dict[key].double().abs().sum())
    return repr(total)
