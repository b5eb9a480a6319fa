"""rad-train: train RAD (paper §3.4, §4.2) as a LoRA adapter on a guided-diffusion ADM, or a small model from scratch.

    from comfyui_rad.train import TrainOptions, Trainer
    trainer = Trainer(TrainOptions(data="photos/", out="runs/a", preset="small64", steps=20000))
    trainer.fit()
    trainer.export("runs/a/rad-small64.safetensors")

Modules: ``data`` (images, holdout, crops), ``stream`` (the global sample stream: what sample k of step s is,
whatever the number of processes), ``noising`` (noise states per image), ``losses`` (per-pixel MSE + VLB), ``lora``
(peft), ``presets`` (fresh models), ``state`` (checkpoints), ``export`` (adapter / model files), ``distributed``
(torchrun: process group, stop signals), ``speed`` (checkpointing, channels-last, compile), ``loop`` (the trainer),
``cli`` (``rad-train``). peft is imported only for LoRA runs.

Under torchrun (``torchrun --nproc_per_node N -m comfyui_rad.train ...``) the same code runs DDP, one process per
GPU; rank 0 alone writes.
"""

from .export import export_checkpoint, export_weights
from .loop import Trainer, TrainOptions
from .presets import PRESETS, build_fresh, preset_config

__all__ = ["Trainer", "TrainOptions", "export_checkpoint", "export_weights", "PRESETS",
           "build_fresh", "preset_config"]
