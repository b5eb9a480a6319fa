"""SamplerSpec: one frozen, checked description of a run; one table of defaults; one call count; one registry."""

import pytest
import torch

from comfyui_rad import sampling
from comfyui_rad.sampling import (
    BASELINE_SAMPLERS, DEFAULT_STEPS, SAMPLERS, RADDenoiser, SamplerSpec, as_denoiser, ddpm_loop, rad_calls,
    register, repaint_calls, sample, sample_ddim, sample_ddpm, sample_repaint,
)
from comfyui_rad.schedule import SpatialSchedule


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


def test_defaults_come_from_one_table():
    assert SamplerSpec("ddpm") == SamplerSpec.create("ddpm") == SamplerSpec("ddpm", 100, 1.0, 0, 10, "uniform")
    # issue 22: the default sampler is DPM++ 2M SDE, 15 steps in log-SNR (it was ddpm, 100)
    assert SamplerSpec() == SamplerSpec.create() == SamplerSpec("dpmpp_2m_sde", 15, 1.0, 0, 10, "lambda")
    assert SamplerSpec().calls() == 15 and SamplerSpec("euler_ancestral").steps == 15
    assert SamplerSpec("ddim") == SamplerSpec.create("ddim") and SamplerSpec("ddim").eta == 1.0  # issue 19: was 0
    assert SamplerSpec("repaint") == SamplerSpec("repaint", 250, 1.0, 9, 10)  # RePaint 250/10/10
    assert SamplerSpec("replace").steps == 100 and SamplerSpec("replace").resample == 0
    assert DEFAULT_STEPS == {name: SamplerSpec(name).steps for name in SAMPLERS}
    assert set(BASELINE_SAMPLERS) == {"repaint", "replace"} and SamplerSpec("repaint").baseline
    assert SamplerSpec.create("ddim", steps=25, eta=None).eta == 1.0  # None: the default


def test_calls_are_the_known_counts():
    assert SamplerSpec("ddpm").calls() == 100
    assert SamplerSpec.create("ddpm", resample=1, jump=10).calls() == 190 == rad_calls(100, 1, 10)
    assert SamplerSpec("repaint").calls() == 2410 == repaint_calls(250, 10, 10)
    assert SamplerSpec.create("ddim", steps=25, resample=3, jump=5).calls() == 85
    assert SamplerSpec.create("repaint", steps=6, jump_length=2, jump_n_sample=3).calls() == 6 + 2 * 2 * 2
    assert SamplerSpec("replace").calls() == 100 and SamplerSpec.create("ddim", steps=25).calls() == 25


def test_timesteps_are_the_respaced_steps_with_the_jumps():
    assert SamplerSpec("ddpm").timesteps() == [*range(990, -1, -10), -1]
    walk = SamplerSpec.create("ddpm", steps=10, resample=1, jump=3).timesteps(100)
    assert walk[:7] == [90, 80, 70, 60, 90, 80, 70] and walk[-1] == -1  # at 60 back up 3 steps, once
    assert sum(b < a for a, b in zip(walk, walk[1:])) == rad_calls(10, 1, 3)
    assert SamplerSpec.create("ddpm", steps=5).timesteps(T1=200) == [160, 120, 80, 40, 0, -1]


def test_repaint_names_are_jump_and_resample_plus_one():
    old = SamplerSpec.create("repaint", steps=50, jump_length=5, jump_n_sample=4)
    assert old == SamplerSpec.create("repaint", steps=50, jump=5, resample=3)
    with pytest.raises(TypeError, match="not both"):
        SamplerSpec.create("repaint", jump=5, jump_length=5)


def test_errors_name_the_api_argument_or_the_callers_names():
    with pytest.raises(ValueError, match="eta must be a finite number in \\[0, 1\\], got 2"):
        SamplerSpec.create("ddim", eta=2.0)
    with pytest.raises(ValueError, match="eta must be a finite number"):
        SamplerSpec("ddim", eta=float("nan"))
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        SamplerSpec("ddpm", steps=0)
    with pytest.raises(ValueError, match="unknown sampler 'euler': use one of ddim, ddpm, dpmpp_2m, dpmpp_2m_sde, "
                       "euler_ancestral, repaint, replace"):
        SamplerSpec("euler")
    with pytest.raises(ValueError, match="jump 10 must be below steps 10"):
        SamplerSpec("ddpm", steps=10, resample=1)
    with pytest.raises(ValueError, match="sampler replace does not resample"):
        SamplerSpec("replace", resample=1)
    with pytest.raises(ValueError, match="jump_n_sample must be a positive integer, got 0"):
        SamplerSpec.create("repaint", jump_n_sample=0)
    flags = {"steps": "--steps", "eta": "--eta", "resample": "--resample", "jump": "--jump", "sampler": "--sampler"}
    with pytest.raises(ValueError, match="--jump 9 must be below --steps 5.*--resample to 0"):
        SamplerSpec.create("ddpm", steps=5, resample=1, jump=9, names=flags)
    with pytest.raises(ValueError, match="--eta must be a finite number in"):
        SamplerSpec.create("ddim", eta=-0.5, names=flags)
    with pytest.raises(ValueError, match="unknown --sampler 'x'"):
        SamplerSpec.create("x", names=flags)
    with pytest.raises(TypeError, match="unknown sampler setting"):
        SamplerSpec.create("ddpm", strength=0.5)


def test_spec_is_frozen_and_checked_when_replaced():
    from dataclasses import FrozenInstanceError, replace

    spec = SamplerSpec("ddim")
    with pytest.raises(FrozenInstanceError):
        spec.eta = 0.5
    with pytest.raises(ValueError, match="eta"):
        replace(spec, eta=3.0)


def test_ddim_eta_defaults_to_1_in_the_api(tiny_adm, image16, box_mask16):
    sched = SpatialSchedule(box_mask16)
    assert torch.equal(sample_ddim(tiny_adm, image16, sched, 4, gen()), sample_ddim(tiny_adm, image16, sched, 4, gen(),
                                                                                     eta=1.0))
    assert not torch.equal(sample_ddim(tiny_adm, image16, sched, 4, gen()),
                           sample_ddim(tiny_adm, image16, sched, 4, gen(), eta=0.0))


def test_sample_is_the_one_entry_and_wraps_a_bare_model_once(tiny_adm, image16, box_mask16):
    sched = SpatialSchedule(box_mask16)
    denoiser = RADDenoiser(tiny_adm)
    assert as_denoiser(denoiser) is denoiser and as_denoiser(tiny_adm).model is tiny_adm
    spec = SamplerSpec.create("ddpm", steps=4)
    ours = sample(spec, denoiser, image16, sched, gen())
    assert denoiser.calls == spec.calls() == 4
    assert torch.equal(ours, sample_ddpm(tiny_adm, image16, sched, 4, gen()))
    rp = SamplerSpec.create("repaint", steps=6, jump_length=2, jump_n_sample=2)
    assert torch.equal(sample(rp, tiny_adm, image16, sched, gen()),
                       sample_repaint(tiny_adm, image16, sched, 6, gen(), jump_length=2, jump_n_sample=2))


def test_a_new_sampler_is_one_register_line(tiny_adm, image16, box_mask16):
    try:
        register("ddpm_twice", ddpm_loop, steps=3, calls=lambda spec: 2 * spec.steps)
        spec = SamplerSpec("ddpm_twice")
        assert spec.steps == 3 and spec.calls() == 6 and not spec.baseline and DEFAULT_STEPS["ddpm_twice"] == 3
        sched = SpatialSchedule(box_mask16)
        out = SAMPLERS["ddpm_twice"](tiny_adm, image16, sched, generator=gen())
        assert torch.equal(out, sample_ddpm(tiny_adm, image16, sched, 3, gen()))
    finally:
        for table in (sampling._REGISTRY, SAMPLERS, DEFAULT_STEPS):
            table.pop("ddpm_twice", None)
