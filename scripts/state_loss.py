#!/usr/bin/env python
"""How well a model predicts the noise of RAD's training states, per phase: a check that an adapter has learned.

Draws RAD training states (the paper's Perlin masks and one step per image, ``train.noising.perlin_states``) for
held-out images, noises them, and reports each model's eps error: the MSE over the pixels that hold noise, averaged
per image, in Phase 1 (noise in the hole only, what inpainting samples) and Phase 2. Every model sees the same
states and noise. A plain ADM driven with RAD's per-pixel timesteps (Cfg. 1) does badly in Phase 1; a trained
adapter should not. Models given as ``BASE+ADAPTER`` load the adapter onto the base; a model trained with
``--embedding scalar`` (Cfg. 2) gets one timestep per image, as ``rad-inpaint`` drives it.

    python scripts/state_loss.py --images runs/digits/data/heldout --size 32 \\
        runs/digits/models/base.safetensors runs/digits/models/base.safetensors+runs/digits/models/rad.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from comfyui_rad.checkpoints import load_adm
from comfyui_rad.evaluate import load_images
from comfyui_rad.sampling import RADDenoiser
from comfyui_rad.train.losses import q_sample, step_terms
from comfyui_rad.train.noising import perlin_states


def load(spec: str) -> torch.nn.Module:
    base, _, adapter = spec.partition("+")
    return load_adm(base, adapter=adapter or None)


@torch.no_grad()
def state_errors(models: dict[str, torch.nn.Module], x0: torch.Tensor, draws: int, seed: int
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """Per model, the eps MSE over noised pixels of each (draw, image) [draws * N] (NaN for a state without
    noise), the steps t, and T1. Each model is driven as the samplers drive it (``RADDenoiser``: its own curves,
    tau convention and embedding)."""
    models = {name: RADDenoiser(model) for name, model in models.items()}
    curves = next(iter(models.values())).curves
    for name, model in models.items():
        if model.curves != curves:
            raise ValueError(f"{name} was trained with other noise curves than {next(iter(models))}: "
                             "compare models of one schedule")
    g = torch.Generator().manual_seed(seed)
    errors, steps = {name: [] for name in models}, []
    b, _, h, w = x0.shape
    for _ in range(draws):
        mask, t = perlin_states(b, h, w, curves, g)
        eps = torch.randn(x0.shape, generator=g)
        terms, abar = step_terms(curves, mask, t)
        x_t = q_sample(x0, eps, terms)
        noised = terms.noised.expand_as(eps)
        for name, model in models.items():
            pred, _ = model(x_t, abar)
            err = torch.where(noised, (pred - eps).square(), 0.0).sum((1, 2, 3))
            count = noised.sum((1, 2, 3))
            errors[name].append(torch.where(count > 0, err / count.clamp_min(1), torch.nan))  # NaN: no noise
        steps.append(t)
    return {k: torch.cat(v) for k, v in errors.items()}, torch.cat(steps), curves.T1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="model files, or BASE+ADAPTER")
    p.add_argument("--images", type=Path, required=True, help="folder of held-out images")
    p.add_argument("--size", type=int, required=True, help="the models' resolution")
    p.add_argument("--limit", type=int, default=64, help="images (default 64)")
    p.add_argument("--draws", type=int, default=4, help="states drawn per image (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, images = load_images(args.images, args.size, args.limit)
    models = {spec: load(spec) for spec in args.models}
    errors, t, t1 = state_errors(models, images * 2 - 1, args.draws, args.seed)
    print(f"eps MSE over noised pixels, {images.shape[0]} images x {args.draws} states "
          f"({int((t < t1).sum())} in Phase 1, {int((t >= t1).sum())} in Phase 2)\n")
    print("| model | all | Phase 1 | Phase 2 |\n|---|---|---|---|")
    for name, e in errors.items():
        label = " + ".join(Path(part).name for part in name.split("+"))
        print(f"| {label} | {e.nanmean():.4f} | {e[t < t1].nanmean():.4f} | {e[t >= t1].nanmean():.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
