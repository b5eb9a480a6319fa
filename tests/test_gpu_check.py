"""scripts/gpu_check.py --smoke: every part of the GPU check runs on the CPU at toy sizes and writes its JSON."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_smoke_runs_every_part_and_writes_json(gpu_check, tmp_path, one_thread):
    summary = gpu_check.main(["--smoke", "--out", str(tmp_path)])
    assert summary["ok"], summary
    assert set(summary["parts"]) == set(gpu_check.PARTS)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["parts"] == summary["parts"] and on_disk["device"] == "cpu"
    for part in gpu_check.PARTS:
        assert json.loads((tmp_path / f"{part}.json").read_text())  # each part's numbers
    precision = json.loads((tmp_path / "precision.json").read_text())["rows"]
    assert {(r["dtype"], r["t"]) for r in precision} == {("bf16", "per-pixel"), ("bf16", "per-image")}
    assert all(0 < r["rel_max_err"] < 5e-2 for r in precision)  # bf16 really differs from fp32, within tolerance
    train = json.loads((tmp_path / "train.json").read_text())
    assert train["loss_last_tenth"] < 0.7 * train["loss_first_tenth"]
    bench = json.loads((tmp_path / "bench_train.json").read_text())["rows"]
    assert [r["grad_checkpoint"] for r in bench] == ["off", "on"] and all(r["images_s"] > 0 for r in bench)
    compiled = json.loads((tmp_path / "bench_train_compile.json").read_text())["rows"]
    assert "CUDA devices only" in compiled[0]["skipped"]


def test_without_cuda_it_says_to_use_smoke(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device here.*--smoke"):
        gpu_check.main(["--out", str(tmp_path)])
