"""What the RAD nodes share: the socket types, ComfyUI <-> engine layouts, the schedule the sampler receives.

ComfyUI's IMAGE is float32 [B,H,W,C] in [0,1] and MASK float [B,H,W] (1 = inpaint); the engine takes [B,C,H,W] and
[B,H,W]. Layout only: the math lives in ``comfyui_rad``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import comfy.model_management
import comfy.utils
import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image

from comfyui_rad.imaging import same_aspect
from comfyui_rad.masks import as_bhw
from comfyui_rad.pipeline import FITS
from comfyui_rad.schedule import NoiseCurves

log = logging.getLogger(__name__)

CATEGORY = "inpaint/RAD"
RADModel = io.Custom("RAD_MODEL")
"""A ComfyUI ``ModelPatcher`` around a ``comfyui_rad`` ADM (``.model``, with ``.config`` and ``.rad_info``)."""
RADSchedule = io.Custom("RAD_SCHEDULE")
"""A ``MaskSchedule``."""


@dataclass(frozen=True)
class MaskSchedule:
    """What the Spatial Noise Schedule node hands the sampler: the mask as read, float32 [B,H,W] in [0,1]
    (1 = inpaint) at its own size, the number of reverse steps, and Phase 1's curves (None: the model's)."""

    mask: torch.Tensor
    steps: int
    curves: NoiseCurves | None = None


def advanced(widget: io.Input) -> io.Input:
    """Show ``widget`` only when the creator opens the node's advanced settings."""
    widget.extra_dict["advanced"] = True
    return widget


def image_to_bchw(image: torch.Tensor) -> torch.Tensor:
    """A ComfyUI IMAGE [B,H,W,C] (or [H,W,C]; C = 1, 3 or 4) -> float32 [B,3,H,W] on the CPU.

    A [B,C,H,W] tensor (C = 1, 3 or 4) from a node that breaks the convention is accepted too. Alpha is dropped,
    gray is repeated to RGB.
    """
    image = torch.as_tensor(image).detach().float().cpu()
    image = image[None] if image.dim() == 3 else image
    if image.dim() != 4:
        raise ValueError(f"IMAGE must be [B,H,W,C], got shape {tuple(image.shape)}")
    if image.shape[-1] not in (1, 3, 4) and image.shape[1] in (1, 3, 4):
        log.debug("IMAGE of shape %s read as [B,C,H,W]", tuple(image.shape))
        image = image.movedim(1, -1)
    if image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"IMAGE must be [B,H,W,C] with 1, 3 or 4 channels, got shape {tuple(image.shape)}")
    image = image[..., :3] if image.shape[-1] == 4 else image.expand(-1, -1, -1, 3)
    return image.movedim(-1, 1).contiguous()


def image_to_bhwc(image: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] -> ComfyUI's IMAGE [B,H,W,3], float32 on the CPU."""
    return image.movedim(1, -1).float().cpu().contiguous()


def mask_to_bhw(mask: torch.Tensor) -> torch.Tensor:
    """A ComfyUI MASK ([H,W], [B,H,W], [B,1,H,W] or [B,H,W,1]) -> float32 [B,H,W] on the CPU (``masks.as_bhw``)."""
    return as_bhw(torch.as_tensor(mask).detach().cpu())


def to_pil(image: torch.Tensor) -> Image.Image:
    """One image [3,H,W] in [-1,1] (the model's range) -> an RGB PIL image, for previews."""
    pixels = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()))


PREVIEW_SIZE = 512
PREVIEW_INTERVAL = 0.25
"""Seconds between two previews (at most 4 a second; the first and the last are always sent). ComfyUI 0.38
throttles progress updates but sends every one that carries a preview, so the samplers throttle their own:
RePaint makes 2,410 calls, a large hole region by region thousands."""


CLOCK = time.monotonic
"""The previews' clock (a test sets its own)."""


class PreviewThrottle:
    """Whether a progress update should carry a preview: the first, the last, and then one per ``interval``
    seconds of ``clock`` (default ``CLOCK``)."""

    def __init__(self, interval: float = PREVIEW_INTERVAL, clock=None):
        self.interval, self.clock, self.last = interval, clock or CLOCK, None

    def __call__(self, done: int, total: int) -> bool:
        now = self.clock()
        if self.last is not None and done < total and now - self.last < self.interval:
            return False
        self.last = now
        return True


def progress(total: int, start: torch.Tensor | None = None):
    """A sampler callback: ComfyUI's progress bar over ``total`` network calls (all windows), with the predicted
    picture as a throttled preview (``PreviewThrottle``); raises on Cancel, so Cancel stops within one step.
    ``start``: the picture sampling starts from ([B,3,H,W] in [0,1], e.g. a fill), shown at once as the first
    preview (step 0)."""
    bar = comfy.utils.ProgressBar(total)
    throttle = PreviewThrottle()
    if start is not None:
        bar.update_absolute(0, total, ("JPEG", to_pil(start[0] * 2 - 1), PREVIEW_SIZE))

    def callback(info: dict) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        done, total = info["step"] + 1, info["total"]
        preview = ("JPEG", to_pil(info["pred_x0"][0]), PREVIEW_SIZE) if throttle(done, total) else None
        bar.update_absolute(done, total, preview)

    return callback


def fit_and_label_inputs() -> list:
    """The sampler nodes' ``fit`` and ``class_label`` inputs (public API: names, defaults and order pinned)."""
    return [
        io.Combo.Input("fit", options=list(FITS), default="crop",
                       tooltip="How the image meets the model's resolution (e.g. 256x256). crop: a square window "
                               "around the mask (with context), stitched back: best for big photos; a hole larger "
                               "than the window is filled region by region, as tiles. resize: the whole image, "
                               "stretched. pad: the whole image in a square. tiles: always region by region, "
                               "overlapping windows at the model's own resolution (outpainting, big holes)."),
        io.Int.Input("class_label", default=-1, min=-1, max=9999,
                     tooltip="Class-conditional checkpoints only (e.g. ImageNet: 0-999); -1 for unconditional ones."),
    ]


def sampler_outputs() -> list:
    """The sampler nodes' outputs: the inpainted images and the mask used."""
    return [
        io.Image.Output("result", display_name="image",
                        tooltip="The inpainted images at the input's size; pixels outside the mask are the input's."),
        io.Mask.Output("result_mask", display_name="mask",
                       tooltip="The mask used, at the image's size (after threshold)."),
    ]


def check_schedule(schedule) -> None:
    if not isinstance(schedule, MaskSchedule):
        raise TypeError(f"schedule must come from Spatial Noise Schedule (RAD), got {type(schedule).__name__}")


def check_image_and_mask(image: torch.Tensor, mask: torch.Tensor) -> None:
    """Before a sampler node loads its model: ``image`` [B,3,H,W] and the schedule's ``mask`` [B,H,W] pair up (one
    image, one mask, or as many of each) and the mask has the image's aspect ratio.

    The engine stretches a mask of another aspect ratio with a warning in the log; a node refuses it, since the
    person at the canvas never sees the log and the hole would land elsewhere than painted."""
    (images, _, height, width), (masks, mask_height, mask_width) = image.shape, mask.shape
    if 1 not in (images, masks) and images != masks:
        raise ValueError(f"the image input has {images} images and the schedule's mask has {masks} masks: give one "
                         "image, one mask, or as many images as masks (e.g. set the mask node's batch_size)")
    if not same_aspect(mask_height, mask_width, height, width):
        raise ValueError(
            f"the schedule's mask is {mask_width}x{mask_height} but the image input is {width}x{height}, another "
            "aspect ratio: stretched, the hole would not be where it was painted. Connect a mask made for this "
            f"image (its Load Image mask, or Solid Mask / Perlin Mask (RAD) at width {width}, height {height}), or "
            "resize the mask yourself first (Convert Mask to Image > Upscale Image > Convert Image to Mask).")
