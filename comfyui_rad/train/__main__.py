"""``python -m comfyui_rad.train``: the same as ``rad-train``."""

import sys

from .cli import main

sys.exit(main())
