"""comfyui_rad.devices: the one dtype table, the one "auto" rule, device errors naming the caller's option."""

import pytest
import torch

from comfyui_rad.devices import DTYPES, resolve_device, resolve_dtype


def test_dtype_names_short_and_torch():
    assert resolve_dtype("bf16") == torch.bfloat16 and resolve_dtype("bfloat16") == torch.bfloat16
    assert resolve_dtype("fp16") == resolve_dtype("float16") == torch.float16
    assert resolve_dtype("fp32") == resolve_dtype(None) == resolve_dtype(torch.float32) == torch.float32
    assert list(DTYPES) == ["fp32", "fp16", "bf16"]  # what the CLIs and the loader node offer
    for bad in ("int8", "fp8", torch.int64):
        with pytest.raises(ValueError, match="dtype must be auto, fp32, fp16, bf16"):
            resolve_dtype(bad)


def test_auto_dtype_is_fp32_off_cuda():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", "meta") == torch.float32


def test_auto_dtype_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda:0") == torch.float16


def test_resolve_device_names_the_flag(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown --gpu 'nonsense'"):
        resolve_device("nonsense", flag="--gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device cuda asked for CUDA.*use --device cpu"):
        resolve_device("cuda")


# ------------------------------------------------------------------------------------------------ CPU threads

def test_auto_threads_leave_busy_cores_alone():
    from comfyui_rad.devices import MAX_AUTO_THREADS, auto_threads

    assert auto_threads(cpus=2, load=0.1) == 2  # quiet 2-core machine: both
    assert auto_threads(cpus=2, load=1.0) == 1  # one core kept busy by another process
    assert auto_threads(cpus=2, load=12.0) == 1  # never below 1
    assert auto_threads(cpus=4, load=1.4) == 3 and auto_threads(cpus=64, load=0.0) == MAX_AUTO_THREADS
    assert 1 <= auto_threads() <= MAX_AUTO_THREADS  # this machine's own numbers


def test_cpu_threads_set_and_restore_only_on_the_cpu():
    from comfyui_rad.devices import cpu_threads

    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with cpu_threads(other, "cpu") as used:
        assert used == other == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with cpu_threads(other, "meta") as used:  # not the CPU: the host's setting stays
        assert used == before == torch.get_num_threads()
    with cpu_threads(0, "cpu") as used:
        assert 1 <= used == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be a whole number >= 0 \\(0 = auto\\), got -1"):
        with cpu_threads(-1):
            pass
