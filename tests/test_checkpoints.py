"""Checkpoint reading, architecture inference, adapter files and merging (comfyui_rad.architecture, .adapters,
.checkpoints).

Tiny random ADMs on CPU; weights come from ``_golden.random_state_dict`` so they depend only on a seed.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _golden import random_state_dict  # noqa: E402

from comfyui_rad import fileio  # noqa: E402
from comfyui_rad.adapters import (  # noqa: E402
    Adapter, lora_target_modules, merge_adapter, read_adapter, save_adapter, time_layer_keys,
)
from comfyui_rad.adm import ADM, ADMConfig  # noqa: E402
from comfyui_rad.architecture import config_from_json, config_from_state_dict  # noqa: E402
from comfyui_rad.checkpoints import load_adm, save_model  # noqa: E402
from comfyui_rad.fileio import CheckpointError, file_sha256, read_state_dict, weights_sha256  # noqa: E402
from comfyui_rad.schedule import NoiseCurves, RADInfo  # noqa: E402

TINY = ADMConfig(model_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_ds=(2,), num_head_channels=16)
CONFIGS = {
    "tiny": TINY,
    "class_cond": dataclasses.replace(TINY, num_classes=10),
    "conv_resample": dataclasses.replace(TINY, resblock_updown=False, conv_resample=True),
    "avgpool": dataclasses.replace(TINY, resblock_updown=False, conv_resample=False),
    "no_scale_shift": dataclasses.replace(TINY, use_scale_shift_norm=False),
    "fractional": dataclasses.replace(TINY, model_channels=64, channel_mult=(0.5, 1)),
    "three_levels": dataclasses.replace(TINY, num_res_blocks=2, channel_mult=(1, 2, 2), attention_ds=(2, 4),
                                        out_channels=3),
}
HEADS = {"num_head_channels": 16}


def random_adm(cfg: ADMConfig = TINY, seed: int = 0) -> ADM:
    with torch.device("meta"):  # no init work: every weight comes from the seed
        model = ADM(cfg)
    model.load_state_dict(random_state_dict({k: v.shape for k, v in model.state_dict().items()}, seed), assign=True)
    return model.eval().requires_grad_(False)


def weight_fields(cfg: ADMConfig) -> dict:
    """The fields the weights determine (conv_resample only matters without ResBlock up/down)."""
    names = ["model_channels", "num_res_blocks", "channel_mult", "attention_ds", "in_channels", "out_channels",
             "num_classes", "use_scale_shift_norm", "resblock_updown"]
    if not cfg.resblock_updown:
        names.append("conv_resample")
    return {n: getattr(cfg, n) for n in names}


def run(model: ADM, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 8, 8, generator=g)
    y = torch.tensor([1, 7]) if model.config.num_classes else None
    with torch.no_grad():
        return model(x, torch.tensor([999.0, 3.5]), y)


def same_weights(a: ADM | dict, b: ADM | dict) -> bool:
    """Equal state dicts (a strict load makes this as strong as equal outputs, and much cheaper)."""
    a, b = (m.state_dict() if isinstance(m, torch.nn.Module) else m for m in (a, b))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def save_sd(sd: dict, path: Path, **kw) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=kw.get("metadata"))
    else:
        torch.save(sd, path, **kw)
    return path


def shapes_of(cfg: ADMConfig) -> dict:
    with torch.device("meta"):
        return ADM(dataclasses.replace(cfg, num_head_channels=-1)).state_dict()


# ------------------------------------------------------------------------------------------- reading, inference


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("name", CONFIGS)
def test_config_round_trip(tmp_path, name, suffix):
    cfg = CONFIGS[name]
    path = save_sd(random_adm(cfg).state_dict(), tmp_path / f"m{suffix}")
    sd, meta = read_state_dict(path)
    inferred = config_from_state_dict(sd, metadata=meta)
    assert weight_fields(inferred) == weight_fields(cfg)
    assert inferred.num_head_channels == 64  # the default head layout: not in the weights
    assert dataclasses.replace(config_from_state_dict(sd, **HEADS), image_size=cfg.image_size) == cfg


@pytest.mark.parametrize("name", CONFIGS)
def test_load_adm_matches_source(tmp_path, name):
    source = random_adm(CONFIGS[name], seed=3)
    model = load_adm(save_sd(source.state_dict(), tmp_path / "m.safetensors"), **HEADS)
    assert torch.equal(run(model), run(source))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.rad_info == RADInfo(curves=NoiseCurves(), tau_convention="gd", is_rad=False, embedding="spatial",
                                     base="m.safetensors", adapter=None, strength=0.0)


def test_class_conditional_needs_labels(tmp_path):
    model = load_adm(save_sd(random_adm(CONFIGS["class_cond"]).state_dict(), tmp_path / "c.pt"), **HEADS)
    with pytest.raises(ValueError, match="class labels"):
        model(torch.zeros(1, 3, 8, 8), torch.tensor([5.0]))


@pytest.mark.parametrize("levels,size", [(4, 64), (5, 128), (6, 256), (7, 512)])
def test_image_size_from_levels(levels, size):
    cfg = ADMConfig(model_channels=64, num_res_blocks=1, channel_mult=(1,) * levels, attention_ds=(2,))
    assert config_from_state_dict(shapes_of(cfg)).image_size == size
    assert config_from_state_dict(shapes_of(cfg), image_size=96).image_size == 96


def test_real_layouts_from_shapes():
    """ADM-256 (OpenAI / RePaint) and FFHQ (DPS, P2) layouts at full width, on the meta device."""
    for cfg in (ADMConfig(model_channels=256, num_res_blocks=2, channel_mult=(1, 1, 2, 2, 4, 4),
                          attention_ds=(8, 16, 32)),
                ADMConfig(model_channels=128, num_res_blocks=1, channel_mult=(1, 1, 2, 2, 4, 4), attention_ds=(16,)),
                ADMConfig(model_channels=256, num_res_blocks=2, channel_mult=(1, 1, 2, 2, 4, 4),
                          attention_ds=(8, 16, 32), num_classes=1000)):
        assert config_from_state_dict(shapes_of(cfg)) == cfg


def test_head_overrides():
    sd = shapes_of(TINY)
    cfg = config_from_state_dict(sd, num_heads=2, num_heads_upsample=4, use_new_attention_order=True)
    heads = (cfg.num_heads, cfg.num_head_channels, cfg.num_heads_upsample, cfg.use_new_attention_order)
    assert heads == (2, -1, 4, True)


def test_torch_file_variants(tmp_path):
    sd = random_adm(seed=4).state_dict()
    other = random_adm(seed=5).state_dict()
    legacy = save_sd(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    wrapped = save_sd({"state_dict": sd, "epoch": 3}, tmp_path / "w.ckpt")
    prefixed = save_sd({"module." + k: v for k, v in sd.items()}, tmp_path / "p.bin")
    ema = save_sd({"model": other, "ema": sd, "step": 10}, tmp_path / "ema.pt")
    for path in (legacy, wrapped, prefixed, ema):
        got, meta = read_state_dict(path)
        assert meta == {} and got.keys() == sd.keys(), path.name
        assert all(torch.equal(got[k], sd[k]) for k in sd), path.name


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_state_dict(tmp_path / "nope.pt")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file(tmp_path, suffix):
    full = save_sd(random_adm().state_dict(), tmp_path / f"full{suffix}")
    cut = tmp_path / f"cut{suffix}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated download") as err:
        load_adm(cut)
    assert str(cut) in str(err.value) and "\n" not in str(err.value)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="'.onnx'"):
        read_state_dict(path)


def _sd() -> dict:
    return dict(random_adm().state_dict())


def test_missing_key():
    sd = _sd()
    del sd["input_blocks.1.0.in_layers.2.bias"]
    with pytest.raises(ValueError, match=r"1 missing: input_blocks\.1\.0\.in_layers\.2\.bias"):
        config_from_state_dict(sd, **HEADS)


def test_unexpected_key():
    sd = _sd()
    sd["middle_block.3.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"1 unexpected: middle_block\.3\.weight"):
        config_from_state_dict(sd, **HEADS)


def test_shape_mismatch():
    sd = _sd()
    sd["middle_block.1.proj_out.bias"] = torch.zeros(7)
    with pytest.raises(ValueError, match=r"middle_block\.1\.proj_out\.bias is \[7\] in the file but \[64\] in"):
        config_from_state_dict(sd, **HEADS)


def test_many_missing_keys_are_counted():
    sd = {k: v for k, v in _sd().items() if not k.startswith("middle_block.1.")}
    with pytest.raises(ValueError, match=r"6 missing: middle_block\.1\.norm\.weight.* and 1 more"):
        config_from_state_dict(sd, **HEADS)


@pytest.mark.parametrize("sd,what", [
    ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1), "first_stage_model.x": torch.zeros(1)},
     "Stable Diffusion checkpoint"),
    ({"conditioner.embedders.0.x": torch.zeros(1)}, r"Stable Diffusion checkpoint \(conditioner\.\* keys\)"),
    ({"first_stage_model.decoder.x": torch.zeros(1)}, r"Stable Diffusion checkpoint \(first_stage_model\.\* keys\)"),
    ({"lora_unet_down_blocks_0_attn.lora_down.weight": torch.zeros(1)}, "LoRA file"),
    ({"input_blocks.0.0.lora_A.weight": torch.zeros(1)}, "LoRA file"),
    ({"lora_te_text_model.alpha": torch.zeros(1)}, "LoRA file"),
    ({"conv_in.weight": torch.zeros(1), "down_blocks.0.resnets.0.conv1.weight": torch.zeros(1)}, "diffusers UNet"),
    ({}, "no tensors"),
    ({"encoder.weight": torch.zeros(1)}, r"not a guided-diffusion ADM: no time_embed\.0\.weight / input_blocks"),
])
def test_not_an_adm(sd, what):
    with pytest.raises(CheckpointError, match=what):
        config_from_state_dict(sd)


def test_unknown_override():
    with pytest.raises(TypeError, match=r"attention_resolutions.*valid names are .*num_head_channels"):
        config_from_state_dict(_sd(), attention_resolutions=(16,))


def test_head_channels_not_dividing(tmp_path):
    with pytest.raises(ValueError, match=r"m\.pt.*64 channels.*num_head_channels=24"):
        load_adm(save_sd(_sd(), tmp_path / "m.pt"), num_head_channels=24)


def test_wrong_override_is_named():
    with pytest.raises(ValueError, match="shape mismatch"):
        config_from_state_dict(_sd(), model_channels=64, **HEADS)


# ------------------------------------------------------------------------------------------------------ adapters

R, ALPHA = 4, 8.0


def test_targets_and_time_keys():
    targets = lora_target_modules(TINY)
    model = ADM(TINY)
    modules = dict(model.named_modules())
    assert targets[0] == "input_blocks.0.0" and targets[-1] == "out.2"
    assert {"middle_block.1.qkv", "middle_block.1.proj_out", "input_blocks.2.0.in_layers.2",
            "output_blocks.1.2.out_layers.3"} <= set(targets)  # a down and an up ResBlock included
    n_res = sum(type(m).__name__ == "ResBlock" for m in modules.values())
    n_attn = sum(type(m).__name__ == "AttentionBlock" for m in modules.values())
    assert len(targets) == len(set(targets)) == 2 + 2 * n_res + 2 * n_attn
    assert all(hasattr(modules[t], "weight") for t in targets)
    keys = time_layer_keys(model)
    assert keys == time_layer_keys(model.state_dict()) == time_layer_keys(TINY)
    assert len(keys) == 4 + 2 * n_res
    assert all(k.startswith("time_embed.") or ".emb_layers.1." in k for k in keys)


def make_lora(cfg: ADMConfig, seed: int = 0, rank: int = R) -> tuple[dict, dict]:
    """Random LoRA pairs for RAD's targets and random trained time layers, shaped for ``cfg``."""
    g = torch.Generator().manual_seed(seed)
    shapes = {k: v.shape for k, v in shapes_of(cfg).items()}
    lora = {}
    for m in lora_target_modules(cfg):
        w = shapes[m + ".weight"]
        lora[m] = (torch.randn(rank, *w[1:], generator=g), torch.randn(w[0], rank, *[1] * (len(w) - 2), generator=g))
    full = {k: torch.randn(shapes[k], generator=g) for k in time_layer_keys(cfg)}
    return lora, full


@pytest.fixture
def base(tmp_path) -> Path:
    return save_sd(random_adm(seed=10).state_dict(), tmp_path / "base.safetensors")


@pytest.fixture
def adapter_file(tmp_path, base) -> Path:
    lora, full = make_lora(TINY)
    return save_adapter(tmp_path / "rad.safetensors", lora=lora, full=full, base_path=base, base_config=TINY,
                        rank=R, alpha=ALPHA, tau_convention="authors", extra_metadata={"note": "x"})


def test_adapter_round_trip(tmp_path, base, adapter_file):
    lora, full = make_lora(TINY)
    ad = read_adapter(adapter_file)
    assert ad.kind == "adapter" and ad.name == "rad.safetensors" and (ad.rank, ad.alpha) == (R, ALPHA)
    assert ad.lora.keys() == lora.keys() and ad.full.keys() == full.keys()
    assert all(torch.equal(ad.lora[m][i], lora[m][i]) for m in lora for i in (0, 1))
    assert all(torch.equal(ad.full[k], full[k]) for k in full)
    meta = ad.metadata
    assert meta["format"] == "comfyui-rad.adapter" and meta["format_version"] == "1"
    assert meta["base_name"] == "base.safetensors" and meta["base_sha256"] == file_sha256(base)
    assert meta["base_weights_sha256"] == weights_sha256(read_state_dict(base)[0])
    assert meta["schedule"] == {"T1": 1000, "T2": 1000, "beta_start": 0.0001, "beta_end": 0.02}
    assert meta["tau_convention"] == "authors" and meta["note"] == "x"
    assert meta["target_modules"] == lora_target_modules(TINY) and meta["full_keys"] == sorted(full)
    assert config_from_json(meta["base_architecture"], "x") == TINY
    assert meta["created_by"].startswith("comfyui-rad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors", "rad.safetensors"]  # no temp file


def test_merge_strength_zero_is_base(base, adapter_file):
    sd, _ = read_state_dict(base)
    merged = merge_adapter(sd, read_adapter(adapter_file), strength=0.0)
    assert merged.keys() == sd.keys() and all(torch.equal(merged[k], sd[k]) for k in sd)


def test_merge_matches_hand_computed(base):
    sd, _ = read_state_dict(base)
    g = torch.Generator().manual_seed(1)
    conv2d, conv1d, linear = "input_blocks.0.0", "middle_block.1.qkv", "time_embed.2"
    a2, b2 = torch.randn(R, 3, 3, 3, generator=g), torch.randn(32, R, 1, 1, generator=g)
    a1, b1 = torch.randn(R, 64, 1, generator=g), torch.randn(192, R, 1, generator=g)
    al, bl = torch.randn(R, 128, generator=g), torch.randn(128, R, generator=g)
    trained = torch.randn(128, generator=g)
    ad = Adapter(lora={conv2d: (a2, b2), conv1d: (a1, b1), linear: (al, bl)}, full={"time_embed.0.bias": trained},
                 metadata={"lora_rank": R, "lora_alpha": ALPHA})
    s = ALPHA / R
    merged = merge_adapter(sd, ad, strength=1.0)
    torch.testing.assert_close(merged[conv2d + ".weight"],
                               sd[conv2d + ".weight"] + s * torch.einsum("or,rihw->oihw", b2[:, :, 0, 0], a2))
    torch.testing.assert_close(merged[conv1d + ".weight"],
                               sd[conv1d + ".weight"] + s * torch.einsum("or,ril->oil", b1[:, :, 0], a1))
    torch.testing.assert_close(merged[linear + ".weight"], sd[linear + ".weight"] + s * bl @ al)
    assert torch.equal(merged["time_embed.0.bias"], trained)
    assert merged["out.2.weight"] is sd["out.2.weight"]  # untouched tensors are shared, not copied
    # peft's forward for a 3x3 conv: base(x) + scale * lora_B(lora_A(x)) with lora_A a 3x3 conv, lora_B a 1x1 conv
    x = torch.randn(1, 3, 8, 8, generator=g)
    w, bias = sd[conv2d + ".weight"], sd[conv2d + ".bias"]
    peft = F.conv2d(x, w, bias, padding=1) + s * F.conv2d(F.conv2d(x, a2, padding=1), b2)
    torch.testing.assert_close(F.conv2d(x, merged[conv2d + ".weight"], bias, padding=1), peft, atol=1e-5, rtol=1e-5)
    half = merge_adapter(sd, ad, strength=0.5)
    torch.testing.assert_close(half["time_embed.0.bias"], (sd["time_embed.0.bias"] + trained) / 2)
    torch.testing.assert_close(half[linear + ".weight"], sd[linear + ".weight"] + 0.5 * s * bl @ al)


def test_merge_keeps_dtype(base):
    sd = {k: v.half() for k, v in read_state_dict(base)[0].items()}
    lora, full = make_lora(TINY)
    merged = merge_adapter(sd, Adapter(lora, full, {"lora_rank": R, "lora_alpha": ALPHA}))
    assert all(v.dtype == torch.float16 for v in merged.values())


def test_merge_refuses_misfit(base):
    sd, _ = read_state_dict(base)
    bad = Adapter(lora={"middle_block.9.qkv": (torch.zeros(R, 64, 1), torch.zeros(192, R, 1)),
                        "out.2": (torch.zeros(R, 5, 3, 3), torch.zeros(6, R, 1, 1))},
                  full={"time_embed.0.bias": torch.zeros(3)}, metadata={"lora_rank": R, "lora_alpha": 1.0}, name="bad")
    with pytest.raises(ValueError) as err:
        merge_adapter(sd, bad)
    msg = str(err.value)
    assert "middle_block.9.qkv" in msg and "out.2: lora_A [4, 5, 3, 3]" in msg and "time_embed.0.bias is [3]" in msg


def test_load_adm_with_adapter(base, adapter_file):
    ad = read_adapter(adapter_file)
    model = load_adm(base, adapter_file, strength=0.7)
    assert same_weights(model, merge_adapter(read_state_dict(base)[0], ad, 0.7))
    assert model.config == TINY  # the adapter's head layout (16 per head) replaces the default 64
    assert model.rad_info == RADInfo(curves=NoiseCurves(), tau_convention="authors", is_rad=True,
                                     embedding="spatial", base="base.safetensors", adapter="rad.safetensors",
                                     strength=0.7)
    assert load_adm(base, ad, strength=0.7).rad_info.adapter == "rad.safetensors"  # an Adapter object works


def test_adapter_on_converted_base(tmp_path, base, adapter_file):
    """A .pt copy of the same weights has another file hash but the same weights hash: accepted."""
    pt = save_sd(read_state_dict(base)[0], tmp_path / "base_copy.pt")
    assert file_sha256(pt) != file_sha256(base)
    assert same_weights(load_adm(pt, adapter_file), load_adm(base, adapter_file))


def test_adapter_for_another_base(tmp_path, adapter_file):
    other = save_sd(random_adm(seed=11).state_dict(), tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=r"made for base 'base\.safetensors'.*not for 'other\.safetensors'"):
        load_adm(other, adapter_file)


def test_adapter_for_another_architecture(tmp_path, adapter_file):
    cfg = dataclasses.replace(TINY, channel_mult=(1, 1))
    other = save_sd(random_adm(cfg).state_dict(), tmp_path / "narrow.pt")
    with pytest.raises(ValueError, match=r"base\.safetensors.*narrow\.pt.*channel_mult \(adapter \(1, 2\), base"):
        load_adm(other, adapter_file)


def test_adapter_head_layout_mismatch(base, adapter_file):
    with pytest.raises(ValueError, match=r"num_head_channels \(adapter 16, base 32\)"):
        load_adm(base, adapter_file, num_head_channels=32)


def test_adapter_head_layout_adopted(tmp_path, base):
    cfg = dataclasses.replace(TINY, num_heads=4, num_head_channels=-1, num_heads_upsample=2)
    lora, full = make_lora(cfg)
    path = save_adapter(tmp_path / "h.safetensors", lora=lora, full=full, base_path=base, base_config=cfg,
                        rank=R, alpha=ALPHA)
    assert load_adm(base, path).config == cfg


def test_save_adapter_refuses_clobber_and_base(tmp_path, base, adapter_file):
    lora, full = make_lora(TINY)
    kw = dict(lora=lora, full=full, base_path=base, base_config=TINY, rank=R, alpha=ALPHA)
    with pytest.raises(FileExistsError, match="rad.safetensors.*force=True"):
        save_adapter(adapter_file, **kw)
    before = file_sha256(base)
    with pytest.raises(FileExistsError, match="base checkpoint itself"):
        save_adapter(base, force=True, **kw)
    assert file_sha256(base) == before
    save_adapter(adapter_file, force=True, **dict(kw, alpha=2.0))
    assert read_adapter(adapter_file).alpha == 2.0


def test_save_adapter_failure_leaves_nothing(tmp_path, base, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(fileio, "save_file", boom)  # the one safetensors writer
    lora, full = make_lora(TINY)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(tmp_path / "a.safetensors", lora=lora, full=full, base_path=base, base_config=TINY,
                     rank=R, alpha=ALPHA)
    assert [p.name for p in tmp_path.iterdir()] == ["base.safetensors"]


def test_save_adapter_checks_shapes(tmp_path, base):
    lora, full = make_lora(TINY, rank=2)
    with pytest.raises(ValueError, match="rank 2 but lora_rank is 4"):
        save_adapter(tmp_path / "a.safetensors", lora=lora, full=full, base_path=base, base_config=TINY,
                     rank=R, alpha=ALPHA)
    with pytest.raises(ValueError, match=r"base base\.safetensors does not match"):
        save_adapter(tmp_path / "a.safetensors", lora=lora, full=full, base_path=base,
                     base_config=dataclasses.replace(TINY, num_classes=3), rank=2, alpha=ALPHA)


def test_read_adapter_errors(tmp_path, adapter_file):
    sd, meta = read_state_dict(adapter_file)
    newer = save_sd(sd, tmp_path / "v2.safetensors", metadata={**meta, "format_version": "2"})
    with pytest.raises(ValueError, match="format_version '2'"):
        read_adapter(newer)
    alien = save_sd(sd, tmp_path / "alien.safetensors", metadata={"format": "kohya.lora"})
    with pytest.raises(ValueError, match="format 'kohya.lora' is not a comfyui-rad adapter"):
        read_adapter(alien)
    kohya = save_sd({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, tmp_path / "k.safetensors")
    with pytest.raises(ValueError, match="k.safetensors is not a comfyui-rad adapter.*LoRA file"):
        read_adapter(kohya)
    lacking = {k: v for k, v in meta.items() if k != "base_sha256"}
    with pytest.raises(ValueError, match="lacks base_sha256"):
        read_adapter(save_sd(sd, tmp_path / "l.safetensors", metadata=lacking))


def test_adapter_is_not_a_base(adapter_file):
    with pytest.raises(ValueError, match="this is a RAD adapter; load the base ADM and pass this file as the adapter"):
        load_adm(adapter_file)


def test_full_fine_tuned_as_adapter(tmp_path, base):
    tuned = random_adm(seed=12)
    ft = save_sd(tuned.state_dict(), tmp_path / "ft.pt")
    assert read_adapter(ft).kind == "full"
    assert same_weights(load_adm(base, ft, strength=1.0, **HEADS), tuned)
    assert same_weights(load_adm(base, ft, strength=0.0, **HEADS), read_state_dict(base)[0])
    half = load_adm(base, ft, strength=0.5, **HEADS).state_dict()
    base_sd = read_state_dict(base)[0]
    torch.testing.assert_close(half["out.2.weight"], (base_sd["out.2.weight"] + tuned.state_dict()["out.2.weight"]) / 2)
    partial = {k: v for k, v in tuned.state_dict().items() if k != "out.2.bias"}
    with pytest.raises(ValueError, match="out.2.bias is missing"):
        load_adm(base, save_sd(partial, tmp_path / "partial.pt"), **HEADS)


# ----------------------------------------------------------------------------------------------- whole models


def test_save_model_round_trip(tmp_path):
    cfg = dataclasses.replace(CONFIGS["three_levels"], num_heads=2, num_head_channels=-1, num_heads_upsample=4,
                              use_new_attention_order=True, image_size=48)
    source = random_adm(cfg, seed=6)
    path = save_model(tmp_path / "rad.safetensors", source, tau_convention="authors", metadata={"steps": 100})
    model = load_adm(path)
    assert model.config == cfg
    assert torch.equal(run(model), run(source))
    assert model.rad_info == RADInfo(curves=NoiseCurves(), tau_convention="authors", is_rad=True,
                                     embedding="spatial", base="rad.safetensors", adapter=None, strength=1.0)
    assert read_state_dict(path)[1]["steps"] == "100"
    assert load_adm(path, num_heads=4).config.num_heads == 4  # overrides still win
    with pytest.raises(FileExistsError, match="force=True"):
        save_model(path, model)
    save_model(path, model, force=True)  # rad_info (tau "authors") travels with the model
    assert load_adm(path).rad_info.tau_convention == "authors"


def test_saved_files_get_the_umask_mode_and_leave_no_temporaries(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_model(tmp_path / "shared.safetensors", random_adm(seed=1))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # readable by others, as any file the user writes (not 0600)
    assert [p.name for p in tmp_path.iterdir()] == ["shared.safetensors"]


def test_dtype_and_fp16_file(tmp_path):
    sd = {k: v.half() for k, v in random_adm().state_dict().items()}
    path = save_sd(sd, tmp_path / "half.safetensors")
    assert load_adm(path, **HEADS).dtype == torch.float32
    assert load_adm(path, dtype="bfloat16", **HEADS).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_adm(path, dtype="int8", **HEADS)


def test_hashes(tmp_path):
    sd = random_adm().state_dict()
    pt, st = save_sd(sd, tmp_path / "a.pt"), save_sd(sd, tmp_path / "a.safetensors")
    assert weights_sha256(read_state_dict(pt)[0]) == weights_sha256(read_state_dict(st)[0])
    assert weights_sha256({k: v.half().float() for k, v in sd.items()}) != weights_sha256(sd)
    assert file_sha256(pt) != file_sha256(st) and file_sha256(pt) == file_sha256(pt)


def test_pickled_objects_refused(tmp_path):
    import argparse

    path = save_sd({"state_dict": _sd(), "args": argparse.Namespace(lr=1e-4)}, tmp_path / "gd.pt")
    with pytest.raises(ValueError, match=r"gd\.pt holds Python objects.*argparse\.Namespace"):
        read_state_dict(path)
