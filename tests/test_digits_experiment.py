"""scripts/digits_experiment.py in pieces (the whole --quick run takes minutes with three trainings): the upscale,
the split, the classifier, rad-train's arguments for the three models, the report; and the digits32 preset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_rad.train import build_fresh, preset_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import digits_experiment as de  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def test_digits32_preset_builds_and_runs():
    cfg = preset_config("digits32")
    model = build_fresh(cfg, seed=0).eval()
    assert cfg.image_size == 32 and sum(p.numel() for p in model.parameters()) == 1_371_974
    tau = torch.full((2, 1, 32, 32), -1.0)
    tau[:, :, 8:24, 8:24] = 500.0
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32), tau)
    assert out.shape == (2, 6, 32, 32) and torch.isfinite(out).all()


def test_upscale_is_bilinear_from_8x8_and_keeps_the_range():
    digit = np.zeros((1, 8, 8))
    digit[0, 2:6, 3:5] = 16
    big = de.upscale(digit)
    assert big.shape == (1, 32, 32) and big.dtype == np.uint8
    assert big.max() == 255 and big.min() == 0
    values = np.unique(big)
    assert len(values) > 4  # smooth ramps, not nearest-neighbour blocks
    assert big[0, 16, 16] == 255 and big[0, 0, 0] == 0
    np.testing.assert_array_equal(de.upscale(np.full((1, 8, 8), 8.0)), np.full((1, 32, 32), 128))


def test_split_is_seeded_and_disjoint():
    train, held = de.split(100, 20, seed=1)
    assert len(held) == 20 and len(train) == 80 and not set(train) & set(held)
    assert sorted([*train, *held]) == list(range(100))
    assert np.array_equal(de.split(100, 20, seed=1)[1], held) and not np.array_equal(de.split(100, 20, 2)[1], held)
    with pytest.raises(ValueError, match="--heldout must be between 1 and 99"):
        de.split(100, 100, 0)


def test_classifier_learns_separable_shapes_and_shift_keeps_content():
    """Two synthetic classes (a bar on the left, a bar on the right): a few epochs separate them."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32, generator=g) * 0.2
    y = torch.arange(64) % 2
    x[y == 0, :, 8:24, 4:10] = 1
    x[y == 1, :, 8:24, 22:28] = 1
    net = de.train_classifier(x, y, epochs=4, seed=0, batch=16)
    predicted, feats = de.classify(net, x)
    assert (predicted == y).float().mean() > 0.9 and feats.shape == (64, 32)
    shifted = de._shift(x[:4], torch.Generator().manual_seed(1))
    assert shifted.shape == x[:4].shape and torch.allclose(shifted.sum(dim=(1, 2, 3)), x[:4].sum(dim=(1, 2, 3)),
                                                           rtol=0.35)


def test_train_arguments_parse_and_name_the_recipes(tmp_path):
    args = argparse.Namespace(seed=3, device="cpu", threads=2, quiet=True, reuse=False)
    s = de.Settings()
    parsed = {run: de.train_options(tmp_path, s, args, run) for run in ("base", "rad", "cfg2")}
    base, rad, cfg2 = parsed["base"], parsed["rad"], parsed["cfg2"]
    assert base.preset == "digits32" and base.mask_sampling == "full" and base.base is None
    assert base.steps == s.base_steps and not base.flip and base.resize
    assert rad.base == tmp_path / "models" / "base.safetensors" and rad.preset is None
    assert rad.mask_sampling == "perlin" and rad.embedding == "spatial" and rad.lora_rank == s.lora_rank
    assert cfg2.embedding == "scalar" and cfg2.export.name == "cfg2.safetensors"
    assert {p.seed for p in parsed.values()} == {3}


def test_settings_quick_and_overrides():
    parser = de.build_parser()
    assert de.settings(parser.parse_args(["--out", "x"])) == de.Settings()
    quick = de.settings(parser.parse_args(["--out", "x", "--quick", "--steps", "7"]))
    assert quick.base_steps == de.QUICK.base_steps and quick.steps == 7


def test_report_table_and_picture():
    row = {"hole_psnr": 20.0, "hole_mse": 0.01, "ssim": 0.9, "ssim_hole": 0.8, "seam": 0.05, "accuracy": 0.75,
           "frechet": 1.5}
    numbers = {"box": {"original": row, **{m: {**row, "calls_per_image": 100, "seconds_per_image": 0.1}
                                           for m in de.METHODS}}}
    extra = {"classifier_accuracy": 0.98, "training": {"base": {"steps": 10, "final_loss": 0.1}}}
    text = de.markdown(numbers, {"data": {"wall_s": 1.0, "cpu_s": 0.5}}, de.Settings(), extra)
    assert "## box masks" in text and "| RAD | 100 | 20.00 | 0.800 | 0.900 | 0.0500 | 0.750 | 1.50 | 0.100 |" in text
    assert "| original | - |" in text and "![samples](samples.png)" in text
    pictures = {k: {name: torch.rand(3, 3, 32, 32) for name in ["masked", *de.METHODS, "original"]}
                for k in ("box", "wide")}
    grid = de.samples_picture(pictures, rows=2)
    assert grid.shape == (3, 2 * (2 * 32 + 2) + 6, 7 * 32 + 6 * 2)


def test_methods_and_eval_seed_options():
    parser = de.build_parser()
    args = parser.parse_args(["--out", "x"])
    assert args.methods == de.METHODS and args.eval_seed is None
    args = parser.parse_args(["--out", "x", "--methods", "RePaint, Cfg. 1", "--eval-seed", "4"])
    assert args.methods == ("RePaint", "Cfg. 1") and args.eval_seed == 4
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "x", "--methods", "RAD,LaMa"])
    with pytest.raises(argparse.ArgumentTypeError, match="unknown method.*'LaMa'.*choose from RAD, Cfg. 2"):
        de.parse_methods("RAD,LaMa")


def test_picture_of_a_subset_of_methods():
    pictures = {"box": {name: torch.rand(3, 3, 32, 32) for name in ["masked", "RePaint", "original"]}}
    assert de.samples_picture(pictures, rows=2).shape == (3, 2 * 32 + 2, 3 * 32 + 2 * 2)


# ------------------------------------------------------------------------- the budget curve (scripts/budget_curve.py)

import budget_curve as bc  # noqa: E402


def test_budget_methods_calls_and_unique_files():
    rows = {m.name: m for m in bc.methods()}
    assert rows["RePaint 250/10/10"].calls == 2410 and rows["RePaint 100/10/2"].calls == 190
    assert rows["RAD DDPM-100 resample 1/10"].calls == 190 and rows["RAD DDPM-100 resample 3/10"].calls == 370
    assert rows["RAD DDIM-25 eta 1 resample 3/5"].calls == 85 and rows["RAD DDIM-50 eta 1"].calls == 50
    for quick in (False, True):
        ms = bc.methods(quick)
        assert len({m.key for m in ms}) == len({m.name for m in ms}) == len(ms) == 14


def test_budget_jobs_train_before_they_score():
    order = bc.jobs(bc.Budget())
    assert order[0] == ("train", "base", 800)
    trained = set()
    for job in order:
        if job[0] == "train":
            trained.add((job[1], job[2]))
        elif job[2] is not None:
            assert (job[1].model, job[2]) in trained
    scores = [j for j in order if j[0] == "score"]
    assert len(scores) == 2 * (10 * 4 + 4) and len(set(scores)) == len(scores)
    assert [j[1].name for j in scores[:4]] == ["RAD DDPM-100"] * 2 + ["Cfg. 2 DDPM-100"] * 2
    assert order[1:5] == [("train", "rad", 700), scores[0], scores[1], ("train", "cfg2", 700)]


def test_budget_quick_runs_resumes_and_skips_what_exists(tmp_path, monkeypatch):
    out = tmp_path / "budget"
    args = ["--out", str(out), "--quick", "--eval-seeds", "0", "--threads", "1", "-q"]
    assert bc.main([*args, "--stages", "1"]) == 0
    assert len(list((out / "scores").rglob("*.json"))) == 14 * 3
    table = (out / "budget.md").read_text()
    assert "| RAD DDPM-4 | 1 | 4 |" in table and "| RePaint 6/2/3 | - | 14 |" in table
    assert (out / "budget.png").stat().st_size > 1000
    assert bc.main([*args, "--stages", "1"]) == 2  # not without --reuse

    calls = []
    real = bc.inpaint_set
    monkeypatch.setattr(bc, "inpaint_set", lambda *a, **k: calls.append(k["sampler"]) or real(*a, **k))
    kept = {p: p.stat().st_mtime_ns for p in (out / "scores").rglob("*.json")}
    assert bc.main([*args, "--stages", "1,2", "--reuse", "--docs", str(tmp_path / "docs")]) == 0
    assert len(calls) == 10 * 3  # only the adapters' methods at the new stage
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert [p.name for p in sorted((out / "runs" / "rad" / "checkpoints").iterdir())][-1] == "step-0000002.pt"
    assert "| RAD DDPM-4 | 2 | 4 |" in (tmp_path / "docs" / "budget.md").read_text()
    calls.clear()
    assert bc.main([*args, "--stages", "1,2", "--reuse"]) == 0 and calls == []
    docs = ["--stages", "1,2", "--report-only", "--docs", str(tmp_path / "docs")]
    assert bc.main([*args, *docs]) == 2 and bc.main([*args, *docs, "--force"]) == 0


def test_budget_report_marks_what_is_missing():
    b = bc.Budget(stages=(700, 1500), eval_seeds=(0,))
    row = {"hole_psnr": 14.0, "accuracy": 0.75, "ssim": 0.8, "ssim_hole": 0.7, "seam": 0.03, "frechet": 40.0,
           "seconds_per_image": 1.0, "calls": 100, "seed": 0}
    scores = [{**row, "method": "RAD DDPM-100", "stage": 700, "kind": "box", "model": "rad"},
              {**row, "method": "RAD DDPM-100", "stage": 1500, "kind": "box", "model": "rad", "hole_psnr": 15.0},
              {**row, "method": "RePaint 250/10/10", "stage": None, "kind": "wide", "model": "base", "calls": 2410}]
    text = bc.markdown(scores, b)
    assert "| RAD DDPM-100 | 700 | 100 | 14.00 / 0.750 | - | - | 1 | 1.00 |" in text
    assert "| RAD DDPM-100 | 1500 | 100 | 15.00 / 0.750 | - | - |" in text
    assert "| RePaint 250/10/10 | - | 2410 | - | - | 14.00 / 0.750 |" in text
    assert "DDIM" not in text  # nothing measured, no row
    picture = bc.plot(scores, b)
    assert picture.size[0] > 1000 and picture.getextrema() != ((255, 255),) * 3


def test_budget_stage_stopped_short_is_not_exported(tmp_path, monkeypatch):
    """A SIGTERM mid-stage leaves its checkpoint to resume from; the stage's export must not be written from it."""
    class Stopped:
        def __init__(self, options):
            self.step, self.interrupted = 3, "SIGTERM"

        def fit(self):
            pass

        def close(self):
            pass

        def export(self, path):
            raise AssertionError("exported a stage that was not reached")

    monkeypatch.setattr(bc, "Trainer", Stopped)
    monkeypatch.setattr(bc.de, "train_options", lambda *a: bc.de.TrainOptions())
    export = tmp_path / "models" / "rad-00010.safetensors"
    with pytest.raises(SystemExit, match="rad stopped at step 3 before stage 10"):
        bc.train_stage(tmp_path, bc.QUICK, None, "rad", 10, export)
    assert not export.exists()
