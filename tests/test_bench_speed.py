"""scripts/bench_speed.py on the tiny preset at 16x16, CPU, a few steps: counted calls, JSON, argument errors."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from comfyui_rad.sampling import repaint_calls

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_speed.py"
QUICK = ["--preset", "tiny", "--resolution", "16", "--device", "cpu", "--threads", "1", "--repeats", "1",
         "--ddpm-steps", "3", "--ddim-steps", "2", "4", "--repaint-steps", "6", "--jump-length", "2",
         "--jump-n-sample", "2", "--dpmpp-steps", "3"]
ROW_KEYS = {"batch", "case", "label", "expected_calls", "calls", "calls_ok", "embed_expected", "embed_modes",
            "embed_ok", "wall_s", "cpu_s", "s_per_image", "cpu_s_per_image", "s_per_call", "cpu_s_per_call",
            "peak_mib", "finite", "max_abs"}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def result(bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "speed.json"
    return bench.main(QUICK + ["--batch", "1", "2", "--json", str(out)]), out


def test_counted_calls_match_the_expected_ones(result):
    rows = {(r["batch"], r["case"]): r for r in result[0]["rows"]}
    expected = {"rad-ddpm-3": (3, "onehot"), "rad-ddim-2": (2, "onehot"), "rad-ddim-4": (4, "onehot"), "rad-dpmpp_2m_sde-3": (3, "onehot"),
                "repaint-6-2-2": (repaint_calls(6, 2, 2), "per-image"), "plain-ddpm-3": (3, "per-image")}
    assert set(rows) == {(b, name) for b in (1, 2) for name in expected}
    for (_, name), row in rows.items():
        calls, mode = expected[name]
        assert row["calls"] == [calls] and row["expected_calls"] == calls and row["calls_ok"]
        assert row["embed_modes"] == {mode: calls} and row["embed_ok"]  # all-ones mask -> the scalar path
        assert row["finite"] and "gflop_per_call" not in row  # FLOPs on CUDA or with --peak-tflops


def test_ratios_and_extrapolation(result):
    rows, ratios = result[0]["rows"], result[0]["ratios"]
    repaint = next(r for r in rows if r["case"] == "repaint-6-2-2")
    assert repaint["extrapolated"]["calls"] == 2410  # shortened RePaint: 250/10/10 only by extrapolation
    names = [q["name"] for q in ratios if q["batch"] == 1]
    assert "RePaint 250/10/10 (extrapolated) / RAD DDPM 3" in names
    step = next(q for q in ratios if q["batch"] == 1 and q["target"] is not None)
    assert step["name"].startswith("RAD DDPM 3 per step / plain DDPM 3") and step["basis"] == "cpu"
    assert step["met"] == (step["value"] <= 1.05)


def test_json_round_trips(result):
    data, path = result
    loaded = json.loads(path.read_text())
    assert loaded == json.loads(json.dumps(data))
    assert set(loaded) == {"env", "args", "rows", "ratios"}
    assert {"cpu", "torch", "threads", "device", "gpu", "cmd"} <= set(loaded["env"])
    assert all(ROW_KEYS <= set(r) for r in loaded["rows"])
    assert not list(path.parent.glob("*.tmp"))


def test_markdown_table_and_flop_floor(bench, capsys):
    result = bench.main(QUICK + ["--cases", "rad-ddpm", "plain-ddpm", "--ddpm-steps", "2", "--peak-tflops", "1"])
    out = capsys.readouterr().out
    assert "| batch | case | network calls (expected) |" in out and "| 1 | RAD DDPM 2 | 2 (2) | onehot |" in out
    assert "- hardware: CPU " in out and "floor s/image" in out
    rad, plain = result["rows"]
    assert plain["gflop_per_call"] > 0 and rad["gflop_per_call"] >= plain["gflop_per_call"]
    assert rad["floor_s_per_image"] == pytest.approx(rad["gflop_per_call"] * 1e9 * 2 / 1e12)


@pytest.mark.parametrize("args, named", [
    (["--cases", "bogus"], "'bogus'"),
    (["--batch", "0"], "'0'"),
    (["--repeats", "-1"], "'-1'"),
    (["--repaint-steps", "5", "--jump-length", "10"], "jump_length 10"),
    (["--resolution", "15"], "--resolution 15"),
    (["--ddpm-steps", "2000"], "--ddpm-steps 2000"),
])
def test_bad_arguments_exit_naming_the_value(bench, capsys, args, named):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--preset", "tiny", "--resolution", "16", *args])
    assert exc.value.code == 2
    assert named in capsys.readouterr().err
