"""The RAD authors' checkpoints and diffusers conversions of guided-diffusion ADMs (comfyui_rad.diffusers_format).

Tiny checkpoints are written by hand in the authors' on-disk format (tests/_authors.py, no diffusers) and checked
against an independent float64 reference of their forward pass, LoRA unmerged.
"""

import json
import subprocess
import sys

import pytest
import torch
from _authors import (FFHQ_LIKE, IMAGENET_LIKE, Reference, _plain, authors_state_dict, to_guided_diffusion,
                      write_checkpoint, write_model)
from safetensors import safe_open
from safetensors.torch import save_file

from comfyui_rad.adapters import save_adapter
from comfyui_rad.checkpoints import load_adm
from comfyui_rad.convert import main as convert_main
from comfyui_rad.fileio import CheckpointError
from comfyui_rad.pipeline import inpaint
from comfyui_rad.schedule import rad_info

FAMILIES = {"imagenet": IMAGENET_LIKE, "ffhq": FFHQ_LIKE}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("authors")
    return {name: write_checkpoint(root / name / "checkpoint-300000", cfg, seed=i, rank=3 + i, ema=name == "ffhq")
            for i, (name, cfg) in enumerate(FAMILIES.items())}


def _inputs(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = cfg["sample_size"]
    x = torch.randn(2, 3, s, s, generator=g)
    mask = torch.zeros(2, 1, s, s)
    mask[0, :, 2:s - 5, 3:s // 2 + 2] = 1
    mask[1, :, s // 3:, :] = 1
    soft = torch.rand(2, 1, s, s, generator=g) * 1000
    return x, {"binary": mask * 991.0, "soft": soft, "scalar": torch.tensor([0.0, 640.0])}


@pytest.mark.parametrize("family", FAMILIES)
def test_model_equals_the_reference_of_their_network(checkpoints, family):
    """model(x, tau) = their LocalUNet2DModel (reference, LoRA unmerged): merged LoRA == unmerged computation."""
    cfg = FAMILIES[family]
    model = load_adm(checkpoints[family])
    sd = authors_state_dict(cfg, seed=list(FAMILIES).index(family), rank=3 + list(FAMILIES).index(family))
    ref = Reference(sd, cfg)
    x, taus = _inputs(cfg)
    for kind, tau in taus.items():
        diff = (model(x, tau).double() - ref(x, tau)).abs().max().item()
        assert diff < 1e-5, (family, kind, diff)
    # the legacy head split (what the configs' attention_legacy_order asks for) is another network
    legacy = load_adm(checkpoints[family], use_new_attention_order=False)
    assert (legacy(x, taus["binary"]).double() - ref(x, taus["binary"])).abs().max().item() > 1e-3
    # and guided-diffusion's GroupNorm eps is visible at this tolerance (measured 3.7e-5 .. 8.2e-5)
    eps = load_adm(checkpoints[family], norm_eps=1e-5)
    assert (eps(x, taus["binary"]).double() - ref(x, taus["binary"])).abs().max().item() > 2e-5


def test_what_the_loader_records(checkpoints):
    model = load_adm(checkpoints["ffhq"])
    cfg, rad = model.config, rad_info(model)
    assert cfg.use_new_attention_order and cfg.norm_eps == 1e-6 and cfg.norm_num_groups == 4
    assert (cfg.num_res_blocks, cfg.attention_ds, cfg.num_head_channels) == (1, (8,), 16)
    assert rad.tau_convention == "authors" and rad.is_rad and rad.embedding == "spatial"
    c = rad.curves
    assert (c.T1, c.T2, c.beta_start, c.beta_end, c.phase2_betas) == (1000, 1000, 1e-4, 0.02, (1e-4, 0.02))
    imagenet = load_adm(checkpoints["imagenet"]).config
    assert (imagenet.num_res_blocks, imagenet.attention_ds, imagenet.resblock_updown) == (2, (2, 4, 8), True)


def test_constant_tau_map_equals_the_scalar_path(checkpoints):
    model = load_adm(checkpoints["imagenet"])
    x, _ = _inputs(IMAGENET_LIKE)
    t = torch.tensor([250.0, 250.0])
    scalar = model(x, t)
    assert torch.equal(model(x, torch.full((2, 1, 16, 16), 250.0)), scalar)
    assert (model(x, torch.full((2, 1, 16, 16), 250.0), dense_embedding=True) - scalar).abs().max() < 1e-5


def test_ema_folder_on_request(checkpoints):
    x, taus = _inputs(FFHQ_LIKE)
    ema = load_adm(checkpoints["ffhq"], ema=True)
    ref = Reference(authors_state_dict(FFHQ_LIKE, seed=2, rank=4), FFHQ_LIKE)  # write_checkpoint: ema = seed + 1
    assert (ema(x, taus["binary"]).double() - ref(x, taus["binary"])).abs().max() < 1e-5
    with pytest.raises(CheckpointError, match="no unet_ema"):
        load_adm(checkpoints["imagenet"], ema=True)


def test_folder_file_and_converted_file_give_identical_outputs(checkpoints, tmp_path, capsys):
    folder = checkpoints["ffhq"]
    out = tmp_path / "rad_ffhq256.safetensors"
    assert convert_main([str(folder), "-o", str(out), "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    x, taus = _inputs(FFHQ_LIKE)
    models = [load_adm(folder), load_adm(folder / "unet" / "diffusion_pytorch_model.safetensors"), load_adm(out)]
    for tau in taus.values():
        outs = [m(x, tau) for m in models]
        assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    converted = models[2]
    assert rad_info(converted).tau_convention == "authors" and rad_info(converted).is_rad
    assert converted.config == models[0].config
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    arch = json.loads(meta["architecture"])
    assert arch["use_new_attention_order"] and arch["norm_eps"] == 1e-6 and meta["tau_convention"] == "authors"
    assert json.loads(meta["schedule"])["T2"] == 1000 and meta["converted_from"] == "checkpoint-300000"


def test_convert_refuses_to_clobber_and_writes_half_precision(checkpoints, tmp_path, capsys):
    out = tmp_path / "rad.safetensors"
    out.write_bytes(b"user data")
    assert convert_main([str(checkpoints["imagenet"]), "-o", str(out), "--dtype", "fp16", "-q"]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"user data"
    assert convert_main([str(checkpoints["imagenet"]), "-o", str(out), "--dtype", "fp16", "--force", "-q"]) == 0
    half = load_adm(out, dtype=torch.float16)
    assert half.dtype == torch.float16 and not list(tmp_path.glob(".*.tmp"))
    x, taus = _inputs(IMAGENET_LIKE)
    full = load_adm(checkpoints["imagenet"])
    assert (half.float()(x, taus["binary"]) - full(x, taus["binary"])).abs().max() < 5e-2
    assert convert_main([str(tmp_path / "missing"), "-o", str(tmp_path / "x.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_rad_convert_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "comfyui_rad.convert", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "checkpoint-N" in done.stdout


def test_plain_converted_base_with_legacy_order_equals_guided_diffusion(tmp_path):
    """A diffusers UNet2DModel conversion (attention_legacy_order) loads as the guided-diffusion ADM it came from."""
    cfg = _plain(FFHQ_LIKE)
    sd = authors_state_dict(cfg, seed=5, rad=False)
    gd = tmp_path / "gd.safetensors"
    save_file(to_guided_diffusion(sd, cfg), gd)
    original = load_adm(gd, num_head_channels=16, norm_eps=1e-6, norm_num_groups=4)
    x, taus = _inputs(cfg)
    for fmt in ("safetensors", "bin"):
        folder = tmp_path / fmt
        weights = write_model(folder, cfg, sd, bin=fmt == "bin")
        converted = load_adm(weights)
        assert not converted.config.use_new_attention_order and rad_info(converted).tau_convention == "gd"
        assert not rad_info(converted).is_rad
        for tau in (taus["scalar"], taus["binary"]):
            assert torch.equal(converted(x, tau), original(x, tau))
    # without the flag diffusers' standard split applies: that is the reference (their fork's) computation
    standard = write_model(tmp_path / "standard", {**cfg, "attention_legacy_order": False}, sd)
    diff = (load_adm(standard)(x, taus["scalar"]).double() - Reference(sd, cfg)(x, taus["scalar"])).abs().max()
    assert diff < 1e-5
    assert (original(x, taus["scalar"]).double() - Reference(sd, cfg)(x, taus["scalar"])).abs().max() > 1e-3


def test_adapter_on_a_converted_base(tmp_path):
    cfg = _plain(FFHQ_LIKE)
    base = write_model(tmp_path / "base", cfg, authors_state_dict(cfg, seed=6, rad=False))
    model = load_adm(base)
    w = model.input_blocks[0][0].weight
    lora = {"input_blocks.0.0": (torch.randn(2, *w.shape[1:]) * 0.1, torch.randn(w.shape[0], 2, 1, 1) * 0.1)}
    full = {"time_embed.0.weight": model.time_embed[0].weight + 0.01}
    adapter = save_adapter(tmp_path / "adapter.safetensors", lora=lora, full=full, base_path=base,
                           base_config=model.config, rank=2, alpha=2.0, tau_convention="gd")
    adapted = load_adm(base, adapter=adapter)
    delta = (lora["input_blocks.0.0"][1].flatten(1) @ lora["input_blocks.0.0"][0].flatten(1)).reshape(w.shape)
    assert torch.allclose(adapted.input_blocks[0][0].weight, w + delta, atol=1e-6)
    assert torch.equal(adapted.time_embed[0].weight, full["time_embed.0.weight"])
    assert rad_info(adapted).is_rad and rad_info(adapted).adapter == "adapter.safetensors"


@pytest.mark.parametrize("sampler,steps", [("ddpm", 100), ("ddim", 10)])
def test_pipeline_inpaints_with_their_timesteps_and_keeps_the_known_region(checkpoints, sampler, steps):
    model = load_adm(checkpoints["ffhq"])
    seen = []
    forward = model.forward
    model.forward = lambda x, t, y=None, **kw: seen.append(t.clone()) or forward(x, t, y, **kw)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:20, 5:27] = 1
    out, used = inpaint(model, image, mask, sampler=sampler, steps=steps, seed=1)
    keep = (used == 0)[:, None].expand_as(image)
    assert torch.equal(out[keep], image[keep])  # the known region, bit for bit
    assert not torch.equal(out[~keep], image[~keep])
    assert len(seen) == steps
    first, last = seen[0][0, 0], seen[-1][0, 0]
    hole = mask[0] == 1
    t0 = 990 if steps == 100 else 900
    assert torch.allclose(first[hole], torch.tensor(t0 + 1.0)) and (first[~hole] == 0).all()  # t + 1 and 0
    assert torch.allclose(last[hole], torch.tensor(1.0)) and (last[~hole] == 0).all()


def test_rad_inpaint_takes_the_folder(checkpoints, tmp_path):
    from PIL import Image

    from comfyui_rad.cli import main

    Image.new("RGB", (32, 32), (120, 40, 200)).save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    assert main(["--model", str(checkpoints["ffhq"]), "--image", str(tmp_path / "in.png"), "--mask", "box",
                 "--steps", "3", "-o", str(out), "-q"]) == 0
    assert out.is_file()


# -------------------------------------------------------------------------------------------------- refusals


def test_refuses_the_lora_only_export(checkpoints):
    lora = checkpoints["ffhq"] / "pytorch_lora_weights.safetensors"
    with pytest.raises(CheckpointError, match=r"LoRA-only.*no time layers.*checkpoint-N/unet/diffusion_pytorch_model"):
        load_adm(lora)
    renamed = lora.parent / "my_lora.safetensors"
    renamed.write_bytes(lora.read_bytes())
    try:
        with pytest.raises(CheckpointError, match="LoRA-only export.*no time layers"):
            load_adm(renamed)
    finally:
        renamed.unlink()


@pytest.mark.parametrize("name", ["optimizer.bin", "scheduler.bin", "random_states_0.pkl"])
def test_refuses_accelerate_pickles_without_reading_them(checkpoints, name):
    with pytest.raises(CheckpointError, match="accelerate training-state pickle.*never unpickles"):
        load_adm(checkpoints["imagenet"] / name)


@pytest.mark.parametrize("change,match", [
    ({"layers_per_block": 1}, "does not match the weights"),
    ({"block_out_channels": [16, 32, 32, 32]}, "does not match the weights"),
    ({"down_block_types": ["ResnetDownsampleBlock2D"] * 4}, "does not match the weights"),
    ({"resnet_time_scale_shift": "default"}, "does not match the weights"),
])
def test_refuses_a_config_that_does_not_match_the_weights(checkpoints, tmp_path, change, match):
    unet = checkpoints["imagenet"] / "unet"
    folder = tmp_path / "unet"
    folder.mkdir()
    name = "diffusion_pytorch_model.safetensors"
    (folder / name).write_bytes((unet / name).read_bytes())
    (folder / "config.json").write_text(json.dumps({**IMAGENET_LIKE, **change}))
    with pytest.raises(CheckpointError, match=match):
        load_adm(folder)


@pytest.mark.parametrize("kind,match", [("UNet2DConditionModel", "Stable Diffusion UNet"), ("AutoencoderKL", "VAE")])
def test_refuses_other_diffusers_models(tmp_path, kind, match):
    folder = tmp_path / "model"
    weights = write_model(folder, {"_class_name": kind}, {"conv_in.weight": torch.zeros(4, 4, 3, 3)})
    with pytest.raises(CheckpointError, match=match + ".*ComfyUI's own loaders"):
        load_adm(weights)
    sd_keys = {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight": torch.zeros(4, 4)}
    weights = write_model(tmp_path / "unnamed", {"block_out_channels": [4]}, sd_keys)
    with pytest.raises(CheckpointError, match="Stable Diffusion UNet"):
        load_adm(weights)


def test_refuses_missing_config_and_empty_folders(checkpoints, tmp_path):
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes((checkpoints["imagenet"] / "unet" / "diffusion_pytorch_model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="without its config.json"):
        load_adm(bare)
    named = tmp_path / "named"
    named.mkdir()
    (named / "diffusion_pytorch_model.safetensors").write_bytes(bare.read_bytes())
    with pytest.raises(CheckpointError, match="without its config.json: put the config.json"):
        load_adm(named / "diffusion_pytorch_model.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a diffusers model folder.*unet/diffusion_pytorch_model"):
        load_adm(tmp_path / "empty")


def test_timestep_embedding_options_follow_the_config(tmp_path):
    """freq_shift, flip_sin_to_cos and their max_period = pi / num_train_timesteps quirk, as the reference has them."""
    cfg = {**FFHQ_LIKE, "num_train_timesteps": 1000, "freq_shift": 1, "flip_sin_to_cos": False}
    sd = authors_state_dict(cfg, seed=9)
    model = load_adm(write_model(tmp_path / "unet", cfg, sd))
    assert model.config.max_period == pytest.approx(3.141592653589793e-3) and model.config.freq_shift == 1
    x, taus = _inputs(cfg)
    ref = Reference(sd, cfg)
    for tau in taus.values():
        assert (model(x, tau).double() - ref(x, tau)).abs().max() < 1e-5
