"""RAD Model Loader: a guided-diffusion ADM from ``models/rad``, optionally with a RAD adapter merged in."""

from __future__ import annotations

import logging
import os
import re

import comfy.model_management
import comfy.model_patcher
import folder_paths
import torch
from comfy_api.latest import io

from comfyui_rad.checkpoints import DEFAULT_MODEL as DEFAULT_MODEL_PATH
from comfyui_rad.checkpoints import load_adm
from comfyui_rad.devices import DTYPES
from comfyui_rad.diffusers_format import LORA_ONLY_NAME

from .common import CATEGORY, RADModel

log = logging.getLogger(__name__)

FOLDER = "rad"
EXTENSIONS = {".safetensors", ".pt", ".pth", ".ckpt", ".bin"}
BUILTIN_DIR = DEFAULT_MODEL_PATH.parent
DEFAULT_MODEL = DEFAULT_MODEL_PATH.name
NO_ADAPTER = "none"


def register_folder() -> None:
    """``models/rad`` (first) and the pack's built-in weights as the ``rad`` model folder, keeping any paths a
    user's ``extra_paths.yaml`` (ComfyUI 0.38's main model-path file) or ``extra_model_paths.yaml`` gave it, with
    the checkpoint extensions."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)
    folder_paths.add_model_folder_path(FOLDER, str(BUILTIN_DIR))
    paths, extensions = folder_paths.folder_names_and_paths[FOLDER]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(extensions) | EXTENSIONS)


AUTHORS_WEIGHTS = re.compile(r"^(?P<run>(?:.+/)?checkpoint-\d+)/(?P<sub>unet|unet_ema)/"
                             r"diffusion_pytorch_model\.(?:safetensors|bin)$")
"""The model file inside an authors' checkpoint-N folder (listed under a readable name)."""
_TRAINING_STATE = re.compile(r"(^|/)(optimizer|scheduler|scaler)(_\d+)?\.(bin|pt)$|(^|/)random_states_\d+\.pkl$")


def _files() -> list[str]:
    return folder_paths.get_filename_list(FOLDER)


def _choices() -> dict[str, str]:
    """Listed name -> file name in the rad folder. An authors' ``checkpoint-N/unet/diffusion_pytorch_model.*``
    is listed as "checkpoint-N (authors' RAD)" (with its path from models/rad, "EMA" for unet_ema/); their
    LoRA-only export and accelerate's training state, which are not models, are not listed."""
    choices = {}
    for name in _files():
        rel = name.replace(os.sep, "/")
        m = AUTHORS_WEIGHTS.match(rel)
        if m:
            choices[f"{m['run']} (authors' RAD{', EMA' if m['sub'] == 'unet_ema' else ''})"] = name
        elif not (_TRAINING_STATE.search(rel) or rel.rsplit("/", 1)[-1] == LORA_ONLY_NAME):
            choices[name] = name
    return choices


def _inside_folders(path: str | None, name: str) -> str | None:
    """``path`` when it lies inside one of the RAD model folders (``..`` and absolute names collapsed, as a path
    from a workflow must; a link the user put in a folder is followed), else a ValueError naming ``name``.
    ComfyUI's own ``folder_paths`` normalises names too: this is the pack's own check, whatever the host does."""
    if path is None:
        return None
    where = os.path.normcase(os.path.abspath(path))
    for folder in folder_paths.get_folder_paths(FOLDER):
        root = os.path.normcase(os.path.abspath(folder))
        if os.path.commonpath([where, root]) == root and where != root:
            return path
    raise ValueError(f"'{name}' resolves to {path}, outside the RAD model folders: pick a file from the list")


def _full_path(name: str) -> str | None:
    """The file behind a listed name (or a plain file name from an older workflow), inside the RAD model folders."""
    return _inside_folders(folder_paths.get_full_path(FOLDER, _choices().get(name, name)), name)


def _adapter_path(name: str) -> str | None:
    return _inside_folders(folder_paths.get_full_path(FOLDER, name), name)


def _missing(what: str, name: str) -> str:
    folders = "\n".join(f"  {p}" for p in folder_paths.get_folder_paths(FOLDER))
    return (f"{what} '{name}' was not found in the RAD model folders:\n{folders}\nPut the file in one of them "
            "(or add a 'rad' entry to extra_paths.yaml, or extra_model_paths.yaml before ComfyUI 0.38), then refresh "
            "(R) and pick it from the list.")


def _stamp(path: str) -> tuple:
    """(path, size, mtime in ns) of a file, or (path, None, None) when it cannot be read: what a change shows."""
    try:
        stat = os.stat(path)
    except OSError:
        return path, None, None
    return path, stat.st_size, stat.st_mtime_ns


def _auto_dtype(device: torch.device) -> torch.dtype:
    """bf16 or fp16 where ComfyUI would run a model so on this device, float32 on the CPU.

    The node's "auto" asks ComfyUI (which knows the user's --force-fp16/--bf16-unet choices) instead of
    ``comfyui_rad.devices.resolve_dtype``; named precisions come from the same ``DTYPES`` table."""
    if device.type == "cpu":
        return torch.float32
    mm = comfy.model_management
    if getattr(mm, "should_use_bf16", None) and mm.should_use_bf16(device):
        return torch.bfloat16
    if getattr(mm, "should_use_fp16", None) and mm.should_use_fp16(device):
        return torch.float16
    return torch.float32


class RADModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = list(_choices())
        return io.Schema(
            node_id="RADModelLoader",
            display_name="RAD Model Loader (ADM+LoRA)",
            category=CATEGORY,
            description="Loads a guided-diffusion ADM checkpoint (pixel space, e.g. 256x256_diffusion_uncond.pt) "
                        "and merges a RAD adapter into it, from ComfyUI/models/rad. rad_default.safetensors ships "
                        "with the pack and needs no adapter. The RAD authors' checkpoints load as they are: a "
                        "rad-convert file, or their checkpoint-N folder copied into models/rad.",
            inputs=[
                io.Combo.Input("base_model", options=files, default=DEFAULT_MODEL if DEFAULT_MODEL in files else None,
                               tooltip="A guided-diffusion ADM checkpoint (.pt or .safetensors) or a full RAD model, "
                                       "from models/rad: a rad-convert file, or an authors' checkpoint-N folder "
                                       "(listed as 'checkpoint-N (authors' RAD)'). rad_default.safetensors is "
                                       "built in."),
                io.Combo.Input("adapter", options=[NO_ADAPTER, *(f for f in files if f.endswith(".safetensors"))],
                               default=NO_ADAPTER,
                               tooltip="A RAD adapter (.safetensors from rad-train) made for this base, or none "
                                       "for a full RAD model. A plain ADM without an adapter inpaints poorly."),
                io.Float.Input("strength", default=1.0, min=0.0, max=2.0, step=0.05,
                               tooltip="How much of the adapter to merge: 1 = as trained (ignored without one)."),
                io.Combo.Input("dtype", options=["auto", *DTYPES], default="auto",
                               tooltip="Weights' precision. auto: bf16/fp16 on a GPU as ComfyUI decides, fp32 on the "
                                       "CPU. The seed gives the same noise in every precision."),
            ],
            outputs=[RADModel.Output("rad_model", display_name="rad_model", tooltip="The model, for RAD Sampler.")],
        )

    @classmethod
    def validate_inputs(cls, base_model: str, adapter: str) -> bool | str:
        try:
            if _full_path(base_model) is None:
                return _missing("base_model", base_model)
            if adapter != NO_ADAPTER and _adapter_path(adapter) is None:
                return _missing("adapter", adapter)
        except ValueError as error:  # a name that leads out of the model folders
            return str(error)
        return True

    @classmethod
    def fingerprint_inputs(cls, base_model: str, adapter: str, strength: float, dtype: str):
        """Reload when a chosen file changes on disk (same name, new weights): its size or mtime in ns."""
        try:
            paths = [_full_path(base_model)] + ([_adapter_path(adapter)] if adapter != NO_ADAPTER else [])
        except ValueError:  # a name outside the model folders: execute refuses it
            return base_model, adapter, strength, dtype
        return tuple(_stamp(p) for p in paths if p is not None), strength, dtype

    @classmethod
    def execute(cls, base_model: str, adapter: str, strength: float, dtype: str) -> io.NodeOutput:
        base_path = _full_path(base_model)
        if base_path is None:
            raise FileNotFoundError(_missing("base_model", base_model))
        adapter_path = None
        if adapter != NO_ADAPTER:
            adapter_path = _adapter_path(adapter)
            if adapter_path is None:
                raise FileNotFoundError(_missing("adapter", adapter))
        load_device = comfy.model_management.get_torch_device()
        offload_device = comfy.model_management.unet_offload_device()
        weights_dtype = DTYPES[dtype] if dtype in DTYPES else _auto_dtype(torch.device(load_device))
        try:
            model = load_adm(base_path, adapter=adapter_path, strength=strength, device=offload_device,
                             dtype=weights_dtype)
        except ValueError as error:
            raise ValueError(f"cannot load {base_path}{f' with {adapter_path}' if adapter_path else ''}: {error}") \
                from error
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
        return io.NodeOutput(patcher)
