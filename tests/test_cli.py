import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY, make_adm
from PIL import Image

from comfyui_rad.adapters import lora_target_modules, save_adapter
from comfyui_rad.adm import ADMConfig
from comfyui_rad.checkpoints import save_model
from comfyui_rad.cli import main
from comfyui_rad.fill import harmonic_fill


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model = make_adm(ADMConfig(**{**TINY.__dict__, "image_size": 32}))
    save_model(d / "tiny.safetensors", model)
    save_model(d / "base.safetensors", model)  # a stand-in base for the adapter below
    rng = np.random.RandomState(0)
    Image.fromarray((rng.rand(50, 70, 3) * 255).astype(np.uint8)).save(d / "in.png")
    mask = np.zeros((50, 70), np.uint8)
    mask[10:30, 20:45] = 255
    Image.fromarray(mask).save(d / "mask.png")
    Image.fromarray(np.zeros((50, 70), np.uint8)).save(d / "empty.png")
    Image.fromarray(np.full((50, 70), 255, np.uint8)).save(d / "full.png")
    g = torch.Generator().manual_seed(0)
    sd = model.state_dict()
    lora = {}
    for name in lora_target_modules(model)[:4]:
        w = sd[name + ".weight"]
        lora[name] = (torch.randn(4, *w.shape[1:], generator=g) * 0.1, torch.randn(w.shape[0], 4, *[1] * (w.dim() - 2), generator=g) * 0.1)
    save_adapter(d / "adapter.safetensors", lora=lora, full={}, base_path=d / "base.safetensors",
                 base_config=model.config, rank=4, alpha=4)
    return d


def run(d, *args):
    return main(["--model", str(d / "tiny.safetensors"), "--image", str(d / "in.png"), "--steps", "5", "-q", *args])


def pixels(path):
    return np.asarray(Image.open(path)).astype(int)


def test_inpaints_and_keeps_the_rest_bit_identical(files, capsys):
    out = files / "out.png"
    assert run(files, "--mask", str(files / "mask.png"), "-o", str(out)) == 0
    assert capsys.readouterr().out.strip() == str(out)
    a, b = pixels(files / "in.png"), pixels(out)
    hole = pixels(files / "mask.png") > 0
    assert b.shape == a.shape
    assert (a[~hole] == b[~hole]).all()
    assert np.abs(a[hole] - b[hole]).mean() > 5


def test_refuses_to_overwrite_without_force(files, capsys):
    out = files / "keep.png"
    out.write_bytes(b"precious")
    assert run(files, "--mask", "box", "-o", str(out)) == 2
    assert "keep.png already exists" in capsys.readouterr().err and out.read_bytes() == b"precious"
    assert run(files, "--mask", "box", "-o", str(out), "--force") == 0
    assert pixels(out).shape == (50, 70, 3)


@pytest.mark.parametrize("fit", ["crop", "resize", "pad"])
@pytest.mark.parametrize("mask", ["box", "wide", "perlin", "extreme"])
def test_generated_masks_and_fit_modes(files, fit, mask):
    out = files / f"{fit}_{mask}.png"
    saved = files / f"{fit}_{mask}_mask.png"
    assert run(files, "--mask", mask, "--fit", fit, "-o", str(out), "--save-mask", str(saved)) == 0
    hole = pixels(saved)[..., 0] > 0
    assert 0 < hole.mean() < 1
    assert (pixels(out)[~hole] == pixels(files / "in.png")[~hole]).all()


def test_seed_reproducible_and_samples(files):
    run(files, "--mask", "box", "-o", str(files / "s1.png"), "--seed", "3")
    run(files, "--mask", "box", "-o", str(files / "s2.png"), "--seed", "3")
    assert (pixels(files / "s1.png") == pixels(files / "s2.png")).all()
    assert run(files, "--mask", "box", "-o", str(files / "many.png"), "--samples", "2", "--sampler", "ddim") == 0
    a, b = pixels(files / "many_00000.png"), pixels(files / "many_00001.png")
    assert not (a == b).all()


def test_adapter_and_soft_mask(files):
    base, adapted = files / "base_out.png", files / "adapted_out.png"
    assert run(files, "--mask", str(files / "mask.png"), "-o", str(base)) == 0
    args = ["--mask", str(files / "mask.png"), "--adapter", str(files / "adapter.safetensors")]
    assert main(["--model", str(files / "base.safetensors"), "--image", str(files / "in.png"), "--steps", "5", "-q",
                 *args, "-o", str(adapted)]) == 0
    assert not (pixels(base) == pixels(adapted)).all()
    assert run(files, "--mask", str(files / "mask.png"), "--mask-mode", "soft", "-o", str(files / "soft.png")) == 0


def test_resample_keeps_the_rest_and_changes_the_hole(files):
    plain, resampled = files / "plain.png", files / "resampled.png"
    assert run(files, "--mask", str(files / "mask.png"), "-o", str(plain), "--sampler", "ddim") == 0
    assert run(files, "--mask", str(files / "mask.png"), "-o", str(resampled), "--sampler", "ddim",
               "--resample", "2", "--jump", "2") == 0
    a, b, c = pixels(files / "in.png"), pixels(plain), pixels(resampled)
    hole = pixels(files / "mask.png") > 0
    assert (a[~hole] == c[~hole]).all() and not (b[hole] == c[hole]).all()


def test_a_harmonic_start(files):
    plain, full, half, zero = (files / f"start_{n}.png" for n in ("plain", "full", "half", "zero"))
    mask = ["--mask", str(files / "mask.png"), "--sampler", "ddim"]
    assert run(files, *mask, "-o", str(plain)) == 0
    assert run(files, *mask, "-o", str(full), "--start", "harmonic", "--start-strength", "1") == 0
    assert run(files, *mask, "-o", str(half), "--start", "harmonic") == 0
    assert run(files, *mask, "-o", str(zero), "--start", "harmonic", "--start-strength", "0") == 0
    a, hole = pixels(files / "in.png"), pixels(files / "mask.png") > 0
    assert (pixels(full) == pixels(plain)).all()  # strength 1: RAD from noise, bit for bit
    for out in (half, zero):
        assert (pixels(out)[~hole] == a[~hole]).all()
    assert not (pixels(half)[hole] == pixels(zero)[hole]).all()
    filled = harmonic_fill(torch.from_numpy(a).float().permute(2, 0, 1)[None] / 255, torch.from_numpy(hole).float())
    expected = (filled[0].permute(1, 2, 0) * 255).round().numpy().astype(int)
    assert np.abs(pixels(zero) - expected).max() <= 1  # strength 0: the fill itself


@pytest.mark.parametrize("args,message", [
    (["--mask", "box", "--start", "harmonic", "--sampler", "repaint"], "--start harmonic works with RAD's samplers "
     "(--sampler ddim, ddpm, dpmpp_2m, dpmpp_2m_sde, euler_ancestral), not repaint (binary masks only): use --start "
     "noise or auto"),
    (["--mask", "box", "--start", "harmonic", "--start-strength", "1.5"], "argument --start-strength: 1.5 is out of "
                                                                          "range: give a number in [0, 1]"),
    (["--mask", "box", "--start", "telea"], "argument --start: invalid choice: 'telea'"),
    (["--mask", "{d}/full.png", "--start", "harmonic"], "--start harmonic fills the hole from the pixels around it, "
                                                        "but the mask covers the whole image: use --start noise"),
    (["--mask", "box", "--model", "missing.pt"], "--model file missing.pt does not exist"),
    (["--mask", "nothere.png"], "mask file nothere.png does not exist"),
    (["--mask", "{d}/empty.png"], "the mask is empty: nothing to inpaint"),
    (["--mask", "box", "--steps", "0"], "argument --steps: 0 is out of range: give a whole number in [1, 1000]"),
    (["--mask", "box", "--threshold", "1.5"], "argument --threshold: 1.5 is out of range: give a number in [0, 1)"),
    (["--mask", "box", "--samples", "0"], "argument --samples: 0 is out of range"),
    (["--mask", "box", "--resample", "-1"], "argument --resample: -1 is out of range: give a whole number in [0, 100]"),
    (["--mask", "box", "--resample", "1", "--jump", "5"], "--jump 5 must be below --steps 5 to jump back"),
    (["--mask", "box", "--resample", "1", "--jump", "0"], "argument --jump: 0 is out of range"),
    (["--mask", "box", "--resample", "1", "--sampler", "repaint"],
     "--resample works with RAD's samplers (--sampler ddim, ddpm, dpmpp_2m, dpmpp_2m_sde, euler_ancestral), "
     "not repaint"),
    (["--mask", "box", "--sampler", "repaint", "--steps", "10"], "--sampler repaint jumps back 10 steps: give --steps"),
])
def test_errors_are_one_line(files, capsys, args, message):
    args = [a.format(d=files) for a in args]
    try:
        code = run(files, *args, "-o", str(files / "never.png"))
    except SystemExit as exit_:  # argparse's type checks
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (files / "never.png").exists()


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "comfyui_rad", "--help"], capture_output=True, text=True, check=True)
    assert "rad-inpaint" in out.stdout and "--adapter" in out.stdout


def test_default_model_is_used_when_no_model_is_given(files, monkeypatch, capsys):
    monkeypatch.setattr("comfyui_rad.cli.DEFAULT_MODEL", files / "nothing_here.safetensors")
    args = ["--image", str(files / "in.png"), "--mask", "box", "--steps", "2", "-q"]
    assert main([*args, "-o", str(files / "no_default.png")]) == 2
    err = capsys.readouterr().err
    assert "no --model given and the built-in default model is not installed" in err and "nothing_here" in err
    monkeypatch.setattr("comfyui_rad.cli.DEFAULT_MODEL", files / "tiny.safetensors")  # stands in for the shipped one
    assert main([*args, "-o", str(files / "with_default.png")]) == 0
    assert run(files, "--mask", "box", "--steps", "2", "-o", str(files / "explicit.png")) == 0
    assert (pixels(files / "with_default.png") == pixels(files / "explicit.png")).all()


def test_outpaint_extends_the_canvas_and_keeps_the_picture(files, capsys):
    out = files / "wider.png"
    assert run(files, "--outpaint", "8,0,40,6", "-o", str(out), "--save-mask", str(files / "wider_mask.png")) == 0
    a, b = pixels(files / "in.png"), pixels(out)
    assert b.shape == (50 + 6, 70 + 48, 3)
    assert (b[:50, 8:78] == a).all()  # the original picture, bit for bit
    saved = pixels(files / "wider_mask.png")
    assert (saved[:50, 8:78] == 0).all() and (saved[:, 78:] == 255).all()
    assert np.abs(b[:, 78:] - np.repeat(b[:, 77:78], 40, axis=1)).mean() > 5  # new content, not the edge repeated


def test_outpaint_with_a_mask_inpaints_inside_too(files):
    out = files / "both.png"
    assert run(files, "--outpaint", "0,0,16,0", "--mask", str(files / "mask.png"), "-o", str(out)) == 0
    a, b = pixels(files / "in.png"), pixels(out)
    hole = pixels(files / "mask.png") > 0
    assert b.shape == (50, 86, 3) and (b[:, :70][~hole] == a[~hole]).all() and (b[:, :70][hole] != a[hole]).any()


@pytest.mark.parametrize("value, message", [
    ("10,20", "four whole numbers of pixels LEFT,TOP,RIGHT,BOTTOM, got '10,20'"),
    ("0,-8,0,0", "four whole numbers"),
    ("a,b,c,d", "four whole numbers"),
    ("0,0,0,0", "adds no pixel"),
    ("0,0,99999,0", "at most 16384 pixels per side"),
])
def test_bad_outpaint_values_are_explained(files, capsys, value, message):
    assert run(files, "--outpaint", value, "-o", str(files / "never.png")) == 2
    err = capsys.readouterr().err
    assert message in err and "--outpaint" in err
    assert not (files / "never.png").exists()


def test_a_mask_or_outpaint_is_required(files, capsys):
    assert run(files, "-o", str(files / "never.png")) == 2
    assert "give --mask" in capsys.readouterr().err


def test_tiles_fit_from_the_command_line(files, capsys):
    out = files / "tiles.png"
    assert run(files, "--mask", str(files / "mask.png"), "--fit", "tiles", "-o", str(out)) == 0
    a, b = pixels(files / "in.png"), pixels(out)
    hole = pixels(files / "mask.png") > 0
    assert (a[~hole] == b[~hole]).all() and np.abs(a[hole] - b[hole]).mean() > 5


def test_ddim_eta_defaults_to_1():
    """Issue 15's budget curve: DDIM-25 at eta 1 comes within a few tenths of a dB of DDPM-100, eta 0 does not."""
    from comfyui_rad.cli import build_parser

    args = build_parser().parse_args(["--image", "x.png", "--mask", "m.png", "-o", "o.png", "--sampler", "ddim"])
    assert args.eta == 1.0
    assert build_parser().parse_args(["--image", "x.png", "--mask", "m.png", "-o", "o.png", "--eta", "0"]).eta == 0


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde"])
def test_multistep_samplers_spacing_and_threads(files, sampler):
    """Issue 22: ComfyUI's sampler names, --spacing and --threads; the rest of the picture stays exact."""
    out = files / f"{sampler}.png"
    assert run(files, "--mask", str(files / "mask.png"), "--sampler", sampler, "--spacing", "karras",
               "--threads", "1", "--resample", "1", "--jump", "2", "-o", str(out)) == 0
    a, b = pixels(files / "in.png"), pixels(out)
    hole = pixels(files / "mask.png") > 0
    assert (a[~hole] == b[~hole]).all() and np.abs(a[hole] - b[hole]).mean() > 5


def test_spacing_is_for_rad_samplers(files, capsys):
    assert run(files, "--mask", "box", "--sampler", "replace", "--spacing", "lambda", "-o",
               str(files / "no.png")) == 2
    assert "--spacing lambda works with RAD's samplers, not replace" in capsys.readouterr().err
