"""Our ADM UNet against golden outputs computed by openai/guided-diffusion.

The fixtures ``tests/data/gd_*.safetensors`` come from
``scripts/make_golden_adm.py`` (which needs an external guided-diffusion
checkout; these tests do not).  Each holds inputs, guided-diffusion's float32
outputs and, as metadata, the ``UNetModel`` kwargs, the state-dict key shapes
and a seed: the weights are rebuilt here with ``random_state_dict``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
from _golden import random_state_dict, weights_checksum  # noqa: E402

FIXTURES = sorted((HERE / "data").glob("gd_*.safetensors"))
LAYOUTS = {"uncond256", "ffhq10m", "cond_small", "neworder_small"}

# guided-diffusion's own float32-vs-float64 gap on these fixtures is ~5e-6.
OUT_ATOL = 1e-4
SPATIAL_ATOL = 1e-5


def _layout(path: Path) -> str:
    return path.stem[len("gd_"):]


def load_overrides(gd_kwargs: dict) -> dict:
    """The attention-head layout, named as guided-diffusion names it.

    Everything else (channels, levels, attention placement, FiLM, up/down
    kind, classes, learned sigma) is in the state dict; the heads are not.
    """
    if gd_kwargs["num_head_channels"] != -1:
        over = {"num_head_channels": gd_kwargs["num_head_channels"]}
    else:
        over = {
            "num_heads": gd_kwargs["num_heads"],
            "num_head_channels": -1,
            "num_heads_upsample": gd_kwargs["num_heads_upsample"],
        }
    if gd_kwargs["use_new_attention_order"]:
        over["use_new_attention_order"] = True
    return over


class Golden:
    def __init__(self, path: Path):
        self.name = _layout(path)
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            self.tensors = {k: f.get_tensor(k) for k in f.keys()}
        self.gd_kwargs = json.loads(meta["gd_kwargs"])
        self.shapes = {k: tuple(v) for k, v in json.loads(meta["shapes"]).items()}
        self.seed = int(meta["seed"])
        self.checksum = meta.get("weights_checksum")
        self.gd_commit = meta.get("gd_commit")
        self.state_dict = random_state_dict(self.shapes, self.seed)
        self.extra = {"y": self.tensors["y"]} if "y" in self.tensors else {}
        self.x = self.tensors["x"]


def test_fixtures_present():
    assert {_layout(p) for p in FIXTURES} >= LAYOUTS, (
        "golden fixtures missing: regenerate with "
        "`python scripts/make_golden_adm.py --gd /path/to/guided-diffusion`"
    )


@pytest.fixture(scope="module", params=FIXTURES, ids=_layout)
def golden(request) -> Golden:
    return Golden(request.param)


@pytest.fixture(scope="module")
def model(golden, tmp_path_factory):
    from comfyui_rad import load_adm

    path = tmp_path_factory.mktemp(golden.name) / "model.safetensors"
    save_file(golden.state_dict, str(path))
    m = load_adm(path, **load_overrides(golden.gd_kwargs))
    m.eval()
    return m


def test_weights_reproducible(golden):
    """The weights rebuilt from (shapes, seed) are those the fixture was made with."""
    if golden.checksum is None:
        pytest.skip("fixture has no weights_checksum")
    assert weights_checksum(golden.state_dict) == golden.checksum, (
        "random_state_dict no longer reproduces the fixture's weights (torch's CPU "
        "generator changed?): regenerate the fixtures, this is not a model bug"
    )


def test_state_dict_layout(golden, model):
    """Same keys and shapes as guided-diffusion's UNetModel, and the weights loaded as given."""
    ours = model.state_dict()
    ours_shapes = {k: tuple(v.shape) for k, v in ours.items()}
    missing = sorted(set(golden.shapes) - set(ours_shapes))
    extra = sorted(set(ours_shapes) - set(golden.shapes))
    wrong = {k: (ours_shapes[k], golden.shapes[k]) for k in sorted(set(ours_shapes) & set(golden.shapes))
             if ours_shapes[k] != golden.shapes[k]}
    assert not (missing or extra or wrong), (
        f"{golden.name}: missing {missing[:10]}, unexpected {extra[:10]}, "
        f"shape (ours, gd) {dict(list(wrong.items())[:10])}"
    )
    changed = [k for k, v in golden.state_dict.items() if not torch.equal(ours[k].float().cpu(), v)]
    assert not changed, f"{golden.name}: weights altered by loading: {changed[:10]}"


@pytest.mark.parametrize("which", ["int", "frac"])
def test_matches_guided_diffusion(golden, model, which):
    t = golden.tensors[f"t_{which}"]
    ref = golden.tensors[f"out_{which}"]
    with torch.no_grad():
        out = model(golden.x, t, **golden.extra)
    assert out.shape == ref.shape, f"{golden.name}: output shape {tuple(out.shape)} != {tuple(ref.shape)}"
    diff = (out.float() - ref).abs()
    worst = diff.max().item()
    assert worst <= OUT_ATOL, (
        f"{golden.name} t={t.tolist()}: max |ours - gd| = {worst:.3e} at "
        f"{tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))}, "
        f"mean {diff.mean().item():.3e} (gd {golden.gd_commit})"
    )


@pytest.mark.parametrize("which", ["int", "frac"])
def test_constant_map_matches_scalar(golden, model, which):
    """A per-pixel t that is constant reduces to the per-image embedding."""
    t = golden.tensors[f"t_{which}"]
    b, _, h, w = golden.x.shape
    t_map = t[:, None, None, None].expand(b, 1, h, w)
    with torch.no_grad():
        scalar = model(golden.x, t, **golden.extra)
        spatial = model(golden.x, t_map, **golden.extra)
    worst = (spatial - scalar).abs().max().item()
    assert worst <= SPATIAL_ATOL, f"{golden.name} t={t.tolist()}: per-pixel vs per-image max diff {worst:.3e}"
