"""Hostile and careless input through rad-inpaint, rad-train, rad-eval and the Python API (issue 11).

One test (or one parametrised table) per class: each asserts the one-line error (exit status 2, no traceback), the
warning, or the refusal with the user's files untouched. The CLIs run in-process through main(argv); a few cases
run as subprocesses (Ctrl-C, a traceback check).
"""

import dataclasses
import math
import os
import pickle
import signal
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, make_adm, one_line_error
from PIL import Image
from safetensors.torch import save_file

from comfyui_rad import checks, evaluate, image_folders, imaging
from comfyui_rad.checkpoints import load_adm, save_model
from comfyui_rad.cli import main as inpaint_main
from comfyui_rad.fileio import CheckpointError, read_state_dict
from comfyui_rad.masks import perlin_mask
from comfyui_rad.pipeline import inpaint
from comfyui_rad.sampling import FINITE_CHECK_EVERY, NonFiniteOutput, sample_ddpm
from comfyui_rad.schedule import SpatialSchedule
from comfyui_rad.train import cli as train_cli
from comfyui_rad.train.data import split_holdout
from comfyui_rad.train.loop import Trainer, TrainOptions
from comfyui_rad.train.options import CLI

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dataclasses.replace(TINY, image_size=32)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    model = make_adm(SMALL)
    save_model(d / "tiny.safetensors", model)
    broken = make_adm(SMALL)
    with torch.no_grad():
        broken.out[-1].weight.fill_(float("nan"))  # NaN weights: every output NaN
    save_model(d / "nan.safetensors", broken)
    torch.save(make_adm(TINY).state_dict(), d / "base.pt")
    nan_base = make_adm(TINY).state_dict()
    nan_base["out.2.weight"] = torch.full_like(nan_base["out.2.weight"], float("nan"))
    torch.save(nan_base, d / "nan_base.pt")
    rng = np.random.RandomState(0)
    Image.fromarray((rng.rand(40, 40, 3) * 255).astype(np.uint8)).save(d / "in.png")
    Image.fromarray((rng.rand(40, 40, 3) * 255).astype(np.uint8)).save(d / "photo.jpg", quality=90)
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 12:28] = 255
    Image.fromarray(mask).save(d / "mask.png")
    Image.fromarray(mask).save(d / "mask.jpg", quality=75)  # a painted mask, JPEG'd: must not look like a photo
    Image.fromarray(mask[:, :20]).save(d / "narrow.png")
    (d / "data").mkdir()
    for i in range(5):
        Image.fromarray((rng.rand(20, 20 + i, 3) * 255).astype(np.uint8)).save(d / "data" / f"img{i}.png")
    return d


def inpaint_cli(d, *args):
    return inpaint_main(["--model", str(d / "tiny.safetensors"), "--image", str(d / "in.png"), "--steps", "3", "-q",
                         *args])


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def leftovers(folder: Path) -> list[str]:
    """Temporary files an atomic write would leave behind."""
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------------------ readers


def test_16bit_images_and_masks_are_read_at_their_scale(files, tmp_path, capsys):
    gray = np.full((24, 24), 30000, np.uint16)
    Image.fromarray(gray).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    image = imaging.load_image(tmp_path / "gray16.png")
    assert image.shape == (1, 3, 24, 24)
    assert torch.allclose(image, torch.full_like(image, 30000 / 65535))  # not clipped to white
    crop = image_folders.load_crop(tmp_path / "gray16.png", 8)  # training and evaluation images
    assert int(crop.min()) == int(crop.max()) == round(30000 / 65535 * 255)
    Image.fromarray(np.full((40, 40), 200, np.uint16)).save(tmp_path / "mask16.png")
    assert float(imaging.load_mask(tmp_path / "mask16.png").max()) == pytest.approx(200 / 65535)
    out = tmp_path / "out.png"  # 200/65535 is black: nothing to inpaint (it was read as 0.78 and inpainted)
    assert inpaint_cli(files, "--mask", str(tmp_path / "mask16.png"), "-o", str(out)) == 2
    one_line_error(capsys, "rad-inpaint", "the mask is empty")
    assert not out.exists()


def png_rgb48(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit-per-channel RGB PNG (colour type 2, depth 16) written by hand: Pillow cannot write one."""
    height, width, _ = pixels.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    rows = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(height))
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([16, 2, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def test_48bit_rgb_png_is_read_at_its_scale(tmp_path):
    pixels = np.zeros((6, 5, 3), np.uint16)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 65535, 32896, 0  # 1.0, ~0.5, 0
    image = imaging.load_image(png_rgb48(tmp_path / "rgb48.png", pixels))
    assert image.shape == (1, 3, 6, 5)
    assert torch.allclose(image[0, :, 0, 0], torch.tensor([1.0, 128 / 255, 0.0]), atol=1 / 255)


def test_decompression_bomb_is_one_line(files, tmp_path, capsys, monkeypatch):
    Image.new("1", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: over twice the limit, as a real bomb
    with pytest.raises(ValueError, match="too large to decode safely.*decompression bomb"):
        imaging.load_image(tmp_path / "bomb.png")
    args = ["--image", str(tmp_path / "bomb.png"), "--mask", "box", "-o", str(tmp_path / "out.png")]
    assert inpaint_main(["--model", str(files / "tiny.safetensors"), "-q", *args]) == 2
    one_line_error(capsys, "rad-inpaint", "bomb.png", "decompression bomb")
    assert inpaint_cli(files, "--mask", str(tmp_path / "bomb.png"), "-o", str(tmp_path / "out.png")) == 2
    one_line_error(capsys, "rad-inpaint", "bomb.png", "decompression bomb")


def test_damaged_images_name_the_file(files, tmp_path, capsys):
    Image.fromarray((np.random.RandomState(1).rand(40, 40, 3) * 255).astype(np.uint8)).save(tmp_path / "cut.png")
    truncate(tmp_path / "cut.png")
    assert inpaint_main(["--model", str(files / "tiny.safetensors"), "--image", str(tmp_path / "cut.png"),
                         "--mask", "box", "-o", str(tmp_path / "o.png"), "-q"]) == 2
    one_line_error(capsys, "rad-inpaint", "cut.png", "truncated")
    # rad-eval: the header reads, the pixels do not (was a raw OSError from load_crop)
    held = tmp_path / "held"
    held.mkdir()
    for i in range(3):
        Image.fromarray((np.random.RandomState(i).rand(40, 40, 3) * 255).astype(np.uint8)).save(held / f"{i}.png")
    truncate(held / "1.png")
    args = ["--model", str(files / "tiny.safetensors"), "--images", str(held), "--out", str(tmp_path / "r.json"),
            "--steps", "2", "--masks", "box", "-q"]
    assert evaluate.main(args) == 2
    one_line_error(capsys, "rad-eval", "--images", "1.png", "truncated")
    assert not (tmp_path / "r.json").exists()


def test_damaged_training_images_and_held_out_set(files, tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(5):
        Image.fromarray((np.random.RandomState(i).rand(20, 20, 3) * 255).astype(np.uint8)).save(data / f"{i}.png")
    paths = image_folders.scan_images(data)
    train, held = split_holdout(paths, 1, 0)
    truncate(held[0])  # drawn into the held-out set: found when the set is drawn, not at the first preview
    truncate(train[0])  # in the training stream: skipped with a warning naming it
    opts = TrainOptions(data=data, out=tmp_path / "run", preset="tiny", batch_size=2, steps=2, holdout=1,
                        preview_every=1, preview_steps=2, save_every=0, workers=0, ema=0.0, log_every=1)
    with caplog.at_level("WARNING"):
        trainer = Trainer(opts)
        assert trainer.holdout == []
        assert f"held-out image {held[0]} cannot be decoded" in caplog.text
        trainer.fit()  # an epoch (4 images), previews on: none to make, no crash
        trainer.close()
    assert f"skipping unreadable image {train[0]}" in caplog.text
    resumed = Trainer(dataclasses.replace(opts, steps=3, resume="latest"))  # a resumed run draws the same set
    assert resumed.holdout == [] and resumed.step == 2
    resumed.fit()
    resumed.close()


def test_photo_without_alpha_as_its_own_mask_is_refused(files, tmp_path, capsys, caplog):
    """Decided: refused in binary mode (the default), a warning in soft mode, where grey levels are meant."""
    out = tmp_path / "out.png"
    assert inpaint_cli(files, "--mask", str(files / "photo.jpg"), "-o", str(out)) == 2
    one_line_error(capsys, "rad-inpaint", "photo.jpg", "looks like a photo", "--mask-mode soft")
    assert not out.exists()
    gray = tmp_path / "gray.jpg"  # a grey photo too: many levels, many mid-tones
    Image.open(files / "photo.jpg").convert("L").save(gray)
    assert inpaint_cli(files, "--mask", str(gray), "-o", str(out)) == 2
    one_line_error(capsys, "rad-inpaint", "grey levels")
    with caplog.at_level("WARNING"):
        assert inpaint_cli(files, "--mask", str(files / "photo.jpg"), "--mask-mode", "soft", "-o", str(out)) == 0
    assert "looks like a photo" in caplog.text and out.exists()
    assert imaging.photo_mask_reason(files / "mask.jpg") is None  # a JPEG'd black-and-white mask is a mask
    assert inpaint_cli(files, "--mask", str(files / "mask.jpg"), "-o", str(tmp_path / "ok.png")) == 0
    rgba = np.dstack([np.asarray(Image.open(files / "photo.jpg")), np.full((40, 40), 255, np.uint8)])
    rgba[10:20, 10:20, 3] = 0  # the README's pattern done right: the transparent pixels are the hole
    Image.fromarray(rgba).save(tmp_path / "holes.png")
    assert imaging.photo_mask_reason(tmp_path / "holes.png") is None


def test_mask_of_another_aspect_ratio_warns_in_the_cli(files, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        assert inpaint_cli(files, "--mask", str(files / "narrow.png"), "-o", str(tmp_path / "o.png")) == 0
    assert "20x40 but the image is 40x40 (another aspect ratio)" in caplog.text


# ------------------------------------------------------------------------------------------------------ numbers


INPAINT = ["--mask", "box", "-o", "never.png"]
TRAIN = ["--data", "d", "--preset", "tiny", "--out", "o"]
EVAL = ["--model", "m.pt", "--images", "d", "--out", "r.json"]


@pytest.mark.parametrize("main, prog, base, flag, value, needle", [
    (inpaint_main, "rad-inpaint", INPAINT, "--strength", "nan", "not a finite number"),
    (inpaint_main, "rad-inpaint", INPAINT, "--strength", "1e9", "out of range: give a number in [0, 2]"),
    (inpaint_main, "rad-inpaint", INPAINT, "--threshold", "inf", "not a finite number"),
    (inpaint_main, "rad-inpaint", INPAINT, "--eta", "-0.1", "in [0, 1]"),
    (inpaint_main, "rad-inpaint", INPAINT, "--steps", "0", "in [1, 1000]"),
    (inpaint_main, "rad-inpaint", INPAINT, "--seed", str(2**70), f"in [0, {2**63 - 1}]"),
    (inpaint_main, "rad-inpaint", INPAINT, "--samples", "0", "out of range"),
    (train_cli.main, "rad-train", TRAIN, "--grad-clip", "nan", "not a finite number"),
    (train_cli.main, "rad-train", TRAIN, "--vlb-weight", "nan", "not a finite number"),
    (train_cli.main, "rad-train", TRAIN, "--lr", "1e30", "in (0, 1]"),
    (train_cli.main, "rad-train", TRAIN, "--ema", "1", "in [0, 1)"),
    (train_cli.main, "rad-train", TRAIN, "--seed", "-1", "out of range"),
    (train_cli.main, "rad-train", TRAIN, "--holdout", "x", "not a whole number"),
    (evaluate.main, "rad-eval", EVAL, "--eta", "nan", "not a finite number"),
    (evaluate.main, "rad-eval", EVAL, "--jump-length", "0", "out of range"),
    (evaluate.main, "rad-eval", EVAL, "--strength", "-1", "in [0, 2]"),
])
def test_every_numeric_flag_is_finite_and_in_range(main, prog, base, flag, value, needle, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*base, f"{flag}={value}"])
    assert exit_.value.code == 2
    one_line_error(capsys, prog, f"argument {flag}", needle)


def test_api_refuses_non_finite_and_out_of_range_numbers(files, tiny_adm):
    image, mask = torch.rand(1, 3, 16, 16), torch.ones(16, 16)
    with pytest.raises(ValueError, match="eta must be a finite number in"):
        inpaint(tiny_adm, image, mask, steps=2, sampler="ddim", eta=float("nan"))
    with pytest.raises(ValueError, match="seed must be a whole number"):
        inpaint(tiny_adm, image, mask, steps=2, seed=2**70)
    with pytest.raises(ValueError, match="strength must be a finite number in"):
        load_adm(files / "tiny.safetensors", strength=float("inf"))
    for field, value, flag in (("grad_clip", math.nan, "--grad-clip"), ("vlb_weight", math.nan, "--vlb-weight"),
                               ("lr", 1e30, "--lr"), ("seed", 2**70, "--seed"), ("scale_range", (0.5, math.nan),
                                                                                  "--scale-range")):
        opts = TrainOptions(data=files / "data", out=files / "never", preset="tiny", **{field: value})
        with pytest.raises(ValueError, match=f"^{field} must be"):  # the Python API names its fields
            opts.check()
        with pytest.raises(ValueError, match=f"^{flag} must be"):  # the CLI's flags, from the same range table
            opts.check(CLI)
    for kw in ({"softness": math.nan}, {"persistence": math.nan}, {"coverage": math.nan},
               {"cell_size": (1.0, math.inf)}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            perlin_mask(1, 8, 8, generator=torch.Generator(), **kw)
    assert checks.check_real(0.5, "x", 0, 1) == 0.5
    with pytest.raises(ValueError, match="x must be a number"):
        checks.check_real(True, "x")


def test_api_refuses_bad_image_and_mask_tensors(tiny_adm):
    image, mask = torch.rand(1, 3, 16, 16), torch.ones(16, 16)
    kept_nan = image.clone()
    kept_nan[0, 0, 0, 0] = float("nan")
    cases = [
        (kept_nan, mask, "image has 1 NaN or infinite value"),
        (image * 255, mask, r"image values must be in \[0, 1\], got .*divide it by 255"),
        (image * 2 - 1, mask, r"\[-1, 1\]: use \(image \+ 1\) / 2"),
        ((image * 255).to(torch.uint8), mask, r"float tensor.*image.float\(\) / 255"),
        (torch.rand(1, 3, 0, 16), mask, "image is empty"),
        (image, torch.zeros(1, 0, 0), "mask is empty"),
        (image, torch.empty(0), "mask is empty"),
        (image, torch.full((16, 16), float("nan")), "mask has 256 NaN"),
        (image, mask * 255, r"mask values must be in \[0, 1\].*divide it by 255"),
    ]
    for img, msk, message in cases:
        with pytest.raises(ValueError, match=message):
            inpaint(tiny_adm, img, msk, steps=2)
    with pytest.raises(ValueError, match=r"image values must be in \[-1, 1\]"):  # the samplers take [-1, 1]
        sample_ddpm(tiny_adm, image * 255, SpatialSchedule(mask[None, None]), 2)


# --------------------------------------------------------------------------------------- non-finite model output


def test_non_finite_model_output_stops_sampling_naming_the_model(files, tmp_path, capsys):
    model = load_adm(files / "nan.safetensors")
    calls = []
    with pytest.raises(NonFiniteOutput, match="nan.safetensors gave NaN or infinite outputs") as err:
        inpaint(model, torch.rand(1, 3, 32, 32), torch.ones(32, 32), steps=50, callback=calls.append)
    # read every FINITE_CHECK_EVERY calls, not once per step: found at the first read
    assert f"after {FINITE_CHECK_EVERY} network call(s)" in str(err.value)
    assert len(calls) == FINITE_CHECK_EVERY - 1
    with pytest.raises(NonFiniteOutput, match=r"after 3 network call\(s\)"):  # and at the end of a short run
        inpaint(model, torch.rand(1, 3, 32, 32), torch.ones(32, 32), steps=3, sampler="replace")
    out = tmp_path / "black.png"
    assert inpaint_main(["--model", str(files / "nan.safetensors"), "--image", str(files / "in.png"), "--mask",
                         "box", "--steps", "3", "-o", str(out), "-q"]) == 2
    one_line_error(capsys, "rad-inpaint", "nan.safetensors", "NaN or infinite")
    assert not out.exists()


# ------------------------------------------------------------------------------------------------------ outputs


def test_outputs_colliding_with_each_other_or_an_input_are_refused_up_front(files, tmp_path, capsys):
    target = tmp_path / "x.png"
    target.write_bytes(b"precious")
    assert inpaint_cli(files, "--mask", "box", "-o", str(target), "--save-mask", str(target), "--force") == 2
    one_line_error(capsys, "rad-inpaint", "--output and --save-mask both write")
    assert target.read_bytes() == b"precious"
    image = files / "in.png"
    before = image.read_bytes()
    for flag in ("-o", "--save-mask"):
        assert inpaint_cli(files, "--mask", "box", "-o", str(tmp_path / "y.png"), flag, str(image), "--force") == 2
        one_line_error(capsys, "rad-inpaint", "is the --image file")
    assert image.read_bytes() == before and not (tmp_path / "y.png").exists()
    mask = files / "mask.png"
    assert inpaint_cli(files, "--mask", str(mask), "-o", str(mask), "--force") == 2
    one_line_error(capsys, "rad-inpaint", "is the --mask file")
    assert inpaint_cli(files, "--mask", "box", "--samples", "2", "-o", str(tmp_path / "s.png"), "--save-mask",
                       str(tmp_path / "s_00001.png")) == 2  # numbered samples collide too
    one_line_error(capsys, "rad-inpaint", "both write")
    existing = tmp_path / "m.png"
    existing.write_bytes(b"keep")
    assert inpaint_cli(files, "--mask", "box", "-o", str(tmp_path / "z.png"), "--save-mask", str(existing)) == 2
    one_line_error(capsys, "rad-inpaint", "already exists")  # before sampling: nothing written
    assert existing.read_bytes() == b"keep" and not (tmp_path / "z.png").exists()


def test_output_paths_that_cannot_be_files(files, tmp_path, capsys):
    (tmp_path / "folder.png").mkdir()
    for force in ([], ["--force"]):
        assert inpaint_cli(files, "--mask", "box", "-o", str(tmp_path / "folder.png"), *force) == 2
        one_line_error(capsys, "rad-inpaint", "is a folder: give a file name")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert inpaint_cli(files, "--mask", "box", "-o", str(blocker / "out.png")) == 2
    line = one_line_error(capsys, "rad-inpaint", "is a file, not a folder")
    assert "Errno" not in line
    assert checks.describe_error(FileExistsError(17, "File exists", "a/b")) == (
        "a/b already exists and is not a folder: choose another path")
    # rad-eval and rad-train outputs
    args = ["--model", str(files / "tiny.safetensors"), "--images", str(files / "data"), "-q", "--force"]
    assert evaluate.main([*args, "--out", str(files / "tiny.safetensors")]) == 2
    one_line_error(capsys, "rad-eval", "--out", "is the --model file")
    assert evaluate.main([*args, "--out", str(blocker / "r.json")]) == 2
    one_line_error(capsys, "rad-eval", "is a file, not a folder")
    base_before = (files / "base.pt").read_bytes()
    train = ["--data", str(files / "data"), "--base", str(files / "base.pt"), "--out", str(tmp_path / "run"), "-q"]
    assert train_cli.main([*train, "--export", str(files / "base.pt"), "--force"]) == 2
    one_line_error(capsys, "rad-train", "--export")
    assert (files / "base.pt").read_bytes() == base_before
    assert train_cli.main(["--data", str(files / "data"), "--preset", "tiny", "--out", str(blocker), "-q"]) == 2
    one_line_error(capsys, "rad-train", "--out", "is a file")
    assert train_cli.main(["--data", str(files / "data"), "--preset", "tiny", "--out", str(blocker / "r"), "-q"]) == 2
    assert "Errno" not in one_line_error(capsys, "rad-train", "--out", "is a file, not a folder")
    assert evaluate.main([*args, "--out", str(tmp_path / "r.json"), "--grids", str(blocker / "g")]) == 2
    one_line_error(capsys, "rad-eval", "--grids", "is a file, not a folder")
    assert train_cli.main(["--export-from", str(tmp_path), "--export", str(existing := blocker)]) == 2
    one_line_error(capsys, "rad-train", "--export", "already exists", "--force")
    assert existing.read_text() == "x"


def test_ctrl_c_during_rad_inpaint_is_one_line_and_leaves_no_file(files, tmp_path):
    out = tmp_path / "out.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "comfyui_rad", "--model", str(files / "tiny.safetensors"),
                             "--image", str(files / "in.png"), "--mask", "box", "--sampler", "ddpm", "--steps", "1000",
                             "-o", str(out)],
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    lines = []
    for line in proc.stderr:  # the progress bar's first line: sampling has started
        lines.append(line)
        if line.startswith("["):
            proc.send_signal(signal.SIGINT)
            break
    lines += proc.stderr.readlines()
    assert proc.wait(timeout=120) == 130
    err = "".join(lines)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1] == "rad-inpaint: interrupted: stopped without writing a partial file"
    assert not out.exists() and leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------------------- errors


def test_nan_loss_in_rad_train_is_one_line(files, tmp_path, capsys):
    args = ["--data", str(files / "data"), "--base", str(files / "nan_base.pt"), "--out", str(tmp_path / "run"),
            "--num-head-channels", "16", "--resolution", "16", "--lora-rank", "2", "--batch-size", "2", "--steps",
            "2", "--holdout", "1", "--preview-every", "0", "--workers", "0", "-q"]
    assert train_cli.main(args) == 2
    one_line_error(capsys, "rad-train", "the loss is nan between steps 1 and", "--lr")


def test_unavailable_devices_name_the_flag(files, tmp_path, capsys):
    for device in ("mps", "cuda:7"):
        assert inpaint_cli(files, "--mask", "box", "-o", str(tmp_path / "o.png"), "--device", device) == 2
        one_line_error(capsys, "rad-inpaint", f"--device {device}")
    args = ["--model", str(files / "tiny.safetensors"), "--images", str(files / "data"), "--out",
            str(tmp_path / "r.json"), "--device", "mps", "-q"]
    assert evaluate.main(args) == 2
    one_line_error(capsys, "rad-eval", "--device mps")
    assert not (tmp_path / "o.png").exists()


def test_checkpoints_that_are_not_pickles_say_what_they_are(files, tmp_path, capsys):
    (tmp_path / "notes.pt").write_text("these are my notes\n")
    save_file({"w": torch.zeros(2)}, tmp_path / "weights.pt")
    with zipfile.ZipFile(tmp_path / "archive.pt", "w") as archive:
        archive.writestr("readme.txt", "hello")
    (tmp_path / "plain.pt").write_bytes(pickle.dumps({"w": [1, 2]}, protocol=4))
    torch.save({"w": torch.zeros(2)}, tmp_path / "torch.safetensors")
    (tmp_path / "page.pt").write_text("<!DOCTYPE html><html><body>rate limited</body></html>")
    expect = {"notes.pt": "a text file", "weights.pt": "a safetensors file: rename it to .safetensors",
              "archive.pt": "a zip archive that is not a torch checkpoint", "plain.pt": "a plain Python pickle",
              "torch.safetensors": "a torch checkpoint (pickle): rename it to .pt", "page.pt": "a web page"}
    for name, what in expect.items():
        with pytest.raises(CheckpointError) as err:
            read_state_dict(tmp_path / name)
        assert what in str(err.value) and "weights_only=False" not in str(err.value), str(err.value)
    assert inpaint_main(["--model", str(tmp_path / "notes.pt"), "--image", str(files / "in.png"), "--mask", "box",
                         "-o", str(tmp_path / "o.png"), "-q"]) == 2
    line = one_line_error(capsys, "rad-inpaint", "notes.pt", "a text file")
    assert "weights_only" not in line


def test_a_folder_as_model_says_it_is_a_folder(files, tmp_path, capsys):
    folder = tmp_path / "model"  # the outputs lie outside it: nothing is written into an input folder (issue 20)
    folder.mkdir()
    assert inpaint_main(["--model", str(folder), "--image", str(files / "in.png"), "--mask", "box", "-o",
                         str(tmp_path / "o.png"), "-q"]) == 2
    one_line_error(capsys, "rad-inpaint", "is not a diffusers model folder", "checkpoint-N")  # what is accepted
    with pytest.raises(CheckpointError, match="is not a diffusers model folder"):
        load_adm(folder)
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        read_state_dict(folder)
    assert evaluate.main(["--model", str(folder), "--images", str(files / "data"), "--out",
                          str(tmp_path / "r.json"), "-q"]) == 2
    one_line_error(capsys, "rad-eval", "is not a diffusers model folder")
    assert inpaint_cli(files, "--mask", "box", "--adapter", str(folder), "-o", str(tmp_path / "o.png")) == 2
    one_line_error(capsys, "rad-inpaint", "--adapter", "is a folder")


def test_cli_messages_name_cli_flags(files, tmp_path, capsys):
    args = ["--model", str(files / "tiny.safetensors"), "--out", str(tmp_path / "r.json"), "-q"]
    assert evaluate.main([*args, "--images", str(files / "in.png")]) == 2
    one_line_error(capsys, "rad-eval", "--images")
    assert evaluate.main([*args, "--images", str(tmp_path / "absent")]) == 2
    line = one_line_error(capsys, "rad-eval", "--images")
    assert "--data" not in line and "training" not in line
    assert evaluate.main([*args, "--images", str(files / "data"), "--sampler", "repaint", "--steps", "10"]) == 2
    line = one_line_error(capsys, "rad-eval", "--jump-length 10 must be below --steps 10", "--jump-n-sample 1")
    assert "jump_length" not in line
    assert inpaint_cli(files, "--mask", str(files / "mask.jpg"), "--mask-mode", "soft", "--sampler", "repaint",
                       "-o", str(tmp_path / "o.png")) == 2
    line = one_line_error(capsys, "rad-inpaint", "--sampler repaint", "--mask-mode binary")
    assert "Spatial Noise Schedule" not in line and "masks.prepare" not in line
    assert inpaint_cli(files, "--mask", "box", "--class-label", "3", "-o", str(tmp_path / "o.png")) == 2
    line = one_line_error(capsys, "rad-inpaint", "--class-label 3", "unconditional")
    assert "drop y" not in line
    with pytest.raises(SystemExit):
        inpaint_main(["--image", "x.png", "--mask", "box", "-o", "o.png", "--seed", str(10**30)])
    line = one_line_error(capsys, "rad-inpaint", "--seed", "out of range")
    assert "Overflow" not in line
    assert not (tmp_path / "o.png").exists()


def test_an_error_through_the_real_entry_point_has_no_traceback(files, tmp_path):
    """As a user runs it (python -m, a fresh interpreter): one line, exit status 2."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "comfyui_rad.train", "--data", str(files / "data"), "--preset", "tiny", "--out",
           str(tmp_path / "run"), "--device", "mps", "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "--device mps" in done.stderr
