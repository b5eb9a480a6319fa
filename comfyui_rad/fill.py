"""Classical fills: the hole painted from the kept pixels alone, without a model.

``harmonic_fill`` solves Laplace's equation in the hole (mask > 0) with the kept pixels (mask 0) as its boundary
values: the smoothest fill there is, the membrane stretched over the hole's edge. Discretely, every hole pixel is the
mean of its 4 neighbours inside the picture (the 5-point Laplacian; at the picture's edge a missing neighbour is
simply left out, Neumann's condition), per channel. The kept pixels are returned bit for bit and the hole reads
nothing but them.

The solver is exact up to ``tol`` and fast (``scripts/bench_fill.py``): conjugate gradients, one run per channel,
preconditioned by one multigrid W-cycle. The hole's operator is a weighted graph Laplacian on the pixel grid (edge
weights between hole pixels, a "sink" weight to kept neighbours); 2x2 aggregation gives each coarser grid the same
form (the Galerkin product P^T A P with piecewise-constant P, scaled by ``COARSE_SCALE``: near the rediscretised
Laplacian at twice the spacing, which P^T A P overstates by 2), down to a few hundred hole cells, solved by a dense
Cholesky factor. Smoothing is damped Jacobi, before and after, so the cycle is a symmetric preconditioner; the
W-cycle (two coarse corrections per level) keeps the iterations at about 9 whatever the size, where a V-cycle's grow
with the levels (13 at 512x512, 22 at 1024x1024). The solve runs on the hole's bounding box plus one ring of kept
pixels.

``FILLS`` is the registry of fills by name (the RAD Fill node's ``method``, the samplers' ``start``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import settings
from .checks import check_image, check_mask
from .masks import as_bhw

__all__ = ["FILLS", "STARTS", "harmonic_fill", "fill", "start_image", "DEFAULT_TOL"]

log = logging.getLogger(__name__)

DEFAULT_TOL = 1e-6
"""The solver stops when its error estimate (the preconditioned residual, in pixel values) is below this."""

DIRECT_CELLS = 600
"""A grid level with at most this many hole cells (or no coarser level) is solved directly (dense Cholesky)."""

MAX_ITERATIONS = 200
JACOBI_WEIGHT = 0.8
SMOOTHING = 1
"""Damped Jacobi sweeps (weight ``JACOBI_WEIGHT``) before and after each coarse correction."""
COARSE_SCALE = 0.6
"""The coarse operators are P^T A P times this (0.5 would be the rediscretised Laplacian; 0.6 measured best, 9
iterations against 10 at 512x512 and 1024x1024)."""


@dataclass
class _Level:
    """One grid of the multigrid hierarchy: hole cells ``active`` [H,W] (bool), edge weights ``wx`` [H,W-1]
    (cell to its right neighbour) and ``wy`` [H-1,W] (to the one below), zero unless both cells are active, and the
    diagonal ``diag`` [H,W] = sink + incident edge weights (zero where inactive). float [H,W] tensors."""

    active: torch.Tensor
    wx: torch.Tensor
    wy: torch.Tensor
    sink: torch.Tensor
    diag: torch.Tensor

    @property
    def active_float(self) -> torch.Tensor:
        """``active`` as 0/1 in the level's float type."""
        return self.active.to(self.diag.dtype)

    @classmethod
    def build(cls, active: torch.Tensor, wx: torch.Tensor, wy: torch.Tensor, sink: torch.Tensor) -> _Level:
        diag = sink.clone()
        diag[:, :-1] += wx
        diag[:, 1:] += wx
        diag[:-1, :] += wy
        diag[1:, :] += wy
        return cls(active, wx, wy, sink, torch.where(active, diag, torch.zeros_like(diag)))

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """A v for v [C,H,W] (zero where inactive)."""
        return self._couple(self.diag * v, v, -1)

    def residual(self, r: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """r - A v, in one allocation."""
        return self._couple(torch.addcmul(r, self.diag, v, value=-1), v, 1)

    def _couple(self, out: torch.Tensor, v: torch.Tensor, sign: int) -> torch.Tensor:
        """out + sign * (each cell's neighbours in v, times the edge weights), in place."""
        out[:, :, :-1].addcmul_(self.wx, v[:, :, 1:], value=sign)
        out[:, :, 1:].addcmul_(self.wx, v[:, :, :-1], value=sign)
        out[:, :-1, :].addcmul_(self.wy, v[:, 1:, :], value=sign)
        out[:, 1:, :].addcmul_(self.wy, v[:, :-1, :], value=sign)
        return out

    def coarsen(self) -> _Level:
        """The next coarser level: 2x2 aggregates, Galerkin weights halved."""
        h, w = self.active.shape
        ph, pw = h % 2, w % 2
        active = F.pad(self.active[None].float(), (0, pw, 0, ph))[0]
        sink = F.pad(self.sink, (0, pw, 0, ph))
        wx = F.pad(self.wx, (0, pw + 1, 0, ph))  # [H', W'] with a zero last column
        wy = F.pad(self.wy, (0, pw, 0, ph + 1))
        active_c = F.max_pool2d(active[None, None], 2)[0, 0] > 0
        sink_c = _sum2x2(sink)
        wx_c = (wx[0::2, 1::2] + wx[1::2, 1::2])[:, :-1]  # fine edges between columns 2X+1 and 2X+2
        wy_c = (wy[1::2, 0::2] + wy[1::2, 1::2])[:-1, :]
        return _Level.build(active_c, COARSE_SCALE * wx_c, COARSE_SCALE * wy_c, COARSE_SCALE * sink_c)


def _sum2x2(x: torch.Tensor) -> torch.Tensor:
    """[..., 2H, 2W] -> [..., H, W]: the sum over each 2x2 block (P^T, restriction)."""
    return x[..., 0::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 0::2] + x[..., 1::2, 1::2]


def _restrict(r: torch.Tensor) -> torch.Tensor:
    """P^T: each 2x2 block's sum (an odd size padded with zeros)."""
    h, w = r.shape[-2:]
    return _sum2x2(F.pad(r, (0, w % 2, 0, h % 2)))


def _prolong(e: torch.Tensor, level: _Level) -> torch.Tensor:
    """P: a coarse correction copied to its 2x2 block, on ``level``'s hole cells only."""
    h, w = level.active.shape
    c, hc, wc = e.shape
    fine = e[:, :, None, :, None].expand(c, hc, 2, wc, 2).reshape(c, 2 * hc, 2 * wc)[:, :h, :w]
    return fine * level.active_float


class _Direct:
    """The coarsest level's exact solve: the dense matrix over its active cells, Cholesky-factored once."""

    def __init__(self, level: _Level):
        self.index = torch.nonzero(level.active.flatten()).flatten()
        n = self.index.numel()
        number = torch.full(level.active.shape, -1, dtype=torch.long)
        number.view(-1)[self.index] = torch.arange(n)
        matrix = torch.zeros(n, n, dtype=torch.float64)
        matrix[torch.arange(n), torch.arange(n)] = level.diag.flatten()[self.index].double()
        for weights, a, b in ((level.wx, number[:, :-1], number[:, 1:]), (level.wy, number[:-1, :], number[1:, :])):
            edge = weights > 0
            i, j, wt = a[edge], b[edge], weights[edge].double()
            matrix[i, j] = -wt
            matrix[j, i] = -wt
        self.factor = torch.linalg.cholesky(matrix)
        self.shape = level.active.shape

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        rhs = r.reshape(r.shape[0], -1)[:, self.index].double().T
        x = torch.cholesky_solve(rhs, self.factor).T.to(r.dtype)
        out = torch.zeros(r.shape[0], self.shape[0] * self.shape[1], dtype=r.dtype)
        out[:, self.index] = x
        return out.reshape(r.shape)


class _Multigrid:
    """The hierarchy for one hole and the symmetric W-cycle ``precondition`` (an approximation of A^-1)."""

    def __init__(self, fine: _Level):
        self.levels = [fine]
        while int(self.levels[-1].active.sum()) > DIRECT_CELLS and min(self.levels[-1].active.shape) > 1:
            self.levels.append(self.levels[-1].coarsen())
        self.direct = _Direct(self.levels[-1])
        self.inverse_diag = [torch.where(lv.active, 1 / lv.diag.clamp_min(1e-30), torch.zeros_like(lv.diag))
                             for lv in self.levels]

    def coarse(self, r: torch.Tensor, k: int) -> torch.Tensor:
        """Two cycles on level ``k`` (W-cycle), or its direct solve: 2M - MAM, symmetric as M is."""
        e = self.precondition(r, k)
        if k < len(self.levels) - 1:
            e += self.precondition(self.levels[k].residual(r, e), k)
        return e

    def precondition(self, r: torch.Tensor, k: int = 0) -> torch.Tensor:
        """One cycle from level ``k`` for residuals r [C,H,W]: smooth, correct from below, smooth."""
        if k == len(self.levels) - 1:
            return self.direct.solve(r)
        level = self.levels[k]
        smooth = JACOBI_WEIGHT * self.inverse_diag[k]
        e = smooth * r
        for _ in range(SMOOTHING - 1):
            e.addcmul_(smooth, level.residual(r, e))
        e += _prolong(self.coarse(_restrict(level.residual(r, e)), k + 1), level)
        for _ in range(SMOOTHING):
            e.addcmul_(smooth, level.residual(r, e))
        return e


def _neighbour_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of each pixel's 4 neighbours inside the picture, x [C,H,W]."""
    out = torch.zeros_like(x)
    out[:, :, :-1] += x[:, :, 1:]
    out[:, :, 1:] += x[:, :, :-1]
    out[:, :-1, :] += x[:, 1:, :]
    out[:, 1:, :] += x[:, :-1, :]
    return out


def _solve(image: torch.Tensor, hole: torch.Tensor, tol: float) -> torch.Tensor:
    """The harmonic fill of one picture [C,H,W] (float) in ``hole`` [H,W] (bool, not all True, not empty)."""
    kept = (~hole).to(image.dtype)
    hole_f = hole.to(image.dtype)
    wx = hole_f[:, :-1] * hole_f[:, 1:]
    wy = hole_f[:-1, :] * hole_f[1:, :]
    sink = _neighbour_sum(kept[None])[0] * hole_f
    fine = _Level.build(hole, wx, wy, sink)
    b = _neighbour_sum(image * kept) * hole_f  # the kept neighbours' values: Dirichlet data
    x = _pcg(fine, _Multigrid(fine), b, tol)
    return torch.where(hole, x, image)


def _pcg(level: _Level, multigrid: _Multigrid, b: torch.Tensor, tol: float) -> torch.Tensor:
    """Solve A x = b [C,H,W] by conjugate gradients, one independent run per channel, preconditioned by the
    V-cycle; stops when max |M^-1 r| < tol."""
    x = torch.zeros_like(b)
    r = b.clone()
    z = multigrid.precondition(r)
    p = z.clone()
    rz = _dot(r, z)
    for iteration in range(MAX_ITERATIONS):
        if _largest(z) < tol:
            log.debug("harmonic fill: %d iterations, %d levels", iteration, len(multigrid.levels))
            return x
        ap = level.apply(p)
        pap = _dot(p, ap)
        alpha = torch.where(pap > 0, rz / pap.clamp_min(1e-300), torch.zeros_like(pap))
        x.addcmul_(alpha, p)
        r.addcmul_(alpha, ap, value=-1)
        z = multigrid.precondition(r)
        rz_new = _dot(r, z)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-300), torch.zeros_like(rz))
        p.mul_(beta).add_(z)
        rz = rz_new
    log.warning("harmonic fill: not converged to %g after %d iterations (error estimate %g)", tol, MAX_ITERATIONS,
                _largest(z))
    return x


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-channel dot products of [C,H,W] tensors -> [C,1,1]."""
    return torch.bmm(a.reshape(a.shape[0], 1, -1), b.reshape(b.shape[0], -1, 1))


def _largest(x: torch.Tensor) -> float:
    low, high = torch.aminmax(x)
    return max(-float(low), float(high))


def _bounding_box(hole: torch.Tensor) -> tuple[slice, slice]:
    """The hole's bounding box grown by one pixel (the kept ring around it), inside the picture."""
    rows, cols = torch.nonzero(hole.any(1)).flatten(), torch.nonzero(hole.any(0)).flatten()
    h, w = hole.shape
    return (slice(max(0, int(rows[0]) - 1), min(h, int(rows[-1]) + 2)),
            slice(max(0, int(cols[0]) - 1), min(w, int(cols[-1]) + 2)))


def harmonic_fill(image: torch.Tensor, mask: torch.Tensor, *, tol: float = DEFAULT_TOL,
                  name: str = "mask") -> torch.Tensor:
    """The harmonic fill of ``image`` [B,C,H,W] (float, e.g. [0,1]) where ``mask`` ([H,W], [B,H,W] or [B,1,H,W],
    one mask or one per image, 1 = inpaint) is above 0 -> [B,C,H,W], same dtype and device.

    A soft mask is a hole wherever it is above 0: the fill is a solve with hard boundaries, every pixel with mask
    0 < m < 1 is filled too (threshold the mask first to fill less). Pixels with mask 0 are returned bit for bit,
    and the hole's own values are never read. Holes may touch the picture's edge (Neumann there) and be many. An
    empty mask returns the image; a mask with no kept pixel is refused (ValueError naming ``name``): there is
    nothing to fill from. Exact to ``tol`` in pixel values (computed in float64 for float64 input, else float32).
    """
    check_image(image, "image", -math.inf, math.inf)
    check_mask(mask, name)
    mask = as_bhw(mask).to(image.device)
    batch, _, height, width = image.shape
    if mask.shape[-2:] != (height, width) or mask.shape[0] not in (1, batch):
        raise ValueError(f"{name} is {tuple(mask.shape)} ([B,H,W]) but image is {tuple(image.shape)} ([B,C,H,W]): "
                         "give one mask or one per image, at the image's size")
    holes = (mask > 0).expand(batch, -1, -1)
    work = torch.float64 if image.dtype == torch.float64 else torch.float32
    out = image.clone()
    for b in range(batch):
        hole = holes[b].cpu()
        if not hole.any():
            continue
        if hole.all():
            index = f" {b}" if holes.shape[0] > 1 else ""
            raise ValueError(f"{name}{index} has no kept pixel (it is above 0 everywhere): a fill needs kept pixels "
                             f"(mask 0) to fill from; leave some of the picture unmasked")
        rows, cols = _bounding_box(hole)
        window = image[b, :, rows, cols].detach().cpu().to(work).contiguous()  # same sums whatever the layout
        filled = _solve(window, hole[rows, cols], tol).to(image.dtype).to(image.device)
        out[b, :, rows, cols] = torch.where(hole[rows, cols].to(image.device), filled, image[b, :, rows, cols])
    return out


FILLS = {"harmonic": harmonic_fill}
"""Classical fills by name: ``fill(image, mask, method)``."""


def fill(image: torch.Tensor, mask: torch.Tensor, method: str = "harmonic", *, name: str = "mask") -> torch.Tensor:
    """``FILLS[method](image, mask)``; an unknown method is refused naming the choices."""
    if method not in FILLS:
        raise ValueError(f"unknown fill method {method!r}: use one of {', '.join(FILLS)}")
    return FILLS[method](image, mask, name=name)


STARTS = ("noise", *FILLS)
"""Where RAD's hole starts (``start_image``): noise (the paper's sampler) or a classical fill
(``settings.STARTS``; a user may also choose "auto", ``pipeline.resolve_start``)."""


def start_image(image: torch.Tensor, mask: torch.Tensor, start: str = "noise", strength: float = 1.0, *,
                name: str = "mask", names: tuple[str, str] = ("start", "start_strength")
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """RAD from a classical start: (the image the sampler starts from, the mask it samples with).

    image [B,3,H,W] in [0,1], mask [B,H,W] (1 = inpaint; batches matched). RAD regenerates a pixel with mask value m
    only partly (it is noised to abar = 1 - nu*m and read through that noise), so a start ``start`` (a name in
    ``FILLS``) at ``strength`` s in [0, 1] is: the hidden pixels (m = 1, which the sampler never reads) hold the
    fill, computed from every pixel the sampler reads (m < 1), and the mask is scaled to s*m. At s = 1, or with
    start "noise", nothing changes: (image, mask) come back as given, and the result is plain RAD bit for bit. At
    s = 0 nothing is regenerated: the result is the fill in the hole. A soft mask keeps its shape: its ramp from 0
    to 1 becomes a ramp from 0 to s, and its soft pixels keep their own values (they are read, not filled). Kept
    pixels (m = 0) stay m = 0 and are the input's, bit for bit. ``names``: how the caller's interface calls the two
    settings (CLI flags, node inputs); ``name``: its mask, for a mask with nothing to fill from.
    """
    if start not in STARTS:
        raise ValueError(f"unknown {names[0]} {start!r}: use one of {', '.join(STARTS)}")
    strength = settings.check("start_strength", strength, names[1])
    if start == "noise" or strength == 1.0:
        return image, mask
    hidden = (as_bhw(mask) >= 1).to(image.device)
    if bool(hidden.flatten(1).all(1).any()):
        raise ValueError(f"{names[0]} {start} fills the hole from the pixels around it, but {name} covers the whole "
                         f"image: use {names[0]} noise, or leave some pixels unmasked")
    filled = fill(image, hidden.float(), start, name=name)
    return torch.where(hidden[:, None], filled, image), mask * strength
