import json
import os
import sys

import pytest
import torch
from comfy_stub import host, state  # noqa: F401

from comfyui_rad.adm import ADM


def test_lists_models_and_adapters(host):
    inputs = {i.id: i for i in host.nodes.RADModelLoader.define_schema().inputs}
    listed = set(inputs["base_model"].options["options"])
    assert {"tiny.safetensors", "base.safetensors", "adapter.safetensors"} <= listed
    assert inputs["adapter"].options["options"][0] == "none"
    assert inputs["adapter"].options["default"] == "none"
    assert inputs["dtype"].options["options"] == ["auto", "fp32", "fp16", "bf16"]


def test_built_in_default_model_is_the_default_choice(host, tmp_path):
    loader = host.nodes.model_loader
    default = host.models / "rad" / loader.DEFAULT_MODEL  # stands in for the shipped file
    default.write_bytes((host.models / "rad" / "tiny.safetensors").read_bytes())
    try:
        inputs = {i.id: i for i in loader.RADModelLoader.define_schema().inputs}
        assert inputs["base_model"].options["default"] == "rad_default.safetensors"
    finally:
        default.unlink()


def test_loads_a_patcher_around_an_adm(host, state):
    patcher = host.nodes.RADModelLoader.execute("tiny.safetensors", "none", 1.0, "auto")[0]
    assert isinstance(patcher.model, ADM) and patcher.model.rad_info.is_rad
    assert patcher.model.dtype == torch.float32  # auto on a CPU host
    assert patcher.load_device == torch.device("cpu")


def test_adapter_and_dtype(host):
    plain = host.nodes.RADModelLoader.execute("base.safetensors", "none", 1.0, "fp32")[0].model
    adapted = host.nodes.RADModelLoader.execute("base.safetensors", "adapter.safetensors", 1.0, "bf16")[0].model
    assert adapted.rad_info.adapter == "adapter.safetensors" and plain.rad_info.adapter is None
    assert adapted.rad_info.strength == 1.0
    assert adapted.dtype == torch.bfloat16


def test_auto_dtype_asks_comfyui_on_a_gpu(host, monkeypatch):
    mm = sys.modules["comfy.model_management"]
    monkeypatch.setattr(mm, "should_use_bf16", lambda device=None, **kw: False)
    monkeypatch.setattr(mm, "should_use_fp16", lambda device=None, **kw: True)
    assert host.nodes.model_loader._auto_dtype(torch.device("cuda")) == torch.float16
    monkeypatch.setattr(mm, "should_use_bf16", lambda device=None, **kw: True)
    assert host.nodes.model_loader._auto_dtype(torch.device("cuda")) == torch.bfloat16
    assert host.nodes.model_loader._auto_dtype(torch.device("cpu")) == torch.float32


def test_missing_file_names_the_folders_searched(host):
    message = host.nodes.RADModelLoader.validate_inputs("gone.pt", "none")
    assert "gone.pt" in message and str(host.models / "rad") in message and "comfyui_rad/weights" in message
    message = host.nodes.RADModelLoader.validate_inputs("tiny.safetensors", "nope.safetensors")
    assert "adapter 'nope.safetensors'" in message
    assert host.nodes.RADModelLoader.validate_inputs("tiny.safetensors", "none") is True
    with pytest.raises(FileNotFoundError, match="extra_paths.yaml, or extra_model_paths.yaml"):
        host.nodes.RADModelLoader.execute("gone.pt", "none", 1.0, "auto")


def test_wrong_file_says_which_and_why(host):
    with pytest.raises(ValueError, match=r"cannot load .*junk\.safetensors: .*"):
        host.nodes.RADModelLoader.execute("junk.safetensors", "none", 1.0, "auto")
    with pytest.raises(ValueError, match=r"cannot load .*tiny\.safetensors with .*adapter\.safetensors"):
        host.nodes.RADModelLoader.execute("tiny.safetensors", "adapter.safetensors", 1.0, "auto")


def test_fingerprint_changes_when_the_file_changes(host):
    fingerprint = host.nodes.RADModelLoader.fingerprint_inputs
    before = fingerprint("tiny.safetensors", "none", 1.0, "auto")
    assert fingerprint("tiny.safetensors", "none", 1.0, "auto") == before
    path = host.models / "rad" / "tiny.safetensors"
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 10))
    assert fingerprint("tiny.safetensors", "none", 1.0, "auto") != before


def test_lists_and_loads_an_authors_checkpoint_folder(host):
    import shutil

    from _authors import FFHQ_LIKE, write_checkpoint

    run = host.models / "rad" / "ffhq_run"
    write_checkpoint(run / "checkpoint-300000", FFHQ_LIKE, ema=True)
    try:
        loader = host.nodes.RADModelLoader
        inputs = {i.id: i for i in loader.define_schema().inputs}
        listed = inputs["base_model"].options["options"]
        name = "ffhq_run/checkpoint-300000 (authors' RAD)"
        assert name in listed and "ffhq_run/checkpoint-300000 (authors' RAD, EMA)" in listed
        hidden = ("optimizer.bin", "scheduler.bin", "random_states_0.pkl", "pytorch_lora_weights.safetensors",
                  "diffusion_pytorch_model.safetensors")
        assert not [f for f in listed + inputs["adapter"].options["options"] if f.endswith(hidden)]
        assert loader.validate_inputs(name, "none") is True
        model = loader.execute(name, "none", 1.0, "fp32")[0].model
        assert model.rad_info.tau_convention == "authors" and model.rad_info.is_rad
        assert model.config.norm_eps == 1e-6 and model.config.use_new_attention_order
    finally:
        shutil.rmtree(run)


def test_fingerprint_sees_size_and_nanosecond_mtime(host):
    fingerprint = host.nodes.RADModelLoader.fingerprint_inputs
    path = host.models / "rad" / "tiny.safetensors"
    data, stat = path.read_bytes(), path.stat()
    try:
        before = fingerprint("tiny.safetensors", "none", 1.0, "auto")
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # rewritten within the same second
        assert fingerprint("tiny.safetensors", "none", 1.0, "auto") != before
        path.write_bytes(data + b" ")  # another size, the same mtime
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert fingerprint("tiny.safetensors", "none", 1.0, "auto") != before
    finally:
        path.write_bytes(data)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("name", ["../outside.safetensors", "./../outside.safetensors"])
def test_traversal_names_are_refused_by_the_pack_itself(host, monkeypatch, name):
    outside = host.models / "outside.safetensors"  # a model file beside models/rad, not in it
    outside.write_bytes((host.models / "rad" / "tiny.safetensors").read_bytes())
    loader, fp = host.nodes.RADModelLoader, sys.modules["folder_paths"]
    try:
        assert fp.get_full_path("rad", name) is None  # the stub normalises as ComfyUI does
        assert loader.validate_inputs(name, "none") != True  # noqa: E712 - a message
        naive = fp.get_full_path  # a host that joins names as they come
        monkeypatch.setattr(fp, "get_full_path", lambda folder, filename: (
            os.path.join(fp.get_folder_paths(folder)[0], filename)
            if os.path.isfile(os.path.join(fp.get_folder_paths(folder)[0], filename)) else naive(folder, filename)))
        assert fp.get_full_path("rad", name) is not None  # the host would hand it over
        with pytest.raises(ValueError, match="outside the RAD model folders"):
            loader.execute(name, "none", 1.0, "auto")
        with pytest.raises(ValueError, match="outside the RAD model folders"):
            loader.execute("tiny.safetensors", name, 1.0, "auto")
        assert "outside the RAD model folders" in loader.validate_inputs(name, "none")
        assert loader.fingerprint_inputs(name, "none", 1.0, "auto")[0] == name  # no error before execute
        absolute = str(outside)
        monkeypatch.setattr(fp, "get_full_path", lambda folder, filename: filename)
        with pytest.raises(ValueError, match="outside the RAD model folders"):
            loader.execute(absolute, "none", 1.0, "auto")
    finally:
        outside.unlink()


def test_a_crafted_file_is_a_clear_error_in_the_node(host):
    from safetensors.torch import save_file

    path = host.models / "rad" / "crafted.safetensors"  # 4 KB asking for a 100000-pixel window
    arch = {"model_channels": 32, "num_res_blocks": 1, "channel_mult": [1, 2], "attention_ds": [2],
            "image_size": 100000}
    save_file({"time_embed.0.weight": torch.zeros(128, 32), "input_blocks.0.0.weight": torch.zeros(32, 3, 3, 3)},
              str(path), metadata={"format": "comfyui-rad.model", "architecture": json.dumps(arch)})
    try:
        with pytest.raises(ValueError, match=r"cannot load .*crafted\.safetensors: .*image_size is 100000"):
            host.nodes.RADModelLoader.execute("crafted.safetensors", "none", 1.0, "auto")
    finally:
        path.unlink()
