#!/usr/bin/env bash
# Set up a real ComfyUI 0.3.64 for the opt-in real-host test (tests/test_comfy_host.py), CPU only.
#   COMFYUI_DIR    where the checkout goes     (default /work/ComfyUI)
#   COMFY_VENV     its own virtual environment (default /work/comfy-venv)
#   COMFYUI_MIRROR a git mirror of github:Comfy-Org/ComfyUI whose HEAD is 0.3.64
#                  (default /work/.mirror/Comfy-Org+ComfyUI/repo; else clone it from GitHub at tag v0.3.64)
# Then: COMFYUI_DIR=$COMFYUI_DIR COMFYUI_PYTHON=$COMFY_VENV/bin/python python -m pytest -q tests/test_comfy_host.py
set -euo pipefail
COMFYUI_DIR=${COMFYUI_DIR:-/work/ComfyUI}
COMFY_VENV=${COMFY_VENV:-/work/comfy-venv}
COMFYUI_MIRROR=${COMFYUI_MIRROR:-/work/.mirror/Comfy-Org+ComfyUI/repo}

if [ ! -d "$COMFYUI_DIR/.git" ]; then
  # The mirror lacks one large file (a llama tokenizer no RAD run needs): clone without
  # checkout, then check out everything that is present.
  git clone -q --no-checkout "$COMFYUI_MIRROR" "$COMFYUI_DIR"
  (cd "$COMFYUI_DIR" && git checkout HEAD -- . ':!comfy/text_encoders/llama_tokenizer/tokenizer.json')
fi
grep -q '"0.3.64"' "$COMFYUI_DIR/comfyui_version.py" || echo "warning: $COMFYUI_DIR is not ComfyUI 0.3.64" >&2

[ -x "$COMFY_VENV/bin/python" ] || python3 -m venv "$COMFY_VENV"
PIP="$COMFY_VENV/bin/pip"
# torch first, pinned (the CPU wheel); never let requirements pull another torch.
"$PIP" install -q torch==2.13.0
grep -v -E '^(torch|torchvision|torchaudio)$' "$COMFYUI_DIR/requirements.txt" > "$COMFY_VENV/comfy-requirements.txt"
"$PIP" install -q -r "$COMFY_VENV/comfy-requirements.txt" 'transformers<5' requests torch==2.13.0
# torchvision/torchaudio without their dependencies (they would swap torch).
"$PIP" install -q --no-deps torchvision torchaudio

# PyPI's torchvision for torch 2.13 is a CUDA build whose _C extension cannot load on CPU torch; then
# `import torchvision` fails registering fake kernels for torchvision::nms/qnms, which have no schema. ComfyUI imports
# torchvision at start-up, so a start-up hook defines those two schemas whenever _C is missing (no kernels: nothing
# ComfyUI runs for RAD calls them).
SITE=$("$COMFY_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cat > "$SITE/_rad_torchvision_cpu_hook.py" <<'PY'
"""Define torchvision::nms / qnms schemas when torchvision's _C extension cannot load (CPU torch, CUDA wheel)."""
import importlib.abc
import sys


class _Hook(importlib.abc.MetaPathFinder):
    done = False

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision._meta_registrations" and not _Hook.done:
            _Hook.done = True
            import torchvision.extension
            if not torchvision.extension._has_ops():
                import torch.library
                _Hook.lib = torch.library.Library("torchvision", "DEF")
                for op in ("nms", "qnms"):
                    _Hook.lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        return None


sys.meta_path.insert(0, _Hook())
PY
echo "import _rad_torchvision_cpu_hook" > "$SITE/_rad_torchvision_cpu_hook.pth"
"$COMFY_VENV/bin/python" -c "import torchvision; print('torchvision', torchvision.__version__, 'imports')"
