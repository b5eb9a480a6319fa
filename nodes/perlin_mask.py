"""Perlin Mask: random cloud-shaped inpainting masks, the kind RAD is trained on (paper §3.2)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from comfyui_rad.checks import check_memory
from comfyui_rad.masks import perlin_bytes, perlin_mask

from .common import CATEGORY

MAX_SIZE = 16384


class RADPerlinMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RADPerlinMask",
            display_name="Perlin Mask (RAD)",
            category=CATEGORY,
            description="Cloud-shaped random masks from Perlin noise, as RAD is trained on: the target coverage of "
                        "the image (white = inpaint). The same seed gives the same masks on any machine.",
            inputs=[
                io.Int.Input("width", default=256, min=1, max=MAX_SIZE, step=1,
                             tooltip="Mask width in pixels (match the image you inpaint)."),
                io.Int.Input("height", default=256, min=1, max=MAX_SIZE, step=1,
                             tooltip="Mask height in pixels (match the image you inpaint)."),
                io.Int.Input("batch_size", default=1, min=1, max=64,
                             tooltip="Number of different masks; each gets its own cell size and pattern."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Random seed: the same seed and settings give the same masks."),
                io.Float.Input("cell_size_min", default=16.0, min=1.0, max=float(MAX_SIZE), step=1.0,
                               tooltip="Smallest Perlin cell in pixels; each mask draws its cell size between min "
                                       "and max. Small cells: many small blobs; large cells: few big ones."),
                io.Float.Input("cell_size_max", default=96.0, min=1.0, max=float(MAX_SIZE), step=1.0,
                               tooltip="Largest Perlin cell in pixels (set equal to min for one fixed scale)."),
                io.Int.Input("octaves", default=1, min=1, max=8,
                             tooltip="Layers of finer noise added on top: more octaves give ragged edges."),
                io.Float.Input("coverage", default=0.35, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the image to inpaint (exact, before softening)."),
                io.Float.Input("softness", default=0.0, min=0.0, max=64.0, step=0.5,
                               tooltip="Edge blur in pixels (Gaussian sigma). 0 gives a hard 0/1 mask; soft edges "
                                       "need the schedule's soft mode to take effect."),
                io.Boolean.Input("invert", default=False,
                                 tooltip="Swap inpaint and keep (coverage then is the kept fraction)."),
            ],
            outputs=[io.Mask.Output("mask", display_name="mask", tooltip="[batch, height, width], 1 = inpaint.")],
        )

    @classmethod
    def execute(cls, width: int, height: int, batch_size: int, seed: int, cell_size_min: float,
                cell_size_max: float, octaves: int, coverage: float, softness: float, invert: bool) -> io.NodeOutput:
        check_memory(perlin_bytes(batch_size, height, width),
                     f"Perlin Mask of batch_size {batch_size} x height {height} x width {width}",
                     "lower width, height or batch_size (generate at the image's size, not larger)")
        mask = perlin_mask(batch_size, height, width, generator=torch.Generator().manual_seed(seed),
                           cell_size=(cell_size_min, cell_size_max), octaves=octaves, coverage=coverage,
                           softness=softness, invert=invert)
        return io.NodeOutput(mask)
