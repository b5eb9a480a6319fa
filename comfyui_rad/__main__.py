"""``python -m comfyui_rad``: the same as ``rad-inpaint``."""

import sys

from .cli import main

sys.exit(main())
