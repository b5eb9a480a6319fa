"""Per-pixel Euler ancestral, DPM-Solver++(2M) and DPM-Solver++(2M) SDE (issue 22): an oracle denoiser that knows the
data makes every sampler land on it; the known region stays exact and the hole is never read; a constant mask is
k-diffusion's scalar sampler, written out here independently in its own (VE) terms."""

from dataclasses import replace

import pytest
import torch
from conftest import TINY, make_adm

from comfyui_rad.pipeline import inpaint
from comfyui_rad.sampling import (
    SAMPLERS, _DPMSolver2M, _euler_ancestral_update, _predict_x0, rad_calls, RADDenoiser,
)
from comfyui_rad.schedule import RADInfo, SpatialSchedule, step_times
from comfyui_rad.settings import SAMPLER_DEFAULTS

pytestmark = pytest.mark.usefixtures("one_thread")

NEW = ("euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde")


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


class Oracle(torch.nn.Module):
    """Data x0 ~ N(mu, std^2) independently per pixel (std 0: x0 = mu exactly). Returns the true eps of any x_t at
    the per-pixel level it reads back from the timesteps (in the model's tau convention), and v = 0."""

    def __init__(self, mu: torch.Tensor, std: torch.Tensor | float = 0.0, convention: str = "gd"):
        super().__init__()
        self.mu, self.std = mu.double(), torch.as_tensor(std, dtype=torch.float64)
        self.rad_info = RADInfo(tau_convention=convention, is_rad=True)
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.calls = 0

    def forward(self, x, t, y=None):
        self.calls += 1
        abar = self.rad_info.curves.abar_from_timestep(t, self.rad_info.tau_convention).clamp(max=1.0)
        x, var = x.double(), self.std**2
        mean_x0 = self.mu + abar.sqrt() * var * (x - abar.sqrt() * self.mu) / (abar * var + 1 - abar)
        eps = torch.where(abar < 1, (x - abar.sqrt() * mean_x0) / (1 - abar).clamp_min(1e-30).sqrt(), 0.0)
        return torch.cat([eps, torch.zeros_like(eps)], dim=1).float()


def masks(kind: str, size: int = 8) -> torch.Tensor:
    """[1,1,size,size]: a binary box, or a soft one (1 in the middle, 0.3 / 0.7 rings, 0 outside)."""
    m = torch.zeros(1, 1, size, size)
    if kind == "binary":
        m[..., 2:6, 1:7] = 1
    else:
        m[..., 1:7, 1:7], m[..., 2:6, 2:6], m[..., 3:5, 3:5] = 0.3, 0.7, 1.0
    return m


def hidden(size: int = 8, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=gen(5)) * 1.6 - 0.8


# ------------------------------------------------------------------------------------------------- the oracle

@pytest.mark.parametrize("sampler", NEW)
@pytest.mark.parametrize("kind", ["binary", "soft"])
@pytest.mark.parametrize("convention", ["gd", "authors"])
@pytest.mark.parametrize("steps", [10, 25])
def test_oracle_recovers_x0(sampler, kind, convention, steps):
    x0 = hidden()
    mask = masks(kind)
    image = torch.where(mask >= 1, torch.rand_like(x0) * 2 - 1, x0)  # the hole holds something else
    out = SAMPLERS[sampler](Oracle(x0, 0.0, convention), image, SpatialSchedule(mask), steps, gen())
    torch.testing.assert_close(out, x0.float(), rtol=0, atol=2e-3)
    kept = (mask == 0).expand_as(image)
    assert torch.equal(out[kept], image[kept])


def _ode_end(mu, std, x_start, abar_start):
    """Where the probability-flow ODE of N(mu, std^2) data takes x_start at level abar_start: mu + std * u, u the
    standardised start."""
    return mu + std * (x_start.double() - abar_start.sqrt() * mu) / (abar_start * std**2 + 1 - abar_start).sqrt()


def _ode_error(sampler, steps, mask, mu, std, spacing, **kw):
    sched = SpatialSchedule(mask)
    out = SAMPLERS[sampler](Oracle(mu, std), mu.float(), sched, steps, gen(3), spacing=spacing, **kw)
    noise = torch.randn(mu.shape, generator=gen(3))  # the start draw (the sampler's first)
    abar = sched.abar(step_times(steps, sched.curves, spacing)[0])
    start = torch.where(mask >= 1, noise.double(), abar.sqrt() * mu + (1 - abar).sqrt() * noise)
    exact = _ode_end(mu, std, start, abar)
    inside = exact.abs() < 0.9  # away from the clip at +-1
    return (out.double() - exact)[inside].abs().mean().item()


@pytest.mark.parametrize("kind", ["binary", "soft"])
def test_dpmpp_2m_is_second_order_per_pixel(kind):
    """Against the exact ODE solution of Gaussian data, with steps uniform in lambda, DPM-Solver++(2M)'s error falls
    more than 6x from 10 to 40 steps (second order: 16x) while DDIM eta 0's (first order) falls about 4x, and it is
    under DDIM's at 10 steps, on hard and soft masks alike."""
    mu = torch.rand(4, 3, 8, 8, generator=gen(2)).double() * 0.8 - 0.4
    mask = masks(kind)
    err = {(s, n): _ode_error(s, n, mask, mu, 0.3, "lambda", **({"eta": 0.0} if s == "ddim" else {}))
           for s in ("ddim", "dpmpp_2m") for n in (10, 40)}
    assert err["dpmpp_2m", 10] < err["ddim", 10], err
    assert err["dpmpp_2m", 40] < err["dpmpp_2m", 10] / 6, err
    assert err["ddim", 10] / 5 < err["ddim", 40] < err["ddim", 10] / 3, err


@pytest.mark.parametrize("sampler,steps", [("dpmpp_2m", 10), ("dpmpp_2m", 25), ("dpmpp_2m_sde", 10),
                                           ("dpmpp_2m_sde", 25), ("euler_ancestral", 100)])
def test_oracle_samples_have_the_data_distribution(sampler, steps):
    """Gaussian data N(mu, 0.3^2) in the hole, steps uniform in lambda: over many samples the 2M samplers give each
    pixel mean mu and spread 0.3 already at 10 steps. Euler ancestral (= DDIM at the same eta) needs about 100: at 25
    its spread is 0.25, as DDIM's (and DDPM's at 25 uniform steps 0.27), the first-order samplers' known shrinkage."""
    n, mu = 1024, torch.linspace(-0.4, 0.4, 16).reshape(1, 1, 4, 4).expand(1, 3, 4, 4)
    mask = torch.ones(1, 1, 4, 4)
    out = SAMPLERS[sampler](Oracle(mu, 0.3), torch.zeros(n, 3, 4, 4), SpatialSchedule(mask), steps, gen(),
                            spacing="lambda")
    torch.testing.assert_close(out.mean(0), mu[0].float(), rtol=0, atol=0.05)
    assert abs(out.std(0).mean().item() - 0.3) < 0.02 and (out.std(0) - 0.3).abs().max() < 0.06


# ------------------------------------------------------------------------------- kept exact, hole never read

@pytest.mark.parametrize("sampler", NEW)
@pytest.mark.parametrize("kw", [{}, {"resample": 1, "jump": 3}])
def test_kept_region_bit_identical_and_hole_never_read(tiny_adm, image16, box_mask16, sampler, kw):
    for mask in (box_mask16, box_mask16 * 0.6 + torch.roll(box_mask16, 3, -1) * 0.4):
        sched = SpatialSchedule(mask.clamp(0, 1))
        out = SAMPLERS[sampler](tiny_adm, image16, sched, 8, gen(), **kw)
        keep = (mask == 0).expand_as(image16)
        assert torch.equal(out[keep], image16[keep]) and not torch.equal(out[~keep], image16[~keep])
        assert torch.isfinite(out).all() and out.abs().max() <= 1.0 + 1e-6
        hole = (mask >= 1).expand_as(image16)
        scribbled = torch.where(hole, torch.rand_like(image16) * 2 - 1, image16)
        assert torch.equal(SAMPLERS[sampler](tiny_adm, scribbled, sched, 8, gen(), **kw), out)


def test_all_zeros_mask_returns_input(tiny_adm, image16):
    for sampler in NEW:
        assert torch.equal(SAMPLERS[sampler](tiny_adm, image16, SpatialSchedule(torch.zeros(16, 16)), 5, gen()),
                           image16)


# -------------------------------------------------------------- constant mask = k-diffusion's scalar sampler

@torch.no_grad()
def kdiffusion_reference(sampler, model, image, level, steps, generator, eta=1.0, spacing="uniform"):
    """k-diffusion's samplers on one noise level per image, in its own VE terms (x / alpha, sigma = sqrt((1 - abar)
    / abar)), written out independently; the denoised image is RAD's clipped x0, the mask a constant ``level``."""
    sched = SpatialSchedule(torch.full((1, 1) + image.shape[-2:], level))
    denoiser = RADDenoiser(model, sched.curves)
    ts = step_times(steps, sched.curves, spacing)
    abars = [sched.abar(t).flatten()[0] for t in ts] + [torch.tensor(1.0, dtype=torch.float64)]
    sigmas = [((1 - a) / a).sqrt() for a in abars]
    noise = torch.randn(image.shape, generator=generator)
    a0 = abars[0]
    x = (a0.sqrt() * image + (1 - a0).sqrt() * noise).float() if level < 1 else noise
    x = x.double() / a0.sqrt()  # VE

    def denoised(x_ve, i):
        a = abars[i]
        x_vp = (x_ve * a.sqrt()).float()
        eps, _ = denoiser(x_vp, a.reshape(1, 1, 1, 1))
        return _predict_x0(x_vp, eps, a).double()

    old, h_last = None, None
    for i in range(steps):
        d = denoised(x, i)
        z = torch.randn(image.shape, generator=generator).double() if i < steps - 1 else None
        s, s_next = sigmas[i], sigmas[i + 1]
        if sampler == "euler_ancestral":
            s_up = min(s_next, eta * (s_next**2 * (s**2 - s_next**2) / s**2).sqrt())
            s_down = (s_next**2 - s_up**2).sqrt()
            x = x + (x - d) / s * (s_down - s)
            if s_next > 0:
                x = x + z * s_up
        else:  # dpmpp_2m (eta 0) and dpmpp_2m_sde (midpoint)
            eta_ = 0.0 if sampler == "dpmpp_2m" else eta
            if s_next == 0:
                x = d
            else:
                t, t_next = -s.log(), -s_next.log()
                h = t_next - t
                x = s_next / s * (-eta_ * h).exp() * x + (-h - eta_ * h).expm1().neg() * d
                if old is not None:
                    x = x + 0.5 * (-h - eta_ * h).expm1().neg() * (h / h_last) * (d - old)
                if eta_:
                    x = x + z * s_next * (-2 * eta_ * h).expm1().neg().sqrt()
                h_last = h
            old = d
    return x.float()  # sigma 0: VE = VP


@pytest.mark.parametrize("sampler", NEW)
@pytest.mark.parametrize("level", [1.0, 0.6])
def test_constant_mask_is_the_scalar_sampler(tiny_adm, image16, sampler, level):
    ours = SAMPLERS[sampler](tiny_adm, image16, SpatialSchedule(torch.full((1, 1, 16, 16), level)), 12, gen())
    ref = kdiffusion_reference(sampler, tiny_adm, image16, level, 12, gen(),
                               spacing=SAMPLER_DEFAULTS[sampler]["spacing"])
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-4)


# --------------------------------------------------------------------------------- identities and degeneracies

@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_euler_ancestral_is_ddim_and_2m_sde_at_eta_0_is_2m(tiny_adm, image16, box_mask16, eta):
    """Euler ancestral's split of the next level (k-diffusion's sigma_down / sigma_up, in VE terms) is DDIM's (eq.
    (12)) at the same eta: the same sampler. The 2M SDE at eta 0 is 2M, bit for bit."""
    sched = SpatialSchedule(box_mask16 * 0.7 + 0.3 * torch.roll(box_mask16, 4, -2))
    ddim = SAMPLERS["ddim"](tiny_adm, image16, sched, 10, gen(), eta=eta)
    euler = SAMPLERS["euler_ancestral"](tiny_adm, image16, sched, 10, gen(), eta=eta, spacing="uniform")
    torch.testing.assert_close(euler, ddim, rtol=0, atol=1e-5)
    if eta == 0:
        assert torch.equal(SAMPLERS["dpmpp_2m_sde"](tiny_adm, image16, sched, 10, gen(), eta=0.0),
                           SAMPLERS["dpmpp_2m"](tiny_adm, image16, sched, 10, gen()))


def test_the_2m_sde_first_order_step_is_the_ddpm_posterior():
    """One first-order 2M SDE step at eta 1 has DDPM's posterior mean and the posterior variance, per pixel."""
    abar_t = torch.tensor([[[[0.3, 0.8]]]], dtype=torch.float64)
    abar_prev = torch.tensor([[[[0.5, 0.9]]]], dtype=torch.float64)
    x, x0 = torch.full((40000, 1, 1, 2), 0.4), torch.full((40000, 1, 1, 2), -0.2)
    z = torch.randn(x.shape, generator=gen(2))
    out = _DPMSolver2M(1.0)(x, x0, None, None, abar_t, abar_prev, z)
    beta = 1 - abar_t / abar_prev
    mean = abar_prev.sqrt() * beta / (1 - abar_t) * -0.2 + (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar_t) * 0.4
    var = beta * (1 - abar_prev) / (1 - abar_t)
    torch.testing.assert_close(out.mean(0).flatten(), mean.flatten(), rtol=0, atol=0.01)
    torch.testing.assert_close(out.var(0).flatten(), var.flatten(), rtol=0.05, atol=0)


@pytest.mark.parametrize("update", [_euler_ancestral_update(1.0), _DPMSolver2M(0.0), _DPMSolver2M(1.0)],
                         ids=["euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde"])
def test_degenerate_pixels_fall_back(update):
    """Per pixel: a level that does not change leaves x bit for bit; a pixel reaching abar = 1 lands on its x0;
    others take a normal step (finite)."""
    abar_t = torch.tensor([[[[0.5, 0.5, 0.5, 1.0]]]], dtype=torch.float64)
    abar_next = torch.tensor([[[[0.5, 1.0, 0.7, 1.0]]]], dtype=torch.float64)
    x, x0 = torch.rand(2, 3, 1, 4) * 2 - 1, torch.rand(2, 3, 1, 4) * 2 - 1
    for _ in range(2):  # the second call has a history (the 2M correction)
        out = update(x, x0, None, None, abar_t, abar_next, torch.randn(x.shape)).float()
        assert torch.equal(out[..., 0], x[..., 0]) and torch.equal(out[..., 3], x[..., 3])
        torch.testing.assert_close(out[..., 1], x0[..., 1])
        assert torch.isfinite(out).all() and not torch.equal(out[..., 2], x[..., 2])


def test_2m_history_only_where_the_last_step_ended_here():
    """The second-order correction uses the last x0 where the last step ended at this pixel's level; after a jump
    (the level differs) the step is first order, as the first step is."""
    a1, a2, a3 = (torch.full((1, 1, 1, 2), a, dtype=torch.float64) for a in (0.2, 0.4, 0.6))
    x, x0_old, x0 = torch.zeros(1, 3, 1, 2), torch.full((1, 3, 1, 2), -0.5), torch.full((1, 3, 1, 2), 0.5)
    first = _DPMSolver2M(0.0)(x, x0, None, None, a2, a3, None)
    solver = _DPMSolver2M(0.0)
    solver(x, x0_old, None, None, a1, a2, None)
    second = solver(x, x0, None, None, a2, a3, None)
    assert (second - first).abs().min() > 1e-3  # the correction acts
    solver(x, x0_old, None, None, a1, a2 * 0.9, None)  # ended elsewhere (a jump followed)
    torch.testing.assert_close(solver(x, x0, None, None, a2, a3, None), first, rtol=0, atol=0)


# ------------------------------------------------------------------------------ resampling, calls, the pipeline

@pytest.mark.parametrize("sampler", NEW)
def test_resampling_composes(sampler, box_mask16):
    x0 = torch.rand(1, 3, 16, 16, generator=gen(4)) * 1.6 - 0.8
    model, seen = Oracle(x0), []
    out = SAMPLERS[sampler](model, x0.float(), SpatialSchedule(box_mask16), 12, gen(), callback=seen.append,
                            resample=2, jump=4)
    assert model.calls == len(seen) == rad_calls(12, 2, 4) > 12
    torch.testing.assert_close(out, x0, rtol=0, atol=2e-3)


@pytest.mark.parametrize("sampler", NEW)
def test_through_the_pipeline(sampler):
    tiny_adm = make_adm(replace(TINY, image_size=16))
    image = torch.rand(1, 3, 20, 24, generator=gen(6))
    mask = torch.zeros(1, 20, 24)
    mask[:, 5:14, 6:15] = 1
    out, used = inpaint(tiny_adm, image, mask, sampler=sampler, steps=6, seed=2)
    keep = (used == 0)[:, None].expand_as(image)
    assert torch.isfinite(out).all() and torch.equal(out[keep], image[keep])
    assert not torch.equal(out[~keep], image[~keep])


def test_bad_eta(tiny_adm, image16, box_mask16):
    for sampler in ("euler_ancestral", "dpmpp_2m_sde"):
        with pytest.raises(ValueError, match="eta must be .*1.5"):
            SAMPLERS[sampler](tiny_adm, image16, SpatialSchedule(box_mask16), 3, eta=1.5)
