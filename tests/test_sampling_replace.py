"""sample_replace: the "replace the known region" baseline, against a loop written out from its definition."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from conftest import TINY, make_adm

from comfyui_rad.pipeline import inpaint
from comfyui_rad.sampling import SAMPLERS, sample_repaint, sample_replace
from comfyui_rad.schedule import SpatialSchedule

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def replace_reference(model, image, hole, steps, generator):
    """Respaced DDPM (learned-range variance) on the whole image; after each step the known region is set to the
    input noised to the next step's level, and to the input at the end. Noise draws in the sampler's order."""
    abar_all = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    ts = [(i * 1000) // steps for i in range(steps)]
    abar = abar_all[ts]
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    x = torch.randn(image.shape, generator=generator)  # the hole starts as pure noise
    for i in reversed(range(steps)):
        known = abar[i].sqrt() * image + (1 - abar[i]).sqrt() * torch.randn(image.shape, generator=generator)
        x = torch.where(hole, x, known.float())
        out = model(x, torch.full((image.shape[0],), float(ts[i])))
        eps, v = out[:, :3].double(), out[:, 3:].double()
        x0 = ((x - (1 - abar[i]).sqrt() * eps) / abar[i].sqrt()).clamp(-1, 1)
        beta = 1 - abar[i] / abar_prev[i]
        mean = (abar_prev[i].sqrt() * beta / (1 - abar[i])) * x0 + ((1 - beta).sqrt() * (1 - abar_prev[i])
                                                                     / (1 - abar[i])) * x
        if i > 0:
            frac = (v + 1) / 2
            log_var = frac * torch.log(beta) + (1 - frac) * torch.log(beta * (1 - abar_prev[i]) / (1 - abar[i]))
            mean = mean + torch.exp(0.5 * log_var) * torch.randn(image.shape, generator=generator)
        x = mean.float()
    return torch.where(hole, x, image)


def test_replace_is_the_written_out_loop(tiny_adm, image16, box_mask16):
    ours = sample_replace(tiny_adm, image16, SpatialSchedule(box_mask16), 12, gen())
    ref = replace_reference(tiny_adm, image16, box_mask16.expand_as(image16) == 1, 12, gen())
    torch.testing.assert_close(ours, ref, rtol=0, atol=5e-5)


def test_replace_keeps_the_known_region_and_never_reads_the_hole(tiny_adm, image16, box_mask16):
    sched = SpatialSchedule(box_mask16)
    calls = []
    out = sample_replace(tiny_adm, image16, sched, 10, gen(), callback=calls.append)
    keep = box_mask16.expand_as(image16) == 0
    assert torch.equal(out[keep], image16[keep]) and not torch.equal(out[~keep], image16[~keep])
    assert [c["step"] for c in calls] == list(range(10)) and calls[0]["total"] == 10  # one network call per step
    scribbled = torch.where(keep, image16, torch.rand_like(image16) * 2 - 1)
    assert torch.equal(sample_replace(tiny_adm, scribbled, sched, 10, gen()), out)
    assert torch.equal(out, sample_repaint(tiny_adm, image16, sched, 10, gen(), jump_n_sample=1))
    assert not torch.equal(out, sample_replace(tiny_adm, image16, sched, 10, gen(2)))


def test_replace_is_a_baseline_of_the_pipeline(caplog):
    assert SAMPLERS["replace"] is sample_replace
    tiny_adm = make_adm(dataclasses.replace(TINY, image_size=16))  # the pipeline works at the model's size
    image = torch.rand(1, 3, 16, 16, generator=gen(3))
    mask = torch.zeros(1, 16, 16)
    mask[:, 4:10, 4:12] = 1
    with caplog.at_level(logging.WARNING):
        out, _ = inpaint(tiny_adm, image, mask, steps=4, sampler="replace", seed=0)
    assert "no RAD adapter" not in caplog.text  # a baseline on a plain ADM is what it is for
    assert torch.equal(out[:, :, mask[0] == 0], image[:, :, mask[0] == 0])
    with pytest.raises(ValueError, match="binary mask"):
        sample_replace(tiny_adm, image * 2 - 1, SpatialSchedule(mask * 0.5), 4)
