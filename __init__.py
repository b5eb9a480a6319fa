"""What ComfyUI imports when this repository is cloned into ``custom_nodes/``.

The engine (``comfyui_rad``) is importable by its own name from here, so the node modules and a pip-installed copy
use one and the same package. Nothing here imports ComfyUI: the file imports cleanly where ComfyUI is absent.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
