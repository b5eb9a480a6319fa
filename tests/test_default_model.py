"""The built-in default model (comfyui_rad/weights/rad_default.safetensors): it ships, loads as a RAD model of the
documented layout, is small, runs without --model from the CLI, and is trained (a random model fails the fill test).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from comfyui_rad import cli, load_adm
from comfyui_rad.checkpoints import DEFAULT_MODEL
from comfyui_rad.fileio import read_state_dict
from comfyui_rad.imaging import load_image, save_image
from comfyui_rad.masks import box_mask
from comfyui_rad.pipeline import inpaint
from comfyui_rad.train.presets import build_fresh, preset_config

CARD = DEFAULT_MODEL.with_suffix(".md")


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_adm(DEFAULT_MODEL)


def test_ships_small_with_its_card_and_recipe():
    assert DEFAULT_MODEL.is_file(), "the built-in model must ship inside the package"
    assert DEFAULT_MODEL.stat().st_size <= 20 * 2**20
    assert CARD.is_file()
    _, meta = read_state_dict(DEFAULT_MODEL)
    options = json.loads(meta["train_options"])
    assert (meta["format"], meta["trainer"], options["preset"]) == ("comfyui-rad.model", "rad-train", "micro64")
    assert f"--steps {meta['train_steps']}" in CARD.read_text()  # the card's command is the one the file records


def test_the_card_names_this_file():
    """The card's sha256 is the shipped file's: a retrained model cannot ship with the old card."""
    import hashlib

    digest = hashlib.sha256(DEFAULT_MODEL.read_bytes()).hexdigest()
    assert f"| sha256 | `{digest}` |" in CARD.read_text()


def test_records_its_recommended_start_and_ships_version_3s_tensors(model):
    """Issue 21: the file records the start it is best used with (the card's "The start it is best used with");
    its tensors are version 3's (palette-augmented training, the card)."""
    from comfyui_rad.fileio import file_weights_sha256

    assert (model.rad_info.start, model.rad_info.start_strength) == ("harmonic", 0.05)
    assert file_weights_sha256(DEFAULT_MODEL) == "ce587d9ed67d5784fe9eb8014f0e171b3e6bf2f50d64039d9bde537ea63054a7"
    image, mask = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4)), box_mask(1, 64, 64, center=True)
    auto, _ = inpaint(model, image, mask, steps=3, seed=1)
    assert torch.equal(auto, inpaint(model, image, mask, steps=3, seed=1, start="harmonic", start_strength=0.05)[0])


def test_is_the_micro64_rad_model(model):
    assert model.config == preset_config("micro64")
    assert model.rad_info.is_rad and model.rad_info.tau_convention == "gd"
    assert all(torch.isfinite(p).all() for p in model.parameters())


def flat_picture(color, size=64):
    return torch.tensor(color).view(1, 3, 1, 1).expand(1, 3, size, size).clone()


@pytest.mark.parametrize("color", [(0.8, 0.3, 0.2), (0.2, 0.4, 0.7)])
def test_fills_a_flat_picture_with_its_colour(model, color):
    """A trained inpainter continues a flat colour into the hole; random weights give noise far from it."""
    image, mask = flat_picture(color), box_mask(1, 64, 64, center=True)
    out, _ = inpaint(model, image, mask, steps=25, sampler="ddim", seed=0, start="noise")  # the model, not the fill
    hole = out[0][:, mask[0] > 0]
    assert (hole.mean(dim=1) - torch.tensor(color)).abs().max() < 0.15  # measured: 0.11 at most (red), 0.09 (blue)
    assert hole.std(dim=1).max() < 0.1  # measured: 0.07 at most
    assert torch.equal(out[0][:, mask[0] == 0], image[0][:, mask[0] == 0])  # the kept pixels, bit for bit

    untrained = build_fresh(preset_config("micro64"), seed=0).eval()
    untrained.rad_info = model.rad_info
    for p in untrained.out[-1].parameters():  # guided-diffusion zeroes the last conv: give it random weights
        torch.nn.init.normal_(p, std=0.1)
    random_out, _ = inpaint(untrained, image, mask, steps=25, sampler="ddim", seed=0, start="noise")
    random_hole = random_out[0][:, mask[0] > 0]
    assert random_hole.std(dim=1).max() > 0.3  # the same test fails random weights (measured: std 0.47)


def test_seeded_and_deterministic(model):
    g = torch.Generator().manual_seed(3)
    image, mask = torch.rand(1, 3, 64, 64, generator=g), box_mask(1, 64, 64, center=True)
    a, _ = inpaint(model, image, mask, steps=10, seed=1)
    b, _ = inpaint(model, image, mask, steps=10, seed=1)
    c, _ = inpaint(model, image, mask, steps=10, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cli_uses_it_without_model(tmp_path):
    picture = torch.linspace(0, 1, 48 * 80).view(1, 1, 48, 80).expand(1, 3, -1, -1).clone()
    save_image(picture, tmp_path / "in.png")
    out = tmp_path / "out.png"
    assert cli.main(["--image", str(tmp_path / "in.png"), "--mask", "box", "--steps", "5", "-o", str(out), "-q"]) == 0
    result = load_image(out)
    assert result.shape == (1, 3, 48, 80)
    kept = box_mask(1, 48, 80, center=True)[0] == 0
    assert torch.equal(result[0][:, kept], load_image(tmp_path / "in.png")[0][:, kept])
    assert not math.isclose(float((result - load_image(tmp_path / "in.png")).abs().sum()), 0.0)
