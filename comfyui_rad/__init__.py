"""comfyui-rad's engine: RAD inpainting (region-aware diffusion, Kim, Suh & Lee, CVPR 2025) for guided-diffusion
ADM checkpoints. Pure PyTorch; never imports ComfyUI.

``load_adm`` is imported on first use, so the command line tools answer ``--help`` without loading torch."""

from .version import __version__

__all__ = ["load_adm", "__version__"]


def __getattr__(name: str):
    if name == "load_adm":
        from .checkpoints import load_adm

        return load_adm
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
