"""RAD's training loss: eps MSE plus the learned-variance VLB, per pixel (paper eq. (6), (7), §3.4; iDDPM / ADM).

Every pixel i has its own forward step t-1 -> t: abar_prev = abar(m, t-1), abar_t = abar(m, t),
alpha = abar_t / abar_prev, beta = 1 - alpha, posterior variance beta (1 - abar_prev) / (1 - abar_t). Three kinds:

- beta == 0 (no noise enters in this step: clean pixels, kept pixels in Phase 1, hole pixels in Phase 2): the
  posterior is a point mass at x_t and the sampler copies x_t; no VLB term (0).
- beta > 0, abar_prev < 1: the KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) of two Gaussians, in bits.
- beta > 0, abar_prev == 1 (the pixel's first noise step: a hole pixel at t = 0, a kept pixel at t = T1, any noised
  pixel at t = 0 of a soft state): q(x_{t-1} | x_t, x0) is a point mass at x0, the KL is singular. As guided-diffusion
  does at t = 0: the discretised Gaussian decoder NLL -log p(x0 | x_t) in bits (8-bit bins), with the model's mean
  (= predicted x0 here) and a variance whose lower end is the posterior variance of the pixel's next step (gd's
  ``posterior_log_variance_clipped``). With a full mask this is exactly guided-diffusion's loss.

The VLB uses a stop-gradient on the predicted eps (it only trains the variance output v), as guided-diffusion's
hybrid loss, and the mean difference is computed as k (eps_pred - eps) with k = beta sqrt(abar_prev / (abar_t
(1 - abar_t))), which is (mu_q - mu_p) without the cancellation of predicting x0 from x_t in float32.

The eps MSE counts only pixels that hold noise (abar_t < 1). A pixel with abar_t == 1 is x0 itself in x_t: its eps is
not in the input, the best prediction is 0 whatever the image, the sampler never reads it (mean = x_t there), and its
squared error only adds an unlearnable constant and gradient noise that pulls eps_pred towards 0. The authors' code
counts them; we do not. Both terms are summed over the counted elements and divided by all elements (B*C*H*W): a
pixel keeps the same weight whatever the rest of the batch holds (so gradient accumulation is exact), and with a
full mask both terms equal guided-diffusion's mean_flat losses.

Weighting: loss = mse + vlb_weight * vb with vb in bits per element, guided-diffusion's hybrid loss at weight 1.0
(``--vlb-weight``, default 1.0). iDDPM writes the same thing as lambda = 1e-3 on the VLB summed over the 1000 steps;
the RAD authors multiplied their per-step VLB by 1e-3 (RAD_NOTES §4), i.e. 1000x less weight than guided-diffusion:
``--vlb-weight 0.001`` reproduces that choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from ..schedule import NoiseCurves

__all__ = ["StepTerms", "step_terms", "q_sample", "mse_loss", "vlb_bits", "rad_loss"]

LN2 = math.log(2.0)


@dataclass
class StepTerms:
    """Per-pixel quantities of the forward step t-1 -> t, [B,1,H,W] (float32 / bool), computed in float64 on CPU.

    ``log_min_var`` is the lower end of the model's variance range: the log posterior variance where ``kl``, that of
    the pixel's next step where ``first``, 0 elsewhere. ``log_beta`` and ``mean_coef`` (k of the module doc) are 0
    where beta == 0.
    """

    sqrt_abar: torch.Tensor
    sqrt_one_minus_abar: torch.Tensor
    noised: torch.Tensor
    kl: torch.Tensor
    first: torch.Tensor
    log_beta: torch.Tensor
    log_min_var: torch.Tensor
    mean_coef: torch.Tensor

    def to(self, device: torch.device | str) -> StepTerms:
        return StepTerms(**{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})


def step_terms(curves: NoiseCurves, mask: torch.Tensor, t: torch.Tensor) -> tuple[StepTerms, torch.Tensor]:
    """The ``StepTerms`` of states (mask [B,1,H,W] in [0,1], t [B] in [0, T1+T2)) and abar_t (float64, for tau)."""
    mask = mask.detach().cpu()
    t = torch.as_tensor(t).cpu().long()
    la_t = curves.log_abar(mask, t)
    la_prev = curves.log_abar(mask, t - 1)
    la_next = curves.log_abar(mask, (t + 1).clamp(max=curves.total_steps - 1))
    one_minus_abar = -torch.expm1(la_t)
    beta = -torch.expm1(la_t - la_prev)
    beta_next = -torch.expm1(la_next - la_t)
    noised = la_t < 0
    step = (beta > 0) & noised
    kl = step & (la_prev < 0)
    first = step & (la_prev == 0)
    safe = torch.where(noised, one_minus_abar, torch.ones_like(la_t))
    log_beta = torch.where(step, torch.log(torch.where(step, beta, torch.ones_like(beta))), 0.0)
    post_var = beta * -torch.expm1(la_prev) / safe
    next_var = beta_next * one_minus_abar / torch.where(la_next < 0, -torch.expm1(la_next), torch.ones_like(la_t))
    log_post = torch.log(torch.where(kl, post_var, torch.ones_like(post_var)))
    log_next = torch.where(next_var > 0, torch.log(torch.where(next_var > 0, next_var, 1.0)), log_beta)
    log_min_var = torch.where(kl, log_post, torch.where(first, log_next, 0.0))
    mean_coef = torch.where(step, beta * torch.sqrt(torch.exp(la_prev - la_t) / safe), 0.0)
    abar = torch.exp(la_t)
    terms = StepTerms(
        sqrt_abar=abar.sqrt().float(), sqrt_one_minus_abar=one_minus_abar.sqrt().float(), noised=noised, kl=kl,
        first=first, log_beta=log_beta.float(), log_min_var=log_min_var.float(), mean_coef=mean_coef.float(),
    )
    return terms, abar


def q_sample(x0: torch.Tensor, eps: torch.Tensor, terms: StepTerms) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps per pixel (paper eq. (3)); exactly x0 where abar_t == 1."""
    return terms.sqrt_abar * x0 + terms.sqrt_one_minus_abar * eps


def mse_loss(eps_pred: torch.Tensor, eps: torch.Tensor, terms: StepTerms) -> torch.Tensor:
    """Sum of (eps_pred - eps)^2 over pixels that hold noise, divided by all elements (module doc)."""
    err = torch.where(terms.noised, (eps_pred - eps).square(), 0.0)
    return err.sum() / err.numel()


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """guided-diffusion's tanh approximation of the standard normal CDF."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _discretized_gaussian_log_likelihood(x0: torch.Tensor, centered: torch.Tensor,
                                         log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x0) of 8-bit bins of width 2/255 under N(x0 - centered, exp(log_scale)^2), edge bins open (gd)."""
    inv_stdv = torch.exp(-log_scale)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x0 < -0.999, log_cdf_plus, torch.where(x0 > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def vlb_bits(eps_pred: torch.Tensor, v: torch.Tensor, eps: torch.Tensor, x0: torch.Tensor,
             terms: StepTerms) -> torch.Tensor:
    """Per-element VLB term in bits [B,C,H,W]: KL, decoder NLL or 0 by pixel kind (module doc); grads reach v only."""
    frac = (v + 1) / 2
    log_var = frac * terms.log_beta + (1 - frac) * terms.log_min_var  # model log variance (learned range)
    diff = terms.mean_coef * (eps_pred.detach() - eps)  # mu_q - mu_p; = x0 - x0_pred where ``first``
    log_diff_sq = torch.log(diff.square())  # -inf where diff == 0: keeps exp() below free of inf * 0
    kl = 0.5 * (-1.0 + log_var - terms.log_min_var + torch.exp(terms.log_min_var - log_var)
                + torch.exp(log_diff_sq - log_var))
    nll = -_discretized_gaussian_log_likelihood(x0, diff, 0.5 * log_var)
    return torch.where(terms.kl, kl, torch.where(terms.first, nll, 0.0)) / LN2


def rad_loss(output: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, terms: StepTerms,
             vlb_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """The hybrid loss of one batch: ``loss`` = mse + vlb_weight * vb (vb 0 without a learned variance).

    output: the model's [B, C or 2C, H, W] (eps, then v in [-1, 1] when the variance is learned); x0, eps [B,C,H,W].
    """
    c = x0.shape[1]
    output = output.float()
    eps_pred = output[:, :c]
    mse = mse_loss(eps_pred, eps, terms)
    if output.shape[1] != 2 * c or vlb_weight == 0:
        zero = mse.detach() * 0
        return {"loss": mse, "mse": mse.detach(), "vb": zero}
    vb_all = vlb_bits(eps_pred, output[:, c:], eps, x0, terms)
    vb = vb_all.sum() / vb_all.numel()
    return {"loss": mse + vlb_weight * vb, "mse": mse.detach(), "vb": vb.detach()}
