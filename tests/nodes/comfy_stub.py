"""A minimal stand-in for the ComfyUI modules the RAD nodes import, so the nodes run on CPU without ComfyUI.

It mirrors the calls the nodes make, and nothing more: ``comfy_api.latest`` (``io``, ``ui``, ``ComfyExtension``),
``comfy.model_management``, ``comfy.model_patcher``, ``comfy.utils`` and ``folder_paths``. The schema classes
record their arguments, and ``describe`` reads a node's public contract (input names, types, widget order) the way
ComfyUI's /object_info shows it. ``tests/test_comfy_host.py`` checks the same contract on a real ComfyUI.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
PACK = "comfyui_rad_pack"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


class Interrupted(Exception):
    """comfy.model_management.InterruptProcessingException."""


class State:
    """What the stub saw: progress updates, models loaded to the device, a pending Cancel."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.progress: list[tuple[int, int, object]] = []
        self.loaded: list[object] = []
        self.interrupt_after: int | None = None  # press Cancel after this many progress updates


STATE = State()


# ------------------------------------------------------------------------------------------- comfy_api.latest.io


class _Input:
    def __init__(self, id: str, display_name=None, optional=False, tooltip=None, lazy=None, extra_dict=None,
                 **options):
        self.id, self.display_name, self.optional, self.tooltip = id, display_name, optional, tooltip
        self.extra_dict = dict(extra_dict or {})
        self.options = options


class _Output:
    def __init__(self, id: str | None = None, display_name=None, tooltip=None, is_output_list=False, **options):
        self.id, self.display_name, self.tooltip = id, display_name, tooltip
        self.options = options


def _comfy_type(io_type: str) -> type:
    class Input(_Input):
        pass

    class Output(_Output):
        pass

    Input.io_type = Output.io_type = io_type
    return type(io_type, (), {"io_type": io_type, "Input": Input, "Output": Output})


def _make_io() -> types.ModuleType:
    io = types.ModuleType("comfy_api.latest.io")
    for name, io_type in (("Int", "INT"), ("Float", "FLOAT"), ("String", "STRING"), ("Boolean", "BOOLEAN"),
                          ("Combo", "COMBO"), ("Image", "IMAGE"), ("Mask", "MASK")):
        setattr(io, name, _comfy_type(io_type))
    io.Custom = _comfy_type

    class Schema:
        def __init__(self, node_id, display_name=None, category="sd", inputs=None, outputs=None, hidden=None,
                     description="", **flags):
            self.node_id, self.display_name, self.category = node_id, display_name, category
            self.inputs, self.outputs, self.description = inputs or [], outputs or [], description
            ids = [i.id for i in self.inputs] + [o.id for o in self.outputs]
            assert len(ids) == len(set(ids)), f"duplicate ids in {node_id}: {ids}"

    class NodeOutput:
        def __init__(self, *args, ui=None, expand=None, block_execution=None):
            self.args, self.ui = args, ui

        def __getitem__(self, index):
            return self.args[index]

    class ComfyNode:
        pass

    io.Schema, io.NodeOutput, io.ComfyNode, io.Input = Schema, NodeOutput, ComfyNode, _Input
    return io


def _make_ui() -> types.ModuleType:
    ui = types.ModuleType("comfy_api.latest.ui")

    class PreviewImage:
        def __init__(self, image, animated=False, cls=None, **kwargs):
            assert image.dim() == 4 and image.shape[-1] == 3, tuple(image.shape)
            self.image = image

    ui.PreviewImage = PreviewImage
    return ui


# ----------------------------------------------------------------------------------------------------- comfy.*


def _make_model_management() -> types.ModuleType:
    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = Interrupted
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.intermediate_device = lambda: torch.device("cpu")
    mm.should_use_fp16 = lambda device=None, **kw: False
    mm.should_use_bf16 = lambda device=None, **kw: False

    def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        STATE.loaded.extend(models)

    def throw_exception_if_processing_interrupted():
        if STATE.interrupt_after is not None and len(STATE.progress) >= STATE.interrupt_after:
            STATE.interrupt_after = None
            raise Interrupted()

    mm.load_models_gpu = load_models_gpu
    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    return mm


def _make_model_patcher() -> types.ModuleType:
    mp = types.ModuleType("comfy.model_patcher")

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
            self.model, self.load_device, self.offload_device = model, load_device, offload_device

    mp.ModelPatcher = ModelPatcher
    return mp


def _make_utils() -> types.ModuleType:
    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total, self.current = total, 0

        def update_absolute(self, value, total=None, preview=None):
            self.total = total if total is not None else self.total
            self.current = min(value, self.total)
            STATE.progress.append((self.current, self.total, preview))
            sys.modules["comfy.model_management"].throw_exception_if_processing_interrupted()

    utils.ProgressBar = ProgressBar
    return utils


# ------------------------------------------------------------------------------------------------ folder_paths


def _make_folder_paths(models_dir: Path) -> types.ModuleType:
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(models_dir)
    fp.get_input_directory = lambda: str(models_dir.parent / "input")
    fp.folder_names_and_paths = {}

    def add_model_folder_path(folder_name, full_folder_path, is_default=False):
        if folder_name not in fp.folder_names_and_paths:
            fp.folder_names_and_paths[folder_name] = ([full_folder_path], set())
            return
        paths = fp.folder_names_and_paths[folder_name][0]
        if full_folder_path in paths:
            paths.remove(full_folder_path)
        paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)

    def get_filename_list(folder_name):
        paths, extensions = fp.folder_names_and_paths[folder_name]
        found = set()
        for folder in paths:
            for dirpath, _, files in os.walk(folder):
                found.update(os.path.relpath(os.path.join(dirpath, f), folder) for f in files
                             if os.path.splitext(f)[1].lower() in extensions or not extensions)
        return sorted(found)

    def get_full_path(folder_name, filename):
        filename = os.path.relpath(os.path.join("/", filename), "/")  # as ComfyUI: no "..", no absolute name
        for folder in fp.folder_names_and_paths.get(folder_name, ([], set()))[0]:
            path = os.path.join(folder, filename)
            if os.path.isfile(path):
                return path
        return None

    fp.add_model_folder_path = add_model_folder_path
    fp.get_folder_paths = lambda folder_name: list(fp.folder_names_and_paths[folder_name][0])
    fp.get_filename_list = get_filename_list
    fp.get_full_path = get_full_path
    return fp


# ------------------------------------------------------------------------------------------------------ set-up


def install(models_dir: Path) -> types.ModuleType:
    """Put the stub modules in ``sys.modules``, load the pack as ComfyUI does (its folder as a package) and run its
    entry point. Returns the pack's ``nodes`` package."""
    import asyncio

    comfy_api, latest = types.ModuleType("comfy_api"), types.ModuleType("comfy_api.latest")
    latest.io, latest.ui = _make_io(), _make_ui()

    class ComfyExtension:
        async def on_load(self):
            pass

    latest.ComfyExtension = ComfyExtension
    comfy_api.latest = latest
    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.model_patcher, comfy.utils = (
        _make_model_management(), _make_model_patcher(), _make_utils())
    for name, module in {"comfy_api": comfy_api, "comfy_api.latest": latest, "comfy": comfy,
                         "comfy.model_management": comfy.model_management, "comfy.model_patcher": comfy.model_patcher,
                         "comfy.utils": comfy.utils, "folder_paths": _make_folder_paths(models_dir)}.items():
        sys.modules[name] = module
    spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = pack
    spec.loader.exec_module(pack)
    extension = asyncio.run(pack.comfy_entrypoint())
    assert asyncio.run(extension.get_node_list()) == pack.nodes.NODES
    return pack.nodes


def describe(node_cls) -> dict:
    """A node's public contract as /object_info shows it: id, inputs (name, type), outputs, widget order."""
    schema = node_cls.define_schema()
    widgets = []
    for i in schema.inputs:
        if i.io_type in WIDGET_TYPES:
            widgets.append(i.id)
            if i.options.get("control_after_generate"):
                widgets.append("control_after_generate")
    return {
        "node_id": schema.node_id,
        "category": schema.category,
        "inputs": [(i.id, i.io_type) for i in schema.inputs],
        "outputs": [(o.display_name or o.id, o.io_type) for o in schema.outputs],
        "widgets": widgets,
    }


# ---------------------------------------------------------------------------------------------------- fixtures

import pytest  # noqa: E402

from comfyui_rad.adm import ADM, ADMConfig  # noqa: E402
from comfyui_rad.adapters import lora_target_modules, save_adapter  # noqa: E402
from comfyui_rad.checkpoints import save_model  # noqa: E402

TINY = ADMConfig(model_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_ds=(2,), num_head_channels=16,
                 image_size=32)


def tiny_model(seed: int = 0) -> ADM:
    """A random 32x32 ADM; weights a fixed function of ``seed``."""
    model = ADM(TINY)
    g = torch.Generator().manual_seed(seed)
    model.load_state_dict({k: torch.randn(v.shape, generator=g) * 0.05 for k, v in model.state_dict().items()})
    return model.eval()


def write_models(folder: Path) -> None:
    """tiny.safetensors (a full RAD model), base.safetensors with adapter.safetensors, junk.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_model()
    save_model(folder / "tiny.safetensors", model, force=True)
    save_model(folder / "base.safetensors", tiny_model(1), force=True)
    g = torch.Generator().manual_seed(2)
    sd = model.state_dict()
    lora = {}
    for name in lora_target_modules(model)[:4]:
        w = sd[name + ".weight"]
        lora[name] = (torch.randn(4, *w.shape[1:], generator=g) * 0.1,
                      torch.randn(w.shape[0], 4, *[1] * (w.dim() - 2), generator=g) * 0.1)
    save_adapter(folder / "adapter.safetensors", lora=lora, full={}, base_path=folder / "base.safetensors",
                 base_config=model.config, rank=4, alpha=4)
    from safetensors.torch import save_file
    save_file({"first_stage_model.encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)}, str(folder / "junk.safetensors"))


_HOST: types.SimpleNamespace | None = None


@pytest.fixture
def host(tmp_path_factory):
    """The pack loaded on the stub host (once per test session, whichever module asks first), with ``models/rad``
    holding the files of ``write_models``."""
    global _HOST
    if _HOST is None:
        models = tmp_path_factory.getbasetemp() / "stub_models"
        write_models(models / "rad")
        _HOST = types.SimpleNamespace(nodes=install(models), models=models, state=STATE)
    return _HOST


@pytest.fixture
def state(host):
    STATE.reset()
    yield STATE
    STATE.reset()


@pytest.fixture
def rad_model(host):
    """The tiny RAD model through RAD Model Loader (a ModelPatcher), loaded once."""
    if not hasattr(host, "rad_model"):
        host.rad_model = host.nodes.RADModelLoader.execute("tiny.safetensors", "none", 1.0, "auto")[0]
    return host.rad_model
