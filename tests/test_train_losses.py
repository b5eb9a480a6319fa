"""The trainer's math: per-pixel loss terms against guided-diffusion's formulas, singular pixels, noise states."""

from __future__ import annotations

import math

import pytest
import torch

from comfyui_rad.sampling import RADDenoiser
from comfyui_rad.schedule import NoiseCurves
from comfyui_rad.train.losses import mse_loss, q_sample, rad_loss, step_terms, vlb_bits
from comfyui_rad.train.noising import (
    sample_states, states_for_levels,
)

CURVES = NoiseCurves()
T1 = CURVES.T1


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------ guided-diffusion's loss, independently


def _gd_tables():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alphas = 1 - betas
    abar = torch.cumprod(alphas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    post_var = betas * (1 - abar_prev) / (1 - abar)
    return {"betas": betas, "alphas": alphas, "abar": abar, "abar_prev": abar_prev,
            "log_var_clipped": torch.log(torch.cat([post_var[1:2], post_var[1:]])),
            "coef1": betas * abar_prev.sqrt() / (1 - abar), "coef2": (1 - abar_prev) * alphas.sqrt() / (1 - abar)}


def _gd_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def gd_vb_bits(x0, eps, eps_pred, v, t):
    """guided-diffusion's _vb_terms_bpd per element (float64): KL for t > 0, decoder NLL at t = 0."""
    g = {k: v_[t] for k, v_ in _gd_tables().items()}
    x0, eps, eps_pred, v = (a.double() for a in (x0, eps, eps_pred, v))
    x_t = g["abar"].sqrt() * x0 + (1 - g["abar"]).sqrt() * eps
    pred_x0 = (1 / g["abar"]).sqrt() * x_t - (1 / g["abar"] - 1).sqrt() * eps_pred
    true_mean = g["coef1"] * x0 + g["coef2"] * x_t
    model_mean = g["coef1"] * pred_x0 + g["coef2"] * x_t
    frac = (v + 1) / 2
    log_var = frac * torch.log(g["betas"]) + (1 - frac) * g["log_var_clipped"]
    if t > 0:
        lv1 = g["log_var_clipped"]
        kl = 0.5 * (-1 + log_var - lv1 + torch.exp(lv1 - log_var) + (true_mean - model_mean) ** 2 * torch.exp(-log_var))
        return kl / math.log(2)
    centered, inv = x0 - model_mean, torch.exp(-0.5 * log_var)
    plus, minus = _gd_cdf(inv * (centered + 1 / 255)), _gd_cdf(inv * (centered - 1 / 255))
    logp = torch.where(x0 < -0.999, torch.log(plus.clamp(min=1e-12)),
                       torch.where(x0 > 0.999, torch.log((1 - minus).clamp(min=1e-12)),
                                   torch.log((plus - minus).clamp(min=1e-12))))
    return -logp / math.log(2)


def batch(seed=0, b=2, size=8):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, 256, (b, 3, size, size), generator=g).float() / 127.5 - 1
    eps = torch.randn(b, 3, size, size, generator=g)
    eps_pred = eps + 0.3 * torch.randn(b, 3, size, size, generator=g)
    v = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    return x0, eps, eps_pred, v


def terms_for(mask_value, t, size=8, b=2):
    mask = mask_value if torch.is_tensor(mask_value) else torch.full((b, 1, size, size), float(mask_value))
    return step_terms(CURVES, mask, torch.full((mask.shape[0],), t))[0]


@pytest.mark.parametrize("t", [0, 1, 7, 300, 999])
def test_full_mask_is_guided_diffusions_loss(t):
    """All-ones mask in Phase 1 = DDPM: the per-element VLB (KL, decoder NLL at t = 0) and MSE of guided-diffusion."""
    x0, eps, eps_pred, v = batch(t)
    terms = terms_for(1.0, t)
    ours = vlb_bits(eps_pred, v, eps, x0, terms)
    torch.testing.assert_close(ours.double(), gd_vb_bits(x0, eps, eps_pred, v, t), rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(mse_loss(eps_pred, eps, terms), (eps_pred - eps).square().mean())


@pytest.mark.parametrize("s", [0, 1, 500])
def test_kept_pixels_in_phase2_follow_ddpm(s):
    """An all-zeros mask at step T1 + s is DDPM at step s: the singular t = T1 gets guided-diffusion's t = 0 NLL."""
    x0, eps, eps_pred, v = batch(s + 1)
    ours = vlb_bits(eps_pred, v, eps, x0, terms_for(0.0, T1 + s))
    torch.testing.assert_close(ours.double(), gd_vb_bits(x0, eps, eps_pred, v, s), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("t, hole_step, kept_step", [(0, 0, None), (5, 5, None), (T1, None, 0), (T1 + 7, None, 7)])
def test_binary_mask_terms_are_ddpm_or_exactly_zero(t, hole_step, kept_step):
    """Per pixel: a pixel that gets noise in this step has guided-diffusion's term of its own DDPM step (KL, or the
    decoder NLL at its first step); a pixel that gets none (kept in Phase 1, hole in Phase 2) has exactly 0."""
    x0, eps, eps_pred, v = batch(t)
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :, :4] = 1
    hole = mask.bool().expand_as(x0)
    v = v.requires_grad_()
    ours = vlb_bits(eps_pred.requires_grad_(), v, eps, x0, terms_for(mask, t))
    for region, step in ((hole, hole_step), (~hole, kept_step)):
        if step is None:
            assert (ours[region] == 0).all()
        else:
            ref = gd_vb_bits(x0, eps, eps_pred.detach(), v.detach(), step)
            torch.testing.assert_close(ours[region].double(), ref[region], rtol=2e-4, atol=2e-5)
            assert (ours[region] > 0).all()
    ours.sum().backward()
    assert torch.isfinite(v.grad).all() and (v.grad[hole if hole_step is None else ~hole] == 0).all()
    assert eps_pred.grad is None or (eps_pred.grad == 0).all()  # the VLB does not train the mean (stop-gradient)


def test_kl_vanishes_when_the_model_is_exact():
    """eps_pred = eps and the posterior variance (v = -1): KL = 0 on every regular pixel."""
    x0, eps, _, _ = batch()
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    for t in (3, 400, T1 + 3, T1 + 900):
        terms = terms_for(mask, t)
        assert terms.kl.any()
        kl = vlb_bits(eps, -torch.ones_like(eps), eps, x0, terms)
        assert kl.abs().max() < 1e-6


def test_mse_ignores_pixels_without_noise():
    """Pixels with abar_t == 1 hold no noise: their eps_pred does not change the loss; the sum over noised elements is
    divided by all elements."""
    x0, eps, eps_pred, _ = batch()
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :3, :] = 1
    terms = terms_for(mask, 20)
    hole = mask.bool().expand_as(x0)
    assert torch.equal(terms.noised.expand_as(x0), hole)
    other = torch.where(hole, eps_pred, eps_pred + 100)
    assert torch.equal(mse_loss(eps_pred, eps, terms), mse_loss(other, eps, terms))
    expected = (eps_pred - eps)[hole].square().sum() / x0.numel()
    torch.testing.assert_close(mse_loss(eps_pred, eps, terms), expected)
    x_t = q_sample(x0, eps, terms)
    assert torch.equal(x_t[~hole], x0[~hole])  # clean pixels are x0 bit for bit


def test_rad_loss_learned_sigma_and_eps_only():
    x0, eps, eps_pred, v = batch()
    terms = terms_for(1.0, 50)
    hybrid = rad_loss(torch.cat([eps_pred, v], 1), x0, eps, terms, vlb_weight=0.5)
    torch.testing.assert_close(hybrid["loss"], hybrid["mse"] + 0.5 * hybrid["vb"])
    assert hybrid["vb"] > 0
    plain = rad_loss(eps_pred, x0, eps, terms)
    assert plain["vb"] == 0 and torch.equal(plain["loss"], plain["mse"])


@pytest.mark.parametrize("mode", ["async", "mixed", "perlin", "full"])
def test_losses_finite_on_sampled_states(mode):
    """Soft async states (tiny mask values, first steps everywhere at t = 0) and extreme outputs stay finite."""
    g = torch.Generator().manual_seed(3)
    mask, t = sample_states(16, 8, 8, CURVES, g, mode)
    t[:2] = 0
    terms, _ = step_terms(CURVES, mask, t)
    x0, eps, eps_pred, v = batch(b=16)
    for scale in (1.0, 5.0):
        out = torch.cat([eps_pred * scale, (v * scale).requires_grad_()], 1)
        vb = vlb_bits(out[:, :3], out[:, 3:], eps, x0, terms)
        assert torch.isfinite(vb).all() and vb.min() > -1e-5
        loss = rad_loss(out, x0, eps, terms)["loss"]
        assert torch.isfinite(loss)


# ------------------------------------------------------------------------------------------------ noise states


def test_perlin_states_are_the_papers():
    g = torch.Generator().manual_seed(0)
    mask, t = sample_states(64, 16, 16, CURVES, g, "perlin")
    assert mask.shape == (64, 1, 16, 16) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert t.min() >= 0 and t.max() < 2 * T1 and (t < T1).any() and (t >= T1).any()
    again = sample_states(64, 16, 16, CURVES, torch.Generator().manual_seed(0), "perlin")
    assert torch.equal(mask, again[0]) and torch.equal(t, again[1])


def test_full_states_are_plain_ddpm():
    """--mask-sampling full: one uniform noise level per image, abar1[t] in every pixel, tau = t everywhere."""
    g = torch.Generator().manual_seed(4)
    mask, t = sample_states(256, 8, 8, CURVES, g, "full")
    assert bool((mask == 1).all()) and t.min() >= 0 and t.max() < T1 and t.min() < 100 and t.max() > T1 - 100
    terms, abar = step_terms(CURVES, mask, t)
    flat = abar.flatten(1)
    assert bool((flat == flat[:, :1]).all())  # uniform per image
    torch.testing.assert_close(flat[:, 0], CURVES.abar1[t], rtol=1e-10, atol=0)
    tau = CURVES.timestep(abar)
    torch.testing.assert_close(tau.flatten(1), t[:, None].float().expand(-1, 64), rtol=0, atol=2e-3)
    assert bool(terms.noised.all())
    again = sample_states(256, 8, 8, CURVES, torch.Generator().manual_seed(4), "full")
    assert torch.equal(t, again[1])


def test_async_levels_become_exact_rad_states():
    """A level map in [0, 1] becomes (soft mask, t) whose abar is k = level * T1 DDPM steps: tau = k - 1 (gd)."""
    g = torch.Generator().manual_seed(1)
    level = torch.rand(4, 8, 8, generator=g, dtype=torch.float64)
    level[0] = 0.25  # a uniform map is plain DDPM at step 249
    level[1, 0, 0] = 0.0
    mask, t = states_for_levels(level, CURVES)
    assert t[0] == round(0.25 * T1) - 1 and bool((mask[0] == 1).all())
    assert mask.min() >= 0 and mask.max() <= 1 and t.max() < T1
    tau = CURVES.timestep(CURVES.abar(mask, t), "gd")[:, 0]
    # float32 masks: near abar ~ 1 - nu a mask ulp moves abar by a few hundredths of a step
    torch.testing.assert_close(tau.double(), level * T1 - 1, atol=0.05, rtol=0)
    m, t2 = sample_states(32, 16, 16, CURVES, torch.Generator().manual_seed(2), "async")
    assert (t2 < T1).all() and ((m > 0) & (m < 1)).any()


def test_scalar_timestep_and_wrapper():
    """Cfg. 2's one timestep per image: that of the mean noise level; RADDenoiser feeds it from the noise levels."""
    full = torch.ones(1, 1, 4, 4)
    assert CURVES.scalar_timestep(CURVES.abar(full, 123)).item() == pytest.approx(123, abs=1e-3)
    assert CURVES.scalar_timestep(CURVES.abar(full * 0, 5)).item() == -1
    half = torch.zeros(1, 1, 4, 4)
    half[..., :2, :] = 1
    abar = CURVES.abar(half, 400)
    expected = CURVES.timestep(abar.mean().reshape(1))
    assert torch.equal(CURVES.scalar_timestep(abar), expected)
    tau = CURVES.timestep(abar)
    torch.testing.assert_close(CURVES.abar_from_timestep(tau), abar, rtol=0, atol=1e-6)

    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x, t, y=None):
            seen["t"] = t
            return x

    RADDenoiser(Probe(), CURVES, "scalar")(torch.zeros(1, 3, 4, 4), abar)
    torch.testing.assert_close(seen["t"], expected, atol=1e-3, rtol=0)
