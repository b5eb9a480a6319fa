"""The example workflows, read without ComfyUI: both formats, a thumbnail, and our nodes as the contract pins them.

tests/test_comfy_host.py runs them in a real ComfyUI.
"""

import json
from pathlib import Path

import pytest
from node_contract import CONTRACT

WORKFLOWS = Path(__file__).resolve().parents[2] / "example_workflows"
EXAMPLES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
EXTERNAL_MODELS = {"rad_authors_ffhq256": "rad_ffhq256.safetensors"}
"""Examples for a model the pack cannot ship (the RAD authors' FFHQ model): the file their loader picks."""


def test_at_least_the_seven_examples():
    assert {"rad_basic_inpaint", "rad_perlin_masks", "rad_soft_mask_strength", "rad_large_photo_crop",
            "rad_core_mask_nodes", "rad_large_hole_tiles", "rad_outpaint"} <= set(EXAMPLES)


def test_the_big_hole_and_outpainting_examples_go_region_by_region():
    tiles = json.loads((WORKFLOWS / "api" / "rad_large_hole_tiles.json").read_text())
    assert {n["inputs"]["fit"] for n in tiles.values() if n["class_type"] == "RADSampler"} == {"tiles"}
    outpaint = json.loads((WORKFLOWS / "api" / "rad_outpaint.json").read_text())
    pad = next(k for k, n in outpaint.items() if n["class_type"] == "ImagePadForOutpaint")
    schedule = next(n for n in outpaint.values() if n["class_type"] == "RADSpatialSchedule")
    sampler = next(n for n in outpaint.values() if n["class_type"] == "RADSampler")
    assert schedule["inputs"]["mask"] == [pad, 1] and schedule["inputs"]["mask_mode"] == "soft"  # the feathering
    assert sampler["inputs"]["image"] == [pad, 0]


def test_templates_are_found_where_comfyui_looks_first():
    """example_workflows/ (ComfyUI's first folder name; it lists the *.json directly inside as templates, so the
    api/ twins in a subfolder are not offered as templates)."""
    assert WORKFLOWS.name == "example_workflows" and not (WORKFLOWS.parent / "workflows").exists()
    assert all((WORKFLOWS / f"{name}.jpg").exists() for name in EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_both_formats_a_thumbnail_and_the_pinned_widgets(name):
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    assert (WORKFLOWS / f"{name}.jpg").stat().st_size > 1000
    assert ui["version"] == 0.4 and {"nodes", "links"} <= set(ui)
    ours = [n for n in ui["nodes"] if n["type"] in CONTRACT]
    assert {n["type"] for n in ours} >= {"RADModelLoader", "RADSpatialSchedule", "RADSampler"}
    for node in ours:
        widgets = CONTRACT[node["type"]]["widgets"]
        assert len(node["widgets_values"]) == len(widgets), node["type"]
        named = dict(zip(widgets, node["widgets_values"]))
        twin = api[str(node["id"])]
        assert twin["class_type"] == node["type"]
        assert {k: v for k, v in twin["inputs"].items() if k in named} == {
            k: v for k, v in named.items() if k != "control_after_generate"}
        assert set(twin["inputs"]) == {name for name, _ in CONTRACT[node["type"]]["inputs"]}


@pytest.mark.parametrize("name", EXAMPLES)
def test_runs_on_a_fresh_install(name):
    """The default model is selected (or, for the authors' model, the file the README tells how to make) and every
    picture it loads ships with the pack (copied to input/ on load)."""
    api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    readme = (WORKFLOWS.parent / "README.md").read_text()
    for node in api.values():
        if node["class_type"] == "RADModelLoader":
            model = EXTERNAL_MODELS.get(name, "rad_default.safetensors")
            assert node["inputs"]["base_model"] == model and node["inputs"]["adapter"] == "none"
            assert name not in EXTERNAL_MODELS or f"rad-convert checkpoint-300000/ -o {model}" in readme
        if node["class_type"] in ("LoadImage", "LoadImageMask"):
            assert (WORKFLOWS / "input" / node["inputs"]["image"]).exists()
