import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_root_init_imports_without_comfyui(tmp_path):
    """ComfyUI loads the repo's __init__.py as a package named after its folder; it must import without ComfyUI."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('comfyui-rad', {str(ROOT / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(ROOT)!r}])\n"
        "module = importlib.util.module_from_spec(spec); sys.modules['comfyui-rad'] = module\n"
        "spec.loader.exec_module(module)\n"
        "import comfyui_rad\n"
        "assert 'comfy' not in sys.modules and 'comfy_api' not in sys.modules\n"
        "print(comfyui_rad.__version__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == importlib.import_module("comfyui_rad").__version__


def test_engine_never_imports_comfyui():
    host = re.compile(r"^\s*(from|import)\s+(comfy|comfy_api|comfy_extras|folder_paths|nodes)(\.|\s|$)", re.M)
    for path in (ROOT / "comfyui_rad").rglob("*.py"):
        assert not host.search(path.read_text()), path


def test_inference_never_imports_the_trainer_or_a_cli():
    """train/ sits above the inference modules; the CLIs (cli.py, evaluate.py's main) are leaves."""
    upward = re.compile(r"^\s*from\s+(\.|comfyui_rad\.)(train|cli)\b|^\s*import\s+comfyui_rad\.(train|cli)\b", re.M)
    for path in (ROOT / "comfyui_rad").glob("*.py"):
        if path.name not in ("cli.py", "__main__.py"):
            assert not upward.search(path.read_text()), path
