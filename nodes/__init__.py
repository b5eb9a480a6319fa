"""comfyui-rad's ComfyUI nodes (V3 schema). Thin adapters: ComfyUI layouts in, ``comfyui_rad`` calls, layouts out."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import folder_paths
from comfy_api.latest import ComfyExtension, io

from .fill import RADFill
from .model_loader import RADModelLoader, register_folder
from .perlin_mask import RADPerlinMask
from .repaint_sampler import RADRePaintSampler
from .sampler import RADSampler
from .schedule import RADSpatialSchedule

log = logging.getLogger(__name__)

NODES: list[type[io.ComfyNode]] = [RADPerlinMask, RADModelLoader, RADSpatialSchedule, RADSampler,
                                   RADRePaintSampler, RADFill]
EXAMPLE_INPUTS = Path(__file__).resolve().parent.parent / "example_workflows" / "input"


def copy_example_inputs() -> None:
    """Put the example workflows' pictures (rad_example_*) in ComfyUI's input folder, once: the examples then run
    as shipped. Files already there are left alone."""
    target = Path(folder_paths.get_input_directory())
    for source in sorted(EXAMPLE_INPUTS.glob("rad_example_*")):
        if not (target / source.name).exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / source.name)
            log.info("comfyui-rad: copied example input %s to %s", source.name, target)


class RADExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> RADExtension:
    register_folder()
    try:
        copy_example_inputs()
    except OSError as error:  # a read-only input folder must not keep the nodes from loading
        log.warning("comfyui-rad: could not copy the example inputs: %s", error)
    return RADExtension()
