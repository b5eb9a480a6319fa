#!/usr/bin/env python
"""Check ``comfyui_rad.perceptual`` (plain-torch LPIPS and FID Inception) against the reference packages' own code.

No pretrained weights can be fetched here, so both sides run on the same random weights, written to files in the
reference packages' layouts and read back with our loaders:

1. LPIPS: ``lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True)`` after ``torch.manual_seed``: torchvision's
   randomly initialised AlexNet trunk with the REAL v0.1 linear heads shipped in the lpips wheel
   (``lpips/weights/v0.1/alex.pth``). Its ``state_dict()`` is saved and read with ``load_lpips`` (single-file layout);
   torchvision's full ``alexnet()`` state dict (``features.*`` + ``classifier.*``) is saved and read together with the
   wheel's ``alex.pth`` (two-file layout). Distances (ours on [0,1], lpips with ``normalize=True``) are compared on
   seeded random image pairs and on a smooth image against blurred / noised / shifted copies of itself (and itself),
   at 64x64 and 80x120.
2. FID Inception: pytorch-fid's ``InceptionV3([3], resize_input=True, normalize_input=True,
   use_fid_inception=True)``. Its ``fid_inception_v3()`` would download ``pt_inception-2015-12-05``; here
   ``pytorch_fid.inception.load_state_dict_from_url`` is monkeypatched to return the freshly built torchvision
   ``Inception3``'s own state dict, so nothing is downloaded. The weights are then randomised in place (seeded
   conv weights ~ N(0, 2/fan_in), BN affine random, BN running stats calibrated on one batch in train mode so the
   activations stay O(1) through all 94 layers), and the torchvision ``Inception3`` state dict (the
   ``pt_inception-2015-12-05-6726825d.pth`` key layout, ``fc.*`` included) is saved, with and without
   ``*.num_batches_tracked``, and read with ``load_inception``. 2048-d pool3 features are compared on seeded images
   of 64x64, 80x120 and 299x299 (both sides take [0,1]).
3. Fréchet distance: ``comfyui_rad.metrics.frechet_distance`` against pytorch-fid's ``calculate_frechet_distance``
   (numpy/scipy, fed ``np.mean`` / ``np.cov`` as ``calculate_activation_statistics`` does) on the same float32
   pytorch-fid features of two small image sets (24 smooth images vs 24 blurred + noised others), in all 2048
   dimensions (rank-deficient covariances: few images) and in the first 16 (full rank); plus the end-to-end value
   (our features + our FD vs pytorch-fid's features + its FD).

It prints a markdown table (max |ours - ref|, the largest elementwise ratio |ours - ref| / |ref|, and max |ours - ref|
over max |ref|) and exits 1 when a difference is over its tolerance (see ``--help``), 2 when a reference package is
missing or does not import. It never downloads anything: the reference weights are never fetched, and a missing
package is named with the ``pip install --no-deps ...`` line that adds it.

Setup (a venv of its own: the reference packages are not dependencies of comfyui-rad) and run::

    python -m venv /tmp/pcheck
    /tmp/pcheck/bin/pip install torch==2.13.0          # the local CPU wheel; never let pip pull a CUDA torch
    /tmp/pcheck/bin/pip install --no-deps torchvision==0.28.0 lpips pytorch-fid
    /tmp/pcheck/bin/pip install numpy scipy pillow safetensors tqdm
    /tmp/pcheck/bin/pip install --no-deps -e .        # comfyui_rad itself (or run with PYTHONPATH=.)
    /tmp/pcheck/bin/python scripts/check_perceptual.py --threads 1

(torchvision must match torch: 0.28 for torch 2.13. A CUDA build of torchvision next to a CPU torch cannot load its
C++ ops; the script then registers stubs for the two op schemas torchvision's import needs; the models used here
are pure Python and do not call them.)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import logging
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("check_perceptual")

PACKAGES = {  # import name -> how to install it without pulling another torch
    "torchvision": "pip install --no-deps torchvision==0.28.0  (or the release matching your torch)",
    "lpips": "pip install --no-deps lpips",
    "pytorch_fid": "pip install --no-deps pytorch-fid",
    "numpy": "pip install numpy",
    "scipy": "pip install scipy",
    "tqdm": "pip install tqdm  (lpips imports it)",
    "PIL": "pip install pillow  (pytorch_fid.fid_score imports it)",
    "safetensors": "pip install safetensors  (comfyui_rad imports it)",
}

# Tolerances, float32 forward passes (see --help epilog for the reasoning).
TOL_LPIPS = dict(atol=1e-7, rtol=1e-5)             # per distance
TOL_FEATURES = dict(rtol=1e-4, per="max")           # of the largest feature in the batch
TOL_FRECHET = dict(rtol=1e-5)                       # the same features -> two exact formulas, both in float64
TOL_FID_END_TO_END = dict(rtol=1e-4)                # through the two float32 networks


_STUB_LIBRARY = None  # torch.library.Library holding stub torchvision op schemas, when needed (must stay alive)


class MissingPackage(RuntimeError):
    pass


def require_packages() -> None:
    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingPackage("missing reference package(s): " + ", ".join(missing) + ". Install into this venv "
                             "(nothing is downloaded at run time):\n  " + "\n  ".join(PACKAGES[m] for m in missing))


def import_torchvision():
    """Import torchvision, tolerating a build whose C++ ops cannot load against this torch (e.g. the PyPI CUDA
    wheel next to a CPU torch: ``libc10_cuda.so`` missing). torchvision's ``_meta_registrations`` registers fake
    kernels for ``torchvision::nms`` / ``qnms`` at import and fails if those schemas do not exist, so we define
    them (schemas only). The models used here (AlexNet, Inception3) are pure Python."""
    global _STUB_LIBRARY
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    spec = importlib.util.find_spec("torchvision")
    package = Path(spec.submodule_search_locations[0])
    libs = sorted(package.glob("_C*.so")) + sorted(package.glob("_C*.pyd"))
    error = "no _C library found"
    for lib in libs:
        try:
            torch.ops.load_library(str(lib))
            error = None
            break
        except (OSError, RuntimeError) as err:
            error = str(err).splitlines()[0][:160]
    if error:
        log.warning("torchvision's C++ ops do not load (%s); stubbing the op schemas its import needs", error)
        _STUB_LIBRARY = torch.library.Library("torchvision", "DEF")
        _STUB_LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _STUB_LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchvision
    except Exception as err:  # noqa: BLE001 - any import failure means a torchvision that does not fit this torch
        raise MissingPackage(f"torchvision does not import with torch {torch.__version__} ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:160]}): install the matching release, e.g. "
                             f"{PACKAGES['torchvision']}") from None
    return torchvision


# ------------------------------------------------------------------------------------------------------- images


def smooth_images(batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    """Seeded 'natural-ish' images in [0,1]: bicubic-upsampled coarse noise plus a colour gradient and a disc."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, max(2, height // 8), max(2, width // 8), generator=g)
    img = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    tint = torch.rand(batch, 3, 1, 1, generator=g)
    img = 0.6 * img + 0.3 * tint * (xx + yy)[None, None] / 2
    centre = torch.rand(batch, 2, 1, 1, generator=g)
    disc = ((yy[None, None] - centre[:, :1]) ** 2 + (xx[None, None] - centre[:, 1:]) ** 2 < 0.05).float()
    return (img + 0.4 * disc * torch.rand(batch, 3, 1, 1, generator=g)).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Content moved by (dy, dx) pixels (dy, dx >= 0), the uncovered border replicated."""
    h, w = x.shape[-2:]
    return F.pad(x, (dx, 0, dy, 0), mode="replicate")[..., :h, :w]


def lpips_pairs(height: int, width: int, batch: int, seed: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = smooth_images(batch, height, width, seed + 1)
    noise = torch.randn(base.shape, generator=g)
    shape = (batch, 3, height, width)
    return [
        ("random pairs", torch.rand(shape, generator=g), torch.rand(shape, generator=g)),
        ("vs blurred s=1.5", base, gaussian_blur(base, 1.5)),
        ("vs noised s=0.05", base, (base + 0.05 * noise).clamp(0, 1)),
        ("vs shifted (2,3)px", base, shifted(base, 2, 3)),
        ("vs itself", base, base.clone()),
    ]


# -------------------------------------------------------------------------------------------------- comparisons


class Table:
    """Rows of ours-vs-reference differences. A row passes when every |ours - ref| <= atol + rtol * s, with s the
    element's own |ref| (``per="element"``) or max |ref| over the row (``per="max"``: for features, where some
    elements are ~0 and an elementwise ratio means nothing)."""

    def __init__(self):
        self.rows = []

    def add(self, check: str, ours, ref, *, rtol: float, atol: float = 0.0, per: str = "element",
            note: str = "") -> None:
        ours, ref = torch.as_tensor(ours, dtype=torch.float64), torch.as_tensor(ref, dtype=torch.float64)
        if ours.shape != ref.shape:
            raise AssertionError(f"{check}: shapes differ, ours {tuple(ours.shape)} vs ref {tuple(ref.shape)}")
        diff, size = (ours - ref).abs(), ref.abs()
        scale = size.max().item()
        bound = atol + rtol * (size if per == "element" else scale)
        ok = bool(torch.isfinite(ours).all() and (diff <= bound).all())
        elementwise = torch.where(diff == 0, 0.0, diff / size).max().item()  # inf where ref = 0 != ours
        to_max = diff.max().item() / scale if scale > 0 else (0.0 if diff.max() == 0 else math.inf)
        tol = f"{rtol:.0e}*max\\|ref\\|" if per == "max" else f"{rtol:.0e}*\\|ref\\|"
        tol += f" + {atol:.0e}" if atol else ""
        self.rows.append((check + (f" ({note})" if note else ""), ref.numel(), scale, diff.max().item(), elementwise,
                          to_max, tol, ok))
        log.info("%-44s max|ref| %.4g  max|diff| %.3g  rel %.3g  %s", check, scale, diff.max().item(),
                 elementwise if per == "element" else to_max, "ok" if ok else "FAIL")

    def print(self) -> bool:
        head = ("check", "n", "max \\|ref\\|", "max \\|ours-ref\\|", "max elementwise rel", "max diff / max \\|ref\\|",
                "tolerance", "ok")
        print("\n| " + " | ".join(head) + " |")
        print("|" + "|".join("---" for _ in head) + "|")
        for check, n, scale, diff, elementwise, to_max, tol, ok in self.rows:
            print(f"| {check} | {n} | {scale:.4g} | {diff:.3g} | {elementwise:.3g} | {to_max:.3g} | {tol} "
                  f"| {'yes' if ok else 'NO'} |")
        return all(row[-1] for row in self.rows)


@torch.no_grad()
def check_lpips(table: Table, tmp: Path, args) -> None:
    import_torchvision()
    import lpips
    import lpips.pretrained_networks as pn

    from comfyui_rad.perceptual import load_lpips

    recorded = {}
    real_alexnet = pn.tv.alexnet

    def recording_alexnet(*a, **k):  # keep torchvision's whole AlexNet (lpips keeps only .features)
        recorded["alexnet"] = real_alexnet(*a, **k)
        return recorded["alexnet"]

    pn.tv.alexnet = recording_alexnet
    try:
        torch.manual_seed(args.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's "pretrained is deprecated"
            ref = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    finally:
        pn.tv.alexnet = real_alexnet
    heads = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    full, alexnet = tmp / "lpips_alex.pth", tmp / "alexnet-random.pth"
    torch.save(ref.state_dict(), full)
    torch.save(recorded["alexnet"].state_dict(), alexnet)
    real_heads = torch.load(heads, map_location="cpu", weights_only=True)
    assert all(torch.equal(ref.state_dict()[k], v) for k, v in real_heads.items()), "lpips did not load its heads"
    log.info("LPIPS: lpips %s, random AlexNet (seed %d) + the wheel's heads %s", importlib.metadata.version("lpips"),
             args.seed, heads)

    models = {"1 file": load_lpips(full), "2 files": load_lpips([alexnet, heads])}
    ref_sd = ref.state_dict()
    for name, model in models.items():
        sd = model.state_dict()
        bad = [k for k in sd if not torch.equal(sd[k], ref_sd[k])]
        assert not bad, f"LPIPS ({name}) loaded different weights: {bad[:3]}"

    for h, w in args.lpips_sizes:
        for what, x, y in lpips_pairs(h, w, args.batch, args.seed + h * 1000 + w):
            expected = ref(x, y, normalize=True).flatten()
            # the [-1,1] entry point of lpips (normalize=False) is the same computation
            assert torch.equal(expected, ref(2 * x - 1, 2 * y - 1).flatten())
            for name, model in models.items():
                got = model(x, y)
                if name == "2 files":
                    assert torch.equal(got, models["1 file"](x, y)), "the two LPIPS layouts disagree"
                    continue
                table.add(f"LPIPS {h}x{w} {what}", got, expected, **TOL_LPIPS, note="both layouts equal")
                if what == "vs itself":
                    assert got.abs().max().item() == 0 and expected.abs().max().item() == 0


@torch.no_grad()
def randomise_inception(inception: nn.Module, ref: nn.Module, seed: int, calibration: torch.Tensor) -> None:
    """Seeded conv weights N(0, 2/fan_in), random BN affine, BN running stats calibrated on one batch."""
    g = torch.Generator().manual_seed(seed)
    for m in inception.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / m.weight[0].numel()))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
            m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch -> its own statistics
        elif isinstance(m, nn.Linear):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.01)
            m.bias.zero_()
    ref.train()
    ref(calibration)
    ref.eval()
    for m in inception.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
            assert m.num_batches_tracked.item() == 1, "a BatchNorm was not on pytorch-fid's pool3 path"


@torch.no_grad()
def check_inception(table: Table, tmp: Path, args) -> None:
    import_torchvision()
    import numpy as np
    import pytorch_fid
    import pytorch_fid.inception as pfi
    from pytorch_fid.fid_score import calculate_frechet_distance

    from comfyui_rad.metrics import frechet_distance
    from comfyui_rad.perceptual import load_inception

    recorded = {}
    real_build, real_load = pfi._inception_v3, pfi.load_state_dict_from_url

    def recording_build(*a, **k):
        recorded["inception"] = real_build(*a, **k)
        return recorded["inception"]

    def no_download(url, *a, **k):  # fid_inception_v3 loads this right after building: give it its own weights
        log.info("FID Inception: not downloading %s (random weights instead)", url.rsplit("/", 1)[-1])
        return recorded["inception"].state_dict()

    pfi._inception_v3, pfi.load_state_dict_from_url = recording_build, no_download
    try:
        torch.manual_seed(args.seed)
        ref = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True, normalize_input=True,
                              use_fid_inception=True).eval()
    finally:
        pfi._inception_v3, pfi.load_state_dict_from_url = real_build, real_load
    inception = recorded["inception"]
    randomise_inception(inception, ref, args.seed, smooth_images(args.calibration, 299, 299, args.seed + 7))
    sd = inception.state_dict()  # torchvision Inception3 names = the pt_inception-2015-12-05 layout, fc included
    assert "fc.weight" in sd and not any(k.startswith("AuxLogits") for k in sd)
    torch.save(sd, tmp / "pt_inception-random.pth")
    torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, tmp / "pt_inception-nbt.pth")
    log.info("FID Inception: pytorch-fid %s, %d tensors saved", pytorch_fid.__version__, len(sd))

    ours = load_inception(tmp / "pt_inception-random.pth")
    other = load_inception(tmp / "pt_inception-nbt.pth")
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), other.state_dict().values()))
    own = ours.state_dict()
    bad = [k for k in own if not k.endswith("num_batches_tracked") and not torch.equal(own[k], sd[k])]
    assert not bad, f"Inception loaded different weights: {bad[:3]}"

    def reference_features(x):
        return ref(x)[0].flatten(1)

    for h, w in args.inception_sizes:
        g = torch.Generator().manual_seed(args.seed + h * 1000 + w)
        x = torch.rand(args.batch, 3, h, w, generator=g)
        table.add(f"Inception pool3 {h}x{w} random", ours(x), reference_features(x), **TOL_FEATURES)
        x = smooth_images(args.batch, h, w, args.seed + h + w)
        table.add(f"Inception pool3 {h}x{w} smooth", ours(x), reference_features(x), **TOL_FEATURES)

    # Fréchet distance: two small sets, smooth images against blurred + noised copies of other smooth images
    n = args.fid_images
    set1 = smooth_images(n, 64, 64, args.seed + 11)
    set2 = smooth_images(n, 64, 64, args.seed + 12)
    set2 = (gaussian_blur(set2, 1.0) + 0.05 * torch.randn(set2.shape, generator=torch.Generator().manual_seed(3)))
    set2 = set2.clamp(0, 1)
    chunks = lambda t: t.split(args.batch)  # noqa: E731
    ref1 = torch.cat([reference_features(c) for c in chunks(set1)]).numpy()  # float32 as pytorch-fid keeps them
    ref2 = torch.cat([reference_features(c) for c in chunks(set2)]).numpy()
    our1 = torch.cat([ours(c) for c in chunks(set1)])
    our2 = torch.cat([ours(c) for c in chunks(set2)])
    table.add(f"Inception pool3 64x64 FID sets (2x{n})", torch.cat([our1, our2]), np.concatenate([ref1, ref2]),
              **TOL_FEATURES)

    def pytorch_fid_fd(a, b):
        # calculate_activation_statistics: mu = np.mean(act, axis=0), sigma = np.cov(act, rowvar=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(calculate_frechet_distance(np.mean(a, axis=0), np.cov(a, rowvar=False),
                                                    np.mean(b, axis=0), np.cov(b, rowvar=False)))

    # the same float32 features (as pytorch-fid keeps them) into both Fréchet distances; pytorch-fid's 2048-d
    # value is also the end-to-end reference (one scipy sqrtm of 2048x2048 takes about a minute on one thread)
    theirs = {}
    for dims in (16, 2048):
        rank = "full-rank cov" if n > dims else f"rank {n - 1} cov"
        t0 = time.perf_counter()
        theirs[dims] = pytorch_fid_fd(ref1[:, :dims], ref2[:, :dims])
        mine = frechet_distance(torch.from_numpy(ref1[:, :dims]), torch.from_numpy(ref2[:, :dims]))
        log.info("FD %d dims: ours %.10g, pytorch-fid %.10g (%.1fs)", dims, mine, theirs[dims],
                 time.perf_counter() - t0)
        table.add(f"Frechet distance, same features, {dims}-d", [mine], [theirs[dims]], **TOL_FRECHET, note=rank)
    table.add("FID end to end (our net + FD vs theirs)", [frechet_distance(our1, our2)], [theirs[2048]],
              **TOL_FID_END_TO_END, note=f"rank {n - 1} cov")


def size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    return int(h), int(w or h)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Tolerances (float32 networks; ours runs the same float32 ops in the same order, so the "
               "differences seen are 0): LPIPS |d| <= 1e-7 + 1e-5 |ref| per distance (random-trunk distances are "
               "only 0.003-0.1, so a flat 1e-5 would let a changed scaling-layer constant pass; a summation-order "
               "change gives ~1e-7 relative); Inception features 1e-4 of the largest feature (94 conv/BN layers "
               "in float32; elementwise ratios mean nothing for features near 0); Fréchet distance on the same "
               "features 1e-5 relative (float64 eigh against scipy's sqrtm of a possibly singular product, "
               "~1e-7 seen); end-to-end FID 1e-4 relative.")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=4, help="images per forward (default 4)")
    parser.add_argument("--lpips-sizes", type=size, nargs="+", default=[(64, 64), (80, 120)], metavar="HxW")
    parser.add_argument("--inception-sizes", type=size, nargs="+", default=[(64, 64), (80, 120), (299, 299)],
                        metavar="HxW")
    parser.add_argument("--fid-images", type=int, default=24, help="images per set for the Fréchet checks")
    parser.add_argument("--calibration", type=int, default=4, help="images for the Inception BN statistics")
    parser.add_argument("--skip", choices=["lpips", "inception"], action="append", default=[])
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if {"lpips", "inception"} <= set(args.skip):
        parser.error("nothing left to check")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    try:
        require_packages()
        tv = import_torchvision()
    except MissingPackage as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import pytorch_fid

    print(f"torch {torch.__version__}, torchvision {tv.__version__}, lpips {importlib.metadata.version('lpips')}, "
          f"pytorch-fid {pytorch_fid.__version__}, threads {torch.get_num_threads()}")
    table = Table()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="check_perceptual_") as tmp:
        if "lpips" not in args.skip:
            check_lpips(table, Path(tmp), args)
        if "inception" not in args.skip:
            check_inception(table, Path(tmp), args)
    ok = table.print()
    verdict = "all within tolerance" if ok else "SOME DIFFERENCES OVER TOLERANCE"
    print(f"\n{verdict} ({time.perf_counter() - start:.0f}s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
