"""The networks behind LPIPS and FID in plain torch, built from local weight files only (nothing is downloaded).

Images go in as float [B,3,H,W] in [0,1] (as ``metrics``). Weight files are read with ``torch.load(weights_only=True)``
(.pt/.pth/.bin) or safetensors (.safetensors). Supported files, and nothing else:

- LPIPS v0.1 with AlexNet (Zhang et al. 2018), ``load_lpips(paths)``, either
  - one state dict of ``lpips.LPIPS(net="alex")`` (keys ``net.slice1.0.weight`` ... ``net.slice5.10.bias`` and
    ``lin0.model.1.weight`` ... ``lin4.model.1.weight``; its ``scaling_layer.*`` and duplicate ``lins.*`` keys
    are accepted), e.g. written by ``torch.save(lpips.LPIPS(net="alex").state_dict(), "lpips_alex.pth")``; or
  - two files: torchvision's ImageNet AlexNet (``alexnet-owt-7be5be79.pth``, keys ``features.0.weight`` ...;
    ``classifier.*`` is ignored) and the LPIPS linear heads (the lpips package's ``weights/v0.1/alex.pth``).
- FID's InceptionV3, ``load_inception(path)``: pytorch-fid's port of the TensorFlow FID network,
  ``pt_inception-2015-12-05-6726825d.pth`` (torchvision ``Inception3`` key layout without ``AuxLogits``, e.g.
  ``Conv2d_1a_3x3.conv.weight`` ... ``Mixed_7c.branch_pool.bn.running_var``; ``fc.*`` and
  ``*.num_batches_tracked`` are ignored). Features are the 2048-d pool3 activations, as pytorch-fid computes them:
  bilinear resize to 299x299 (align_corners False), inputs scaled to [-1,1], TF's pooling quirks.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .fileio import CheckpointError, read_state_dict

__all__ = ["WeightsError", "read_weights", "LPIPS", "load_lpips", "InceptionFeatures", "load_inception"]

log = logging.getLogger(__name__)


class WeightsError(UserError):
    """A weight file that is not one of the supported layouts; the message names what was expected."""


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A local state dict: safetensors, or a torch file read with weights_only=True, by ``fileio.read_state_dict``
    (wrappers such as {"state_dict": ...} are unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path} (weights are never downloaded: give a local file)")
    try:
        sd, _ = read_state_dict(path)
    except CheckpointError as err:
        raise WeightsError(f"cannot read weights {path}: {err}: give a state dict saved with torch.save or "
                           "safetensors") from None
    if not sd:
        raise WeightsError(f"{path} does not hold a state dict (name -> tensor)")
    return sd


def _load_strict(module: nn.Module, sd: dict[str, torch.Tensor], what: str, sources: str) -> None:
    """load_state_dict(strict) with an error that names the missing, unexpected and misshapen keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {list(sd[k].shape)} (expected {list(own[k].shape)})" for k in own
              if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
                 f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
                 f"wrong shapes: {', '.join(shapes[:3])}" if shapes else ""]
        raise WeightsError(f"{sources} is not {what}: keys {'; '.join(p for p in parts if p)}. "
                           "See comfyui_rad.perceptual's docstring for the supported files")
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)


# ------------------------------------------------------------------------------------------------------- LPIPS


_ALEXNET = [  # (LPIPS slice, torchvision features index of the conv, in, out, kernel, stride, padding, pool first)
    (1, 0, 3, 64, 11, 4, 2, False),
    (2, 3, 64, 192, 5, 1, 2, True),
    (3, 6, 192, 384, 3, 1, 1, True),
    (4, 8, 384, 256, 3, 1, 1, False),
    (5, 10, 256, 256, 3, 1, 1, False),
]
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


class LPIPS(nn.Module):
    """LPIPS v0.1, AlexNet trunk: ``lpips(x, y)`` -> distances [B] for images [B,3,H,W] in [0,1] (at least 32 px).

    Inputs go to [-1,1], then (x - shift) / scale; relu1..relu5 of AlexNet's features, each unit-normalised over
    channels (eps 1e-10); squared differences weighted per channel by the linear heads (1x1 convs, no bias),
    averaged over space, summed over the five layers. Module names match ``lpips.LPIPS`` so its state dict loads as
    it is. Random weights unless loaded (``load_lpips``).
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT)[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE)[None, :, None, None], persistent=False)
        self.net = nn.Module()
        for k, index, cin, cout, kernel, stride, pad, pool in _ALEXNET:
            layers = OrderedDict([(str(index - 1), nn.MaxPool2d(3, 2))] if pool else [])
            layers[str(index)] = nn.Conv2d(cin, cout, kernel, stride, pad)
            layers[str(index + 1)] = nn.ReLU()
            setattr(self.net, f"slice{k}", nn.Sequential(layers))
            setattr(self, f"lin{k - 1}", nn.Module())
            getattr(self, f"lin{k - 1}").model = nn.Sequential(OrderedDict([("1", nn.Conv2d(cout, 1, 1, bias=False))]))
        self.eval().requires_grad_(False)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, out = (2 * x - 1 - self.shift) / self.scale, []
        for k in range(1, 6):
            h = getattr(self.net, f"slice{k}")(h)
            out.append(h / (h.square().sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS takes two [B,3,H,W] images in [0,1], got {tuple(x.shape)} and {tuple(y.shape)}")
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"LPIPS's AlexNet needs images of at least 32x32, got {x.shape[-2]}x{x.shape[-1]}: "
                             "upscale them first")
        param = self.lin0.model[0].weight
        fx, fy = self._features(x.to(param)), self._features(y.to(param))
        layers = [getattr(self, f"lin{k}").model((a - b).square()).mean(dim=(1, 2, 3)) for k, (a, b) in
                  enumerate(zip(fx, fy))]
        return torch.stack(layers).sum(dim=0)


def _lpips_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any supported LPIPS layout's keys -> ``LPIPS``'s own."""
    by_index = {index: k for k, index, *_ in _ALEXNET}
    out = {}
    for key, value in sd.items():
        if key.startswith(("scaling_layer.", "classifier.")):
            continue
        m = re.fullmatch(r"features\.(\d+)\.(weight|bias)", key)
        if m and int(m.group(1)) in by_index:
            key = f"net.slice{by_index[int(m.group(1))]}.{m.group(1)}.{m.group(2)}"
        key = re.sub(r"^lins\.(\d+)\.", r"lin\1.", key)
        out[key] = value
    return out


def load_lpips(paths: str | os.PathLike | list, device: torch.device | str = "cpu") -> LPIPS:
    """LPIPS (AlexNet, v0.1) from one full lpips state dict, or torchvision's AlexNet plus the linear heads file."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    sd: dict[str, torch.Tensor] = {}
    for path in paths:
        sd.update(_lpips_keys(read_weights(path)))
    model = LPIPS()
    _load_strict(model, sd, "LPIPS v0.1 (AlexNet)", " + ".join(str(p) for p in paths))
    return model.to(device)


# ---------------------------------------------------------------------------------------------------- Inception


class _Conv(nn.Module):
    """torchvision's BasicConv2d: conv (no bias), BatchNorm (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    """TF's 3x3 average pool: padded zeros are not counted (pytorch-fid's FID patch)."""
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class _InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = _Conv(cin, 48, 1), _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = _Conv(64, 96, 3, padding=1), _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg_pool(x))], 1)


class _InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = _Conv(64, 96, 3, padding=1), _Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, 2)], 1)


class _InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2 = _Conv(cin, c7, 1), _Conv(c7, c7, **row)
        self.branch7x7_3 = _Conv(c7, 192, **col)
        self.branch7x7dbl_1, self.branch7x7dbl_2 = _Conv(cin, c7, 1), _Conv(c7, c7, **col)
        self.branch7x7dbl_3, self.branch7x7dbl_4 = _Conv(c7, c7, **row), _Conv(c7, c7, **col)
        self.branch7x7dbl_5 = _Conv(c7, 192, **row)
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for k in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{k}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class _InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = _Conv(cin, 192, 1), _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x):
        d = x
        for k in range(1, 5):
            d = getattr(self, f"branch7x7x3_{k}")(d)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), d, F.max_pool2d(x, 3, 2)], 1)


class _InceptionE(nn.Module):
    """InceptionE; ``max_pool``: the pool branch max-pools (FID's Mixed_7c quirk) instead of TF's average."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(cin, 448, 1), _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pooled)], 1)


class InceptionFeatures(nn.Module):
    """pytorch-fid's FID InceptionV3 up to pool3: images [B,3,H,W] in [0,1] -> features [B, 2048] (float32).

    Module names follow torchvision's ``Inception3`` (the state-dict layout of ``pt_inception-2015-12-05``).
    Random weights unless loaded (``load_inception``).
    """

    FEATURES = 2048

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _InceptionA(192, 32), _InceptionA(256, 64), _InceptionA(288, 64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = _InceptionC(768, 128), _InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = _InceptionC(768, 160), _InceptionC(768, 192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = _InceptionE(1280, max_pool=False), _InceptionE(2048, max_pool=True)
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"Inception takes [B,3,H,W] images in [0,1], got {tuple(x.shape)}")
        x = F.interpolate(x.to(self.Conv2d_1a_3x3.conv.weight), size=(299, 299), mode="bilinear",
                          align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, 2)))
        x = F.max_pool2d(x, 3, 2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))


def load_inception(path: str | os.PathLike, device: torch.device | str = "cpu") -> InceptionFeatures:
    """FID's InceptionV3 from pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (or the same layout)."""
    sd = {k: v for k, v in read_weights(path).items()
          if not k.startswith("fc.") and not k.endswith(".num_batches_tracked")}
    model = InceptionFeatures()
    sd.update({k: v for k, v in model.state_dict().items() if k.endswith(".num_batches_tracked")})
    _load_strict(model, sd, "pytorch-fid's FID InceptionV3 (pt_inception-2015-12-05)", str(path))
    return model.to(device)
