import pytest
import torch
from conftest import TINY, make_adm

from comfyui_rad.adm import ADMConfig
from comfyui_rad.sampling import SAMPLERS, repaint_calls, repaint_times, sample_ddim, sample_ddpm, sample_repaint
from comfyui_rad.schedule import SpatialSchedule


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def plain_ddpm(model, shape, steps, generator):
    """guided-diffusion's respaced p_sample_loop with learned-range variance, written out independently."""
    abar_all = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    ts = [(i * 1000) // steps for i in range(steps)]
    abar = abar_all[ts]
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    betas = 1 - abar / abar_prev
    post_var = betas * (1 - abar_prev) / (1 - abar)
    post_log_clipped = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
    x = torch.randn(shape, generator=generator)
    for i in reversed(range(steps)):
        out = model(x, torch.full((shape[0],), float(ts[i])))
        eps, v = out[:, :3].double(), out[:, 3:].double()
        x0 = ((x - (1 - abar[i]).sqrt() * eps) / abar[i].sqrt()).clamp(-1, 1)
        mean = (abar_prev[i].sqrt() * betas[i] / (1 - abar[i])) * x0 \
            + ((1 - betas[i]).sqrt() * (1 - abar_prev[i]) / (1 - abar[i])) * x
        frac = (v + 1) / 2
        log_var = frac * torch.log(betas[i]) + (1 - frac) * post_log_clipped[i]
        if i > 0:
            mean = mean + torch.exp(0.5 * log_var) * torch.randn(shape, generator=generator)
        x = mean.float()
    return x


def test_all_ones_mask_is_plain_ddpm(tiny_adm, image16):
    ours = sample_ddpm(tiny_adm, image16, SpatialSchedule(torch.ones(16, 16)), 20, gen())
    ref = plain_ddpm(tiny_adm, image16.shape, 20, gen())
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_all_zeros_mask_returns_input(tiny_adm, image16, sampler):
    out = SAMPLERS[sampler](tiny_adm, image16, SpatialSchedule(torch.zeros(16, 16)), 10, gen())
    assert torch.equal(out, image16)


@pytest.mark.parametrize("sampler,kw", [("ddpm", {}), ("ddim", {"eta": 0.0}), ("ddim", {"eta": 1.0})])
def test_kept_region_bit_identical_and_hole_never_read(tiny_adm, image16, box_mask16, sampler, kw):
    sched = SpatialSchedule(box_mask16)
    out = SAMPLERS[sampler](tiny_adm, image16, sched, 10, gen(), **kw)
    keep = box_mask16.expand_as(image16) == 0
    assert torch.equal(out[keep], image16[keep])
    assert not torch.equal(out[~keep], image16[~keep])
    assert out.abs().max() <= 1 and torch.isfinite(out).all()
    scribbled = torch.where(keep, image16, torch.rand_like(image16) * 2 - 1)  # different content under the mask
    assert torch.equal(SAMPLERS[sampler](tiny_adm, scribbled, sched, 10, gen(), **kw), out)


def test_seed_gives_same_result_and_other_seed_differs(tiny_adm, image16, box_mask16):
    sched = SpatialSchedule(box_mask16)
    a = sample_ddpm(tiny_adm, image16, sched, 5, gen(3))
    assert torch.equal(a, sample_ddpm(tiny_adm, image16, sched, 5, gen(3)))
    assert not torch.equal(a, sample_ddpm(tiny_adm, image16, sched, 5, gen(4)))


def test_golden_values(tiny_adm, image16, box_mask16):
    """Regression guard for the whole loop (tiny model, fixed seed), in the style of diffusers' scheduler tests."""
    sched = SpatialSchedule(box_mask16)
    ddpm = sample_ddpm(tiny_adm, image16, sched, 10, gen())
    ddim = sample_ddim(tiny_adm, image16, sched, 10, gen(), eta=0.5)
    hole = box_mask16.expand_as(image16) == 1
    assert ddpm[hole].sum().item() == pytest.approx(GOLDEN["ddpm_sum"], abs=1e-3)
    assert ddpm[hole].abs().mean().item() == pytest.approx(GOLDEN["ddpm_absmean"], abs=1e-5)
    assert ddim[hole].sum().item() == pytest.approx(GOLDEN["ddim_sum"], abs=1e-3)


GOLDEN = {"ddpm_sum": -37.790035, "ddpm_absmean": 0.7310557, "ddim_sum": -61.645115}


def test_shared_mask_equals_per_image_copies(tiny_adm, image16, box_mask16):
    shared = sample_ddpm(tiny_adm, image16, SpatialSchedule(box_mask16), 5, gen())
    per_image = sample_ddpm(tiny_adm, image16, SpatialSchedule(box_mask16.expand(2, 1, 16, 16)), 5, gen())
    assert torch.equal(shared, per_image)


def test_per_image_masks_keep_each_images_region(tiny_adm, image16, box_mask16):
    masks = torch.cat([box_mask16, 1 - box_mask16])
    out = sample_ddim(tiny_adm, image16, SpatialSchedule(masks), 5, gen())
    keep = masks.expand_as(image16) == 0
    assert torch.equal(out[keep], image16[keep])


def test_soft_mask_regenerates_in_proportion(tiny_adm):
    """A mask value is how much of the pixel is regenerated: more mask, further from the input."""
    image = torch.zeros(8, 3, 16, 16)
    levels = torch.tensor([0.1, 0.5, 0.9, 1.0])
    mask = levels.repeat_interleave(4)[None, None, None, :].expand(1, 1, 16, 16)
    out = sample_ddpm(tiny_adm, image, SpatialSchedule(mask), 10, gen())
    change = (out - image).abs().mean(dim=(0, 1, 2)).reshape(4, 4).mean(1)
    assert (change.diff() > 0).all(), change


def test_callback_reports_every_step_and_can_cancel(tiny_adm, image16, box_mask16):
    seen = []
    sample_ddpm(tiny_adm, image16, SpatialSchedule(box_mask16), 7, gen(), callback=seen.append)
    assert [s["step"] for s in seen] == list(range(7)) and seen[0]["total"] == 7
    assert [s["t"] for s in seen] == [857, 714, 571, 428, 285, 142, 0]
    assert seen[-1]["x"].shape == seen[-1]["pred_x0"].shape == image16.shape

    class Cancelled(Exception):
        pass

    def cancel(info):
        if info["step"] == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        sample_ddpm(tiny_adm, image16, SpatialSchedule(box_mask16), 7, gen(), callback=cancel)


def test_model_calls_per_step(tiny_adm, image16, box_mask16):
    calls = []
    handle = tiny_adm.register_forward_hook(lambda *a: calls.append(1))
    try:
        sample_ddpm(tiny_adm, image16, SpatialSchedule(box_mask16), 12, gen())
    finally:
        handle.remove()
    assert len(calls) == 12


def test_class_conditional_labels_pass_through(image16, box_mask16):
    model = make_adm(ADMConfig(**{**TINY.__dict__, "num_classes": 5}), seed=2)
    sched = SpatialSchedule(box_mask16)
    a = sample_ddpm(model, image16, sched, 3, gen(), y=torch.tensor([1, 2]))
    b = sample_ddpm(model, image16, sched, 3, gen(), y=torch.tensor([1, 3]))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="class-conditional"):
        sample_ddpm(model, image16, sched, 3, gen())


def test_bad_inputs(tiny_adm, image16):
    with pytest.raises(ValueError, match="mask is 8x8 but image is 16x16"):
        sample_ddpm(tiny_adm, image16, SpatialSchedule(torch.ones(8, 8)), 3)
    with pytest.raises(ValueError, match="mask batch 3 does not match image batch 2"):
        sample_ddpm(tiny_adm, image16, SpatialSchedule(torch.ones(3, 16, 16)), 3)
    with pytest.raises(ValueError, match="expected \\[B, 3, H, W\\]"):
        sample_ddpm(tiny_adm, image16[:, :1], SpatialSchedule(torch.ones(16, 16)), 3)
    with pytest.raises(ValueError, match="steps must be an integer"):
        sample_ddpm(tiny_adm, image16, SpatialSchedule(torch.ones(16, 16)), 0)
    with pytest.raises(ValueError, match=r"eta must be a finite number in \[0, 1\]"):
        sample_ddim(tiny_adm, image16, SpatialSchedule(torch.ones(16, 16)), 3, eta=2.0)


class CountingModel(torch.nn.Module):
    """A cheap stand-in ADM: eps = 0.1 x, v = 0; counts its calls and records the timesteps it is given."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.1))
        self.timesteps = []

    def forward(self, x, t, y=None):
        self.timesteps.append(float(t.flatten()[0]))
        return torch.cat([self.scale * x, torch.zeros_like(x)], dim=1)


def test_repaint_defaults_make_2410_model_calls(box_mask16):
    model, seen = CountingModel(), []
    image = torch.zeros(1, 3, 16, 16)
    out = sample_repaint(model, image, SpatialSchedule(box_mask16), generator=gen(), callback=seen.append)
    assert len(model.timesteps) == len(seen) == repaint_calls(250, 10, 10) == 2410
    assert [s["step"] for s in seen] == list(range(2410)) and {s["total"] for s in seen} == {2410}
    # down from respaced step 249 (t = 996) to 230 (t = 920), then back up to 240 (t = 960)
    assert [s["t"] for s in seen[:20]] == [996 - 4 * k for k in range(19)] + [960]
    assert seen[-1]["t"] == 0 and model.timesteps[-1] == pytest.approx(0, abs=1e-3)
    assert torch.isfinite(out).all()


def test_repaint_times_jump_back_and_end_clean():
    times = repaint_times(6, 2, 3)
    # jump points 0, 2 (below 6 - 2): each sends the walk back up 2 steps, twice
    assert times == [5, 4, 3, 2, 4, 3, 2, 4, 3, 2, 1, 0, 2, 1, 0, 2, 1, 0, -1]
    assert repaint_calls(6, 2, 3) == 6 + 2 * 2 * 2
    assert repaint_times(5, 10, 1) == [4, 3, 2, 1, 0, -1]


def test_repaint_keeps_the_known_region_and_never_reads_the_hole(tiny_adm, image16, box_mask16):
    sched = SpatialSchedule(box_mask16)
    out = sample_repaint(tiny_adm, image16, sched, 8, gen(), jump_length=2, jump_n_sample=3)
    keep = box_mask16.expand_as(image16) == 0
    assert torch.equal(out[keep], image16[keep])
    assert not torch.equal(out[~keep], image16[~keep])
    assert out.abs().max() <= 1 and torch.isfinite(out).all()
    scribbled = torch.where(keep, image16, torch.rand_like(image16) * 2 - 1)
    assert torch.equal(sample_repaint(tiny_adm, scribbled, sched, 8, gen(), jump_length=2, jump_n_sample=3), out)


def test_repaint_same_seed_same_result(tiny_adm, image16, box_mask16):
    sched = SpatialSchedule(box_mask16)
    a = sample_repaint(tiny_adm, image16, sched, 5, gen(3), jump_length=2, jump_n_sample=2)
    assert torch.equal(a, sample_repaint(tiny_adm, image16, sched, 5, gen(3), jump_length=2, jump_n_sample=2))
    assert not torch.equal(a, sample_repaint(tiny_adm, image16, sched, 5, gen(4), jump_length=2, jump_n_sample=2))


def test_repaint_all_ones_mask_without_jumps_is_plain_ddpm(tiny_adm, image16):
    ours = sample_repaint(tiny_adm, image16, SpatialSchedule(torch.ones(16, 16)), 20, gen(), jump_n_sample=1)
    ref = plain_ddpm(tiny_adm, image16.shape, 20, gen())
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_repaint_all_zeros_mask_returns_input(tiny_adm, image16):
    out = sample_repaint(tiny_adm, image16, SpatialSchedule(torch.zeros(16, 16)), 4, gen(), jump_length=2)
    assert torch.equal(out, image16)


def test_repaint_bad_inputs(tiny_adm, image16, box_mask16):
    sched = SpatialSchedule(box_mask16)
    with pytest.raises(ValueError, match="jump_length must be a positive integer, got 0"):
        sample_repaint(tiny_adm, image16, sched, 10, jump_length=0)
    with pytest.raises(ValueError, match="jump_n_sample must be a positive integer, got 0"):
        sample_repaint(tiny_adm, image16, sched, 10, jump_n_sample=0)
    with pytest.raises(ValueError, match="jump_length 10 must be below steps 10"):
        sample_repaint(tiny_adm, image16, sched, 10, jump_length=10)
    with pytest.raises(ValueError, match="binary mask"):
        sample_repaint(tiny_adm, image16, SpatialSchedule(box_mask16 * 0.5), 10)
    with pytest.raises(ValueError, match="steps must be an integer"):
        sample_repaint(tiny_adm, image16, sched, 1001, jump_n_sample=1)
