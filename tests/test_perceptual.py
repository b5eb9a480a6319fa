"""perceptual: LPIPS and FID's Inception built from local files (random weights here), their layouts and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from comfyui_rad.perceptual import InceptionFeatures, WeightsError, load_inception, load_lpips, read_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def torchvision_alexnet_features(seed=0) -> nn.Sequential:
    """torchvision's ``alexnet().features``, written out: what the LPIPS slices cut into five taps."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
    )


def heads(seed=1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for k, c in
            enumerate((64, 192, 384, 256, 256))}


@torch.no_grad()
def lpips_reference(features: nn.Sequential, lins: dict[str, torch.Tensor], x, y):
    """lpips.LPIPS.forward (v0.1, normalize=True) restated on the torchvision layout."""
    shift = torch.tensor([-.030, -.088, -.188])[None, :, None, None]
    scale = torch.tensor([.458, .448, .450])[None, :, None, None]
    taps = (1, 4, 7, 9, 11)

    def feats(img):
        h, out = (2 * img - 1 - shift) / scale, []
        for i, layer in enumerate(features[:12]):  # lpips's slices end at relu5, before the last pool
            h = layer(h)
            if i in taps:
                out.append(h / (torch.sqrt(torch.sum(h**2, dim=1, keepdim=True)) + 1e-10))
        return out

    total = 0
    for k, (a, b) in enumerate(zip(feats(x), feats(y))):
        total = total + nn.functional.conv2d((a - b) ** 2, lins[f"lin{k}.model.1.weight"]).mean(dim=(2, 3))
    return total[:, 0]


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lpips")
    features = torchvision_alexnet_features()
    alexnet = {f"features.{k}": v for k, v in features.state_dict().items()}
    alexnet["classifier.1.weight"] = torch.zeros(4, 9216)  # ignored
    torch.save(alexnet, d / "alexnet-owt.pth")
    torch.save(heads(), d / "alex.pth")
    # the single-file layout of lpips.LPIPS(net="alex").state_dict(), with its buffers and duplicate heads
    model = load_lpips([d / "alexnet-owt.pth", d / "alex.pth"])
    full = dict(model.state_dict())
    full.update({"scaling_layer.shift": model.shift.clone(), "scaling_layer.scale": model.scale.clone()})
    full.update({k.replace("lin", "lins.", 1): v for k, v in heads().items()})
    torch.save(full, d / "lpips_alex.pth")
    return d, features


def images(seed, batch=3, size=48):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_lpips_matches_the_reference_formula(lpips_files):
    d, features = lpips_files
    model = load_lpips(d / "lpips_alex.pth")
    x, y = images(0), images(1)
    torch.testing.assert_close(model(x, y), lpips_reference(features, heads(), x, y), rtol=1e-5, atol=1e-7)
    split = load_lpips([d / "alexnet-owt.pth", d / "alex.pth"])
    assert torch.equal(split(x, y), model(x, y))


def test_lpips_is_zero_on_equal_images_symmetric_and_deterministic(lpips_files):
    model = load_lpips(lpips_files[0] / "lpips_alex.pth")
    x, y = images(2), images(3)
    assert model(x, x).abs().max().item() == 0
    d = model(x, y)
    assert d.shape == (3,) and (d > 0).all()
    torch.testing.assert_close(model(y, x), d)
    assert torch.equal(model(x, y), d)
    with pytest.raises(ValueError, match="at least 32x32"):
        model(x[..., :16, :16], y[..., :16, :16])


def test_lpips_refuses_other_files_clearly(lpips_files, tmp_path):
    d, _ = lpips_files
    with pytest.raises(WeightsError, match=r"is not LPIPS v0.1 \(AlexNet\): keys 5 missing \(e.g. lin0"):
        load_lpips(d / "alexnet-owt.pth")  # the trunk without the heads
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "inception.pth")
    with pytest.raises(WeightsError, match="unexpected \\(e.g. Conv2d_1a_3x3.conv.weight"):
        load_lpips(tmp_path / "inception.pth")
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        load_lpips(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="cannot read weights"):
        read_weights(tmp_path / "junk.pth")


def test_inception_layout_features_and_errors(tmp_path):
    torch.manual_seed(0)
    source = InceptionFeatures()
    for m in source.modules():  # keep random activations alive through 94 layers
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
    sd = dict(source.state_dict())
    assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert sd["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert sd["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    params = sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "tracked")))
    assert params == 21_785_568  # torchvision Inception3 without AuxLogits and fc
    sd.update({"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)})  # pt_inception has fc: ignored
    torch.save(sd, tmp_path / "pt_inception.pth")
    model = load_inception(tmp_path / "pt_inception.pth")
    x = images(4, batch=2, size=32)
    with torch.no_grad():
        f = model(x)
        assert f.shape == (2, 2048) and torch.isfinite(f).all() and (f >= 0).all()
        torch.testing.assert_close(model(x[:1]), f[:1], rtol=1e-4, atol=1e-5)  # per image, batch-independent
        assert f.std() > 1e-3 and not torch.allclose(f[0], f[1], rtol=1e-2, atol=0)
    del sd["Mixed_7c.branch_pool.bn.running_var"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(WeightsError, match="not pytorch-fid's FID InceptionV3.*1 missing"):
        load_inception(tmp_path / "broken.pth")
