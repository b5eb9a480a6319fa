"""Windows that would change nothing are not sampled: a window whose mask is 0 for every image of its group (earlier
windows generated all its hole pixels and the overlap ramp does not reach it, ``Plan.skipped``) is left out, with
today's images bit for bit (its noise is still drawn, so every other window draws what it drew) and exactly the
network calls the plan announces (tiny random 16x16 ADM on CPU)."""

import pytest
import torch
from conftest import TINY16, Spy, box_hole, make_adm, picture

from comfyui_rad import tiles
from comfyui_rad.pipeline import network_calls, plan_inpaint, run_plan
from comfyui_rad.plan import Plan, inside, plan_tiles
from comfyui_rad.sampling import SamplerSpec

SIZE = 16
SPECS = {
    "dpmpp_2m_sde": SamplerSpec.create("dpmpp_2m_sde", steps=3),
    "ddpm": SamplerSpec.create("ddpm", steps=3),
    "euler_ancestral": SamplerSpec.create("euler_ancestral", steps=2),
    "resampling": SamplerSpec.create("ddpm", steps=4, resample=1, jump=2),
    "repaint": SamplerSpec.create("repaint", steps=4, jump_length=2, jump_n_sample=2),
    "replace": SamplerSpec.create("replace", steps=3),
}


@pytest.fixture(scope="module")
def model():
    return make_adm(TINY16)


def wide():
    """A 28x44 hole in a 32x48 picture: 12 windows, the last two (11 and 12) with nothing left to do."""
    return box_hole(32, 48, (2, 30, 2, 46))


def pair():
    """Two masks of a 40x40 picture with one plan (9 windows, one group): a 30x30 hole, and the same hole less the
    pixels window 9 is the first to reach, so that window changes nothing in the second image only."""
    first = box_hole(40, 40, (5, 35, 5, 35))
    second, seen = first.clone(), torch.zeros(40, 40, dtype=torch.bool)
    for k, w in enumerate(plan_tiles(first[0], SIZE).windows):
        y0, y1, x0, x1 = inside(w, 40, 40)
        if k == 8:
            second[0, y0:y1, x0:x1][~seen[y0:y1, x0:x1]] = 0
        seen[y0:y1, x0:x1] = True
    return torch.cat([first, second])


def groups():
    """Three masks of a 32x48 picture, two plans: ``wide`` at 1 and 0.5 (one group), two small holes (another)."""
    two = box_hole(32, 48, (3, 12, 2, 10)) + box_hole(32, 48, (18, 29, 30, 44))
    return torch.cat([wide(), wide() * 0.5, two])


LAYOUTS = {"wide": (lambda: picture(1, 32, 48), wide), "pair": (lambda: picture(2, 40, 40, seed=1), pair),
           "groups": (lambda: picture(3, 32, 48, seed=2), groups)}


def every_window(monkeypatch):
    """The path before windows were skipped: every window of the plan sampled."""
    monkeypatch.setattr(Plan, "skipped", lambda self, spec: frozenset())


def fill(model, layout, spec, start="noise", limit=None, seed=0):
    """(result, plan, images through the network, progress dicts) of the layout with ``spec``."""
    image, mask = LAYOUTS[layout][0](), LAYOUTS[layout][1]()
    if spec.baseline:
        mask = (mask > 0).float()  # RePaint and replace take binary masks only
    plan = plan_inpaint(model, image, mask, fit="tiles", start=start, start_strength=0.6 if start != "noise" else None,
                        baseline=spec.baseline)
    spy, seen = Spy(model), []
    out = run_plan(spy, plan, spec, seed=seed, batch_limit=limit, callback=seen.append)
    return out, plan, sum(s[0] for s in spy.shapes), seen


def test_the_windows_left_out_are_those_sampled_with_a_zero_mask(model, monkeypatch):
    skipped, masks = Plan.skipped, []
    every_window(monkeypatch)
    monkeypatch.setattr(tiles, "_sample", lambda denoiser, image, mask, *args: masks.append(mask) or image)
    for layout, spec, start in [("wide", "ddpm", "noise"), ("wide", "ddpm", "harmonic"), ("wide", "replace", "noise"),
                                ("pair", "ddpm", "noise"), ("groups", "dpmpp_2m_sde", "harmonic")]:
        image, mask = LAYOUTS[layout][0](), LAYOUTS[layout][1]()
        mask = (mask > 0).float() if SPECS[spec].baseline else mask
        plan = plan_inpaint(SIZE, image, mask, fit="tiles", start=start,
                            start_strength=0.6 if start != "noise" else None)
        masks.clear()
        run_plan(model, plan, SPECS[spec], batch_limit=1)  # one run at a time, in plan order
        zero = {run for run, m in zip(plan.runs(SPECS[spec]), masks) if run[1] >= 0 and not bool((m > 0).any())}
        assert skipped(plan, SPECS[spec]) == zero, (layout, spec, start)
    # the README-like layout: two of twelve; a window empty for one image of a group but not the other still runs
    assert skipped(plan_inpaint(SIZE, picture(1, 32, 48), wide(), fit="tiles"), SPECS["ddpm"]) == {(0, 10), (0, 11)}
    assert skipped(plan_inpaint(SIZE, picture(2, 40, 40), pair(), fit="tiles"), SPECS["ddpm"]) == frozenset()
    assert skipped(plan_inpaint(SIZE, picture(1, 40, 40), pair()[1:], fit="tiles"), SPECS["ddpm"]) == {(0, 8)}
    independent = plan_inpaint(SIZE, picture(1, 32, 48), wide(), fit="tiles",
                               tile_settings=tiles.TileSettings(independent=True))
    assert skipped(independent, SPECS["ddpm"]) == frozenset()  # naive windows never see each other's pixels


@pytest.mark.parametrize("layout,spec,start,limit,seed", [
    ("wide", "dpmpp_2m_sde", "noise", None, 0),
    ("wide", "dpmpp_2m_sde", "harmonic", None, 5),
    ("wide", "ddpm", "noise", 1, 0),
    ("wide", "euler_ancestral", "harmonic", 1, 0),
    ("wide", "resampling", "noise", None, 0),
    ("wide", "repaint", "noise", None, 0),
    ("wide", "replace", "noise", 1, 0),
    ("pair", "dpmpp_2m_sde", "noise", None, 0),
    ("pair", "ddpm", "harmonic", 1, 0),
    ("groups", "ddpm", "noise", None, 5),
    ("groups", "dpmpp_2m_sde", "harmonic", 2, 0),
    ("groups", "replace", "noise", None, 0),
])
def test_leaving_them_out_gives_todays_images_bit_for_bit_and_the_calls_announced(
        model, monkeypatch, layout, spec, start, limit, seed):
    spec = SPECS[spec]
    out, plan, calls, seen = fill(model, layout, spec, start, limit, seed)
    total = plan.calls(spec)  # a window's calls count once however many images its group holds
    assert len(seen) == total and [s["step"] for s in seen] == list(range(total)) and {s["total"] for s in seen} == {
        total} and calls == spec.calls() * sum(len(plan.groups[g][0]) for wave in plan.waves(spec) for g, _ in wave)
    windows = plan.sampled_windows(spec)
    assert {s["windows"] for s in seen} == {windows}
    assert {s["phase"] for s in seen if s["window"] >= 0} == {f"window {n}/{windows}" for n in range(1, windows + 1)}
    skipped = plan.skipped(spec)
    every_window(monkeypatch)
    before, plan, calls_before, _ = fill(model, layout, spec, start, limit, seed)
    assert torch.equal(out, before)
    assert calls_before == calls + spec.calls() * sum(len(plan.groups[g][0]) for g, _ in skipped)
    assert plan.calls(spec) == total + len(skipped) * spec.calls()
    assert bool(skipped) == (layout != "pair")


def test_the_readme_layout_announces_the_calls_it_makes(model):
    spec = SPECS["ddpm"]
    image, mask = picture(1, 32, 48), wide()
    assert network_calls(SIZE, image, mask, spec=spec, fit="crop") == 3 * (1 + 10)
    assert tiles.count_calls(mask, SIZE, spec) == (10, 33)
    assert network_calls(SIZE, image, mask, spec=spec, fit="crop", start="harmonic", start_strength=0.6) == 33
