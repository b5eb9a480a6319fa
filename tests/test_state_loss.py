"""scripts/state_loss.py: the eps error of RAD training states, per phase, over the noised pixels only."""

import importlib.util
from pathlib import Path

import pytest
import torch

spec = importlib.util.spec_from_file_location("state_loss", Path(__file__).resolve().parents[1] / "scripts" /
                                              "state_loss.py")
state_loss = importlib.util.module_from_spec(spec)
spec.loader.exec_module(state_loss)

pytestmark = pytest.mark.usefixtures("one_thread")


class Constant(torch.nn.Module):
    """Predicts eps = ``value`` everywhere (6 channels: eps and v)."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x, t, y=None):
        return torch.full((x.shape[0], 6, *x.shape[-2:]), self.value)


def test_zero_prediction_scores_one_in_both_phases():
    """eps ~ N(0, 1): predicting 0 scores E[eps^2] = 1 over the noised pixels, whatever share of the image they
    are (a mean over all pixels would put Phase 1, where only the hole is noised, well below 1); predicting 1
    scores 2."""
    x0 = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    errors, t, t1 = state_loss.state_errors({"zero": Constant(0.0), "one": Constant(1.0)}, x0, draws=8, seed=1)
    assert errors["zero"].shape == (128,) and t.shape == (128,) and t1 == 1000
    phase1, phase2 = t < t1, t >= t1
    assert phase1.sum() > 30 and phase2.sum() > 30
    for part in (phase1, phase2):
        assert abs(errors["zero"][part].nanmean().item() - 1.0) < 0.05
        assert abs(errors["one"][part].nanmean().item() - 2.0) < 0.1
