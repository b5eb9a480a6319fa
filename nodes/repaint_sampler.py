"""RePaint Sampler (ADM): the baseline, RePaint's resampling on any loaded ADM, beside the RAD Sampler."""

from __future__ import annotations

import logging

import comfy.model_management
from comfy_api.latest import io

from comfyui_rad.pipeline import plan_inpaint, run_plan
from comfyui_rad.sampling import SamplerSpec

from .common import (
    CATEGORY, check_image_and_mask, check_schedule, fit_and_label_inputs, image_to_bchw, image_to_bhwc, MaskSchedule,
    progress, RADModel, RADSchedule, sampler_outputs,
)

log = logging.getLogger(__name__)


class RADRePaintSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RADRePaintSampler",
            display_name="RePaint Sampler (ADM)",
            category=CATEGORY,
            description="Inpaints with RePaint (Lugmayr et al. 2022), the baseline RAD is compared against: any ADM "
                        "(no RAD adapter needed), the known region re-noised at every step, and jumps back to "
                        "harmonise. Slow: 2,410 network calls at the defaults, against RAD's 100. Pixels outside "
                        "the mask are returned untouched. Needs a binary mask.",
            inputs=[
                RADModel.Input("rad_model", tooltip="From RAD Model Loader: any ADM, with or without an adapter."),
                io.Image.Input("image", tooltip="The image(s) to inpaint, any size. One image with many masks, many "
                                                "images with one mask, or as many of each."),
                RADSchedule.Input("schedule", tooltip="From Spatial Noise Schedule: the mask (mask_mode binary) and "
                                                      "the noise curves; its steps are not used here."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed. Noise is drawn on the CPU, so a seed gives the same image on any "
                                     "device."),
                io.Int.Input("steps", default=250, min=1, max=1000,
                             tooltip="Respaced reverse steps (RePaint: 250)."),
                io.Int.Input("jump_length", default=10, min=1, max=1000,
                             tooltip="How many steps each jump goes back up (RePaint: 10)."),
                io.Int.Input("jump_n_sample", default=10, min=1, max=100,
                             tooltip="How often each stretch is sampled; 1 = no jumps (RePaint: 10). Network calls "
                                     "grow about in proportion."),
                *fit_and_label_inputs(),
            ],
            outputs=sampler_outputs(),
        )

    @classmethod
    def execute(cls, rad_model, image, schedule: MaskSchedule, seed: int, steps: int, jump_length: int,
                jump_n_sample: int, fit: str, class_label: int) -> io.NodeOutput:
        check_schedule(schedule)
        image = image_to_bchw(image)
        check_image_and_mask(image, schedule.mask)
        # checked before loading, in the node's input names
        spec = SamplerSpec.create("repaint", steps=steps, jump_length=jump_length, jump_n_sample=jump_n_sample)
        plan = plan_inpaint(rad_model.model, image, schedule.mask, fit=fit)
        comfy.model_management.load_models_gpu([rad_model], force_full_load=True)
        comfy.model_management.throw_exception_if_processing_interrupted()
        log.info("RePaint Sampler: %s", plan.describe(spec))
        result = run_plan(rad_model.model, plan, spec, seed=seed, callback=progress(plan.calls(spec)),
                          y=None if class_label < 0 else class_label, curves=schedule.curves)
        return io.NodeOutput(image_to_bhwc(result), plan.mask)
