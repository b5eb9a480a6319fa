"""comfyui-rad's engine: RAD inpainting (region-aware diffusion, Kim, Suh & Lee, CVPR 2025) for guided-diffusion
ADM checkpoints. Pure PyTorch; never imports ComfyUI."""

from .checkpoints import load_adm
from .version import __version__

__all__ = ["load_adm", "__version__"]
