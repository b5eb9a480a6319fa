"""RAD Sampler: inpaints an image with a RAD model and a spatial noise schedule, in one reverse pass."""

from __future__ import annotations

import logging

import comfy.model_management
from comfy_api.latest import io

from comfyui_rad.devices import cpu_threads
from comfyui_rad.pipeline import plan_inpaint, run_plan
from comfyui_rad.sampling import BASELINE_SAMPLERS, DEFAULT_JUMP, SAMPLERS, SamplerSpec
from comfyui_rad.settings import DEFAULT_SAMPLER, DEFAULT_STEPS, SPACING_NAMES, START_NAMES, START_STRENGTH

from .common import (
    CATEGORY, check_image_and_mask, check_schedule, fit_and_label_inputs, image_to_bchw, image_to_bhwc, MaskSchedule,
    progress, RADModel, RADSchedule, sampler_outputs,
)

log = logging.getLogger(__name__)

RAD_SAMPLERS = [name for name in SAMPLERS if name not in BASELINE_SAMPLERS]
"""RePaint has its own node (RePaint Sampler (ADM)): its steps and jumps are no RAD settings."""


class RADSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RADSampler",
            display_name="RAD Sampler",
            category=CATEGORY,
            description="Inpaints with RAD: every pixel gets its own noise level, so one reverse pass fills the mask "
                        "while pixels outside it are returned untouched, bit for bit. Works at the model's "
                        "resolution: a window around the mask is cropped, inpainted and stitched back.",
            inputs=[
                RADModel.Input("rad_model", tooltip="From RAD Model Loader."),
                io.Image.Input("image", tooltip="The image(s) to inpaint, any size. One image with many masks, many "
                                                "images with one mask, or as many of each."),
                RADSchedule.Input("schedule", tooltip="From Spatial Noise Schedule: the mask and the steps."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed. Noise is drawn on the CPU, so a seed gives the same image on any "
                                     "device."),
                io.Int.Input("steps", default=DEFAULT_STEPS[DEFAULT_SAMPLER], min=0, max=1000,
                             tooltip=f"Reverse steps, one network call each; 0 = the schedule's steps. "
                                     f"{DEFAULT_STEPS[DEFAULT_SAMPLER]} suits {DEFAULT_SAMPLER} and euler_ancestral; "
                                     f"ddpm wants 100 (set 0 to take the schedule's)."),
                io.Combo.Input("sampler", options=RAD_SAMPLERS, default=DEFAULT_SAMPLER,
                               tooltip="dpmpp_2m_sde (default): ComfyUI's DPM++ 2M SDE with each pixel on its own "
                                       "noise level, 15 steps at DDPM-100's quality (docs/EXPERIMENTS.md). "
                                       "euler_ancestral: 15 steps too. dpmpp_2m: deterministic, keeps the model's "
                                       "error. ddpm: the paper's sampler (100 steps). ddim: 25-50 steps; at eta 1 "
                                       "(default) DDIM-25 comes close to DDPM-100, at eta 0 it is deterministic "
                                       "but much worse. Workflows saved earlier keep the sampler and steps they "
                                       "saved."),
                io.Float.Input("eta", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="ddim, euler_ancestral, dpmpp_2m_sde: 1 (the default; it was 0 before) = as "
                                       "random as DDPM, the noise washes out model error; 0 = deterministic, which "
                                       "keeps every error (docs/EXPERIMENTS.md). "
                                       "Workflows saved earlier keep the eta they saved."),
                *fit_and_label_inputs(),
                io.Int.Input("resample", default=0, min=0, max=100, optional=True,
                             tooltip="RAD with resampling: every `jump` steps the hole goes back up `jump` steps of "
                                     "its own noise schedule and is denoised again, this many times. 0 = off (the "
                                     "paper's sampler). 1 with jump 10 at 100 steps: 190 network calls."),
                io.Int.Input("jump", default=DEFAULT_JUMP, min=1, max=1000, optional=True,
                             tooltip="With resample: how many steps each jump goes back up; below the steps."),
                io.Combo.Input("start", options=list(START_NAMES), default="noise", optional=True,
                               tooltip="Where the hole starts. noise: the paper's RAD, the model invents the hole. "
                                       "harmonic: the hole is first filled from the pixels around it (as Fill "
                                       "(RAD)), then regenerated at start_strength: it keeps the picture's colours. "
                                       "auto: the start and strength the model's file recommends (noise for a "
                                       "model that records none; the built-in model's: its card). The progress "
                                       "preview shows the start."),
                io.Float.Input("start_strength", default=START_STRENGTH, min=0.0, max=1.0, step=0.05, optional=True,
                               tooltip="harmonic start only (auto uses the model's own): how much of the hole is "
                                       "regenerated, like a denoise. 1 = as from noise, 0 = the fill itself (no "
                                       "model call); docs/EXPERIMENTS.md measures it per model."),
                io.Combo.Input("spacing", options=["auto", *SPACING_NAMES], default="auto", optional=True,
                               tooltip="How the steps are spread over the noise levels. auto: the sampler's own "
                                       "(uniform in t for ddpm and ddim, as before; uniform in the hole's log-SNR "
                                       "for the multistep samplers). uniform, lambda (log-SNR), karras."),
            ],
            outputs=sampler_outputs(),
        )

    @classmethod
    def execute(cls, rad_model, image, schedule: MaskSchedule, seed: int, steps: int, sampler: str, eta: float,
                fit: str, class_label: int, resample: int = 0, jump: int = DEFAULT_JUMP, start: str = "noise",
                start_strength: float = START_STRENGTH, spacing: str = "auto") -> io.NodeOutput:
        check_schedule(schedule)
        image = image_to_bchw(image)
        check_image_and_mask(image, schedule.mask)
        # checked before loading; the inputs carry the API's names
        spec = SamplerSpec.create(sampler, steps=steps or schedule.steps, eta=eta, resample=resample, jump=jump,
                                  spacing=None if spacing == "auto" else spacing)
        plan = plan_inpaint(rad_model.model, image, schedule.mask, fit=fit, start=start,
                            start_strength=None if start == "auto" else start_strength,
                            mask_name="the schedule's mask")
        comfy.model_management.load_models_gpu([rad_model], force_full_load=True)
        comfy.model_management.throw_exception_if_processing_interrupted()
        log.info("RAD Sampler: %s", plan.describe(spec))
        shown = plan.image if plan.start != "noise" else None  # the start (the fill in the hole), at step 0
        with cpu_threads(0, next(rad_model.model.parameters()).device):  # CPU: the free cores; else untouched
            result = run_plan(rad_model.model, plan, spec, seed=seed, callback=progress(plan.calls(spec), shown),
                              y=None if class_label < 0 else class_label, curves=schedule.curves)
        return io.NodeOutput(image_to_bhwc(result), plan.mask_used)
