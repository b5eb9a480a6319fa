"""What ComfyUI imports when this repository is cloned into ``custom_nodes/``.

The engine (``comfyui_rad``) is importable by its own name from here, so the node modules and a pip-installed copy
use one and the same package. The nodes (``nodes/``) are imported only inside ComfyUI: elsewhere this file imports
cleanly and imports nothing of ComfyUI.
"""

import importlib.util
import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

if "comfy_api" in sys.modules or importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint  # noqa: E402,F401
