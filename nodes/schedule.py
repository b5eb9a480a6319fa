"""Spatial Noise Schedule: how RAD reads the mask, and how many reverse steps it takes."""

from __future__ import annotations

from comfy_api.latest import io, ui

from comfyui_rad.masks import MASK_MODES, prepare
from comfyui_rad.schedule import NoiseCurves, schedule_preview

from .common import CATEGORY, MaskSchedule, RADSchedule, advanced, mask_to_bhw

CURVES = ("model", "custom")
EMPTY_LOADIMAGE = (
    "the mask is empty (64x64, all zero): this is what Load Image gives for a picture without transparency. Paint "
    "the area to inpaint: right-click the Load Image node > Open in MaskEditor, or connect another mask."
)


class RADSpatialSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RADSpatialSchedule",
            display_name="Spatial Noise Schedule (RAD)",
            category=CATEGORY,
            description="Turns a mask into RAD's per-pixel noise schedule: white pixels are regenerated, black ones "
                        "kept exactly. The preview shows the noise each pixel gets along the steps (white = pure "
                        "noise), first step on the left.",
            inputs=[
                io.Mask.Input("mask", tooltip="What to inpaint: 1 (white) = regenerate, 0 = keep. Any size of the "
                                              "image's aspect ratio; it is resized to the image in the sampler."),
                io.Combo.Input("mask_mode", options=list(MASK_MODES), default="binary",
                               tooltip="binary: a pixel is regenerated when its mask value is above the threshold "
                                       "(robust to JPEG and blurred edges). soft: the mask value is how much of the "
                                       "pixel is regenerated (0.5 = half way); values within 0.02 of 0 or 1 count "
                                       "as 0 or 1."),
                io.Float.Input("threshold", default=0.5, min=0.0, max=0.99, step=0.01,
                               tooltip="binary mode: mask values above this are inpainted (0 = any nonzero pixel)."),
                io.Int.Input("steps", default=100, min=1, max=1000,
                             tooltip="Reverse steps, one network call each (the paper: 100 DDPM steps; DDIM works "
                                     "with 25-50). The sampler uses these unless its own steps are set."),
                advanced(io.Combo.Input(
                    "curves", options=list(CURVES), default="model",
                    tooltip="Phase 1 noise curves. model: the ones the model file records (right for RAD "
                            "models and adapters). custom: T1 and the betas below.")),
                advanced(io.Int.Input("T1", default=1000, min=1, max=4000,
                                      tooltip="custom curves: diffusion steps of Phase 1 (the model's training T).")),
                advanced(io.Float.Input("beta_start", default=0.0001, min=0.000001, max=0.5, step=0.00001,
                                        round=0.000001, tooltip="custom curves: Phase 1's first beta (linear).")),
                advanced(io.Float.Input("beta_end", default=0.02, min=0.000001, max=0.5, step=0.0001,
                                        round=0.000001, tooltip="custom curves: Phase 1's last beta (linear).")),
            ],
            outputs=[
                RADSchedule.Output("schedule", display_name="schedule", tooltip="For RAD Sampler."),
                io.Image.Output("preview", display_name="preview",
                                tooltip="Noise per pixel at five points of the reverse process, left to right; one "
                                        "row per mask."),
            ],
        )

    @classmethod
    def execute(cls, mask, mask_mode: str, threshold: float, steps: int, curves: str = "model", T1: int = 1000,
                beta_start: float = 0.0001, beta_end: float = 0.02) -> io.NodeOutput:
        mask = mask_to_bhw(mask)
        prepared = prepare(mask, mask_mode, threshold)  # NaN, 0..255 or no pixel: refused before "empty"
        if not bool((mask > 0).any()):
            if tuple(mask.shape[-2:]) == (64, 64):
                raise ValueError(EMPTY_LOADIMAGE)
            raise ValueError(f"the mask is empty ({mask.shape[-1]}x{mask.shape[-2]}, all zero): nothing to inpaint. "
                             "White (1) marks what to regenerate; invert the mask if yours is the other way round.")
        mask = prepared
        if not bool((mask > 0).any()):
            raise ValueError(f"no mask value is above the threshold {threshold:g}: lower the threshold or use soft "
                             "mode")
        custom = NoiseCurves(T1=T1, beta_start=beta_start, beta_end=beta_end) if curves == "custom" else None
        if custom is not None and steps > custom.T1:
            raise ValueError(f"steps ({steps}) cannot exceed T1 ({T1}) of the custom curves: lower steps or raise T1")
        preview = schedule_preview(mask[:4], min(steps, (custom or NoiseCurves()).T1), custom)
        preview = preview[..., None].expand(-1, -1, -1, 3).contiguous()
        return io.NodeOutput(MaskSchedule(mask, steps, custom), preview,
                             ui=ui.PreviewImage(preview, cls=cls))
