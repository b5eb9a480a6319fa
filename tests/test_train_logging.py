"""rad-train's run log: TensorBoard events (read back with tensorboard's own reader), the progress bar's loss equal
to metrics.jsonl's, validation scores (deterministic, the best step kept and exported), training without the
tensorboard package."""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest
import torch
from test_train import write_images

from comfyui_rad.checkpoints import read_state_dict
from comfyui_rad.train import Trainer, TrainOptions
from comfyui_rad.train.cli import main
from comfyui_rad.train.validate import VAL_MASKS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("logging") / "data", 6)


def argv(data, out, *extra) -> list[str]:
    return ["--data", str(data), "--preset", "tiny", "--out", str(out), "--steps", "4", "--batch-size", "2",
            "--holdout", "2", "--workers", "0", "--log-every", "2", "--save-every", "0", "--preview-every", "2",
            "--preview-steps", "2", "--val-every", "2", "--val-steps", "3", "--lr", "3e-3", "--ema", "0.5", *extra]


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def logged(data, tmp_path_factory):
    """One CLI run: its progress-bar text (stderr) and folder."""
    out = tmp_path_factory.mktemp("logged") / "run"
    capture = tmp_path_factory.mktemp("stderr") / "stderr.txt"
    records: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("comfyui_rad").addHandler(handler)
    old, level = sys.stderr, logging.getLogger("comfyui_rad").level
    logging.getLogger("comfyui_rad").setLevel(logging.INFO)
    try:
        with open(capture, "w") as sys.stderr:
            code = main(argv(data, out, "--export", str(out.parent / "best.safetensors"), "--export-best"))
    finally:
        sys.stderr = old
        logging.getLogger("comfyui_rad").removeHandler(handler)
        logging.getLogger("comfyui_rad").setLevel(level)
    assert code == 0
    return out, capture.read_text(), "\n".join(records)


def test_tensorboard_holds_every_scalar_the_validation_and_the_previews(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _, _ = logged
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    train = {"train/loss", "train/mse", "train/vb", "train/grad_norm", "train/lr", "train/ema_decay",
             "train/images_s", "train/it_s"}
    val = {f"val/{m}/{k}" for m in ("hole_psnr", "ssim", "ssim_hole") for k in VAL_MASKS} | {"val/score"}
    assert train | val <= set(tags["scalars"])
    losses = {e.step: e.value for e in events.Scalars("train/loss")}
    logged_rows = [r for r in rows(out) if "loss" in r]
    assert sorted(losses) == [2, 4]
    assert all(abs(losses[r["step"]] - r["loss"]) < 1e-6 for r in logged_rows)  # the same numbers
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([3e-3, 3e-3])
    assert [e.value for e in events.Scalars("train/ema_decay")] == pytest.approx([0.5, 0.5])
    val_rows = [r for r in rows(out) if "val" in r]
    assert [r["step"] for r in val_rows] == [2, 4]
    box = {e.step: e.value for e in events.Scalars("val/hole_psnr/box")}
    assert all(abs(box[r["step"]] - r["val"]["box"]["hole_psnr"]) < 1e-4 for r in val_rows)
    previews = events.Images("preview")
    assert [p.step for p in previews] == [2, 4]
    assert (previews[0].width, previews[0].height) == (48, 32)  # masked | result | truth, 2 held-out rows


def test_progress_bar_shows_the_loss_of_metrics_jsonl(logged):
    out, stderr, _ = logged
    bar = {int(m.group(1)): m.group(2) for m in re.finditer(r"step (\d+)/4 loss (\d\.\d{4})", stderr)}
    assert bar and all(bar[r["step"]] == f"{r['loss']:.4f}" for r in rows(out) if "loss" in r)


def test_validation_is_deterministic_and_the_best_step_is_exported(logged, data, tmp_path):
    out, _, log_text = logged
    val_rows = [r for r in rows(out) if "val" in r]
    assert all(set(r["val"]) == set(VAL_MASKS) for r in val_rows)
    best = max(val_rows, key=lambda r: r["val_score"])
    assert val_rows[-1]["best_step"] == best["step"]
    meta = read_state_dict(out.parent / "best.safetensors")[1]
    assert meta["train_steps"] == str(best["step"])  # the export is the best step's
    again = tmp_path / "again"
    assert main(argv(data, again, "-q", "--no-tensorboard")) == 0
    assert [r["val"] for r in rows(again) if "val" in r] == [r["val"] for r in val_rows]  # bitwise the same
    assert not (again / "tensorboard").exists()
    assert "validation every 2 steps: 2 image(s) x 4 mask kinds (box, extreme, wide, perlin), DDIM 3 steps eta 1: " \
           "24 network evaluations in 12 batched calls" in log_text
    assert re.search(r"one validation took [\d.]+ s, [\d.]+% of the training time between two", log_text)
    assert f"exporting the best validated step {best['step']}" in log_text


def test_training_runs_without_tensorboard(data, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    opts = TrainOptions(data=data, out=tmp_path / "run", preset="tiny", steps=2, batch_size=2, holdout=1, workers=0,
                        log_every=1, save_every=0, preview_every=0, val_every=0)
    with caplog.at_level(logging.INFO):
        trainer = Trainer(opts)
        trainer.fit()
        trainer.close()
    assert trainer.step == 2 and len(rows(tmp_path / "run")) == 2
    assert "TensorBoard logging is off: pip install tensorboard" in caplog.text
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_validation_scores_are_rad_evals():
    """Validation measures what rad-eval measures: the same masks, seeds and sampler give the same means."""
    from comfyui_rad import evaluate
    from comfyui_rad.train import build_fresh, preset_config
    from comfyui_rad.train.validate import Validation

    model = build_fresh(preset_config("tiny"), seed=0).eval()

    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    val = Validation(images, steps=2, seed=5, batch=2)
    assert (val.evaluations, val.calls) == (3 * 4 * 2, 4 * 2 * 2)
    runs = evaluate.evaluate(model, images, VAL_MASKS, sampler="ddim", steps=2, seed=5, batch_size=2, eta=1.0)
    scores = val.run(model)
    for kind, run in runs.items():
        means = run.means()
        assert scores[kind] == {k: means[k] for k in ("hole_psnr", "ssim", "ssim_hole")}
