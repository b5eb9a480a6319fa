#!/usr/bin/env python
"""Why deterministic DDIM (eta 0) trails DDPM on the digits: a defect in the sampler, or the model's error?

Issue 15 asks. Two parts:

1. **An exact model.** Data whose score is known in closed form: every pixel independent, x0 ~ N(mu, s^2). The
   exact eps predictor of x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, per pixel at its own level abar, is
   E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar) (``GaussianOracle``, which reads the
   levels back from the per-pixel timestep map the samplers give any network). With it every correct sampler must
   end with the hole at mean mu and spread s, at eta 0 as at eta 1 and DDPM: a sampler defect shows here.
   Then the same oracle with a small error (its eps scaled by 1 - ``--error``, a model that under-predicts the
   noise, as an undertrained one does): the deterministic path carries the error to the end (a too-wide spread),
   while the noise of eta 1 / DDPM re-draws part of it at every step.
2. **The digits model** (``--budget FOLDER`` of ``scripts/budget_curve.py``, ``--stage`` N): hole PSNR and the
   hole's statistics (mean, spread, share of pixels at the range's ends) against the truth, for DDIM-25 at eta 0,
   0.5 and 1, and eta 0 at 100 and 250 steps (more steps: less discretisation error, the same model error).

    python scripts/ddim_check.py                                          # part 1 only, seconds
    python scripts/ddim_check.py --budget /work/runs/budget --stage 700   # and part 2, minutes on a CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from comfyui_rad.masks import box_mask
from comfyui_rad.sampling import SamplerSpec, sample
from comfyui_rad.schedule import NoiseCurves, RADInfo, SpatialSchedule

SAMPLERS = {
    "DDPM-100": SamplerSpec.create("ddpm", steps=100),
    "DDPM-25": SamplerSpec.create("ddpm", steps=25),
    "DDIM-25 eta 0": SamplerSpec.create("ddim", steps=25, eta=0.0),
    "DDIM-25 eta 0.5": SamplerSpec.create("ddim", steps=25, eta=0.5),
    "DDIM-25 eta 1": SamplerSpec.create("ddim", steps=25, eta=1.0),
    "DDIM-100 eta 0": SamplerSpec.create("ddim", steps=100, eta=0.0),
    "DDPM-250": SamplerSpec.create("ddpm", steps=250),
    "DDIM-250 eta 0": SamplerSpec.create("ddim", steps=250, eta=0.0),
    "DDIM-250 eta 1": SamplerSpec.create("ddim", steps=250, eta=1.0),
}
"""Part 1's samplers; part 2 runs the 25-step ones and DDIM eta 0 at 100 and 250 steps."""


class GaussianOracle(nn.Module):
    """The exact eps predictor for pixels drawn independently from N(mu, s^2), at per-pixel noise levels.

    A network as the samplers drive any ADM: ``forward(x, timesteps)`` with the per-pixel timestep map
    (``NoiseCurves.timestep``, convention "gd"), eps out (3 channels: no learned variance). ``scale`` multiplies the
    prediction (1 = exact; below 1 an under-predicting model)."""

    def __init__(self, mu: float = 0.0, s: float = 0.3, scale: float = 1.0, curves: NoiseCurves | None = None):
        super().__init__()
        self.mu, self.s, self.scale = mu, s, scale
        self.rad_info = RADInfo(curves or NoiseCurves(), "gd", "spatial", is_rad=True)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y=None) -> torch.Tensor:
        abar = self.rad_info.curves.abar_from_timestep(timesteps).clamp(0, 1).expand(x.shape[0], 1, *x.shape[-2:])
        x = x.double()
        eps = (1 - abar).sqrt() * (x - abar.sqrt() * self.mu) / (abar * self.s**2 + 1 - abar)
        return (self.scale * eps).float()


def hole_stats(result: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean, spread and share of pixels at |x| >= 0.99 over the hole (mask [.., H, W] == 1) of [B,3,H,W] in [-1,1]."""
    hole = result.permute(1, 0, 2, 3)[:, (mask >= 1).expand(result.shape[0], *result.shape[-2:])]
    return {"mean": hole.mean().item(), "std": hole.std().item(), "ends": (hole.abs() >= 0.99).float().mean().item()}


def oracle_part(size: int = 32, batch: int = 8, mu: float = 0.0, s: float = 0.3, error: float = 0.05,
                seed: int = 0) -> list[dict]:
    """Part 1: every sampler on the exact oracle and on one with ``error``; known region = a sample of the data."""
    g = torch.Generator().manual_seed(seed)
    image = (mu + s * torch.randn(batch, 3, size, size, generator=g)).clamp(-1, 1)
    mask = box_mask(1, size, size, center=True)[0]
    rows = []
    for scale in (1.0, 1.0 - error):
        model = GaussianOracle(mu, s, scale)
        for name, spec in SAMPLERS.items():
            out = sample(spec, model, image, SpatialSchedule(mask), torch.Generator().manual_seed(seed + 1))
            assert torch.equal(out[:, :, mask < 1], image[:, :, mask < 1])  # kept pixels exact
            rows.append({"model": "exact" if scale == 1 else f"eps x {scale:g}", "sampler": name,
                         **hole_stats(out, mask)})
    return rows


def digits_part(budget: Path, stage: int, threads: int, seed: int = 0) -> list[dict]:
    """Part 2: the budget curve's base + RAD adapter at ``stage`` on its 32 held-out digits (seed ``seed``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import budget_curve as bc  # noqa: PLC0415 (a sibling script, only for this part)
    import digits_experiment as de  # noqa: PLC0415

    from comfyui_rad.checkpoints import load_adm
    from comfyui_rad.evaluate import eval_masks, inpaint_set

    torch.set_num_threads(threads)
    b = bc.Budget()
    data = de.prepare_data(budget, b.digits, 0, reuse=True)
    truth = data["held_x"][:b.eval_images]
    model = load_adm(budget / "models" / "base.safetensors", adapter=bc.stage_file(budget, "rad", stage))
    runs = {k: v for k, v in SAMPLERS.items() if k in ("DDPM-100", "DDPM-25", "DDIM-100 eta 0", "DDIM-250 eta 0")
            or k.startswith("DDIM-25 ")}
    rows = []
    for kind in bc.MASK_KINDS:
        mask = eval_masks(kind, truth.shape[0], bc.SIZE, seed)  # [N,H,W]
        hole = mask[:, None].expand_as(truth) >= 1
        rows.append({"kind": kind, "sampler": "truth", **hole_stats(truth * 2 - 1, mask)})
        for name, spec in runs.items():
            tick = time.perf_counter()
            results, _ = inpaint_set(model, truth, mask, spec=spec, seed=seed, batch_size=b.digits.eval_batch)
            mse = ((results - truth)[hole] ** 2).mean().item()  # pooled over every digit's hole (see the docs)
            rows.append({"kind": kind, "sampler": name, "hole_psnr": 10 * torch.log10(torch.tensor(1 / mse)).item(),
                         **hole_stats(results * 2 - 1, mask), "seconds": time.perf_counter() - tick})
            print(f"  {kind:8s} {name:16s} hole PSNR {rows[-1]['hole_psnr']:.2f}", file=sys.stderr)
    return rows


def table(rows: list[dict], keys: list[str]) -> str:
    head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    cell = (lambda v: f"{v:.3f}" if isinstance(v, float) else str(v))
    return head + "".join("| " + " | ".join(cell(r.get(k, "-")) for k in keys) + " |\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--error", type=float, default=0.05, help="relative eps error of the imperfect oracle (0.05)")
    p.add_argument("--budget", type=Path, help="a budget_curve.py --out folder: also run part 2 on its digits")
    p.add_argument("--stage", type=int, default=700, help="the adapter stage of part 2 (700)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, help="also write every number here")
    args = p.parse_args(argv)
    if not 0 <= args.error < 1:
        print(f"--error must be in [0, 1), got {args.error}", file=sys.stderr)
        return 2
    oracle = oracle_part(error=args.error)
    print("## Part 1: an exact model (pixels ~ N(0, 0.3^2)); hole statistics, truth: mean 0, std 0.300\n")
    print(table(oracle, ["model", "sampler", "mean", "std", "ends"]))
    out = {"oracle": oracle}
    if args.budget is not None:
        out["digits"] = digits_part(args.budget, args.stage, args.threads)
        print(f"## Part 2: the digits RAD adapter at {args.stage} steps, 32 held-out digits, seed 0\n")
        print(table(out["digits"], ["kind", "sampler", "hole_psnr", "mean", "std", "ends"]))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
