"""schedule.RADInfo: the typed record of a model's RAD facts, its file metadata both ways, and files written before
it existed (the trainer's old metadata: schedule with null Phase 2 betas, train_embedding, train_mask_sampling)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from comfyui_rad.adm import ADM, ADMConfig
from comfyui_rad.architecture import config_json
from comfyui_rad.checkpoints import load_adm, save_model
from comfyui_rad.fileio import MODEL_FORMAT
from comfyui_rad.sampling import RADDenoiser
from comfyui_rad.schedule import TAU_CONVENTIONS, NoiseCurves, RADInfo, rad_info

TINY = ADMConfig(model_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_ds=(2,), num_head_channels=16,
                 image_size=16)


def tiny() -> ADM:
    torch.manual_seed(0)
    return ADM(TINY).eval()


def test_metadata_round_trip():
    info = RADInfo(NoiseCurves(T1=500, beta_end=0.03, beta2_start=0.001), "authors", "scalar", is_rad=True)
    meta = info.to_metadata()
    assert all(isinstance(v, str) for v in meta.values())
    assert json.loads(meta["schedule"]) == {"T1": 500, "T2": 1000, "beta_start": 0.0001, "beta_end": 0.03,
                                            "beta2_start": 0.001}
    assert RADInfo.from_metadata(meta) == info
    assert RADInfo.from_metadata(meta, is_rad=False) == RADInfo(info.curves, "authors", "scalar", is_rad=False)
    assert RADInfo.from_metadata({}, is_rad=False) == RADInfo() == rad_info(torch.nn.Linear(1, 1))


def test_bad_facts_are_refused():
    assert TAU_CONVENTIONS == ("gd", "authors")
    with pytest.raises(ValueError, match="unknown tau convention 'ddpm'"):
        RADInfo(tau_convention="ddpm")
    with pytest.raises(ValueError, match="embedding must be one of spatial, scalar, got 'flat'"):
        RADInfo(embedding="flat")


def test_an_old_model_file_still_loads_its_facts(tmp_path):
    """Metadata as rad-train wrote it before RADInfo: the 6-field schedule with nulls, the training record."""
    model = tiny()
    old = {"format": MODEL_FORMAT, "format_version": "1", "architecture": config_json(TINY),
           "schedule": json.dumps({"T1": 1000, "T2": 1000, "beta_start": 0.0001, "beta_end": 0.02,
                                   "beta2_start": None, "beta2_end": None}, sort_keys=True),
           "tau_convention": "gd", "trainer": "rad-train", "train_embedding": "scalar", "train_mask_sampling": "perlin"}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "old.safetensors", metadata=old)
    info = load_adm(tmp_path / "old.safetensors").rad_info
    assert info == RADInfo(NoiseCurves(), "gd", "scalar", is_rad=True, base="old.safetensors", strength=1.0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "plain.safetensors",
              metadata={**old, "train_mask_sampling": "full", "train_embedding": "spatial"})
    assert not load_adm(tmp_path / "plain.safetensors").rad_info.is_rad


def test_save_model_writes_the_model_facts(tmp_path):
    model = tiny()
    model.rad_info = RADInfo(NoiseCurves(T1=200), "authors", "scalar", is_rad=True)
    loaded = load_adm(save_model(tmp_path / "m.safetensors", model))
    assert loaded.rad_info == RADInfo(NoiseCurves(T1=200), "authors", "scalar", is_rad=True, base="m.safetensors",
                                      strength=1.0)
    assert RADDenoiser(loaded).embedding == "scalar" and RADDenoiser(loaded).curves.T1 == 200


def test_denoiser_scalar_embedding_is_the_mean_level_timestep():
    """Cfg. 2: one timestep per image, that of the mean noise level, straight from abar (no per-pixel detour)."""
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x, t, y=None):
            seen["t"] = t
            return torch.zeros(x.shape[0], 6, *x.shape[-2:])

    curves = NoiseCurves()
    half = torch.zeros(1, 1, 4, 4)
    half[..., :2, :] = 1
    abar = curves.abar(half, 300)
    eps, v = RADDenoiser(Probe(), curves, "scalar")(torch.zeros(2, 3, 4, 4), abar)
    assert seen["t"].shape == (2,) and torch.equal(seen["t"], curves.scalar_timestep(abar).expand(2))
    assert eps.shape == v.shape == (2, 3, 4, 4)
    RADDenoiser(Probe(), curves, "spatial")(torch.zeros(2, 3, 4, 4), abar)
    assert seen["t"].shape == (2, 1, 4, 4) and torch.equal(seen["t"][1], curves.timestep(abar)[0])


def test_bbar_table_lookup_inverts_the_timestep_map():
    curves = NoiseCurves()
    k = torch.tensor([0.0, 0.5, 1.0, 250.25, 1000.0, 1200.0])
    bbar = curves.bbar_after(k)
    assert bbar[0] == 0 and bbar[2] == curves.bbar_table[1] and bbar[-1] == bbar[-2] == curves.bbar_table[-1]
    torch.testing.assert_close(curves.timestep(1 - bbar[:5], "authors").double(), k[:5].double(), atol=1e-4, rtol=0)
    assert torch.equal(curves.abar_from_timestep(k - 1, "gd"), 1 - bbar)
