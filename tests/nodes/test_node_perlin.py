import pytest
import torch
from comfy_stub import host  # noqa: F401


def perlin(host, **kw):
    args = dict(width=48, height=32, batch_size=2, seed=5, cell_size_min=4.0, cell_size_max=12.0, octaves=2,
                coverage=0.3, softness=0.0, invert=False) | kw
    return host.nodes.RADPerlinMask.execute(**args)[0]


def test_shape_coverage_and_binary(host):
    mask = perlin(host)
    assert mask.shape == (2, 32, 48) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask.mean(dim=(1, 2)).tolist() == pytest.approx([0.3, 0.3], abs=1 / (32 * 48))
    assert not torch.equal(mask[0], mask[1])


def test_deterministic_per_seed(host):
    assert torch.equal(perlin(host, seed=9), perlin(host, seed=9))
    assert not torch.equal(perlin(host, seed=9), perlin(host, seed=10))


def test_invert_and_softness(host):
    assert torch.equal(perlin(host, invert=True), 1 - perlin(host))
    soft = perlin(host, softness=2.0)
    assert ((soft > 0) & (soft < 1)).any() and soft.min() >= 0 and soft.max() <= 1


def test_swapped_cell_range_is_refused(host):
    with pytest.raises(ValueError, match="swap"):
        perlin(host, cell_size_min=20.0, cell_size_max=10.0)


def test_sizes_that_would_exhaust_memory_are_refused_before_allocating(host, monkeypatch):
    import comfyui_rad.masks

    allocated = []
    monkeypatch.setattr(comfyui_rad.masks, "_perlin_octave", lambda *a: allocated.append(a))
    with pytest.raises(ValueError, match=r"Perlin Mask of batch_size 64 x height 16384 x width 16384 would need "
                                         r"about 2,560\.0 GiB.*lower width, height or batch_size"):
        perlin(host, width=16384, height=16384, batch_size=64)  # the widgets' maxima: 128 GiB for one tensor
    with pytest.raises(ValueError, match="perlin_mask of batch 64 x height 16384 x width 16384"):  # the API too
        comfyui_rad.masks.perlin_mask(64, 16384, 16384, generator=torch.Generator())
    assert allocated == []
    monkeypatch.undo()
    assert perlin(host, width=512, height=512, batch_size=4).shape == (4, 512, 512)  # useful sizes pass
