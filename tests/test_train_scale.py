"""rad-train's fast-step and ETA options on one process: --grad-checkpoint gives the same gradients, --dry-run
writes nothing, Ctrl-C stops after the step with a checkpoint that resumes exactly, partial saves are cleaned up,
--compile is refused clearly on the CPU."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from test_train import files, options, write_images  # noqa: F401  (the module fixture)

from comfyui_rad.adm import AttentionBlock, ResBlock
from comfyui_rad.schedule import NoiseCurves
from comfyui_rad.train import Trainer, build_fresh, preset_config
from comfyui_rad.train.cli import main
from comfyui_rad.train.distributed import CollectiveError, Distributed
from comfyui_rad.train.losses import q_sample, rad_loss, step_terms
from comfyui_rad.train.speed import enable_grad_checkpoint
from comfyui_rad.train.state import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def gradients(model, x0, eps, mask, t) -> dict[str, torch.Tensor]:
    curves = NoiseCurves()
    terms, abar = step_terms(curves, mask, t)
    model.zero_grad(set_to_none=True)
    rad_loss(model(q_sample(x0, eps, terms), curves.timestep(abar)), x0, eps, terms)["loss"].backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("soft", [False, True], ids=["binary-mask(onehot)", "soft-mask(taps)"])
def test_grad_checkpoint_gives_the_same_gradients(soft):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    eps = torch.randn(x0.shape, generator=g)
    mask = torch.zeros(3, 1, 16, 16)
    mask[..., 3:12, 5:14] = 1
    if soft:  # many distinct timesteps: the embedding's taps path and its per-resolution cache
        mask = torch.nn.functional.avg_pool2d(mask, 5, 1, 2)
    t = torch.tensor([40, 700, 1500])
    model = build_fresh(preset_config("tiny"), seed=0).train()
    torch.nn.init.normal_(model.out[-1].weight, std=0.02)  # the zeroed output conv would hide most gradients
    expected = gradients(model, x0, eps, mask, t)
    blocks = [m for m in model.modules() if isinstance(m, (ResBlock, AttentionBlock))]
    calls = []
    first = blocks[0].forward
    blocks[0].forward = lambda *a: calls.append(1) or first(*a)
    assert enable_grad_checkpoint(model) == len(blocks) == 10 + 4  # the tiny preset: 10 ResBlocks, 4 attention
    got = gradients(model, x0, eps, mask, t)
    assert len(calls) == 2  # the forward, and its recomputation in the backward pass
    assert expected.keys() == got.keys()
    worst = max((expected[k] - got[k]).abs().max().item() for k in expected)
    assert worst <= 1e-6 and sum(v.abs().sum() for v in got.values()) > 0, worst


def test_grad_checkpoint_trains_the_same_lora(files):  # noqa: F811
    plain = Trainer(options(files, "ckpt-off", steps=2, lr=1e-2, mask_sampling="mixed"))
    plain.fit()
    plain.close()
    checkpointed = Trainer(options(files, "ckpt-on", steps=2, lr=1e-2, mask_sampling="mixed", grad_checkpoint=True))
    checkpointed.fit()
    checkpointed.close()
    a, b = plain.trained_tensors(), checkpointed.trained_tensors()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_dry_run_writes_nothing_and_projects_the_time(files, capsys):  # noqa: F811
    out, export = files / "dry", files / "dry.safetensors"
    args = ["--data", str(files / "data"), "--preset", "tiny", "--out", str(out), "--steps", "1000", "--batch-size",
            "2", "--holdout", "1", "--workers", "0", "--preview-every", "1", "--save-every", "1", "--log-every", "1",
            "--export", str(export), "--dry-run", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "dry run: 3 step(s) of 2 images, nothing written" in printed
    assert "images/s" in printed and "peak memory" in printed and "for 1000 step(s) to --steps 1000" in printed
    assert not out.exists() and not export.exists()


def test_dry_run_report_numbers(files):  # noqa: F811
    trainer = Trainer(options(files, "dry2", preset="tiny", steps=500, dry_run=4))
    trainer.fit()
    trainer.close()
    r = trainer.report
    assert (r["steps"], r["measured_steps"], r["images_per_step"], r["projected_steps"]) == (4, 3, 2, 500)
    assert r["images_s"] == pytest.approx(2 * r["steps_s"]) and r["projected_s"] == pytest.approx(500 / r["steps_s"])
    assert r["peak_mib"] > 0 and not (files / "dry2").exists()


def test_sigint_stops_after_the_step_with_a_checkpoint_that_resumes_exactly(files):  # noqa: F811
    kw = dict(steps=6, save_every=0, ema=0.9, lr=1e-2)
    straight = Trainer(options(files, "int-straight", **kw))
    straight.fit()
    straight.close()
    stopped = Trainer(options(files, "int", **kw))
    stopped.fit(lambda m: m["step"] == 3 and os.kill(os.getpid(), signal.SIGINT))
    stopped.close()
    assert stopped.interrupted == "SIGINT" and stopped.step == 3
    assert [p.name for p in list_checkpoints(files / "int")] == ["step-0000003.pt"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    resumed = Trainer(options(files, "int", **kw, resume="latest"))
    resumed.fit()
    resumed.close()
    a, b = straight.state_dict(), resumed.state_dict()
    for part in ("trainable", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_cli_returns_130_after_sigterm_and_partial_saves_are_removed(files, capsys):  # noqa: F811
    out = files / "term"
    (out / "checkpoints").mkdir(parents=True)
    partial = out / "checkpoints" / ".step-0000002.pt.abc123.tmp"  # a save killed before its rename
    partial.write_bytes(b"half a checkpoint")
    args = ["--data", str(files / "data"), "--preset", "tiny", "--out", str(out), "--steps", "50", "--batch-size",
            "2", "--holdout", "1", "--workers", "0", "--preview-every", "0", "--save-every", "0", "-q"]
    from comfyui_rad.train import loop

    step = loop.Trainer.train_step

    def train_step(self):  # SIGTERM arrives during step 2
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self)

    loop.Trainer.train_step = train_step
    try:
        assert main(args) == 130
    finally:
        loop.Trainer.train_step = step
    assert not partial.exists()
    assert load_checkpoint(out)["step"] == 2


def test_compile_is_refused_clearly_on_the_cpu(files, capsys):  # noqa: F811
    with pytest.raises(ValueError, match=r"--compile is supported on CUDA devices only \(this run is on cpu\)"):
        Trainer(options(files, "compiled", preset="tiny", compile=True))


def test_a_lost_peer_becomes_a_clear_error_and_other_errors_stay_as_they_are():
    d = Distributed(rank=1, world=2, timeout=30)
    with pytest.raises(CollectiveError, match=r"rank 1/2: step 7 failed \(\[gloo\] Connection closed by peer\): "
                                              r"another process of this run stopped or did not answer within 30 s"):
        with d.collective("step 7"):
            raise RuntimeError("[gloo] Connection closed by peer")
    with pytest.raises(torch.OutOfMemoryError):
        with d.collective("step 7"):
            raise torch.OutOfMemoryError("CUDA out of memory: the NCCL buffers")
    with pytest.raises(RuntimeError, match="^a bug$"):
        with d.collective("step 7"):
            raise RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="gloo"):
        with Distributed().collective("one process"):  # nothing to translate without other processes
            raise RuntimeError("gloo")


def test_a_non_finite_loss_stops_the_run_at_log_time_and_is_never_checkpointed(files, monkeypatch):  # noqa: F811
    from comfyui_rad.train import loop

    real = loop.rad_loss

    def nan_loss(*args, **kw):
        out = real(*args, **kw)
        return {**out, "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(loop, "rad_loss", nan_loss)
    trainer = Trainer(options(files, "nan", preset="tiny", steps=4, log_every=2, save_every=0))
    with pytest.raises(FloatingPointError, match=r"the loss is nan between steps 1 and 2: lower lr"):
        trainer.fit()
    trainer.close()
    trainer = Trainer(options(files, "nan2", preset="tiny", steps=4, log_every=0, save_every=1))
    with pytest.raises(FloatingPointError, match=r"trained tensor\(s\) hold inf/NaN at step 1"):
        trainer.fit()
    trainer.close()
    assert not list_checkpoints(files / "nan2")
