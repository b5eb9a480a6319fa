"""Region by region ("tiles"): the plan, the window masks, native-resolution windows, the crop switch, batches,
progress over all windows, Cancel, and kept pixels bit for bit (tiny random 16x16 ADM on CPU)."""

import pytest
import torch
from conftest import TINY16, Spy, box_hole, picture

from comfyui_rad import imaging
from comfyui_rad.pipeline import inpaint, network_calls, resolve_fit
from comfyui_rad.plan import fit_crop, stitch
from comfyui_rad.sampling import SAMPLERS, repaint_calls
from comfyui_rad.schedule import SpatialSchedule
from comfyui_rad.tiles import TileSettings, count_calls, crop_fits, plan_tiles, window_mask

SIZE = TINY16.image_size


def big_hole(height=40, width=50):
    """A 30x37 hole: more than twice the 16-pixel window each way."""
    return box_hole(height, width, (5, 35, 8, 45))


def covered(plan, height, width):
    cover = torch.zeros(height, width, dtype=torch.bool)
    for w in plan.windows:
        cover[max(w.top, 0):w.top + w.height, max(w.left, 0):w.left + w.width] = True
    return cover


# ------------------------------------------------------------------------------------------------------ planning


def test_plan_covers_the_hole_with_overlapping_native_windows_from_the_border_inwards():
    mask = big_hole()[0]
    plan = plan_tiles(mask, SIZE)
    assert plan.windows and all((w.height, w.width) == (SIZE, SIZE) for w in plan.windows)
    assert covered(plan, 40, 50)[mask > 0].all()
    tops = sorted({w.top for w in plan.windows})
    assert all(b - a <= SIZE - SIZE // 4 for a, b in zip(tops, tops[1:]))  # neighbours share >= overlap rows
    assert min(tops) < 5  # context: the border windows reach past the hole's box into known pixels
    square = torch.zeros(64, 64)
    square[8:56, 8:56] = 1
    order = plan_tiles(square, SIZE).windows
    known = [float((square[w.top:w.top + SIZE, w.left:w.left + SIZE] == 0).float().mean()) for w in order]
    assert len(order) == 25 and known[0] == max(known) > 0.3
    assert all(k > 0 for k in known[:16]) and known[-9:].count(0.0) == 9  # the ring first, the inside last


def test_a_hole_that_fits_is_one_window_and_an_empty_mask_none():
    mask = torch.zeros(40, 50)
    mask[10:20, 10:20] = 1
    assert len(plan_tiles(mask, SIZE).windows) == 1
    assert plan_tiles(torch.zeros(40, 50), SIZE).windows == ()


def test_windows_without_a_hole_pixel_are_dropped():
    mask = torch.zeros(60, 60)
    mask[2:58, 2:8] = 1  # an L: a column and a row
    mask[52:58, 2:58] = 1
    plan = plan_tiles(mask, SIZE)
    for w in plan.windows:
        assert bool(mask[max(w.top, 0):w.top + SIZE, max(w.left, 0):w.left + SIZE].any())
    assert covered(plan, 60, 60)[mask > 0].all()


def test_bad_settings_are_refused_with_the_value():
    with pytest.raises(ValueError, match="overlap must be in \\[0, 15\\].*got 16"):
        plan_tiles(big_hole()[0], SIZE, TileSettings(overlap=16))
    with pytest.raises(ValueError, match="soft must be in \\[0, 1\\]"):
        plan_tiles(big_hole()[0], SIZE, TileSettings(soft=1.5))


def test_window_mask_is_one_unfilled_soft_ramp_in_the_overlap_zero_known():
    mask = torch.zeros(1, 16, 16)
    mask[:, :, 4:] = 1  # known columns 0-3
    filled = torch.zeros(1, 16, 16, dtype=torch.bool)
    filled[:, :, 4:8] = True  # an earlier window generated columns 4-7
    m = window_mask(mask, filled, TileSettings(overlap=4, soft=0.5))
    assert torch.equal(m[0, :, :4], torch.zeros(16, 4)) and torch.equal(m[0, :, 8:], torch.ones(16, 8))
    assert torch.allclose(m[0, 0, 4:8], torch.tensor([0.125, 0.25, 0.375, 0.5]))  # 0.5 next to the new pixels
    hard = window_mask(mask, filled, TileSettings(overlap=4, soft=0.0))
    assert torch.equal(hard[0, :, 4:8], torch.zeros(16, 4))
    guided = window_mask(mask, filled, TileSettings(overlap=4, coarse_strength=0.8), guided=True)
    assert torch.allclose(guided[0, :, 8:], torch.full((16, 8), 0.8))
    soft_user = window_mask(mask * 0.3, filled, TileSettings(overlap=4, soft=0.5))
    assert float(soft_user.max()) == pytest.approx(0.3)  # never more than the user asked for


def plain_window_mask(mask, filled, settings, guided=False):
    """The window mask as it was before the start's strength (issue 21): the rule a plain start must keep."""
    hole = mask > 0
    unfilled = hole & ~filled
    overlap = settings.overlap or 0
    if settings.soft > 0 and overlap > 0 and not settings.independent:
        from comfyui_rad.plan import _distance
        ramp = settings.soft * ((overlap + 1 - _distance(unfilled, overlap)) / overlap).clamp(0, 1)
    else:
        ramp = torch.zeros_like(mask)
    value = torch.where(unfilled, mask * (settings.coarse_strength if guided else 1.0), torch.minimum(mask, ramp))
    return torch.where(hole, value, torch.zeros_like(mask)).float()


def test_window_mask_scales_its_overlap_ramp_with_the_start_strength():
    mask = torch.zeros(1, 16, 16)
    mask[:, :, 4:] = 1
    filled = torch.zeros(1, 16, 16, dtype=torch.bool)
    filled[:, :, 4:8] = True
    settings = TileSettings(overlap=4, soft=0.5)
    started = window_mask(mask * 0.1, filled, settings, strength=0.1)  # a fill start at 0.1 scaled the mask
    assert torch.allclose(started[0, 0, 4:8], torch.tensor([0.0125, 0.025, 0.0375, 0.05]))  # a ramp 0.05 -> 0
    assert torch.allclose(started, 0.1 * window_mask(mask, filled, settings))  # the plain start's mask times s
    guided = window_mask(mask * 0.1, filled, settings, guided=True, strength=0.1)
    assert torch.allclose(guided[0, :, 8:], torch.full((16, 8), 0.08)) and float(guided[0, :, 4:8].max()) < 0.08
    assert torch.equal(started[0, :, :4], torch.zeros(16, 4))  # kept pixels: 0 at any strength
    # unscaled (as before), min(s*m, ramp) is s across the overlap, then 0: a step, the overlap regenerated at full s
    assert torch.equal(window_mask(mask * 0.1, filled, settings)[0, 0, 4:8], torch.full((4,), 0.1))


def test_window_mask_of_a_plain_start_is_the_one_it_always_was_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    for soft, guided, overlap in ((0.5, False, 4), (0.5, True, 5), (1.0, False, 3), (0.0, True, 4), (0.3, True, 7)):
        mask = (torch.rand(3, 16, 16, generator=generator) * 1.5).clamp(0, 1)  # soft and binary values, kept pixels
        filled = (torch.rand(3, 16, 16, generator=generator) > 0.6) & (mask > 0)
        settings = TileSettings(overlap=overlap, soft=soft)
        expected = plain_window_mask(mask, filled, settings, guided)
        assert torch.equal(window_mask(mask, filled, settings, guided), expected)
        assert torch.equal(window_mask(mask, filled, settings, guided, strength=1.0), expected)


# ------------------------------------------------------------------------------------------------------ sampling


def test_tiles_keep_pixels_bit_identical_and_sample_only_native_windows(adm16, one_thread):
    spy, image, mask = Spy(adm16), picture(), big_hole()
    out, used = inpaint(spy, image, mask, steps=3, fit="tiles", sampler="ddim")
    keep = (mask == 0)[:, None].expand_as(image)
    assert torch.equal(out[keep], image[keep]) and torch.equal(used, mask)
    assert (out - image)[~keep].abs().mean() > 0.05
    windows, calls = count_calls(mask, SIZE, "ddim", 3)
    # the coarse pass, then every window; windows apart from each other share a batch (waves)
    assert windows > 4 and sum(s[0] for s in spy.shapes) == calls == 3 * (windows + 1) > len(spy.shapes)
    assert {s[1:] for s in spy.shapes} == {(3, SIZE, SIZE)}
    spy.shapes.clear()
    fine, _ = inpaint(spy, image, mask, steps=3, fit="tiles", sampler="ddim", tile_settings=TileSettings(coarse=False))
    assert sum(s[0] for s in spy.shapes) == 3 * windows and torch.equal(fine[keep], image[keep])


def test_progress_counts_every_call_of_every_window_and_previews_the_whole_picture(adm16, one_thread):
    image, mask, seen = picture(), big_hole(), []
    total = network_calls(SIZE, image, mask, steps=2, sampler="ddpm", fit="crop")
    inpaint(adm16, image, mask, steps=2, fit="crop", callback=seen.append)
    assert [s["step"] for s in seen] == list(range(total)) and {s["total"] for s in seen} == {total}
    assert seen[-1]["window"] == seen[-1]["windows"] - 1 and total == 2 * (seen[-1]["windows"] + 1)
    assert seen[0]["window"] == -1  # the coarse pass first
    assert all(tuple(s["pred_x0"].shape) == (1, 3, 40, 50) for s in seen)
    known = (mask == 0)[:, None].expand_as(image)
    assert torch.allclose(seen[-1]["pred_x0"][known], imaging.to_model_range(image)[known], atol=1e-6)


def test_cancel_stops_within_a_step(adm16, one_thread):
    calls = []

    def cancel(info):
        calls.append(info["step"])
        if len(calls) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        inpaint(adm16, picture(), big_hole(), steps=3, fit="tiles", callback=cancel)
    assert calls == [0, 1, 2, 3, 4]


def test_crop_whose_hole_fits_is_bit_identical_to_the_single_window_path(adm16, one_thread):
    image = picture(2)
    mask = torch.zeros(2, 40, 50)
    mask[0, 20:26, 30:36] = 1
    mask[1, 2:8, 3:9] = 1
    mask[0, 20:36, 22:38] = 0.5  # soft, and exactly as large as the window: still fits
    assert crop_fits(mask, SIZE) and resolve_fit("crop", mask, SIZE) == "crop"
    out, _ = inpaint(adm16, image, mask, sampler="ddpm", steps=3, fit="crop", seed=4)
    # the path crop always took, written out: fit, one sampler pass, stitch
    model_image, model_mask, fitted = fit_crop(image, mask, SIZE)
    result = SAMPLERS["ddpm"](adm16, imaging.to_model_range(model_image), SpatialSchedule(model_mask[:, None]), 3,
                              torch.Generator().manual_seed(4), None, y=None)
    assert torch.equal(out, stitch(imaging.from_model_range(result.float()), image, mask, fitted))


def test_crop_switches_to_tiles_when_the_hole_does_not_fit(adm16, one_thread):
    image, mask = picture(), big_hole()
    assert not crop_fits(mask, SIZE) and resolve_fit("crop", mask, SIZE) == "tiles"
    assert resolve_fit("resize", mask, SIZE) == "resize"
    crop, _ = inpaint(adm16, image, mask, steps=2, fit="crop", seed=1)
    tiles, _ = inpaint(adm16, image, mask, steps=2, fit="tiles", seed=1)
    assert torch.equal(crop, tiles)
    with pytest.raises(ValueError, match="unknown fit 'tile'.*crop, resize, pad, tiles"):
        inpaint(adm16, image, mask, fit="tile")


def test_batches_one_mask_many_images_and_one_image_many_masks(adm16, one_thread):
    image, mask = picture(2), big_hole()
    spy = Spy(adm16)
    out, used = inpaint(spy, image, mask, steps=2, fit="tiles")
    windows, calls = count_calls(used, SIZE, "ddpm", 2)
    assert sum(s[0] for s in spy.shapes) == 2 * calls and calls == 2 * (windows + 1)
    assert {s[0] % 2 for s in spy.shapes} == {0}  # the two images of each window in one batch
    assert not torch.equal(out[0], out[1])
    masks = torch.cat([big_hole(), torch.zeros(1, 40, 50)])
    masks[1, 30:38, 2:12] = 1  # another plan: its own group
    out, used = inpaint(adm16, picture(1), masks, steps=2, fit="tiles")
    keep = (used == 0)[:, None].expand_as(out)
    assert torch.equal(out[keep], picture(1).expand_as(out)[keep])
    assert network_calls(SIZE, picture(1), masks, steps=2, fit="tiles") == count_calls(used, SIZE, "ddpm", 2)[1]


def test_soft_masks_and_the_coarse_pass(adm16, one_thread):
    image, mask = picture(), big_hole() * 0.6
    spy = Spy(adm16)
    out, _ = inpaint(spy, image, mask, steps=2, fit="tiles", tile_settings=TileSettings(coarse=True))
    windows, calls = count_calls(mask, SIZE, "ddpm", 2, settings=TileSettings(coarse=True))
    assert calls == 2 * (windows + 1) == sum(s[0] for s in spy.shapes)  # one downscaled pass, then every window
    keep = (mask == 0)[:, None].expand_as(image)
    assert torch.equal(out[keep], image[keep]) and not torch.equal(out, image)


def test_repaint_tiles_with_binary_masks_and_its_call_count(adm16, one_thread):
    image, mask = picture(1, 24, 40), torch.zeros(1, 24, 40)
    mask[:, 4:20, 3:37] = 1
    options = {"jump_length": 2, "jump_n_sample": 2}
    seen = []
    out, _ = inpaint(adm16, image, mask, steps=4, sampler="repaint", fit="tiles", options=options,
                     callback=seen.append)
    windows, calls = count_calls(mask, SIZE, "repaint", 4, options)
    assert windows > 1 and calls == windows * repaint_calls(4, 2, 2) == len(seen)
    keep = (mask == 0)[:, None].expand_as(image)
    assert torch.equal(out[keep], image[keep])


def test_naive_independent_tiles_never_read_the_hole(adm16, one_thread):
    image, mask = picture(), big_hole()
    other = image.clone()
    other[(mask > 0)[:, None].expand_as(image)] = 0.0  # different hole content, same known pixels
    naive = TileSettings(overlap=0, context=0, independent=True)
    a, _ = inpaint(adm16, image, mask, steps=2, fit="tiles", tile_settings=naive)
    b, _ = inpaint(adm16, other, mask, steps=2, fit="tiles", tile_settings=naive)
    assert torch.equal(a, b)


def test_owner_map_marks_the_last_window_to_regenerate_each_pixel():
    from comfyui_rad.tiles import owner_map

    mask = big_hole()[0]
    plan = plan_tiles(mask, SIZE)
    hard = owner_map(mask, plan, TileSettings(soft=0.0))
    assert torch.equal(hard >= 0, mask > 0)
    first = plan.windows[0]
    assert (hard[max(first.top, 0):first.top + SIZE, max(first.left, 0):first.left + SIZE][
        mask[max(first.top, 0):first.top + SIZE, max(first.left, 0):first.left + SIZE] > 0] == 0).all()
    soft = owner_map(mask, plan, TileSettings(soft=0.5))
    assert (soft >= hard).all() and (soft > hard).any()  # the ramp hands overlap pixels to later windows


def test_calls_count_rad_resampling_in_every_window():
    from comfyui_rad.sampling import rad_calls

    mask = big_hole()
    windows, calls = count_calls(mask, SIZE, "ddpm", 10, {"resample": 1, "jump": 2})
    assert calls == (windows + 1) * rad_calls(10, 1, 2) and rad_calls(10, 1, 2) > 10
    assert network_calls(SIZE, picture(), mask, steps=10, fit="tiles", options={"resample": 1, "jump": 2}) == calls


# ------------------------------------------------------------------------------------------- from a fill start


def test_a_plain_start_gives_the_images_it_gave_before_issue_21_bit_for_bit(adm16, one_thread, monkeypatch):
    import comfyui_rad.tiles as tiles

    image, mask = picture(), big_hole()
    results = [inpaint(adm16, image, m, steps=3, sampler="ddim", seed=3, fit="tiles", tile_settings=s, start="noise")[0]
               for m, s in ((mask, TileSettings()), (mask * 0.6, TileSettings(coarse=False)))]
    # golden: the same calls before the window masks took the start's strength
    assert float(results[0].double().sum()) == pytest.approx(2700.486818909645, rel=1e-6)
    assert float((results[0].double() ** 2).sum()) == pytest.approx(1940.625452066133, rel=1e-6)
    assert float(results[1].double().sum()) == pytest.approx(2805.0812796354294, rel=1e-6)
    monkeypatch.setattr("comfyui_rad.plan.window_mask", lambda mask, filled, settings, guided=False, strength=1.0,
                        frame=None: plain_window_mask(mask, filled, settings, guided))
    before = inpaint(adm16, image, mask, steps=3, sampler="ddim", seed=3, fit="tiles", start="noise")[0]
    assert torch.equal(before, results[0])


def test_a_fill_start_fades_the_overlap_to_0_at_a_window_edge_with_picture_beyond():
    from comfyui_rad.plan import Window, cut
    from comfyui_rad.tiles import fixed_frame

    mask, filled = torch.zeros(1, 40, 40), torch.zeros(1, 40, 40, dtype=torch.bool)
    mask[:, 4:36, 4:36] = 1
    filled[:, 4:22, 4:36] = True  # an earlier window generated rows 4-21: it reaches 2 rows into the next one
    window = Window(20, 4, 16, 16)
    frame = fixed_frame(mask, filled, window)
    assert frame.shape == (1, 18, 18) and frame[0, 0].all() and not frame[0, 1:-1, 1:-1].any()
    assert frame[0, -1].all() and frame[0, :, 0].all()  # kept pixels below and on the left
    assert frame[0, 1:3, -1].all() and not frame[0, 3:-1, -1].any()  # on the right: generated, then still to fill
    user, done = cut(mask, window, "constant"), cut(filled.float(), window, "constant") > 0
    settings = TileSettings(overlap=4, soft=0.5)
    assert torch.allclose(window_mask(user, done, settings)[0, :2, 8], torch.tensor([0.375, 0.5]))  # a step
    faded = window_mask(user * 0.1, done, settings, strength=0.1, frame=frame)
    assert torch.allclose(faded[0, :3, 8], torch.tensor([0.0125, 0.025, 0.1]))  # a ramp from the edge, then new
    assert torch.equal(window_mask(user * 0.1, done, settings, strength=0.1, frame=torch.zeros_like(frame)),
                       window_mask(user * 0.1, done, settings, strength=0.1))  # nothing beyond: no fade


def test_a_fill_start_regenerates_the_overlap_at_its_strength_without_a_seam(adm16, one_thread, monkeypatch):
    import comfyui_rad.tiles as tiles
    from comfyui_rad.fill import harmonic_fill
    from comfyui_rad.metrics import region_seam
    from comfyui_rad.pipeline import plan_inpaint

    image, mask = picture(), box_hole(40, 50, (9, 31, 9, 31))  # corner windows overlap by 2 rows, not 4
    assert plan_inpaint(SIZE, image, mask, start="harmonic", start_strength=0.1).strength == 0.1
    assert plan_inpaint(SIZE, image, mask, start="noise", start_strength=0.1).strength == 1.0
    owners, hole, fill = tiles.owner_map(mask[0], plan_tiles(mask[0], SIZE)), mask[0] > 0, harmonic_fill(image, mask)

    def seams(rule):  # at the borders between windows, and between pixels of one window (the level without a border)
        monkeypatch.setattr("comfyui_rad.plan.window_mask", rule)
        out, _ = inpaint(adm16, image, mask, steps=3, sampler="ddim", seed=0, fit="tiles", start="harmonic",
                         start_strength=0.1)
        keep = (mask == 0)[:, None].expand_as(image)
        assert torch.equal(out[keep], image[keep])
        return float(region_seam(out, fill, owners, hole)[0]), float(region_seam(out, fill, owners, hole,
                                                                                 across=False)[0])

    rule = tiles.window_mask
    window, inside = seams(rule)
    unscaled, _ = seams(lambda mask, filled, settings, guided=False, strength=1.0, frame=None:
                        rule(mask, filled, settings, guided))  # before issue 21's fix: min(0.1 m, ramp)
    unfaded, _ = seams(lambda mask, filled, settings, guided=False, strength=1.0, frame=None:
                       rule(mask, filled, settings, guided, strength))  # scaled, but a step at the window's edge
    assert unscaled > 1.2 * window and unfaded > 1.05 * window
    assert window < 1.1 * inside  # at the level inside a window: no seam
