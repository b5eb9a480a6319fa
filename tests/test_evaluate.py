"""rad-eval: masks shared across runs, results that are what the sampler gives, JSON and grids, refusals."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import TINY, make_adm
from PIL import Image

from comfyui_rad import evaluate as ev
from comfyui_rad.checkpoints import save_model
from comfyui_rad.perceptual import LPIPS
from comfyui_rad.sampling import RADDenoiser, sample_ddpm
from comfyui_rad.schedule import RADInfo, SpatialSchedule

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dataclasses.replace(TINY, image_size=32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    rng = np.random.RandomState(0)
    (d / "held" / "sub").mkdir(parents=True)
    for i in range(5):
        pixels = (rng.rand(36, 40, 3) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(d / "held" / ("sub" if i % 2 else ".") / f"im{i}.png")
    save_model(d / "model.safetensors", make_adm(SMALL, seed=0))
    torch.manual_seed(0)
    lpips = LPIPS()
    for k in range(5):
        getattr(lpips, f"lin{k}").model[0].weight.data.abs_()
    torch.save(lpips.state_dict(), d / "lpips.pth")
    return d


def test_masks_are_seeded_and_shared():
    a = ev.eval_masks("box", 4, 32, seed=3)
    assert torch.equal(a, ev.eval_masks("box", 4, 32, seed=3)) and not torch.equal(a, ev.eval_masks("box", 4, 32, 4))
    assert a.shape == (4, 32, 32) and bool((a.sum(dim=(1, 2)) == 256).all())  # a 16x16 hole each
    extreme = ev.eval_masks("extreme", 2, 32, seed=0)
    assert bool((extreme[:, 8:24, 8:24] == 0).all()) and extreme.sum() == 2 * (1024 - 256)
    with pytest.raises(ValueError, match="unknown mask kind 'boxes'"):
        ev.eval_masks("boxes", 1, 32, 0)


def test_evaluate_measures_what_the_sampler_made():
    model = make_adm(SMALL, seed=1)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    runs = ev.evaluate(model, images, ["box", "wide"], sampler="ddpm", steps=3, seed=5, batch_size=2,
                       inception=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4)))
    box = runs["box"]
    assert torch.equal(box.masks, ev.eval_masks("box", 3, 32, 5))
    keep = box.masks[:, None].expand_as(images) == 0
    assert torch.equal(box.results[keep], images[keep])  # kept pixels bit-identical
    torch.testing.assert_close(box.per_image["hole_mse"], ((box.results - images) ** 2 * ~keep).sum(dim=(1, 2, 3))
                               .double() / (~keep).sum(dim=(1, 2, 3)), rtol=1e-5, atol=0)
    assert set(box.per_image) == {"hole_mse", "hole_psnr", "ssim", "ssim_hole", "seam"}
    assert box.calls_per_image == 3 and box.seconds > 0 and box.fid is not None and box.fid >= 0
    # batches are seeded by their first image: the same split gives the same results
    again = ev.evaluate(model, images, ["box"], sampler="ddpm", steps=3, seed=5, batch_size=2)
    assert torch.equal(again["box"].results, box.results)
    with pytest.raises(ValueError, match=r"model needs \[N, 3, 32, 32\]"):
        ev.evaluate(model, images[..., :16, :16], ["box"])


def test_baselines_and_scalar_models():
    model = make_adm(SMALL, seed=2)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    repaint = ev.evaluate(model, images, ["box"], sampler="repaint", steps=4, batch_size=2,
                          options={"jump_length": 2, "jump_n_sample": 2})["box"]
    assert repaint.calls_per_image == 6  # 4 steps + one jump of 2 at j = 0
    replace = ev.evaluate(model, images, ["box"], sampler="replace", steps=4, batch_size=2)["box"]
    assert not torch.equal(replace.results, repaint.results)
    assert RADDenoiser(model).embedding == "spatial"
    model.rad_info = RADInfo(embedding="scalar", tau_convention="gd")
    wrapped = RADDenoiser(model)
    assert wrapped.embedding == "scalar" and wrapped.model is model
    assert RADDenoiser(model, embedding="spatial").embedding == "spatial"
    image, schedule = images[:1] * 2 - 1, SpatialSchedule(ev.eval_masks("box", 1, 32, 0))
    assert torch.equal(sample_ddpm(wrapped, image, schedule, 2), sample_ddpm(model, image, schedule, 2))  # used as is


def test_inpaint_drives_a_scalar_trained_model_as_trained():
    """rad-inpaint and the nodes go through pipeline.inpaint: a Cfg. 2 model gets one timestep per image there too."""
    from comfyui_rad.pipeline import inpaint

    model = make_adm(SMALL, seed=3)
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:24, 8:24] = 1
    model.rad_info = RADInfo(embedding="spatial", tau_convention="gd", is_rad=True)
    spatial, _ = inpaint(model, images, mask, steps=3, fit="resize")
    by_hand, _ = inpaint(model, images, mask, steps=3, fit="resize", embedding="scalar")
    model.rad_info = RADInfo(embedding="scalar", tau_convention="gd", is_rad=True)
    auto, _ = inpaint(model, images, mask, steps=3, fit="resize")
    assert torch.equal(auto, by_hand) and not torch.equal(auto, spatial)
    assert torch.equal(inpaint(model, images, mask, steps=3, fit="resize", embedding="spatial")[0], spatial)
    with pytest.raises(ValueError, match="embedding must be auto, spatial or scalar, got 'flat'"):
        inpaint(model, images, mask, steps=3, embedding="flat")


def test_network_calls_count_rad_resampling():
    assert ev.network_calls("ddpm", 100) == 100 and ev.network_calls("ddim", 25, {}) == 25
    assert ev.network_calls("ddpm", 100, {"resample": 1, "jump": 10}) == 190
    assert ev.network_calls("ddim", 25, {"resample": 3, "jump": 5}) == 85
    assert ev.network_calls("repaint", 250) == 2410 and ev.network_calls("replace", 100) == 100


def test_cli_resample_flags(files, capsys):
    out = files / "resampled.json"
    args = ["--model", str(files / "model.safetensors"), "--images", str(files / "held"), "--out", str(out),
            "--masks", "box", "--steps", "3", "--limit", "2", "-q"]
    assert ev.main([*args, "--resample", "1", "--jump", "2"]) == 0
    data = json.loads(out.read_text())
    assert data["config"]["options"] == {"resample": 1, "jump": 2, "spacing": "lambda"}  # the default sampler's
    assert data["masks"]["box"]["network_calls_per_image"] == 3 + 2
    assert ev.main([*args, "--resample", "1", "--jump", "3", "--force"]) == 2
    assert "--jump 3 must be below --steps 3" in capsys.readouterr().err
    assert ev.main([*args, "--resample", "1", "--sampler", "replace", "--force"]) == 2
    assert ("--resample works with RAD's samplers (--sampler ddim, ddpm, dpmpp_2m, dpmpp_2m_sde, euler_ancestral), "
            "not replace") in capsys.readouterr().err


def test_cli_start_flags(files, capsys):
    args = ["--model", str(files / "model.safetensors"), "--images", str(files / "held"), "--masks", "box",
            "--steps", "3", "--limit", "2", "--sampler", "ddim", "-q"]
    runs = {}
    for name, extra in (("plain", []), ("full", ["--start", "harmonic", "--start-strength", "1"]),
                        ("zero", ["--start", "harmonic", "--start-strength", "0"])):
        assert ev.main([*args, "--out", str(files / f"start_{name}.json"), *extra]) == 0
        runs[name] = json.loads((files / f"start_{name}.json").read_text())
    psnr = {n: [r["hole_psnr"] for r in d["masks"]["box"]["per_image"]] for n, d in runs.items()}
    assert psnr["full"] == psnr["plain"] and psnr["zero"] != psnr["plain"]  # strength 1 is RAD from noise
    assert runs["zero"]["config"]["start"] == "harmonic" and runs["zero"]["config"]["start_strength"] == 0
    assert runs["zero"]["masks"]["box"]["network_calls_per_image"] == 0
    assert runs["plain"]["config"]["start_strength"] is None
    assert ev.main([*args, "--out", str(files / "never.json"), "--start", "harmonic", "--sampler", "repaint"]) == 2
    assert ("--start harmonic works with RAD's samplers (--sampler ddim, ddpm, dpmpp_2m, dpmpp_2m_sde, "
            "euler_ancestral), not repaint" in capsys.readouterr().err)


def test_cli_writes_json_and_grids_and_refuses_to_clobber(files, capsys):
    out, grids = files / "res.json", files / "grids"
    args = ["--model", str(files / "model.safetensors"), "--images", str(files / "held"), "--out", str(out),
            "--masks", "box,extreme", "--steps", "2", "--limit", "4", "--batch-size", "3", "--grids", str(grids),
            "--grid-rows", "2", "--lpips-weights", str(files / "lpips.pth"), "-q"]
    assert ev.main(args) == 0
    printed = capsys.readouterr().out
    assert "lpips" in printed and printed.strip().endswith(str(out))
    data = json.loads(out.read_text())
    assert data["format"] == "comfyui-rad.eval" and data["config"]["count"] == 4 and data["config"]["steps"] == 2
    assert data["config"]["is_rad"] and data["config"]["embedding"] == "spatial"
    box = data["masks"]["box"]
    assert box["count"] == 4 and len(box["per_image"]) == 4 and box["network_calls_per_image"] == 2
    assert [r["file"] for r in box["per_image"]] == ["im0.png", "im2.png", "im4.png", "sub/im1.png"]
    assert {r["hole_fraction"] for r in box["per_image"]} == {0.25}
    assert all(r["lpips"] > 0 and 0 < r["ssim"] <= 1 for r in box["per_image"])
    assert box["mean"]["hole_psnr"] == pytest.approx(np.mean([r["hole_psnr"] for r in box["per_image"]]))
    assert Image.open(grids / "box.png").size == (3 * 32 + 4, 2 * 32 + 2)
    assert ev.main(args) == 2  # refused before any work
    assert "already exists" in capsys.readouterr().err
    assert ev.main(args[:-1] + ["--masks", "box,ring", "--force", "-q"]) == 2
    assert "box,ring" in capsys.readouterr().err
    assert ev.main(args + ["--fid-weights", str(files / "lpips.pth"), "--force"]) == 2
    assert "is not pytorch-fid's FID InceptionV3" in capsys.readouterr().err
