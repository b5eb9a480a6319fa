import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, make_adm

from comfyui_rad.adm import ADMConfig, timestep_embedding


def x16(b=2):
    return torch.randn(b, 3, 16, 16, generator=torch.Generator().manual_seed(3))


def binary_tau(b=2, hole=700.25):
    m = torch.zeros(b, 1, 16, 16)
    m[..., 3:11, 6:14] = 1
    return m * (hole + 1) - 1  # hole pixels at `hole`, kept pixels at -1 (clean, guided-diffusion convention)


@torch.no_grad()
def test_constant_map_equals_scalar_path(tiny_adm):
    t = torch.tensor([10.0, 640.5])
    want = tiny_adm(x16(), t)
    got = tiny_adm(x16(), t[:, None, None, None].expand(2, 1, 16, 16))
    dense = tiny_adm(x16(), t[:, None, None, None].expand(2, 1, 16, 16), dense_embedding=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(dense, want, rtol=0, atol=1e-5)


def soft_tau(levels: int) -> torch.Tensor:
    """A soft-mask-like map: a blurred box quantised to ``levels`` values, one per image (different per image)."""
    m = torch.zeros(2, 1, 16, 16)
    m[0, :, 2:10, 3:12] = 1
    m[1, :, 6:16, 0:7] = 1
    m = F.avg_pool2d(F.pad(m, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    return (m * (levels - 1)).round() / (levels - 1) * 700.0 - 1.0


@torch.no_grad()
@pytest.mark.parametrize("tau,mode", [
    (binary_tau(), "onehot"),
    (soft_tau(5), "onehot"),
    (soft_tau(60), "taps"),
    (torch.randint(-1, 999, (2, 1, 16, 16), generator=torch.Generator().manual_seed(0)).float(), "taps"),
])
def test_fast_paths_equal_dense_path(tiny_adm, tau, mode):
    assert tiny_adm.embed(tau, None, x16()).mode == mode
    fast = tiny_adm(x16(), tau)
    dense = tiny_adm(x16(), tau, dense_embedding=True)
    torch.testing.assert_close(fast, dense, rtol=0, atol=1e-5)


def per_image_binary_tau(b=6, used=2):
    """A training batch: per image a binary-ish map at its own timesteps (``used`` values each, 6 * used in all)."""
    g = torch.Generator().manual_seed(4)
    levels = torch.randperm(990, generator=g)[: b * used].float().view(b, used)
    region = torch.randint(0, used, (b, 1, 16, 16), generator=g)
    return levels.gather(1, region.view(b, -1)).view(b, 1, 16, 16) - 1


@torch.no_grad()
@pytest.mark.parametrize("used,mode", [(1, "onehot"), (2, "onehot"), (8, "onehot"), (9, "taps")])
def test_per_image_values_take_the_onehot_path(tiny_adm, used, mode):
    """More than 8 values in the batch, at most 8 in each image: one-hot over each image's own values, exact."""
    tau = per_image_binary_tau(used=used)
    emb = tiny_adm.embed(tau, None, x16(6))
    shared = 6 * used <= 8 or mode == "taps"  # few enough in the whole batch: one set of rows for all images
    assert emb.mode == mode and emb.rows.shape[:2] == ((1, 6 * used) if shared else (6, used))
    torch.testing.assert_close(tiny_adm(x16(6), tau), tiny_adm(x16(6), tau, dense_embedding=True), rtol=0, atol=1e-5)
    ys = torch.arange(6) % 4
    model = make_adm(ADMConfig(**{**TINY.__dict__, "num_classes": 4}), seed=5)
    torch.testing.assert_close(model(x16(6), tau, y=ys), model(x16(6), tau, y=ys, dense_embedding=True),
                               rtol=0, atol=1e-5)


@torch.no_grad()
def test_taps_projection_both_orders_equal_resize(tiny_adm):
    """The 4-tap path projects first (few distinct rows) or mixes first (more rows than pixels): both are exact."""
    tau = torch.randint(-1, 999, (1, 1, 16, 16), generator=torch.Generator().manual_seed(1)).float()
    spatial = tiny_adm.embed(tau, None, x16(1))
    dense = tiny_adm.embed(tau, None, x16(1), dense=True)
    lin = tiny_adm.input_blocks[1][0].emb_layers[1]
    for h in (16, 8, 4, 2, 1):  # 256 distinct rows: mixed first at every size; project first when rows < pixels
        torch.testing.assert_close(spatial.project(lin.weight, lin.bias, h, h),
                                   dense.project(lin.weight, lin.bias, h, h), rtol=0, atol=1e-5)
    few = tiny_adm.embed(soft_tau(30)[:1], None, x16(1))
    assert few.mode == "taps"
    torch.testing.assert_close(few.project(lin.weight, lin.bias, 16, 16),
                               tiny_adm.embed(soft_tau(30)[:1], None, x16(1), dense=True).project(
                                   lin.weight, lin.bias, 16, 16), rtol=0, atol=1e-5)


@torch.no_grad()
def test_dense_path_is_the_papers_definition(tiny_adm):
    """Per-pixel sinusoid -> time_embed as 1x1 convs -> per block SiLU, bilinear resize, emb_layers as 1x1 conv."""
    tau = torch.rand(1, 1, 16, 16) * 999
    emb = timestep_embedding(tau.flatten(), 32).reshape(1, 16, 16, 32).permute(0, 3, 1, 2)
    lin = tiny_adm.time_embed
    emb = F.conv2d(F.silu(F.conv2d(emb, lin[0].weight[..., None, None], lin[0].bias)), lin[2].weight[..., None, None],
                   lin[2].bias)
    block = tiny_adm.input_blocks[3][0]  # a ResBlock at 8x8
    want = F.conv2d(F.interpolate(F.silu(emb), size=(8, 8), mode="bilinear", align_corners=True),
                    block.emb_layers[1].weight[..., None, None], block.emb_layers[1].bias)
    spatial = tiny_adm.embed(tau, None, x16(1), dense=True)
    torch.testing.assert_close(spatial.project(block.emb_layers[1].weight, block.emb_layers[1].bias, 8, 8), want,
                               rtol=0, atol=1e-5)


@torch.no_grad()
def test_spatial_embedding_localises(tiny_adm):
    """Changing tau in one corner changes the output near it most."""
    tau = torch.full((1, 1, 16, 16), 500.0)
    tau2 = tau.clone()
    tau2[..., :4, :4] = 10.0
    diff = (tiny_adm(x16(1), tau) - tiny_adm(x16(1), tau2)).abs().mean(dim=(0, 1))
    assert diff[:4, :4].mean() > 2 * diff[8:, 8:].mean()


@torch.no_grad()
def test_class_labels_with_spatial_map():
    model = make_adm(ADMConfig(**{**TINY.__dict__, "num_classes": 4}), seed=5)
    y = torch.tensor([0, 3])
    fast = model(x16(), binary_tau(), y=y)
    torch.testing.assert_close(fast, model(x16(), binary_tau(), y=y, dense_embedding=True), rtol=0, atol=1e-5)
    taps = model(x16(), soft_tau(40), y=y)
    torch.testing.assert_close(taps, model(x16(), soft_tau(40), y=y, dense_embedding=True), rtol=0, atol=1e-5)
    assert not torch.allclose(fast, model(x16(), binary_tau(), y=torch.tensor([1, 3])))


def test_timestep_embedding_is_cos_then_sin():
    e = timestep_embedding(torch.tensor([0.0, 2.5]), 8)
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    torch.testing.assert_close(e[1], torch.cat([torch.cos(2.5 * freqs), torch.sin(2.5 * freqs)]))
    assert timestep_embedding(torch.tensor([1.0]), 7).shape == (1, 7)


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_close_to_float32(dtype):
    model = make_adm()
    want = model(x16(), binary_tau())
    got = model.to(dtype)(x16(), binary_tau())
    assert got.dtype == torch.float32  # output follows x
    assert (got - want).abs().max() < 0.1 * want.abs().max()


def test_bad_inputs(tiny_adm):
    with pytest.raises(ValueError, match=r"x has shape \(2, 4, 16, 16\), expected \[B, 3, H, W\]"):
        tiny_adm(torch.zeros(2, 4, 16, 16), torch.zeros(2))
    with pytest.raises(ValueError, match="image size 15x16 is not a multiple of 2"):
        tiny_adm(torch.zeros(1, 3, 15, 16), torch.zeros(1))
    with pytest.raises(ValueError, match=r"per-pixel t has shape \(2, 1, 8, 8\), expected \[2, 1, 16, 16\]"):
        tiny_adm(x16(), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"t has shape \(3,\), expected \[2\]"):
        tiny_adm(x16(), torch.zeros(3))
    with pytest.raises(ValueError, match="unconditional but class labels"):
        tiny_adm(x16(), torch.zeros(2), y=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="not a multiple of num_head_channels=48"):
        make_adm(ADMConfig(**{**TINY.__dict__, "num_head_channels": 48}))
