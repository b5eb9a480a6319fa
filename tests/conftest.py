"""Shared fixtures: tiny random ADMs with weights that depend only on a seed (not on torch's init code)."""

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _golden import random_state_dict  # noqa: E402

from comfyui_rad.adm import ADM, ADMConfig  # noqa: E402

TINY = ADMConfig(model_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_ds=(2,), num_head_channels=16)

TINY16 = replace(TINY, image_size=16)
"""``TINY`` at a 16x16 resolution: the pipeline tests' model, whose windows are 16x16."""


def make_adm(cfg: ADMConfig = TINY, seed: int = 0) -> ADM:
    """An ADM in eval mode whose weights are a fixed function of ``seed``."""
    model = ADM(cfg)
    model.load_state_dict(random_state_dict({k: v.shape for k, v in model.state_dict().items()}, seed))
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_adm() -> ADM:
    return make_adm()


@pytest.fixture(scope="module")
def adm16() -> ADM:
    """``make_adm(TINY16)``: the model the pipeline tests inpaint with (one per test file)."""
    return make_adm(TINY16)


@pytest.fixture
def image16() -> torch.Tensor:
    """Two 16x16 RGB images in [-1, 1]."""
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(7)) * 2 - 1


@pytest.fixture
def box_mask16() -> torch.Tensor:
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 5:13] = 1
    return mask


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread avoids thread start-up costs on shared CPUs (and keeps runs comparable)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Spy(torch.nn.Module):
    """A model, recording the shape of every input it is called with (``calls``: how many calls)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config, self.shapes = inner, inner.config, []

    @property
    def calls(self) -> int:
        return len(self.shapes)

    def forward(self, x, t, y=None):
        self.shapes.append(tuple(x.shape))
        return self.inner(x, t, y=y)


def picture(batch=1, height=40, width=50, seed=0) -> torch.Tensor:
    """``batch`` random RGB pictures [B,3,H,W] in [0, 1], a fixed function of ``seed``."""
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def box_hole(height: int, width: int, box: tuple[int, int, int, int]) -> torch.Tensor:
    """A [1,H,W] mask: 1 (inpaint) in rows ``box[0]:box[1]``, columns ``box[2]:box[3]``, 0 elsewhere."""
    mask = torch.zeros(1, height, width)
    mask[:, box[0]:box[1], box[2]:box[3]] = 1
    return mask


def one_line_error(capsys, prog: str, *needles: str) -> str:
    """The CLI's stderr: exactly one line, "prog: error: ...", holding every needle, no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
