"""RePaint Sampler (ADM) on the stub host: thin wiring over pipeline.inpaint, progress per network call, Cancel."""

import pytest
import torch
from comfy_stub import Interrupted, host, rad_model, state  # noqa: F401
from test_node_sampler import box, kept_equal, photo


def repaint(host, model, image, mask, **kw):
    schedule = host.nodes.RADSpatialSchedule.execute(mask, kw.pop("mask_mode", "binary"), 0.5, 3)[0]
    args = dict(seed=0, steps=6, jump_length=2, jump_n_sample=2, fit="crop", class_label=-1) | kw
    return host.nodes.RADRePaintSampler.execute(model, image, schedule, **args)


def test_inpaints_and_keeps_the_rest(host, rad_model, state):
    image, mask = photo(1, 40, 56), box(1, 40, 56)
    out, used = repaint(host, rad_model, image, mask)
    assert out.shape == image.shape and torch.equal(used, mask) and kept_equal(out, image, used)
    assert (out - image)[mask.bool()].abs().mean() > 0.05
    assert state.loaded == [rad_model]


def test_progress_counts_network_calls_and_cancel_stops(host, rad_model, state):
    repaint(host, rad_model, photo(1, 32, 32), box(1, 32, 32))  # 6 steps + 2 jumps of 2 steps
    assert [(i, t) for i, t, _ in state.progress] == [(i, 10) for i in range(1, 11)]
    state.reset()
    state.interrupt_after = 3
    with pytest.raises(Interrupted):
        repaint(host, rad_model, photo(1, 32, 32), box(1, 32, 32))
    assert len(state.progress) == 3


def test_same_seed_same_image(host, rad_model):
    image, mask = photo(1, 32, 32), box(1, 32, 32)
    a = repaint(host, rad_model, image, mask, seed=5)[0]
    assert torch.equal(a, repaint(host, rad_model, image, mask, seed=5)[0])
    assert not torch.equal(a, repaint(host, rad_model, image, mask, seed=6)[0])


def test_bad_settings_are_refused(host, rad_model, state):
    with pytest.raises(ValueError, match="jump_length 6 must be below steps 6"):
        repaint(host, rad_model, photo(1, 32, 32), box(1, 32, 32), jump_length=6)
    assert state.loaded == []  # refused before the model is loaded
    with pytest.raises(ValueError, match="binary mask"):
        repaint(host, rad_model, photo(1, 32, 32), box(1, 32, 32) * 0.5, mask_mode="soft")
