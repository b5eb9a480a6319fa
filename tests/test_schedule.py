import numpy as np
import pytest
import torch

from comfyui_rad.schedule import NoiseCurves, SpatialSchedule, respaced_steps

# DDPM's linear schedule, computed independently in numpy
ABAR = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
NU = 1.0 - ABAR[-1]


def test_default_curves_match_ddpm():
    c = NoiseCurves()
    np.testing.assert_allclose(c.abar1.numpy(), ABAR, rtol=1e-15)
    assert c.nu == pytest.approx(NU, rel=1e-15)
    assert 1 - c.nu == pytest.approx(4.04e-5, rel=2e-3)  # RAD_NOTES §1


def test_binary_mask_phase1_is_ddpm_in_hole_and_clean_outside():
    c = NoiseCurves()
    t = torch.arange(1000)
    hole = c.abar(torch.ones(1000), t).numpy()
    kept = c.abar(torch.zeros(1000), t).numpy()
    np.testing.assert_allclose(hole, ABAR, rtol=1e-11)
    assert (kept == 1.0).all()


def test_binary_mask_phase2_noises_the_rest():
    c = NoiseCurves()
    t = torch.arange(1000, 2000)
    np.testing.assert_allclose(c.abar(torch.ones(1000), t).numpy(), 1 - NU, rtol=1e-12)
    np.testing.assert_allclose(c.abar(torch.zeros(1000), t).numpy(), ABAR, rtol=1e-11)


@pytest.mark.parametrize("m", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("t", [0, 1, 250, 499, 999, 1000, 1500, 1999])
def test_closed_form_golden(m, t):
    """The supplementary's closed form, RAD_NOTES §1, evaluated in numpy."""
    ex = np.log(ABAR) / np.log(1 - NU)
    if t < 1000:
        want = (1 - NU * m) ** ex[t]
    else:
        want = (1 - NU * m) * ((1 - NU) / (1 - NU * m)) ** ex[t - 1000]
    got = NoiseCurves().abar(torch.tensor([m], dtype=torch.float64), t).item()
    assert got == pytest.approx(want, rel=1e-12)


def test_soft_mask_value_is_the_regenerated_fraction():
    m = torch.linspace(0, 1, 11)
    np.testing.assert_allclose(NoiseCurves().abar(m, 999).numpy(), 1 - NU * m.double().numpy(), rtol=1e-12)


@pytest.mark.parametrize("kw", [{}, {"T1": 500, "T2": 300}, {"T1": 100, "T2": 1000, "beta2_start": 5e-4, "beta2_end": 0.05}])
def test_any_t1_t2_joins_up_and_ends_equal(kw):
    c = NoiseCurves(**kw)
    m = torch.rand(64, dtype=torch.float64)
    t = torch.arange(-1, c.total_steps)
    curves = torch.stack([c.abar(m, int(s)) for s in t])
    assert (curves[0] == 1).all()
    assert (curves.diff(dim=0) <= 1e-15).all(), "abar must not increase"
    np.testing.assert_allclose(curves[c.T1], 1 - c.nu * m.numpy(), rtol=1e-12)  # end of Phase 1 (row c.T1 = step T1-1)
    np.testing.assert_allclose(curves[-1], 1 - c.nu, rtol=1e-12)  # every pixel ends at 1 - nu


def test_per_image_steps_broadcast():
    c = NoiseCurves()
    mask = torch.rand(3, 1, 4, 5)
    t = torch.tensor([0, 999, 1500])
    got = c.abar(mask, t)
    assert got.shape == (3, 1, 4, 5) and got.dtype == torch.float64
    for i in range(3):
        torch.testing.assert_close(got[i], c.abar(mask[i], int(t[i])), rtol=0, atol=0)


def test_inverse_map_integer_and_fractional():
    c = NoiseCurves()
    t = torch.tensor([0, 1, 10, 500, 990, 999])
    abar = c.abar1[t]
    assert torch.equal(c.timestep(abar), t.float())
    assert torch.equal(c.timestep(abar, "authors"), t.float() + 1)
    assert c.timestep(torch.ones(1)).item() == -1.0  # clean pixel
    mid = 1 - (c.bbar_table[501] + c.bbar_table[502]) / 2  # halfway between steps 500 and 501 in bbar
    assert c.timestep(mid[None]).item() == pytest.approx(500.5, abs=1e-4)


def test_inverse_map_round_trip_and_monotone():
    c = NoiseCurves()
    k = torch.rand(1000, dtype=torch.float64) * 1000  # fractional table positions
    lo = k.floor().long().clamp(max=999)
    bbar = c.bbar_table[lo] + (k - lo) * (c.bbar_table[lo + 1] - c.bbar_table[lo])
    tau = c.timestep(1 - bbar)
    torch.testing.assert_close(tau.double(), k - 1, rtol=0, atol=2e-4)
    s = c.timestep(torch.linspace(1, c.abar1[-1].item(), 5000, dtype=torch.float64))
    assert (s.diff() >= 0).all()


def test_inverse_map_with_other_t1_maps_onto_phase1_curve():
    c = NoiseCurves(T1=250, T2=250)
    assert torch.equal(c.timestep(c.abar(torch.ones(1), 249)), torch.tensor([249.0]))


def test_respaced_steps():
    ts = respaced_steps(100)
    assert ts[0] == 990 and ts[1] == 980 and ts[-1] == 0 and len(ts) == 100
    assert respaced_steps(1) == [0]
    assert respaced_steps(1000) == list(range(999, -1, -1))
    for n in (7, 25, 30, 333):
        ts = respaced_steps(n)
        assert len(set(ts)) == n and ts == sorted(ts, reverse=True) and ts[-1] == 0
    with pytest.raises(ValueError, match="steps must be an integer in \\[1, 1000\\], got 0"):
        respaced_steps(0)
    with pytest.raises(ValueError, match="got 1001"):
        respaced_steps(1001)


def test_schedule_memory_is_curves_plus_mask():
    s = SpatialSchedule(torch.ones(256, 256))
    tensors = [v for v in vars(s.curves).values() if torch.is_tensor(v)] + [s.mask]
    assert max(t.numel() for t in tensors) == 256 * 256
    assert s.abar(500).shape == (1, 1, 256, 256)


@pytest.mark.parametrize("shape", [(8, 8), (2, 8, 8), (2, 1, 8, 8)])
def test_schedule_accepts_mask_shapes(shape):
    assert SpatialSchedule(torch.zeros(shape)).mask.ndim == 4


@pytest.mark.parametrize("mask,msg", [
    (torch.full((4, 4), 1.5), r"mask values must lie in \[0, 1\] \(1 = inpaint\), got range \[1.5, 1.5\]"),
    (torch.full((4, 4), float("nan")), "mask values must lie in"),
    (torch.zeros(2, 3, 4, 4), r"mask has shape \(2, 3, 4, 4\)"),
])
def test_schedule_rejects_bad_masks(mask, msg):
    with pytest.raises(ValueError, match=msg):
        SpatialSchedule(mask)


def test_bad_curves_and_steps():
    with pytest.raises(ValueError, match="T1 must be a positive integer"):
        NoiseCurves(T1=0)
    with pytest.raises(ValueError, match="betas must satisfy"):
        NoiseCurves(beta_start=0.03, beta_end=0.02)
    with pytest.raises(ValueError, match=r"outside \[-1, 1999\]"):
        NoiseCurves().abar(torch.ones(1), 2000)
    with pytest.raises(ValueError, match="unknown tau convention"):
        NoiseCurves().timestep(torch.ones(1), "diffusers")
