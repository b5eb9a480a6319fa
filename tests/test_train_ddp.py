"""rad-train under torchrun (2 processes, gloo, CPU, loopback): the same model as one process, exact resume under
another number of processes, a killed rank restarted by torchrun, rank 0 alone writing.

One process at --batch-size 8 against two at --batch-size 4 (global batch 8 both), 20 steps, a tiny fresh preset and
a LoRA run: the trained tensors (and the EMA) agree within 1e-5. Only float reduction order differs (the gradient
of 8 samples summed at once, or as 4 + 4 and averaged: one process at batch 4 with 2 accumulation steps differs from
batch 8 just as much); Adam turns such 1e-7 differences of near-zero gradients (biases whose gradients cancel) into
differences of up to 2 lr, so the fresh preset trains at lr 5e-5 here (at 3e-3 the 1-vs-2 difference is 5e-3,
exactly the batch-8-vs-4x2 one). Two processes against two processes are compared bitwise. Two torchrun launches in
all (the first trains three runs, the second is killed and restarted): about half a minute.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, make_adm
from test_train import write_images

from comfyui_rad.fileio import read_state_dict
from comfyui_rad.train import Trainer, TrainOptions
from comfyui_rad.train.cli import main
from comfyui_rad.train.state import list_checkpoints, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-5


def common(files, out: str, *, preset: bool = True, steps: int = 20, batch: int = 8, **extra) -> list[str]:
    argv = ["--data", str(files / "data"), "--out", str(files / out), "--steps", str(steps), "--batch-size",
            str(batch), "--holdout", "1", "--preview-every", "0", "--log-every", "1", "--seed", "3", "--lr",
            "5e-5" if preset else "1e-3", "--ema", "0.9", "--val-steps", "2", "-q"]
    argv += ["--preset", "tiny"] if preset else ["--base", str(files / "base.pt"), "--num-head-channels", "16",
                                                 "--resolution", "16", "--lora-rank", "4", "--lora-alpha", "8"]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return argv


def torchrun(files, jobs: list[dict], name: str, restarts: int = 0) -> subprocess.CompletedProcess:
    spec = files / f"{name}.json"
    spec.write_text(json.dumps(jobs))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", str(restarts), "--monitor-interval", "0.2", str(REPO / "tests" / "ddp_worker.py"),
           str(spec)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def accelerate_launch(files, jobs: list[dict], name: str) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes 2`` (on the CPU it starts torchrun's gloo processes)."""
    spec = files / f"{name}.json"
    spec.write_text(json.dumps(jobs))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "OMP_NUM_THREADS": "1",
           "HF_HOME": str(files / "hf-home")}  # no user accelerate config is read
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(port), str(REPO / "tests" / "ddp_worker.py"), str(spec)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def val_rows(files, out: str) -> list[dict]:
    return [r for r in map(json.loads, (files / out / "metrics.jsonl").read_text().splitlines()) if "val" in r]


def trained(files, out: str) -> dict:
    return load_checkpoint(files / out)


def max_diff(a: dict, b: dict) -> float:
    """max |a - b| over the trained tensors and the EMA of two checkpoints."""
    worst = 0.0
    for part in ("trainable", "ema"):
        assert a[part].keys() == b[part].keys() and a[part]
        worst = max(worst, max((a[part][k] - b[part][k]).abs().max().item() for k in a[part]))
    return worst


def assert_close(a: dict, b: dict) -> float:
    worst = max_diff(a, b)
    assert worst <= TOL, worst
    return worst


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    write_images(d / "data", 7)
    torch.save(make_adm(TINY, seed=0).state_dict(), d / "base.pt")
    return d


@pytest.fixture(scope="module")
def two_processes(files):
    """Launch 1: a tiny preset, a LoRA run (with export), half of an accumulated run, a run stopped by SIGTERM."""
    jobs = [{"argv": common(files, "ddp-fresh", batch=4, workers=1, save_every=10)},
            {"argv": common(files, "ddp-lora", preset=False, batch=4, workers=1,
                            export=files / "ddp-lora.safetensors")},
            {"argv": common(files, "ddp-half", batch=2, grad_accum=2, steps=10, mask_sampling="mixed", workers=0)},
            {"argv": common(files, "ddp-term", batch=4, save_every=0), "sigterm_at": 3, "expect": 130}]
    torchrun(files, jobs, "launch1")
    return files


def test_two_processes_train_the_same_model_as_one(two_processes, capsys):
    files = two_processes
    assert main(common(files, "one-fresh", workers=0)) == 0
    assert main(common(files, "one-lora", preset=False, workers=0)) == 0
    fresh, lora = trained(files, "ddp-fresh"), trained(files, "ddp-lora")
    print("max |1 process - 2 processes|: fresh", assert_close(trained(files, "one-fresh"), fresh),
          "lora", assert_close(trained(files, "one-lora"), lora))
    # the runs did train: 10 more steps move the tensors far more than the tolerance
    assert max_diff(load_checkpoint(list_checkpoints(files / "ddp-fresh")[0]), fresh) > 50 * TOL
    assert fresh["run"]["world_size"] == 2 and fresh["run"]["global_batch"] == 8 and fresh["step"] == 20
    meta = read_state_dict(files / "ddp-lora.safetensors")[1]
    assert (meta["train_global_batch"], meta["train_world_size"]) == ("8", "2")
    # rank 0 alone wrote: one metrics row per step, checkpoints once each
    rows = [json.loads(r) for r in (files / "ddp-fresh" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 21))
    assert [r["step"] for r in rows if "val" in r] == [20]  # and one validation, at the end
    assert [p.name for p in list_checkpoints(files / "ddp-fresh")] == ["step-0000010.pt", "step-0000020.pt"]


def test_sigterm_on_one_rank_stops_both_after_the_step_with_a_checkpoint(two_processes):
    files = two_processes
    assert [p.name for p in list_checkpoints(files / "ddp-term")] == ["step-0000003.pt"]
    assert main(common(files, "ddp-term", steps=6, resume=True)) == 0
    assert main(common(files, "one-six", steps=6)) == 0
    assert_close(trained(files, "one-six"), trained(files, "ddp-term"))


def test_resume_under_another_number_of_processes(two_processes):
    """10 steps on 2 processes (batch 2 x 2 accumulation), resumed on 1 (batch 4 x 2) == 20 steps on 1 at batch 8."""
    files = two_processes
    half = trained(files, "ddp-half")
    assert half["step"] == 10 and half["data"]["samples"] == 80
    assert main(common(files, "ddp-half", batch=4, grad_accum=2, mask_sampling="mixed", resume=True)) == 0
    assert main(common(files, "one-mixed", mask_sampling="mixed")) == 0
    assert_close(trained(files, "one-mixed"), trained(files, "ddp-half"))


def test_a_killed_rank_is_restarted_and_the_run_resumes_exactly(two_processes):
    """Rank 1 is SIGKILLed after step 7; torchrun restarts both, which resume from step 5's checkpoint."""
    files = two_processes
    jobs = [{"argv": common(files, "ddp-killed", batch=4, workers=1, save_every=5), "die_at": 7}]
    done = torchrun(files, jobs, "launch2", restarts=1)
    # Rank 0 usually reports the lost peer ("another process of this run stopped", CollectiveError: its message is
    # tested in test_train_scale), but torchrun's agent may stop rank 0 first (seen once in a fresh-clone CI run on a
    # quiet machine): what must hold either way is the restart and the exact resume.
    assert "torchrun restart 1: resuming from the newest checkpoint" in done.stderr
    killed = trained(files, "ddp-killed")
    assert killed["step"] == 20
    assert max_diff(trained(files, "ddp-fresh"), killed) == 0.0  # the same processes: bitwise
    assert not list((files / "ddp-killed" / "checkpoints").glob(".*.tmp"))


def test_validation_scores_agree_across_world_sizes(two_processes):
    """Validation (rank 0, EMA weights, fixed masks and seeds) of the 2-process run equals the 1-process run's up to
    the 1e-5 the weights differ by (float reduction order); the scores are those of one set of weights."""
    files = two_processes
    if not (files / "one-fresh" / "metrics.jsonl").exists():
        assert main(common(files, "one-fresh", workers=0)) == 0
    one, two = val_rows(files, "one-fresh"), val_rows(files, "ddp-fresh")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [20]
    for kind, means in one[0]["val"].items():
        for measure, value in means.items():
            assert abs(value - two[0]["val"][kind][measure]) < 1e-3, (kind, measure)


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is None,
                    reason="accelerate is not installed (pip install accelerate): accelerate launch is not tested")
def test_accelerate_launch_trains_exactly_as_torchrun(two_processes):
    """accelerate launch sets the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT):
    the same two processes train bitwise the same model, with the same validation scores."""
    files = two_processes
    accelerate_launch(files, [{"argv": common(files, "acc-fresh", batch=4, workers=1, save_every=10)}], "acc")
    acc = trained(files, "acc-fresh")
    assert acc["run"]["world_size"] == 2 and acc["step"] == 20
    assert max_diff(trained(files, "ddp-fresh"), acc) == 0.0
    assert val_rows(files, "acc-fresh") == [{**r, "val_seconds": val_rows(files, "acc-fresh")[0]["val_seconds"]}
                                            for r in val_rows(files, "ddp-fresh")]
