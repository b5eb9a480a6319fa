"""scripts/bench_waves.py on the built-in model, one step: the waves make fewer forward passes, the same window calls
and the same picture within the CPU kernels' rounding; the JSON holds the rows."""

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_waves.py"


def test_waves_make_fewer_forward_passes_for_the_same_window_calls(tmp_path, one_thread):
    spec = importlib.util.spec_from_file_location("bench_waves", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        out = tmp_path / "waves.json"
        result = module.main(["--steps", "1", "--repeats", "1", "--masks", "holes", "--holes", "2", "--json", str(out)])
    finally:
        sys.modules.pop(spec.name, None)
    alone, waves = result["rows"]
    assert (alone["mode"], waves["mode"]) == ("one after the other", "waves")
    assert alone["passes"] == alone["window_calls"] == waves["window_calls"] > waves["passes"]
    assert alone["largest_batch"] == 1 < waves["largest_batch"] and sum(waves["waves"]) == waves["windows"] + 1
    assert waves["max_abs_diff"] < 1e-4
    assert json.loads(out.read_text())["rows"] == result["rows"]
