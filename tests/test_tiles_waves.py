"""Waves: windows that do not depend on each other sampled in one batch of network calls, with the result of the
one-after-the-other run: the wave rule, the noise each window draws, batch sizes, progress, Cancel, the memory bound
(tiny random 16x16 ADM and a pixel-wise denoiser on CPU)."""

from dataclasses import replace

import pytest
import torch
from conftest import TINY, make_adm

from comfyui_rad import tiles
from comfyui_rad.architecture import sampling_bytes
from comfyui_rad.pipeline import plan_inpaint
from comfyui_rad.sampling import (
    Noise, RADDenoiser, SamplerSpec, StackedNoise, noise_draws, sample, skip_noise,
)
from comfyui_rad.schedule import RADInfo, SpatialSchedule
from comfyui_rad.tiles import TileSettings, run_tiles, wave_limit

SIZE = 16
SPECS = {  # every sampler family that goes through tiles, at a few steps
    "ddpm": SamplerSpec.create("ddpm", steps=4),
    "ddim": SamplerSpec.create("ddim", steps=3),
    "euler_ancestral": SamplerSpec.create("euler_ancestral", steps=3),
    "dpmpp_2m_sde": SamplerSpec.create("dpmpp_2m_sde", steps=3),
    "resampling": SamplerSpec.create("ddpm", steps=6, resample=1, jump=2),
    "repaint": SamplerSpec.create("repaint", steps=4, jump_length=2, jump_n_sample=2),
    "replace": SamplerSpec.create("replace", steps=3),
}
ADM_TOLERANCE = 1e-4
"""Largest |batched - one after the other| allowed on [0, 1] pixels with the tiny ADM (measured: at most 1.3e-5,
RePaint and replace on the grid; 1.1e-6 to 5.6e-6 for RAD's samplers). The noise and every window's input are the
same (the pixel-wise denoiser below is bit-identical); the network is not: on the CPU, oneDNN's convolutions and the
BLAS linear layers pick other kernels (another summation order) for one image than for several, so an eps differs by
about 3e-6 and the sampler carries that on."""


@pytest.fixture(scope="module")
def model():
    return make_adm(replace(TINY, image_size=SIZE))


class Pixelwise(torch.nn.Module):
    """A RAD "network" that computes each output pixel from its own input pixel and timestep only (float64), so a
    batch gives bit for bit what its images give one by one; records the batch size of every call."""

    def __init__(self):
        super().__init__()
        self.rad_info = RADInfo(is_rad=True)
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.batches = []

    def forward(self, x, t, y=None):
        self.batches.append(x.shape[0])
        t = t.double().reshape(x.shape[0], 1, *t.shape[2:]) if t.dim() == 4 else t.double().reshape(-1, 1, 1, 1)
        eps = 0.6 * x.double() - 4e-4 * t + 0.1
        return torch.cat([eps, torch.zeros_like(eps)], dim=1).float()


class Counting(torch.nn.Module):
    """The tiny ADM, recording the batch size of every call."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.batches = inner, inner.config, []

    def forward(self, x, t, y=None):
        self.batches.append(x.shape[0])
        return self.inner(x, t, y=y)


def picture(batch=1, height=16, width=80, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def two_holes(soft=1.0):
    """Two holes 50 pixels apart in a 16x80 picture: one window each."""
    mask = torch.zeros(1, 16, 80)
    mask[:, 3:12, 2:10] = soft
    mask[:, 4:13, 63:71] = soft
    return mask


def grid_hole():
    """A 30x37 hole in a 40x50 picture: 12 overlapping windows, 3 rows by 4 columns."""
    mask = torch.zeros(1, 40, 50)
    mask[:, 5:35, 8:45] = 1
    return mask


def fill(net, image, mask, spec, limit=None, settings=None, callback=None, seed=3, y=None):
    plan = plan_inpaint(SIZE, image, mask, fit="tiles", tile_settings=settings)
    generator = torch.Generator().manual_seed(seed)
    out = run_tiles(RADDenoiser(net), plan, spec, generator, callback, y, batch_limit=limit)
    return out, plan, generator


# ------------------------------------------------------------------------------------------------- the wave rule


def test_waves_follow_the_rule_on_a_grid_of_overlapping_windows():
    plan = plan_inpaint(SIZE, picture(1, 40, 50), grid_hole(), fit="tiles")
    starts = [(w.top, w.left) for w in plan.groups[0][1].windows]
    assert starts == [(1, 4), (1, 33), (23, 4), (23, 33), (12, 4), (12, 33),
                      (1, 14), (1, 23), (23, 14), (23, 23), (12, 14), (12, 23)]
    waves = [[k for _, k in wave] for wave in plan.waves(SPECS["ddpm"])]
    # the coarse pass alone; the four corners; the middle of both sides; the top and bottom rows left to right
    assert waves == [[-1], [0, 1, 2, 3], [4, 5], [6, 8], [7, 9], [10], [11]]
    assert [[k for _, k in wave] for wave in plan.waves(SPECS["ddpm"], limit=2)] == \
        [[-1], [0, 1], [2, 3], [4, 5], [6, 8], [7, 9], [10], [11]]
    assert [[k for _, k in wave] for wave in plan.waves(SPECS["repaint"])] == waves[1:]  # no coarse pass
    assert [[k for _, k in wave] for wave in plan.waves(SPECS["ddpm"], limit=1)] == [[k] for k in range(-1, 12)]


def test_a_window_waits_for_every_earlier_window_it_overlaps_and_no_wave_holds_two_that_overlap():
    mask = torch.zeros(1, 70, 90)
    mask[:, 3:20, 5:30] = 1
    mask[:, 40:66, 20:85] = 0.7
    plan = plan_inpaint(SIZE, picture(1, 70, 90), mask, fit="tiles", tile_settings=TileSettings(overlap=5))
    windows = plan.groups[0][1].windows
    box = [tiles.inside(w, 70, 90) for w in windows]

    def overlap(i, j):
        return max(box[i][0], box[j][0]) < min(box[i][1], box[j][1]) and \
            max(box[i][2], box[j][2]) < min(box[i][3], box[j][3])

    wave_of = {k: n for n, wave in enumerate(plan.waves(SPECS["ddim"])) for _, k in wave}
    assert sorted(wave_of) == list(range(-1, len(windows))) and wave_of[-1] == 0  # the coarse pass first, alone
    for j in range(len(windows)):
        # the rule, as a formula: right after the last earlier window it overlaps (the coarse pass overlaps all)
        assert wave_of[j] == 1 + max([wave_of[i] for i in range(j) if overlap(i, j)], default=0)
        assert not any(wave_of[i] == wave_of[j] for i in range(len(windows)) if i != j and overlap(i, j))
    assert len(plan.waves(SPECS["ddim"])) < len(windows) + 1


def test_independent_windows_overlap_within_a_wave_and_groups_share_waves():
    naive = plan_inpaint(SIZE, picture(1, 40, 50), grid_hole(), fit="tiles",
                         tile_settings=TileSettings(overlap=4, independent=True))
    assert [len(w) for w in naive.waves(SPECS["ddpm"], limit=5)] == [5, 5, 2]  # they never read the canvas
    masks = torch.cat([two_holes(), torch.zeros(1, 16, 80)])
    masks[1, 2:14, 30:40] = 1  # another plan: its own group, its windows in the same waves
    plan = plan_inpaint(SIZE, picture(2), masks, fit="tiles")
    assert len(plan.groups) == 2
    assert plan.waves(SPECS["ddpm"]) == (((0, -1), (1, -1)), ((0, 0), (0, 1), (1, 0)))


# ------------------------------------------------------------------------------------------------- same pictures


@pytest.mark.parametrize("name,case", [(name, "two holes") for name in SPECS] + [
    ("ddpm", "grid"), ("dpmpp_2m_sde", "grid"), ("repaint", "grid")])
def test_waves_give_the_one_after_the_other_result(model, name, case):
    spec, soft = SPECS[name], 1.0 if SPECS[name].baseline else 0.8  # soft masks for RAD's samplers
    image, mask = (picture(), two_holes(soft)) if case == "two holes" else (picture(1, 40, 50), grid_hole() * soft)
    exact, ones = Pixelwise(), Pixelwise()
    waves, plan, generator = fill(exact, image, mask, spec)
    alone, _, alone_generator = fill(ones, image, mask, spec, limit=1)
    assert torch.equal(waves, alone)  # the noise and every window's input are the one-after-the-other run's
    assert torch.equal(generator.get_state(), alone_generator.get_state())  # the generator is left where it was
    runs = len(plan.runs(spec))
    assert sum(exact.batches) == len(ones.batches) == plan.calls(spec) == runs * spec.calls()
    assert len(exact.batches) == len(plan.waves(spec, wave_limit(RADDenoiser(exact)))) * spec.calls() < \
        len(ones.batches)
    counted, ones = Counting(model), Counting(model)
    batched, _, _ = fill(counted, image, mask, spec)
    sequential, _, _ = fill(ones, image, mask, spec, limit=1)
    assert (batched - sequential).abs().max() <= ADM_TOLERANCE
    keep = (mask == 0)[:, None].expand_as(image)
    assert torch.equal(batched[keep], image[keep]) and torch.equal(sequential[keep], image[keep])
    assert sum(counted.batches) == len(ones.batches) == plan.calls(spec)


def test_two_far_apart_holes_take_half_the_network_calls(model):
    spec = SPECS["ddpm"]
    image, mask = picture(2), two_holes()
    net = Counting(model)
    out, plan, _ = fill(net, image, mask, spec, settings=TileSettings(coarse=False))
    assert plan.windows == 2 and plan.waves(spec) == (((0, 0), (0, 1)),)
    assert net.batches == [4] * spec.steps  # 2 windows x 2 images in one batch: half the calls of 2 windows
    net.batches.clear()
    fill(net, image, mask, spec)
    assert net.batches == [2] * spec.steps + [4] * spec.steps  # the coarse pass alone, then both windows
    net.batches.clear()
    alone, _, _ = fill(net, image, mask, spec, limit=2, settings=TileSettings(coarse=False))
    assert net.batches == [2] * (2 * spec.steps) and (out - alone).abs().max() <= ADM_TOLERANCE


def test_groups_with_their_own_labels_share_a_wave():
    masks = torch.cat([two_holes(), torch.zeros(1, 16, 80)])
    masks[1, 2:14, 30:40] = 1
    image, spec = picture(2), SPECS["ddim"]
    y = torch.tensor([3, 5])
    seen = []

    class Labelled(Pixelwise):
        def forward(self, x, t, y=None):
            seen.append(y.tolist())
            return super().forward(x, t) + y.reshape(-1, 1, 1, 1).float() * 1e-3

    waves, _, _ = fill(Labelled(), image, masks, spec, y=y)
    assert seen[0] == [3, 5] and seen[-1] == [3, 3, 5]  # coarse passes of both images; then 2 windows + 1
    alone, _, _ = fill(Labelled(), image, masks, spec, y=y, limit=1)
    assert torch.equal(waves, alone)


# ------------------------------------------------------------------------------------------------- the noise


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("hole", ["some kept", "all hole"])
def test_noise_draws_counts_what_a_run_draws(name, hole):
    spec, mask = SPECS[name], torch.ones(2, 1, SIZE, SIZE)
    if hole == "some kept":
        mask[1, :, :4] = 0
    drawn = []

    class Counted(Noise):
        def __call__(self, shape, device, rows=None):
            drawn.append(tuple(shape))
            return super().__call__(shape, device, rows)

    image = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    sample(spec, Pixelwise(), image, SpatialSchedule(mask), Counted(torch.Generator().manual_seed(0)))
    assert len(drawn) == noise_draws(spec, mask) and set(drawn) == {(2, 3, SIZE, SIZE)}
    generator, reference = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    skip_noise(generator, noise_draws(spec, mask), (2, 3, SIZE, SIZE))
    for _ in drawn:
        torch.randn((2, 3, SIZE, SIZE), generator=reference)
    assert torch.equal(generator.get_state(), reference.get_state())


def test_stacked_noise_draws_each_runs_own_rows_and_skips_unused_draws():
    a, b = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    stacked = StackedNoise([torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)], [1, 2])
    first = stacked((3, 2, 4, 4), "cpu")
    assert torch.equal(first, torch.cat([torch.randn(1, 2, 4, 4, generator=a), torch.randn(2, 2, 4, 4, generator=b)]))
    second = stacked((3, 2, 4, 4), "cpu", rows=torch.tensor([False, True, False]))
    assert torch.equal(second[:1], torch.zeros(1, 2, 4, 4))  # run 0 uses none of it: nothing drawn for it
    assert torch.equal(second[1:], torch.randn(2, 2, 4, 4, generator=b))
    assert torch.equal(stacked((3, 1), "cpu")[:1], torch.randn(1, 1, generator=a))  # run 0's generator did not move
    with pytest.raises(ValueError, match="a draw of 4 images from runs of \\[1, 2\\] images"):
        stacked((4, 1), "cpu")


# ------------------------------------------------------------------------------------------ progress and memory


def test_progress_counts_every_window_call_in_plan_order_and_cancel_stops(model):
    image, mask, spec, seen = picture(1, 40, 50), grid_hole(), SPECS["ddim"], []
    net = Counting(model)
    _, plan, _ = fill(net, image, mask, spec, callback=seen.append)
    total = plan.calls(spec)
    assert [s["step"] for s in seen] == list(range(total)) and {s["total"] for s in seen} == {total}
    assert sum(net.batches) == total and len(net.batches) == 7 * spec.calls()  # 7 waves
    waves = plan.waves(spec, wave_limit(RADDenoiser(net)))
    expected = [k for wave in waves for _ in range(spec.calls()) for _, k in wave]
    assert [s["window"] for s in seen] == expected and {s["waves"] for s in seen} == {7}
    assert [s["phase"] for s in seen[:4]] == ["coarse pass"] * 3 + ["window 1/12"]
    assert all(tuple(s["pred_x0"].shape) == (1, 3, 40, 50) and tuple(s["x"].shape) == (1, 3, SIZE, SIZE)
               for s in seen)
    known = (mask == 0)[:, None].expand_as(image)
    assert torch.allclose(seen[-1]["pred_x0"][known], image[known] * 2 - 1, atol=1e-6)
    calls = []

    def cancel(info):
        calls.append(info["step"])
        if len(calls) == 5:
            raise KeyboardInterrupt

    net.batches.clear()
    with pytest.raises(KeyboardInterrupt):
        fill(net, image, mask, spec, callback=cancel)
    assert calls == [0, 1, 2, 3, 4] and net.batches == [1, 1, 1, 4]  # stopped inside the first wave call of 4


def test_a_wave_holds_at_most_the_limit_of_images(model, monkeypatch):
    mask = torch.zeros(1, 60, 90)
    for top in (2, 22, 42):
        for left in (2, 32, 62):
            mask[:, top:top + 9, left:left + 9] = 1  # 9 holes, far apart: 9 independent windows
    spec, net = SPECS["ddim"], Pixelwise()
    _, plan, _ = fill(net, picture(2, 60, 90), mask, spec, limit=5, settings=TileSettings(coarse=False))
    waves = plan.waves(spec, 5)
    assert plan.windows > 9 and max(map(len, waves)) == 2  # 2 windows of 2 images: 4 <= 5
    assert net.batches == [2 * len(wave) for wave in waves for _ in range(spec.calls())]
    assert len(plan.waves(spec)) < len(waves)  # more at once without the limit
    with pytest.raises(ValueError, match="batch_limit must be 1 or more images per network call, got 0"):
        fill(net, picture(), two_holes(), spec, limit=0)
    config = replace(TINY, image_size=SIZE)
    monkeypatch.setattr(tiles, "memory_limit", lambda: 4 * sampling_bytes(config, 3))
    assert wave_limit(RADDenoiser(Counting(model))) == 3  # a quarter of the memory limit: 3 images
    monkeypatch.setattr(tiles, "memory_limit", lambda: 1)
    assert wave_limit(RADDenoiser(Counting(model))) == 1  # never below one window at a time
    assert wave_limit(RADDenoiser(Pixelwise())) == tiles.WAVE_IMAGES
