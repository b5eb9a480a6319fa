"""One plan of windows per inpaint call: built once, its network calls known before the first, its wording pinned."""

import io
import sys
from dataclasses import replace

import pytest
import torch
from conftest import TINY, make_adm

from comfyui_rad import pipeline, plan
from comfyui_rad.cli import Progress
from comfyui_rad.pipeline import inpaint, plan_inpaint, run_plan
from comfyui_rad.sampling import SamplerSpec

SIZE = 16


class Counting(torch.nn.Module):
    """Counts window calls: images evaluated (one picture here; tiles' waves batch k windows into one call)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.calls = inner, inner.config, 0

    def forward(self, x, t, y=None):
        self.calls += x.shape[0]
        return self.inner(x, t, y=y)


@pytest.fixture(scope="module")
def model():
    return make_adm(replace(TINY, image_size=SIZE))


def picture(batch=1, height=40, width=50):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0))


def hole(top=5, bottom=35, left=8, right=45, height=40, width=50):
    mask = torch.zeros(1, height, width)
    mask[:, top:bottom, left:right] = 1
    return mask


def counted(monkeypatch, module, name, seen):
    inner = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: seen.append(name) or inner(*a, **k))


def test_one_call_plans_once(model, monkeypatch):
    seen = []
    for module, name in ((pipeline, "make_plan"), (pipeline, "match_batches"), (plan, "resolve_fit"),
                         (plan, "plan_tiles"), (plan, "fit_windows")):
        counted(monkeypatch, module, name, seen)
    masks = torch.cat([hole(), hole(2, 38, 3, 30)])
    inpaint(model, picture(2), masks, steps=1, fit="crop")  # crop turns into tiles: the holes do not fit
    assert sorted(seen) == ["fit_windows"] * 2 + ["make_plan", "match_batches"] + ["plan_tiles"] * 2 + ["resolve_fit"]
    # plan_tiles: once per image; fit_windows: each group's coarse pass is a crop of its own
    seen.clear()
    inpaint(model, picture(1), hole(10, 20, 10, 20), steps=1, fit="crop")
    assert sorted(seen) == ["fit_windows", "make_plan", "match_batches", "resolve_fit"]


@pytest.mark.parametrize("fit,mask,spec", [
    ("crop", hole(10, 20, 10, 20), SamplerSpec.create("ddpm", steps=3)),
    ("tiles", hole(), SamplerSpec.create("ddim", steps=2)),
    ("tiles", hole(), SamplerSpec.create("ddpm", steps=4, resample=1, jump=2)),
    ("crop", hole(), SamplerSpec.create("replace", steps=2)),  # no coarse pass for the baselines
    ("resize", torch.zeros(1, 40, 50), SamplerSpec.create("ddpm", steps=2)),  # nothing to do: no call
])
def test_the_plan_knows_the_calls_before_the_first(model, fit, mask, spec):
    spy, seen = Counting(model), []
    plan_ = plan_inpaint(spy, picture(), mask, fit=fit)
    total = plan_.calls(spec)
    run_plan(spy, plan_, spec, callback=seen.append)
    assert spy.calls == total == len(seen) and {s["total"] for s in seen} <= {total}


def test_progress_names_the_coarse_pass_and_the_windows(model):
    spec = SamplerSpec.create("ddpm", steps=2)
    tiles = plan_inpaint(model, picture(), hole(), fit="tiles")
    assert tiles.windows == 12
    assert tiles.describe(spec) == "coarse pass + 12 windows of 16x16, 26 network calls"
    assert plan_inpaint(model, picture(), hole(10, 20, 10, 20)).describe(SamplerSpec("ddpm")) == \
        "1 window of 16x16 (crop), 100 network calls"
    assert tiles.describe(SamplerSpec.create("replace", steps=2)) == "12 windows of 16x16, 24 network calls"
    seen = []
    run_plan(model, tiles, spec, callback=seen.append)
    waves = tiles.waves(spec, 8)  # windows apart from each other run in one batch, their progress in plan order
    assert [[k for _, k in wave] for wave in waves[1:]] == [[0, 1, 2, 3], [4, 5], [6, 8], [7, 9], [10], [11]]
    assert [s["phase"] for s in seen] == ["coarse pass"] * 2 + [f"window {k + 1}/12" for wave in waves[1:]
                                                               for _ in "ab" for _, k in wave]
    bar, err = Progress(True), io.StringIO()
    bar.tty, sys.stderr = False, err
    try:
        for info in seen:
            bar(info)
    finally:
        sys.stderr = sys.__stderr__
    lines = err.getvalue().splitlines()
    assert "2/26 (coarse pass)" in lines[0] and "4/26 (window 2/12)" in lines[1] and "26/26 (window 12/12)" in lines[-1]
