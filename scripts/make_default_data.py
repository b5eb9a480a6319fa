"""Export the CC0 / public-domain photos that scikit-image ships into a training folder and a held-out folder.

The default RAD model (comfyui_rad/weights/rad_default.safetensors) is trained on ``train/`` and shown on
``heldout/``, which it never sees. Needs ``pip install scikit-image`` (a development dependency, not the pack's).
``--crops N`` also writes ``heldout-crops/``: N seeded square crops of each held-out photo (side 40-100 % of its
short side, at a uniform random position, resized to 128x128), the photo set of the baseline comparison in
docs/EXPERIMENTS.md.

    python scripts/make_default_data.py /tmp/rad-data --crops 4
"""

import argparse
from pathlib import Path

import numpy as np
import skimage.data as data
from PIL import Image

# name: (loader, licence as stated in scikit-image's docstrings)
TRAIN = {
    "astronaut": (data.astronaut, "public domain (NASA)"),
    "rocket": (data.rocket, "public domain (SpaceX)"),
    "hubble_deep_field": (data.hubble_deep_field, "public domain (NASA)"),
    "immunohistochemistry": (data.immunohistochemistry, "no known copyright restrictions"),
    "retina": (data.retina, "CC0 1.0"),
    "brick": (data.brick, "CC0 (CC0Textures)"),
    "grass": (data.grass, "CC0 (CC0Textures)"),
    "gravel": (data.gravel, "CC0 (CC0Textures)"),
    "camera": (data.camera, "CC0, Lav Varshney"),
    "clock": (data.clock, "public domain, Stefan van der Walt"),
    "coins": (data.coins, "no known copyright restrictions"),
    # added for the second built-in model (issue 15); the licences as their docstrings state them
    "cell": (data.cell, "CC0 1.0, Paul Müller et al."),
    "microaneurysms": (data.microaneurysms, "CC0, Andreas Maier (HRF database)"),
    "text": (data.text, "public domain (Wikipedia, File:Corner.png)"),
    "horse": (data.horse, "CC0, Andreas Preuss (openclipart)"),
}
HELDOUT = {
    "coffee": (data.coffee, "CC0, Rachel Michetti"),
    "chelsea": (data.chelsea, "CC0, Stefan van der Walt"),
}


def export(images: dict, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, (load, licence) in images.items():
        pixels = np.asarray(load())
        if pixels.dtype == bool:  # the horse silhouette
            pixels = pixels.astype(np.uint8) * 255
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=2)
        Image.fromarray(pixels[..., :3].astype(np.uint8)).save(folder / f"{name}.png")
        lines.append(f"- {folder.name}/{name}.png ({pixels.shape[1]}x{pixels.shape[0]}): skimage.data.{load.__name__}, {licence}")
    return lines


def crops(folder: Path, out: Path, count: int, seed: int = 0, size: int = 128) -> list[str]:
    """``count`` square crops per image of ``folder`` (sorted), seeded; returns their descriptions."""
    rng = np.random.RandomState(seed)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as picture:
            picture = picture.convert("RGB")
        width, height = picture.size
        for k in range(count):
            side = int(round(min(width, height) * rng.uniform(0.4, 1.0)))
            left, top = int(rng.randint(0, width - side + 1)), int(rng.randint(0, height - side + 1))
            box = (left, top, left + side, top + side)
            picture.resize((size, size), Image.Resampling.BICUBIC, box=box).save(out / f"{path.stem}-{k}.png")
            lines.append(f"- {out.name}/{path.stem}-{k}.png: {folder.name}/{path.name} box {box}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--crops", type=int, default=0, help="also write N crops per held-out photo (heldout-crops/)")
    args = parser.parse_args()
    lines = export(TRAIN, args.out / "train") + export(HELDOUT, args.out / "heldout")
    if args.crops > 0:
        lines += crops(args.out / "heldout", args.out / "heldout-crops", args.crops)
    (args.out / "SOURCES.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
