import sys

import pytest
import torch
from comfy_stub import Interrupted, host, rad_model, state  # noqa: F401
from PIL import Image

from comfyui_rad.fill import harmonic_fill


def photo(batch, height, width, seed=0):
    """ComfyUI IMAGE [B,H,W,3] in [0,1]."""
    return torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(seed))


def box(batch, height, width, top=0.3, left=0.25, size=0.35):
    mask = torch.zeros(batch, height, width)
    mask[:, int(top * height):int((top + size) * height), int(left * width):int((left + size) * width)] = 1
    return mask


def sample(host, model, image, mask, **kw):
    mode = kw.pop("mask_mode", "binary")
    schedule = host.nodes.RADSpatialSchedule.execute(mask, mode, 0.5, kw.pop("schedule_steps", 3))[0]
    args = dict(seed=0, steps=0, sampler="ddpm", eta=0.0, fit="crop", class_label=-1) | kw
    return host.nodes.RADSampler.execute(model, image, schedule, **args)


def kept_equal(out, image, mask):
    keep = (mask == 0)[..., None].expand_as(image)
    return torch.equal(out[keep], image[keep])


@pytest.mark.parametrize("fit", ["crop", "resize", "pad", "tiles"])
def test_inpaints_at_the_input_size_and_keeps_the_rest(host, rad_model, state, fit):
    image, mask = photo(1, 40, 56), box(1, 40, 56)
    out, used = sample(host, rad_model, image, mask, fit=fit)
    assert out.shape == image.shape and out.dtype == torch.float32 and used.shape == (1, 40, 56)
    assert kept_equal(out, image, used) and torch.equal(used, mask)
    assert (out - image)[mask.bool()].abs().mean() > 0.05
    assert state.loaded == [rad_model]


def test_progress_has_an_x0_preview_every_step(host, rad_model, state):
    sample(host, rad_model, photo(1, 32, 32), box(1, 32, 32), schedule_steps=4)
    assert [(i, t) for i, t, _ in state.progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    kind, picture, size = state.progress[-1][2]
    assert kind == "JPEG" and isinstance(picture, Image.Image) and picture.size == (32, 32) and size == 512


def common(host):
    return sys.modules[host.nodes.__name__ + ".common"]


def test_previews_are_throttled_the_first_and_the_last_always_sent(host, rad_model, state, monkeypatch):
    now = [0.0]

    def clock():  # 0.1 s per network call
        now[0] += 0.1
        return now[0]

    monkeypatch.setattr(common(host), "CLOCK", clock)
    sample(host, rad_model, photo(1, 32, 32), box(1, 32, 32), schedule_steps=12)
    sent = [i for i, _, preview in state.progress if preview is not None]
    assert [i for i, _, _ in state.progress] == list(range(1, 13))
    assert sent == [1, 4, 7, 10, 12]  # one per 0.25 s of the clock, and the last
    state.reset()
    monkeypatch.setattr(common(host), "CLOCK", lambda: 0.0)  # a fast machine: only the first and the last
    sample(host, rad_model, photo(1, 32, 32), box(1, 32, 32), schedule_steps=12)
    assert [i for i, _, preview in state.progress if preview is not None] == [1, 12]


def test_a_hole_larger_than_the_model_goes_region_by_region_with_one_bar_over_all_windows(host, rad_model, state):
    image = photo(1, 80, 100)
    mask = torch.zeros(1, 80, 100)
    mask[:, 10:70, 15:90] = 1  # 60x75 against the tiny model's 32x32
    out, used = sample(host, rad_model, image, mask, schedule_steps=2)
    totals = {t for _, t, _ in state.progress}
    assert len(totals) == 1 and [i for i, _, _ in state.progress] == list(range(1, totals.pop() + 1))
    assert len(state.progress) > 2 * 4  # at least 4 windows of 2 steps
    kind, picture, _ = state.progress[-1][2]
    assert picture.size == (100, 80)  # the preview is the whole picture
    assert kept_equal(out, image, used) and (out - image)[mask.bool()].abs().mean() > 0.05


def test_cancel_stops_within_one_step(host, rad_model, state):
    state.interrupt_after = 2
    with pytest.raises(Interrupted):
        sample(host, rad_model, photo(1, 32, 32), box(1, 32, 32), schedule_steps=20)
    assert len(state.progress) == 2


def test_sampler_steps_override_the_schedule(host, rad_model, state):
    sample(host, rad_model, photo(1, 32, 32), box(1, 32, 32), schedule_steps=4, steps=2)
    assert len(state.progress) == 2


def test_same_seed_same_image_other_seed_other_image(host, rad_model):
    image, mask = photo(1, 32, 32), box(1, 32, 32)
    a = sample(host, rad_model, image, mask, seed=7)[0]
    assert torch.equal(a, sample(host, rad_model, image, mask, seed=7)[0])
    assert not torch.equal(a, sample(host, rad_model, image, mask, seed=8)[0])


def test_ddim(host, rad_model):
    image, mask = photo(1, 32, 32), box(1, 32, 32)
    out = sample(host, rad_model, image, mask, sampler="ddim", eta=0.5)[0]
    assert kept_equal(out, image, mask)


def test_eta_defaults_to_1_and_a_saved_eta_is_used_as_given(host, rad_model):
    """Issue 15: DDIM at eta 1 comes close to DDPM, eta 0 does not, so new nodes start at 1; a workflow saved with
    eta 0 passes 0, and gets eta 0's image, not the new default's."""
    eta = next(i for i in host.nodes.RADSampler.define_schema().inputs if i.id == "eta")
    assert eta.options["default"] == 1.0
    image, mask = photo(1, 32, 32), box(1, 32, 32)
    saved = sample(host, rad_model, image, mask, sampler="ddim", eta=0.0)[0]
    assert torch.equal(saved, sample(host, rad_model, image, mask, sampler="ddim", eta=0.0)[0])
    assert not torch.equal(saved, sample(host, rad_model, image, mask, sampler="ddim", eta=1.0)[0])


@pytest.mark.parametrize("images,masks,batch", [(1, 3, 3), (3, 1, 3), (2, 2, 2)])
def test_batch_rules(host, rad_model, images, masks, batch):
    image = photo(images, 24, 36)
    mask = torch.cat([box(1, 24, 36, top=0.1 * i) for i in range(masks)])
    out, used = sample(host, rad_model, image, mask)
    assert out.shape == (batch, 24, 36, 3) and used.shape == (batch, 24, 36)
    assert kept_equal(out, image.expand(batch, -1, -1, -1), used)


def test_batch_mismatch_is_refused_naming_the_inputs_before_loading(host, rad_model, state):
    with pytest.raises(ValueError, match="the image input has 2 images and the schedule's mask has 3 masks"):
        sample(host, rad_model, photo(2, 24, 36), box(3, 24, 36))
    assert state.loaded == []


@pytest.mark.parametrize("node", ["RADSampler", "RADRePaintSampler"])
def test_a_mask_of_another_aspect_ratio_is_refused_before_loading(host, rad_model, state, node):
    schedule = host.nodes.RADSpatialSchedule.execute(box(1, 36, 36), "binary", 0.5, 3)[0]
    args = dict(seed=0, steps=3, fit="crop", class_label=-1)
    args |= dict(sampler="ddpm", eta=0.0) if node == "RADSampler" else dict(jump_length=1, jump_n_sample=1)
    with pytest.raises(ValueError, match=r"the schedule's mask is 36x36 but the image input is 36x24, another aspect "
                                         r"ratio: .* width 36, height 24"):
        getattr(host.nodes, node).execute(rad_model, photo(1, 24, 36), schedule, **args)
    assert state.loaded == []


def test_a_mask_within_one_percent_of_the_aspect_ratio_is_resized(host, rad_model):
    image, mask = photo(1, 100, 151), box(1, 50, 75)  # half size of an odd width: 1.50 against 1.51
    out, used = sample(host, rad_model, image, mask)
    assert used.shape == (1, 100, 151) and kept_equal(out, image, used)


def test_image_much_larger_than_the_model_non_square(host, rad_model):
    image = photo(1, 300, 700)
    mask = torch.zeros(1, 300, 700)
    mask[:, 120:150, 400:460] = 1
    out, used = sample(host, rad_model, image, mask)
    assert out.shape == image.shape and kept_equal(out, image, used)
    assert (out - image)[mask.bool()].abs().mean() > 0.05


def test_mask_of_another_size_is_resized_to_the_image(host, rad_model):
    image, small, large = photo(1, 64, 96), torch.zeros(1, 32, 48), torch.zeros(1, 64, 96)
    small[:, 8:16, 12:24] = 1
    large[:, 16:32, 24:48] = 1
    out, used = sample(host, rad_model, image, small)
    assert used.shape == (1, 64, 96) and torch.equal(used, large)
    assert kept_equal(out, image, used)


def test_bchw_and_rgba_images(host, rad_model):
    image, mask = photo(1, 32, 40), box(1, 32, 40)
    reference = sample(host, rad_model, image, mask)[0]
    assert torch.equal(sample(host, rad_model, image.movedim(-1, 1), mask)[0], reference)
    rgba = torch.cat([image, torch.ones(1, 32, 40, 1)], dim=-1)
    assert torch.equal(sample(host, rad_model, rgba, mask)[0], reference)


def test_soft_mask_output_and_kept_pixels(host, rad_model):
    image = photo(1, 32, 32)
    mask = box(1, 32, 32) * 0.5
    out, used = sample(host, rad_model, image, mask, mask_mode="soft")
    assert used.max() == 0.5 and kept_equal(out, image, used)


def test_class_label_reaches_the_model(host, rad_model):
    with pytest.raises(ValueError, match="unconditional"):
        sample(host, rad_model, photo(1, 32, 32), box(1, 32, 32), class_label=3)


def test_resample_inputs_default_off_and_count_the_progress(host, rad_model, state):
    image, mask = photo(1, 32, 32), box(1, 32, 32)
    plain = sample(host, rad_model, image, mask, schedule_steps=4)[0]
    assert torch.equal(sample(host, rad_model, image, mask, schedule_steps=4, resample=0, jump=10)[0], plain)
    state.progress.clear()
    out = sample(host, rad_model, image, mask, schedule_steps=4, resample=2, jump=2)[0]
    assert kept_equal(out, image, mask) and not torch.equal(out, plain)
    # rad_calls(4, 2, 2) = 4 + 1 jump point x 2 resamplings x 2 steps: one bar over every network call
    assert [(i, t) for i, t, _ in state.progress] == [(k, 8) for k in range(1, 9)]


def test_resample_jump_must_be_below_the_steps(host, rad_model, state):
    with pytest.raises(ValueError, match="jump 4 must be below steps 4 to jump back.*set resample to 0"):
        sample(host, rad_model, photo(1, 32, 32), box(1, 32, 32), schedule_steps=4, resample=1, jump=4)
    assert state.loaded == []


def test_the_bar_is_sized_by_the_plan_it_runs(host, rad_model, state, monkeypatch):
    """No counting pre-pass: the node plans once, sizes the bar with plan.calls and runs that plan."""
    from comfyui_rad import pipeline

    made, plans = [], []
    forward = rad_model.model.forward
    monkeypatch.setattr(rad_model.model, "forward",  # window calls: tiles' waves batch windows apart from each other
                        lambda x, *a, **k: made.append(x.shape[0]) or forward(x, *a, **k))
    make_plan = pipeline.make_plan
    monkeypatch.setattr(pipeline, "make_plan", lambda *a, **k: plans.append(1) or make_plan(*a, **k))
    size = rad_model.model.config.image_size
    out, used = sample(host, rad_model, photo(1, 2 * size, 3 * size), box(1, 2 * size, 3 * size, 0.1, 0.1, 0.8),
                       fit="tiles", schedule_steps=2)
    assert len(plans) == 1 and sum(made) > 2 and kept_equal(out, photo(1, 2 * size, 3 * size), used)
    assert {t for _, t, _ in state.progress} == {sum(made)} and state.progress[-1][0] == sum(made)


def test_sampler_defaults_agree_across_the_clis_the_nodes_and_the_api(host):
    """One table (sampling's registry): rad-inpaint's and rad-eval's parser defaults, the sampler nodes' schema
    defaults and the Python API's (None = the table's) all say the same; DDIM's eta is 1 everywhere."""
    import inspect

    from comfyui_rad import cli, evaluate, pipeline
    from comfyui_rad.sampling import SamplerSpec, sample_ddim

    inpaint_args = cli.build_parser().parse_args(["--image", "x.png", "--mask", "box", "-o", "o.png"])
    eval_args = evaluate.build_parser().parse_args(["--model", "m", "--images", "i", "--out", "o.json"])

    def node(cls):
        return {i.id: i.options.get("default") for i in cls.define_schema().inputs}

    rad, repaint, schedule = node(host.nodes.RADSampler), node(host.nodes.RADRePaintSampler), \
        node(host.nodes.RADSpatialSchedule)
    ddpm, ddim, rp = SamplerSpec("ddpm"), SamplerSpec("ddim"), SamplerSpec("repaint")
    assert inpaint_args.eta == eval_args.eta == rad["eta"] == ddim.eta == 1.0
    assert inpaint_args.resample == eval_args.resample == rad["resample"] == ddpm.resample == 0
    assert inpaint_args.jump == eval_args.jump == rad["jump"] == ddpm.jump
    assert inpaint_args.steps is None and eval_args.steps is None  # the sampler's steps from the table
    default = SamplerSpec()  # issue 22: dpmpp_2m_sde, 15 steps, everywhere
    assert rad["sampler"] == default.name == inpaint_args.sampler == eval_args.sampler == "dpmpp_2m_sde"
    assert rad["steps"] == default.steps == 15 and schedule["steps"] == ddpm.steps  # the node's 0: the schedule's
    assert repaint["steps"] == rp.steps and repaint["jump_length"] == eval_args.jump_length == rp.jump
    assert repaint["jump_n_sample"] == eval_args.jump_n_sample == rp.resample + 1
    for function in (pipeline.inpaint, evaluate.inpaint_set, evaluate.evaluate, sample_ddim):
        params = inspect.signature(function).parameters
        assert params["eta"].default is None and params["steps"].default is None, function.__name__
        assert "sampler" not in params or params["sampler"].default == default.name, function.__name__


def test_a_harmonic_start_shows_the_start_first_and_keeps_old_workflows(host, rad_model, state):
    image, mask = photo(1, 32, 40), box(1, 32, 40)
    plain, _ = sample(host, rad_model, image, mask)
    assert all(i > 0 for i, _, _ in state.progress)  # no start preview from noise
    for same in ({"start": "noise", "start_strength": 0.2}, {"start": "harmonic", "start_strength": 1.0}):
        assert torch.equal(sample(host, rad_model, image, mask, **same)[0], plain)
    state.reset()
    half, used = sample(host, rad_model, image, mask, start="harmonic", start_strength=0.5, schedule_steps=3)
    keep = (mask == 0)[..., None].expand_as(image)
    assert torch.equal(half[keep], image[keep]) and torch.equal(used, mask) and not torch.equal(half, plain)
    first, total, preview = state.progress[0]
    assert (first, total) == (0, 3) and preview[0] == "JPEG" and preview[1].size == (40, 32)
    state.reset()
    zero, _ = sample(host, rad_model, image, mask, start="harmonic", start_strength=0.0)
    filled = harmonic_fill(image.movedim(-1, 1), mask).movedim(1, -1)
    assert torch.equal(zero, filled) and state.loaded == [rad_model]
    assert [(i, t) for i, t, _ in state.progress] == [(0, 0)]


def test_start_refusals_name_the_node_inputs(host, rad_model):
    image = photo(1, 32, 32)
    with pytest.raises(ValueError, match="start harmonic fills the hole .* but the schedule's mask covers the whole"):
        sample(host, rad_model, image, torch.ones(1, 32, 32), start="harmonic", start_strength=0.5)
    with pytest.raises(ValueError, match="start_strength must be a finite number in \\[0, 1\\]"):
        sample(host, rad_model, image, box(1, 32, 32), start="harmonic", start_strength=1.5)


def test_start_defaults_agree_across_the_clis_the_node_and_the_api(host):
    """auto (the model's recommended start) in the CLIs and the API; the node offers it but stays at noise, so a
    workflow saved before the start input existed keeps its images (ComfyUI gives a missing widget its default)."""
    import inspect

    from comfyui_rad import cli, evaluate, pipeline, settings

    inpaint_args = cli.build_parser().parse_args(["--image", "x.png", "--mask", "box", "-o", "o.png"])
    eval_args = evaluate.build_parser().parse_args(["--model", "m", "--images", "i", "--out", "o.json"])
    inputs = {i.id: i for i in host.nodes.RADSampler.define_schema().inputs}
    node = {name: i.options.get("default") for name, i in inputs.items()}
    api = inspect.signature(pipeline.inpaint).parameters
    assert inpaint_args.start == eval_args.start == api["start"].default == settings.DEFAULT_START == "auto"
    assert node["start"] == "noise" and inputs["start"].options["options"] == ["auto", "noise", "harmonic"]
    assert inpaint_args.start_strength is eval_args.start_strength is api["start_strength"].default is None
    assert node["start_strength"] == settings.START_STRENGTH == 0.5


def test_auto_runs_the_models_recommended_start_and_strength(host, rad_model):
    import dataclasses

    image, mask = photo(1, 32, 40), box(1, 32, 40)
    plain, _ = sample(host, rad_model, image, mask)
    assert torch.equal(sample(host, rad_model, image, mask, start="auto", start_strength=0.2)[0], plain)  # records none
    info = rad_model.model.rad_info
    try:
        rad_model.model.rad_info = dataclasses.replace(info, start="harmonic", start_strength=0.25)
        auto = sample(host, rad_model, image, mask, start="auto", start_strength=0.9)[0]  # the widget: harmonic only
        assert torch.equal(auto, sample(host, rad_model, image, mask, start="harmonic", start_strength=0.25)[0])
        assert not torch.equal(auto, plain)
        assert torch.equal(sample(host, rad_model, image, mask, start="noise")[0], plain)
    finally:
        rad_model.model.rad_info = info
