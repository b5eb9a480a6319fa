"""rad-train: data, the loop, exact resume, exports that load_adm takes, clear refusals, the CLI.

Tiny ADMs (``conftest.TINY``) at 16x16 on tiny generated images, one CPU thread.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import TINY, make_adm
from PIL import Image

from comfyui_rad.adapters import read_adapter
from comfyui_rad.checkpoints import load_adm
from comfyui_rad.errors import install_hint
from comfyui_rad.fileio import CheckpointError, read_state_dict
from comfyui_rad.image_folders import DataError, scan_images
from comfyui_rad.schedule import NoiseCurves
from comfyui_rad.train import Trainer, TrainOptions, build_fresh, export_checkpoint, preset_config
from comfyui_rad.train.cli import main
from comfyui_rad.train.data import split_holdout
from comfyui_rad.train.lora import require_peft
from comfyui_rad.train.options import CLI
from comfyui_rad.train.losses import q_sample, rad_loss, step_terms
from comfyui_rad.train.state import list_checkpoints, load_checkpoint
from comfyui_rad.train.stream import SampleStream


pytestmark = pytest.mark.usefixtures("one_thread")


def write_images(folder, count, seed=0):
    rng = np.random.RandomState(seed)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = (rng.rand(18 + i, 24, 3) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / ("sub" if i % 2 else ".") / f"img{i}.{'png' if i % 3 else 'jpg'}")
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    write_images(d / "data", 6)
    torch.save(make_adm(TINY, seed=0).state_dict(), d / "base.pt")  # guided-diffusion's .pt state dict
    torch.save(make_adm(TINY, seed=1).state_dict(), d / "other.pt")
    return d


def options(files, out, **kw):
    base = dict(data=files / "data", out=files / out, batch_size=2, steps=2, holdout=1, preview_every=0,
                save_every=0, workers=0, seed=0, ema=0.0, log_every=1, val_every=0)
    if "preset" not in kw:
        base.update(base=files / "base.pt", num_head_channels=16, resolution=16, lora_rank=4, lora_alpha=8)
    return TrainOptions(**{**base, **kw})


def train(files, out, **kw) -> Trainer:
    trainer = Trainer(options(files, out, **kw))
    trainer.fit()
    trainer.close()
    return trainer


def probe(seed=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 16, 16, generator=g)
    tau = torch.full((2, 1, 16, 16), -1.0)
    tau[:, :, 4:12, 3:9] = 412.5
    tau[1, :, :2] = 77.0
    return x, tau


# -------------------------------------------------------------------------------------------------------- data


def test_data_errors_name_the_folder(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no readable images .* in .*empty.*--data"):
        scan_images(tmp_path / "empty")
    with pytest.raises(DataError, match="is not a folder"):
        scan_images(tmp_path / "missing")
    data = write_images(tmp_path / "data", 3)
    (data / "broken.png").write_bytes(b"not a png")
    (data / "sub" / "empty.jpg").write_bytes(b"")
    (data / "notes.txt").write_text("ignored: not an image suffix")
    with caplog.at_level(logging.WARNING):
        paths = scan_images(data)
    assert len(paths) == 3 and "skipped 2 unreadable file(s) of 5" in caplog.text
    with pytest.raises(DataError, match=r"3 readable image\(s\) in .*data, but --holdout 3 needs at least 4"):
        split_holdout(paths, 3, seed=0, root=data)


def test_holdout_is_deterministic_and_never_trained_on(files, caplog):
    paths = scan_images(files / "data")
    with caplog.at_level(logging.INFO):
        train, held = split_holdout(paths, 2, seed=3, root=files / "data")
    assert (train, held) == split_holdout(paths, 2, seed=3)
    assert len(held) == 2 and not set(train) & set(held) and sorted(train + held) == sorted(paths)
    assert all(str(p.relative_to(files / "data")) in caplog.text for p in held)
    stream = SampleStream(train, 16, NoiseCurves(), seed=0, batch=3)
    assert {stream.image_at(n) for n in range(5 * 3)} == set(range(len(train)))  # indices into the training list


def test_sample_stream_is_resumable_and_on_the_8bit_grid(files):
    """A stream restored from the state at step 2 serves step 2 as the original does; crops on the 8-bit grid;
    workers (prefetching ahead) give the same batches as the calling thread."""
    paths = scan_images(files / "data")
    curves = NoiseCurves()
    a = SampleStream(paths, 16, curves, seed=1, batch=4, accum=2, workers=2)
    first = a.micro_batch(0, 0)
    state = a.state_dict(2)
    expected = a.micro_batch(2, 1)
    b = SampleStream(paths, 16, curves, seed=1, batch=4, accum=2)
    b.load_state_dict(state)
    got = b.micro_batch(2, 1)
    assert all(torch.equal(x, y) for x, y in ((got.x0, expected.x0), (got.eps, expected.eps), (got.tau, expected.tau)))
    assert torch.equal(got.terms.mean_coef, expected.terms.mean_coef)
    assert first.x0.shape == (4, 3, 16, 16) and first.x0.min() >= -1 and first.x0.max() <= 1
    levels = (first.x0 + 1) * 127.5
    assert (levels - levels.round()).abs().max() < 1e-4
    assert not torch.equal(first.x0, a.micro_batch(0, 1).x0)  # the step's second micro-batch: other samples
    resized = SampleStream(paths, 16, curves, seed=1, batch=2, resize=True, flip=False).micro_batch(0, 0)
    assert resized.x0.shape == (2, 3, 16, 16) and resized.tau.shape == (2, 1, 16, 16)
    a.close()


# -------------------------------------------------------------------------------------------------------- loss


def test_loss_falls_on_a_fixed_batch():
    """30 AdamW steps on one batch with a fixed mask, t and noise: the hybrid loss at least halves."""
    model = build_fresh(preset_config("tiny"), seed=0).train()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 256, (4, 3, 16, 16), generator=g).float() / 127.5 - 1
    eps = torch.randn(x0.shape, generator=g)
    mask = torch.zeros(4, 1, 16, 16)
    mask[..., 3:13, 4:10] = 1
    curves = NoiseCurves()
    terms, abar = step_terms(curves, mask, torch.tensor([30, 300, 1200, 1900]))
    tau = curves.timestep(abar)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = rad_loss(model(q_sample(x0, eps, terms), tau), x0, eps, terms)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


# -------------------------------------------------------------------------------------------- resume and export


def test_resume_equals_an_uninterrupted_run(files):
    """4 steps straight == 2 steps, a new process-like Trainer resuming, 2 more: bitwise weights, EMA, optimiser."""
    kw = dict(steps=4, save_every=2, grad_accum=2, ema=0.9, mask_sampling="mixed", preview_every=3, preview_steps=2,
              lr=1e-2)
    straight = train(files, "straight", **kw)
    train(files, "split", **{**kw, "steps": 2})
    resumed = train(files, "split", **{**kw, "resume": "latest"})
    a, b = straight.state_dict(), resumed.state_dict()
    assert a["step"] == b["step"] == 4
    for part in ("trainable", "ema"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert a["data"] == b["data"] and a["data"]["samples"] == 4 * 2 * 2  # steps x batch x accumulation
    assert [p.name for p in list_checkpoints(files / "split")] == ["step-0000002.pt", "step-0000004.pt"]
    assert (files / "split" / "previews" / "step-0000003.png").is_file()
    # the exported EMA is what the checkpoint holds
    path = export_checkpoint(files / "split", files / "split.safetensors")
    adapter = read_adapter(path)
    for module, (lora_a, lora_b) in adapter.lora.items():
        assert torch.equal(lora_a, b["ema"][module + ".lora_A.weight"])
        assert torch.equal(lora_b, b["ema"][module + ".lora_B.weight"])
    assert all(torch.equal(t, b["ema"][k]) for k, t in adapter.full.items())


def test_exported_adapter_equals_the_trained_peft_model(files):
    trainer = train(files, "lora", steps=3, lr=1e-2)
    b_norm = sum(p.abs().sum() for k, p in trainer.params.items() if ".lora_B." in k)
    assert b_norm > 0  # LoRA B has left its zero init: the merge is really tested
    path = trainer.export(files / "lora.safetensors")
    merged = load_adm(files / "base.pt", adapter=path)
    assert merged.config.num_head_channels == 16 and merged.rad_info.tau_convention == "gd"
    x, tau = probe()
    trainer.model.eval()
    with torch.no_grad():
        diff = (merged(x, tau) - trainer.model(x, tau)).abs().max().item()
    assert diff <= 1e-5
    assert merged.rad_info.start is None  # none recorded unless asked
    recorded = load_adm(files / "base.pt", adapter=trainer.export(files / "rec.safetensors", recommend=("noise", None)))
    assert (recorded.rad_info.start, recorded.rad_info.start_strength) == ("noise", None)
    meta = read_adapter(path).metadata
    assert meta["lora_rank"] == 4 and meta["lora_alpha"] == 8 and meta["train_steps"] == "3"
    assert len(meta["full_keys"]) == len([k for k in trainer.params if "lora_" not in k]) > 0
    # an adapter on another base is refused, by load_adm and by the exporter
    with pytest.raises(CheckpointError, match="made for base 'base.pt'"):
        load_adm(files / "other.pt", adapter=path)
    with pytest.raises(CheckpointError, match=r"other.pt .* is not the base this run was trained on"):
        export_checkpoint(files / "lora", files / "x.safetensors", base=files / "other.pt")
    with pytest.raises(FileExistsError, match="already exists"):
        trainer.export(path)


def test_fresh_preset_export_loads_with_load_adm(files):
    trainer = train(files, "fresh", preset="tiny", steps=2, ema=0.5, lr=1e-3)
    path = trainer.export(files / "fresh.safetensors")
    model = load_adm(path)
    assert model.rad_info.is_rad and model.config == trainer.model.config
    x, tau = probe()
    with trainer.ema_weights() as ema_model, torch.no_grad():
        expected = ema_model(x, tau)
        assert torch.equal(model(x, tau), expected)
    half = trainer.export(files / "fresh16.safetensors", dtype="fp16")
    sd, meta = read_state_dict(half)
    assert all(t.dtype == torch.float16 for t in sd.values()) and meta["train_embedding"] == "spatial"
    assert (load_adm(half)(x, tau) - expected).abs().max() < 0.05


def test_init_warm_starts_every_parameter_and_refuses_another_layout(files):
    """--init copies a trained model's weights into the --preset model: step 0 equals the file; another layout,
    or --init without --preset, is refused naming the flags."""
    source = train(files, "init-src", preset="tiny", steps=2, lr=1e-3).export(files / "init-src.safetensors")
    warm = Trainer(options(files, "init-warm", preset="tiny", steps=1, init=source))
    x, tau = probe()
    with torch.no_grad():
        assert torch.equal(warm.model.eval()(x, tau), load_adm(source)(x, tau))
    assert warm.run["init"]["name"] == "init-src.safetensors" and len(warm.run["init"]["sha256"]) == 64
    warm.close()
    cold = Trainer(options(files, "init-cold", preset="tiny", steps=1))
    with torch.no_grad():
        assert not torch.equal(cold.model.eval()(x, tau), load_adm(source)(x, tau))
    cold.close()
    with pytest.raises(ValueError, match=r"^init init-src.safetensors is not a 'digits32' model.*give the preset"):
        Trainer(options(files, "init-bad", preset="digits32", resolution=16, init=source))  # the API names fields
    with pytest.raises(ValueError, match=r"^--init init-src.safetensors is not a 'digits32' model.*--preset"):
        Trainer(options(files, "init-bad", preset="digits32", resolution=16, init=source), names=CLI)
    with pytest.raises(ValueError, match="^init starts a preset model.*base"):  # the API names fields
        options(files, "init-none", init=source).check()
    with pytest.raises(ValueError, match="--init starts a --preset model.*--base"):  # the CLI names flags
        options(files, "init-none", init=source).check(CLI)


def test_log_scale_sampling_spreads_zoom_levels(files):
    """--scale-sampling log draws the crop side log-uniformly in --scale-range (median at the geometric mean);
    uniform keeps the draws it always made (the same u), so old runs reproduce."""
    paths = scan_images(files / "data", 16)
    kw = dict(seed=3, batch=4, scale_range=(0.05, 1.0))
    uniform = SampleStream(paths, 16, NoiseCurves(), **kw)
    log_ = SampleStream(paths, 16, NoiseCurves(), scale_sampling="log", **kw)
    sides = torch.tensor([[uniform.crop(s, k)[0], log_.crop(s, k)[0]] for s in range(50) for k in range(4)],
                         dtype=torch.float64)
    u = (sides[:, 0] - 0.05) / 0.95
    assert torch.allclose(sides[:, 1], 0.05 * 20.0 ** u, rtol=1e-9)
    assert abs(sides[:, 1].median().item() - 0.05 ** 0.5) < 0.06 and sides[:, 1].min() >= 0.05
    assert (sides[:, 1] < 0.1).float().mean() > 0.15 > (sides[:, 0] < 0.1).float().mean()
    with pytest.raises(DataError, match="--scale-sampling 'zoom'"):
        SampleStream(paths, 16, NoiseCurves(), scale_sampling="zoom", **kw)


def test_plain_ddpm_base_then_rad_lora_on_it(files):
    """--mask-sampling full makes a plain base (not RAD); a RAD adapter trained on its export records its recipe."""
    base = Trainer(options(files, "plain", preset="tiny", steps=1, mask_sampling="full"))
    seen = []
    base.model.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[1].shape)))
    base.fit()
    base.close()
    assert seen == [(2,)]  # uniform noise: one timestep per image, the plain ADM's input
    path = base.export(files / "plain.safetensors")
    plain = load_adm(path)
    assert not plain.rad_info.is_rad and read_state_dict(path)[1]["train_mask_sampling"] == "full"
    rad = train(files, "on-plain", base=path, steps=1, embedding="scalar")
    adapter = rad.export(files / "on-plain.safetensors")
    model = load_adm(path, adapter=adapter)
    assert model.rad_info.is_rad and model.rad_info.embedding == "scalar"
    assert model.config == plain.config


def test_refusals(files, monkeypatch):
    with pytest.raises(ValueError, match="exactly one of base"):
        TrainOptions(data=files, out=files / "x").check()
    with pytest.raises(ValueError, match="exactly one of --base"):
        TrainOptions(data=files, out=files / "x").check(CLI)
    with pytest.raises(FileExistsError, match="already holds a training run.*--resume.*--force"):
        Trainer(options(files, "fresh", preset="tiny"))
    state = load_checkpoint(files / "fresh")
    assert state["run"]["kind"] == "full"
    with pytest.raises(ValueError, match="other model_config"):
        Trainer(options(files, "fresh", preset="tiny", resume="latest", learn_sigma=False))
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=re.escape(install_hint("train"))):  # quoted: zsh reads brackets
        require_peft()


# --------------------------------------------------------------------------------------------------------- CLI


def test_cli_smoke(files, capsys):
    out, export = files / "cli", files / "cli.safetensors"
    args = ["--data", str(files / "data"), "--preset", "tiny", "--out", str(out), "--steps", "3", "--batch-size",
            "2", "--holdout", "2", "--preview-every", "2", "--preview-steps", "2", "--save-every", "2",
            "--embedding", "scalar", "--mask-sampling", "async", "--val-steps", "2", "--export", str(export), "-q"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(export)
    assert load_adm(export).config.image_size == 16
    assert sorted(p.name for p in (out / "previews").iterdir()) == ["step-0000002.png", "step-0000003.png"]
    assert Image.open(out / "previews" / "step-0000003.png").size == (48, 32)  # 3 columns, 2 held-out rows
    assert main(args) == 2  # refused before any work: the export file exists
    assert f"--export {export} already exists: pass --force" in capsys.readouterr().err
    assert main(args[:-3] + ["-q"]) == 2  # and the run folder holds a run
    assert "already holds a training run" in capsys.readouterr().err
    again = files / "again.safetensors"
    assert main(["--export-from", str(out / "checkpoints" / "step-0000002.pt"), "--export", str(again), "-q"]) == 0
    assert read_state_dict(again)[1]["train_steps"] == "2" and "recommended_start" not in read_state_dict(again)[1]
    rec = files / "cli-rec.safetensors"
    assert main(["--export-from", str(out), "--export", str(rec), "--recommend-start", "harmonic",
                 "--recommend-start-strength", "0.25", "-q"]) == 0
    assert (load_adm(rec).rad_info.start, load_adm(rec).rad_info.start_strength) == ("harmonic", 0.25)
    assert main(["--export-from", str(out), "--export", str(files / "x.safetensors"), "--recommend-start-strength",
                 "0.25", "-q"]) == 2
    assert "--recommend-start-strength needs --recommend-start" in capsys.readouterr().err
    assert main(["--export-from", str(out), "-q"]) == 2
    assert "--export-from needs --export" in capsys.readouterr().err


def test_peft_is_imported_only_for_lora_runs():
    code = "import sys, comfyui_rad.train, comfyui_rad.train.cli; assert 'peft' not in sys.modules, 'peft imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unreadable_images_are_replaced_alike_on_every_rank(tmp_path, caplog):
    data = write_images(tmp_path / "data", 4)
    broken = data / "sub" / "img1.png"
    broken.write_bytes(broken.read_bytes()[:60])  # the header reads, the pixels do not
    paths = scan_images(data)
    assert broken in paths
    curves = NoiseCurves()
    with caplog.at_level(logging.WARNING):
        one = SampleStream(paths, 16, curves, seed=0, batch=8).micro_batch(0, 0)
    assert "skipping unreadable image" in caplog.text
    halves = [SampleStream(paths, 16, curves, seed=0, batch=4, world=2, rank=r).micro_batch(0, 0) for r in (0, 1)]
    assert torch.equal(one.x0, torch.cat([h.x0 for h in halves]))
    assert torch.equal(one.eps, torch.cat([h.eps for h in halves]))


def test_color_augment_is_seeded_bounded_and_recolours(files):
    """--color-augment palette: each crop's recolouring is a pure function of (seed, step, k) (so world-size
    independent and exactly resumable), stays uint8 in range on the 8-bit grid, and moves channels; off leaves the
    stream as it was, bit for bit."""
    from comfyui_rad.train.stream import color_transform, sample_generator

    paths = scan_images(files / "data", 16)
    kw = dict(seed=5, batch=2, scale_range=(0.5, 1.0))
    plain = SampleStream(paths, 16, NoiseCurves(), **kw)
    off = SampleStream(paths, 16, NoiseCurves(), color_augment="off", **kw)
    aug = SampleStream(paths, 16, NoiseCurves(), color_augment="palette", **kw)
    again = SampleStream(paths, 16, NoiseCurves(), color_augment="palette", **kw)
    changed = 0
    for s, k in [(0, 0), (0, 1), (3, 1), (7, 0), (11, 1)]:
        raw = plain._decode(s, k)
        assert torch.equal(off.image(s, k), raw) and torch.equal(off.sample(s, k)[0], plain.sample(s, k)[0])
        a = aug.image(s, k)
        assert a.dtype == torch.uint8 and a.shape == raw.shape
        assert torch.equal(a, again.image(s, k))  # in any order, any stream object: (seed, step, k) decides
        assert torch.equal(a, color_transform(raw, sample_generator(5, 4, s, k)))
        changed += not torch.equal(a, raw)
        x0 = aug.sample(s, k)[0]
        assert torch.equal(x0, a[None].float() / 127.5 - 1) and x0.min() >= -1 and x0.max() <= 1
        assert torch.equal(aug.sample(s, k)[1], plain.sample(s, k)[1])  # eps and mask draws untouched
    assert changed >= 4
    # over many draws: every part fires, values stay in [0,255], a permutation or grey moves whole channels
    image = torch.stack([torch.full((4, 4), 200), torch.full((4, 4), 60), torch.full((4, 4), 10)]).to(torch.uint8)
    outs = torch.stack([color_transform(image, sample_generator(0, 4, i)) for i in range(400)])
    spread = outs.float().std(dim=0).mean()
    assert spread > 40  # the same reddish pixel comes out in very different colours
    grey = (outs[:, 0] == outs[:, 1]).all(-1).all(-1) & (outs[:, 1] == outs[:, 2]).all(-1).all(-1)
    assert 15 < grey.sum() < 80  # grey about 10 % of the time
    dominant = outs.float().mean(dim=(2, 3)).argmax(dim=1)
    assert all((dominant == c).sum() > 50 for c in range(3))  # red no longer dominates: any channel can
    for i in range(400):  # each crop recoloured as a whole: one colour in, one colour out
        assert (outs[i] == outs[i, :, :1, :1]).all()
    with pytest.raises(DataError, match="--color-augment 'hue'"):
        SampleStream(paths, 16, NoiseCurves(), color_augment="hue", **kw)


def test_color_transform_parts():
    """The hue rotation fixes greys and turns red to green to blue in thirds of a turn; values stay on [0,255]."""
    from comfyui_rad.train.stream import _grey_axis_rotation, color_transform

    r = _grey_axis_rotation(2 * torch.pi / 3)
    assert torch.allclose(r @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
                          torch.tensor([0.0, 1, 0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(r @ torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(r @ r.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    extreme = torch.tensor([[[0, 255]], [[255, 0]], [[255, 255]]], dtype=torch.uint8)
    for i in range(200):
        out = color_transform(extreme, torch.Generator().manual_seed(i))
        assert out.dtype == torch.uint8 and out.shape == extreme.shape


def test_masks_in_the_data_folder_are_named_in_a_warning(tmp_path, caplog):
    from comfyui_rad.train.data import mask_like

    data = write_images(tmp_path / "data", 4)
    rng = np.random.RandomState(1)
    binary = (rng.rand(40, 30) > 0.5).astype(np.uint8) * 255
    Image.fromarray(binary, "L").save(data / "mask-l.png")
    Image.fromarray(np.repeat(binary[..., None], 3, -1)).save(data / "sub" / "mask-rgb.jpg", quality=90)
    alpha = np.zeros((40, 30, 4), np.uint8)
    alpha[..., 3] = binary
    Image.fromarray(alpha, "RGBA").save(data / "mask-alpha.png")
    with Image.open(data / "mask-l.png") as a, Image.open(data / "sub" / "mask-rgb.jpg") as b, \
            Image.open(data / "mask-alpha.png") as c:
        assert (mask_like(a), mask_like(b), mask_like(c)) == ("two grey levels", "two grey levels", "alpha only")
    photos = [p for p in scan_images(data) if "mask" not in p.name]
    for path in photos:
        with Image.open(path) as picture:
            assert mask_like(picture) is None, path
    grey_photo = Image.fromarray((rng.rand(40, 30) * 255).astype(np.uint8), "L")
    assert mask_like(grey_photo) is None  # grey, but many levels
    with caplog.at_level(logging.WARNING):
        Trainer(TrainOptions(data=data, out=tmp_path / "run", preset="tiny", holdout=0, workers=0)).close()
    assert "3 of 7 picture(s) looked at in data" in caplog.text and "look like masks" in caplog.text
    assert "mask-alpha.png (alpha only)" in caplog.text and "sub/mask-rgb.jpg (two grey levels)" in caplog.text


def test_base_may_be_an_authors_checkpoint_folder(files, tmp_path):
    """--base takes the authors' checkpoint-N/ folder (not only its unet/ weights file); the adapter trains in their
    tau convention, records the weights file's sha256, and loads back on the folder."""
    from _authors import IMAGENET_LIKE, write_checkpoint

    folder = write_checkpoint(tmp_path / "checkpoint-300000", IMAGENET_LIKE, seed=0, rank=3)
    trainer = train(files, "authors-base", base=folder, num_head_channels=None, resolution=None, steps=1)
    assert trainer.run["tau_convention"] == "authors" and trainer.stream.tau_convention == "authors"
    path = trainer.export(tmp_path / "on-authors.safetensors")
    model = load_adm(folder, adapter=path)
    assert model.rad_info.tau_convention == "authors" and model.config == trainer.model.config
    x, tau = probe()
    trainer.model.eval()
    with torch.no_grad():
        assert (model(x, tau) - trainer.model(x, tau)).abs().max() <= 1e-5
    assert export_checkpoint(files / "authors-base", tmp_path / "again.safetensors").is_file()


def test_worker_threads_share_the_epoch_orders_safely(tmp_path):
    """Two training images and a batch of 8: every micro-batch spans four epochs, so the worker threads evict and
    draw epoch orders at once (two threads evicting the same oldest epoch once raised KeyError; a slow eviction
    widens that window here); the batches equal the calling thread's."""

    class SlowEviction(dict):
        def pop(self, key, *default):
            time.sleep(0.005)
            return super().pop(key, *default)

    paths = scan_images(write_images(tmp_path / "data", 2))
    threaded = SampleStream(paths, 16, NoiseCurves(), seed=0, batch=8, workers=4, ahead=8)
    threaded._orders = SlowEviction()
    plain = SampleStream(paths, 16, NoiseCurves(), seed=0, batch=8)
    for step in range(12):
        assert torch.equal(threaded.micro_batch(step, 0).x0, plain.micro_batch(step, 0).x0)
    threaded.close()
