"""comfyui-rad's engine: RAD inpainting (region-aware diffusion, Kim, Suh & Lee, CVPR 2025) for guided-diffusion
ADM checkpoints. Pure PyTorch; never imports ComfyUI."""

__version__ = "0.1.0"

from .checkpoints import load_adm  # noqa: E402,F401

__all__ = ["load_adm", "__version__"]
