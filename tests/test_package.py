import ast
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


# ------------------------------------------------------------------------------------------------ the import graph

FRONT_ENDS = {"comfyui_rad.cli": "rad-inpaint", "comfyui_rad.__main__": "rad-inpaint",
              "comfyui_rad.convert": "rad-convert", "comfyui_rad.evaluate": "rad-eval"}
"""Modules above the engine besides train/ (rad-train) and nodes/: each a front end of its own."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    """"engine", or the front end a module belongs to: rad-train, a CLI, or the nodes."""
    if module.split(".")[0] == "nodes":
        return "nodes"
    if module == "comfyui_rad.train" or module.startswith("comfyui_rad.train."):
        return "rad-train"
    return FRONT_ENDS.get(module, "engine")


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in [*(ROOT / "comfyui_rad").rglob("*.py"), *(ROOT / "nodes").rglob("*.py")]}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str, str | None]]:
    """(the name bound, the module of comfyui_rad/ or nodes/ it comes from, the name taken from that module or None
    when the module itself is bound) for each import of ``name`` (module level or inside functions: ast).
    ``from . import name`` binds the submodule ``name`` when there is one, else takes ``name`` from the package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.asname or a.name.split(".")[0], a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            base = ".".join(base + ([node.module] if node.module else []))
            found += [(a.asname or a.name, f"{base}.{a.name}", None) if f"{base}.{a.name}" in modules
                      else (a.asname or a.name, base, a.name) for a in node.names]
    return [(bound, module, taken) for bound, module, taken in found if module in modules and module != name]


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of comfyui_rad/ and nodes/ it imports, a package's ``__init__`` named by the package
    (``from . import __version__`` is an arrow to the package: its ``__init__`` runs its imports)."""
    modules = _modules()
    return {name: {module for _, module, _ in _imports(name, path, modules)} for name, path in modules.items()}


def private_names_taken() -> list[str]:
    """"module: other._name" for each private name a module takes from another (imported, or read off an imported
    module)."""
    modules, taken = _modules(), []
    for name, path in modules.items():
        imports = _imports(name, path, modules)
        bound = {b: module for b, module, what in imports if what is None}
        taken += [f"{name}: {module}.{what}" for _, module, what in imports if what and _is_private(what)]
        taken += [f"{name}: {bound[node.value.id]}.{node.attr}" for node in ast.walk(ast.parse(path.read_text()))
                  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                  and node.value.id in bound and _is_private(node.attr)]
    return sorted(set(taken))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One closed path for each import circle (strongly connected component of more than one module)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_the_import_graph_is_read():
    """The walker sees what it must: lazy imports, relative imports of names and of submodules, package faces."""
    graph = import_graph()
    assert {"comfyui_rad.architecture", "comfyui_rad.fileio"} <= graph["comfyui_rad.diffusers_format"]
    assert "comfyui_rad.checkpoints" in graph["comfyui_rad.cli"]  # also imported lazily inside run()
    assert "comfyui_rad.masks" in graph["comfyui_rad.train.noising"]  # from .. import masks
    assert graph["comfyui_rad"] >= {"comfyui_rad.checkpoints", "comfyui_rad.version"}
    assert "comfyui_rad.pipeline" in graph["nodes.sampler"] and "nodes.common" in graph["nodes.sampler"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_walker_finds_circles_and_private_names(tmp_path, monkeypatch):
    """On a made-up tree: a circle hidden in a function-level import, private names imported and read off a module."""
    engine = tmp_path / "comfyui_rad"
    engine.mkdir()
    (tmp_path / "nodes").mkdir()
    (engine / "__init__.py").write_text("from .a import run\n")
    (engine / "a.py").write_text("from . import b\n\ndef run():\n    return b._helper()\n")
    (engine / "b.py").write_text("def _helper():\n    from .a import _LIMIT\n    return _LIMIT\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert import_graph() == {"comfyui_rad": {"comfyui_rad.a"}, "comfyui_rad.a": {"comfyui_rad.b"},
                              "comfyui_rad.b": {"comfyui_rad.a"}}
    assert _cycles(import_graph()) == [["comfyui_rad.a", "comfyui_rad.b"]]
    assert private_names_taken() == ["comfyui_rad.a: comfyui_rad.b._helper", "comfyui_rad.b: comfyui_rad.a._LIMIT"]


def test_no_import_circle():
    """No modules import each other, not even through a function-level import (they hide a circle, not remove it)."""
    assert _cycles(import_graph()) == []


def test_imports_run_down_into_the_engine_only():
    """The engine imports no front end (rad-train, the CLIs, the nodes); a front end imports the engine and its own
    modules, never another front end (inference never imports the trainer)."""
    upward = [f"{a} ({_layer(a)}) imports {b} ({_layer(b)})" for a, targets in import_graph().items() for b in targets
              if _layer(b) not in ("engine", _layer(a))]
    assert upward == []


def test_one_way_through_an_inpaint_call():
    """An inpaint call's modules import one way: schedule <- sampling <- plan <- tiles <- pipeline (issue 19); the
    Spatial Noise Schedule node needs no pipeline for its picture."""
    chain = ["comfyui_rad.schedule", "comfyui_rad.sampling", "comfyui_rad.plan", "comfyui_rad.tiles",
             "comfyui_rad.pipeline"]
    graph = import_graph()
    for i, module in enumerate(chain):
        assert not graph[module] & set(chain[i + 1:]), (module, graph[module] & set(chain[i + 1:]))
    assert "comfyui_rad.pipeline" not in graph["nodes.schedule"]
    assert "comfyui_rad.plan" not in graph["comfyui_rad.imaging"]  # files and ranges below the fit geometry


def test_no_private_name_crosses_modules():
    """A name another module needs is public (``_name`` is its own module's business): a private name taken across
    modules is a module that wants splitting, or a helper that wants a public name."""
    assert private_names_taken() == []
