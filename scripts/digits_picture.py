#!/usr/bin/env python
"""One picture of what RAD does when it is trained enough: digits from the budget curve's run.

Rows: held-out digits under the paper's box, extreme and wide masks (seed 0, as scored). Columns: masked input |
RAD (the budget run's adapter at ``--stage`` steps, DDPM-100) | RePaint 250/10/10 on the same base (2,410 calls) |
truth. Reads a finished ``scripts/budget_curve.py`` folder (its data split, base and stage export); computes only
the few digits it shows.

    python scripts/digits_picture.py --run /work/runs/budget --stage 12000 --out docs/digits_trained.png --force
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits_experiment as de  # noqa: E402

from comfyui_rad.checkpoints import load_adm  # noqa: E402
from comfyui_rad.evaluate import eval_masks, inpaint_set  # noqa: E402
from comfyui_rad.fileio import atomic_write  # noqa: E402

KINDS = ("box", "extreme", "wide")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a budget_curve.py --out folder")
    p.add_argument("--stage", type=int, required=True, help="adapter steps of the export to show, e.g. 4500")
    p.add_argument("--digits", type=int, default=3, help="digits per mask kind (default 3)")
    p.add_argument("--scale", type=int, default=3, help="pixel scale of the picture (default 3)")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--force", action="store_true", help="replace --out (default: off)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = de.prepare_data(args.run, de.Settings(), 0, reuse=True)
    base = args.run / "models" / "base.safetensors"
    rad = load_adm(base, adapter=args.run / "models" / f"rad-{args.stage:05d}.safetensors")
    plain = load_adm(base)
    rows = []
    for kind in KINDS:
        truth = data["held_x"][:32]
        mask = eval_masks(kind, 32, truth.shape[-1], 0)[: args.digits]
        truth = truth[: args.digits]
        ours, _ = inpaint_set(rad, truth, mask, sampler="ddpm", steps=100, seed=0)
        theirs, _ = inpaint_set(plain, truth, mask, sampler="repaint", steps=250,
                                options={"jump_length": 10, "jump_n_sample": 10}, seed=0)
        masked = truth * (1 - mask[:, None]) + 0.5 * mask[:, None]
        for i in range(args.digits):
            rows.append(torch.cat([masked[i], ours[i], theirs[i], truth[i]], dim=2))
    grid = torch.cat(rows, dim=1).clamp(0, 1)
    from PIL import Image

    img = Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
    img = img.resize((img.width * args.scale, img.height * args.scale), Image.NEAREST)
    atomic_write(args.out, lambda tmp: img.save(tmp, format="PNG"), force=args.force)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
