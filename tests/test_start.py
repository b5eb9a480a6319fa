"""RAD from a classical start (``pipeline.inpaint(start=..., start_strength=...)``, issue 21): strength 1 is plain
RAD bit for bit, strength 0 the fill, kept pixels bit-identical in every fit, soft masks compose by the definition
(``fill.start_image``) (tiny random 16x16 ADM on CPU)."""

from functools import partial

import pytest
import torch
from conftest import TINY16, Spy, box_hole, make_adm
from conftest import picture as _picture

from comfyui_rad.fill import harmonic_fill, start_image
from comfyui_rad.pipeline import FITS, inpaint, network_calls

SIZE = TINY16.image_size

picture = partial(_picture, height=24, width=30)
hole = partial(box_hole, 24, 30, box=(6, 14, 8, 18))


def run(model, image, mask, fit="crop", **kw):
    return inpaint(model, image, mask, sampler="ddim", steps=3, seed=5, fit=fit, **kw)


@pytest.mark.parametrize("fit", FITS)
def test_full_strength_or_a_noise_start_is_plain_rad_bit_for_bit(adm16, one_thread, fit):
    image, mask = picture(), hole(box=(2, 22, 3, 27)) if fit == "tiles" else hole()
    plain, used = run(adm16, image, mask, fit)
    for kw in ({"start": "harmonic", "start_strength": 1.0}, {"start": "noise", "start_strength": 0.3}):
        result, used_now = run(adm16, image, mask, fit, **kw)
        assert torch.equal(result, plain) and torch.equal(used_now, used)


@pytest.mark.parametrize("fit", FITS)
def test_strength_0_returns_the_fill_without_a_network_call(adm16, fit):
    image, mask = picture(2), hole()
    counted = Spy(adm16)
    result, used = run(counted, image, mask, fit, start="harmonic", start_strength=0.0)
    assert counted.calls == 0 and torch.equal(used, mask.expand(2, -1, -1))
    assert network_calls(SIZE, image, mask, steps=3, sampler="ddim", fit=fit, start="harmonic",
                         start_strength=0.0) == 0
    assert torch.equal(result, harmonic_fill(image, mask))


@pytest.mark.parametrize("fit", FITS)
def test_a_partial_start_keeps_the_kept_pixels_and_changes_the_hole(adm16, one_thread, fit):
    image, mask = picture(), hole(box=(2, 22, 3, 27)) if fit == "tiles" else hole()
    counted = Spy(adm16)
    result, used = run(counted, image, mask, fit, start="harmonic", start_strength=0.5)
    assert counted.calls == network_calls(SIZE, image, mask, steps=3, sampler="ddim", fit=fit, start="harmonic",
                                          start_strength=0.5) > 0
    keep = (mask == 0)[:, None].expand_as(image)
    assert torch.equal(result[keep], image[keep]) and torch.equal(used, mask)
    fill = harmonic_fill(image, mask)
    assert 0 < (result - fill)[~keep].abs().mean() < (run(adm16, image, mask, fit)[0] - fill)[~keep].abs().mean()


def test_a_soft_mask_composes_as_defined(adm16, one_thread):
    image = picture()
    mask = hole(box=(4, 18, 6, 22)) * 0.5
    mask[:, 7:15, 9:19] = 1
    result, used = run(adm16, image, mask, start="harmonic", start_strength=0.5)
    started, scaled = start_image(image, mask, "harmonic", 0.5)
    assert torch.equal(used, mask)
    assert torch.equal(result, run(adm16, started, scaled)[0])  # the definition: a fill start, a scaled mask
    soft = ((mask > 0) & (mask < 1))[:, None].expand_as(image)
    assert torch.equal(started[soft], image[soft])  # soft pixels are read as they are, not filled


def test_baselines_and_bad_settings_are_refused_naming_the_argument(adm16):
    image, mask = picture(), hole()
    with pytest.raises(ValueError, match="start harmonic works with RAD's samplers"):
        inpaint(adm16, image, mask, sampler="replace", steps=3, start="harmonic", start_strength=0.5)
    with pytest.raises(ValueError, match="unknown start 'telea'"):
        run(adm16, image, mask, start="telea")
    with pytest.raises(ValueError, match="start_strength must be a finite number in \\[0, 1\\]"):
        run(adm16, image, mask, start="harmonic", start_strength=2.0)


# ------------------------------------------------------------------------------- the start a model recommends


def recommending(model, start=None, strength=None):
    """``model`` as loaded from a file recording ``start`` and ``strength`` (its ``rad_info``)."""
    from comfyui_rad.schedule import RADInfo

    clone = make_adm(TINY16)
    clone.rad_info = RADInfo(is_rad=True, start=start, start_strength=strength)
    return clone


def test_auto_on_a_model_that_records_no_start_is_plain_rad_bit_for_bit(adm16, one_thread):
    image, mask = picture(), hole()
    plain, used = run(adm16, image, mask, start="noise")
    for kw in ({}, {"start": "auto"}, {"start": "auto", "start_strength": 0.25}):
        result, used_now = run(recommending(adm16), image, mask, **kw)
        assert torch.equal(result, plain) and torch.equal(used_now, used)


def test_auto_runs_the_recorded_start_and_strength_unless_a_strength_is_given(adm16, one_thread):
    from comfyui_rad.pipeline import resolve_start

    image, mask = picture(), hole()
    recorded = recommending(adm16, "harmonic", 0.25)
    assert torch.equal(run(recorded, image, mask)[0], run(adm16, image, mask, start="harmonic", start_strength=0.25)[0])
    assert torch.equal(run(recorded, image, mask, start_strength=0.75)[0],
                       run(adm16, image, mask, start="harmonic", start_strength=0.75)[0])
    assert torch.equal(run(recorded, image, mask, start="noise")[0], run(adm16, image, mask)[0])  # noise stays noise
    assert resolve_start(recommending(adm16, "harmonic"), "auto") == ("harmonic", 0.5)  # no strength recorded
    assert resolve_start(recorded, "auto", baseline=True) == ("noise", 0.25)
    assert resolve_start(SIZE, "auto") == ("noise", 0.5)  # a size, no model: nothing recorded


def test_auto_starts_from_noise_for_the_baselines_and_a_mask_with_nothing_to_fill_from(adm16, one_thread):
    image, mask = picture(), hole()
    recorded = recommending(adm16, "harmonic", 0.25)
    replace_kw = {"sampler": "replace", "steps": 3, "seed": 5}
    assert torch.equal(inpaint(recorded, image, mask, **replace_kw)[0],
                       inpaint(adm16, image, mask, start="noise", **replace_kw)[0])
    full = torch.ones(1, SIZE, SIZE)
    small = picture(height=SIZE, width=SIZE)
    assert torch.equal(run(recorded, small, full)[0], run(adm16, small, full)[0])
    with pytest.raises(ValueError, match="start harmonic fills the hole from the pixels around it"):
        run(adm16, small, full, start="harmonic")  # asked for by name: refused, as before


def test_a_recommendation_is_written_only_when_asked_and_read_back(adm16, tmp_path):
    from comfyui_rad import load_adm
    from comfyui_rad.checkpoints import save_model
    from comfyui_rad.convert import convert
    from comfyui_rad.fileio import file_weights_sha256
    from comfyui_rad.schedule import rad_info, recommendation_metadata

    plain = save_model(tmp_path / "plain.safetensors", adm16)
    assert rad_info(load_adm(plain)).start is None
    recorded = convert(plain, tmp_path / "rec.safetensors", recommend_start="harmonic", recommend_start_strength=0.25)
    info = rad_info(load_adm(recorded))
    assert (info.start, info.start_strength) == ("harmonic", 0.25)
    assert file_weights_sha256(recorded) == file_weights_sha256(plain)
    again = convert(recorded, tmp_path / "again.safetensors")  # not carried over unless asked
    assert rad_info(load_adm(again)).start is None
    assert recommendation_metadata("noise") == {"recommended_start": "noise"}
    with pytest.raises(ValueError, match="recommended_start must be one of noise, harmonic"):
        convert(plain, tmp_path / "bad.safetensors", recommend_start="auto")
    with pytest.raises(ValueError, match="recommend_start_strength needs recommend_start"):
        convert(plain, tmp_path / "bad.safetensors", recommend_start_strength=0.5)
    assert not (tmp_path / "bad.safetensors").exists()
