#!/usr/bin/env python
"""Generate golden ADM UNet outputs with openai/guided-diffusion itself.

guided-diffusion is NOT a dependency of this project and none of its code is
vendored: this script imports ``guided_diffusion.unet`` from an external
checkout given by ``--gd``.  The fixtures it writes let
``tests/test_adm_golden.py`` check ``comfyui_rad.load_adm`` without it.

    git clone https://github.com/openai/guided-diffusion /tmp/gd
    python scripts/make_golden_adm.py --gd /tmp/gd

For every layout it builds ``UNetModel(**kwargs)`` (float32, CPU, eval), fills
it with ``tests/_golden.random_state_dict(shapes, seed)`` and writes
``tests/data/gd_<layout>.safetensors`` with tensors ``x``, ``t_int``,
``t_frac``, ``out_int``, ``out_frac`` (and ``y`` when class-conditional) and
str metadata ``gd_kwargs``, ``shapes``, ``seed``, ``gd_commit``,
``weights_checksum``.

It also recomputes every output in float64 (float64 weights, float64 timestep
embedding, guided-diffusion's internal float32 casts neutralised) and prints
the float32-vs-float64 gap; those float64 values are not stored.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from _golden import random_state_dict, weights_checksum  # noqa: E402

MAX_BYTES = 300 * 1024

_COMMON = dict(
    in_channels=3,
    dropout=0.0,
    conv_resample=True,
    dims=2,
    use_checkpoint=False,
    use_fp16=False,
)

# attention_resolutions are downsample factors ds (what guided-diffusion's
# script_util computes as image_size // int(res)).
LAYOUTS = {
    # 256x256_diffusion_uncond layout (attention_resolutions "32,16,8" at 256),
    # shrunk to model_channels=32 and a 32x32 input.
    "uncond256": dict(
        seed=1000,
        size=32,
        kwargs=dict(
            model_channels=32,
            out_channels=6,
            num_res_blocks=2,
            attention_resolutions=[8, 16, 32],
            channel_mult=[1, 1, 2, 2, 4, 4],
            num_classes=None,
            num_heads=4,
            num_head_channels=16,
            num_heads_upsample=-1,
            use_scale_shift_norm=True,
            resblock_updown=True,
            use_new_attention_order=False,
        ),
    ),
    # DPS ffhq_10m layout (attention_resolutions "16" at 256), shrunk.
    "ffhq10m": dict(
        seed=2000,
        size=32,
        kwargs=dict(
            model_channels=32,
            out_channels=6,
            num_res_blocks=1,
            attention_resolutions=[16],
            channel_mult=[1, 1, 2, 2, 4, 4],
            num_classes=None,
            num_heads=4,
            num_head_channels=16,
            num_heads_upsample=-1,
            use_scale_shift_norm=True,
            resblock_updown=True,
            use_new_attention_order=False,
        ),
    ),
    # Other code paths: class labels, conv Downsample/Upsample, no FiLM,
    # head count (not width), a different head count on the way up.
    "cond_small": dict(
        seed=3000,
        size=32,
        kwargs=dict(
            model_channels=32,
            out_channels=6,
            num_res_blocks=1,
            attention_resolutions=[2, 4],
            channel_mult=[1, 2, 2],
            num_classes=10,
            num_heads=4,
            num_head_channels=-1,
            num_heads_upsample=2,
            use_scale_shift_norm=False,
            resblock_updown=False,
            use_new_attention_order=False,
        ),
    ),
    # QKVAttention (new order), FiLM, ResBlock up/down, no learned sigma.
    "neworder_small": dict(
        seed=4000,
        size=32,
        kwargs=dict(
            model_channels=32,
            out_channels=3,
            num_res_blocks=1,
            attention_resolutions=[2, 4],
            channel_mult=[1, 2, 2],
            num_classes=None,
            num_heads=4,
            num_head_channels=32,
            num_heads_upsample=2,
            use_scale_shift_norm=True,
            resblock_updown=True,
            use_new_attention_order=True,
        ),
    ),
}

T_INT = [999.0, 10.0]
T_FRAC = [500.25, 3.7]
Y = [3, 7]


def _gd_commit(gd: Path) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(gd), "rev-parse", "HEAD"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _timestep_embedding_f64(timesteps, dim, max_period=10000):
    half = dim // 2
    k = torch.arange(half, dtype=torch.float64)
    freqs = torch.exp(-math.log(max_period) * k / half)
    args = timesteps.double()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


@contextlib.contextmanager
def _float64_mode(unet_mod, model, f64_embedding: bool):
    """Keep guided-diffusion's hard-coded float32 casts from downcasting.

    GroupNorm32 and the attention softmax call ``.float()``; the model casts
    its input to ``model.dtype``; timestep_embedding builds float32 freqs.
    """
    orig_float = torch.Tensor.float
    orig_emb = unet_mod.timestep_embedding
    orig_dtype = model.dtype

    def keep64(self, *a, **k):
        if self.dtype == torch.float64:
            return self
        return orig_float(self, *a, **k)

    def emb32_as64(timesteps, dim, max_period=10000):
        return orig_emb(timesteps.to(torch.float32), dim, max_period).double()

    torch.Tensor.float = keep64
    unet_mod.timestep_embedding = _timestep_embedding_f64 if f64_embedding else emb32_as64
    model.dtype = torch.float64
    try:
        yield
    finally:
        torch.Tensor.float = orig_float
        unet_mod.timestep_embedding = orig_emb
        model.dtype = orig_dtype


def _canonicalize_header(path: Path) -> None:
    """Rewrite the safetensors JSON header with sorted keys.

    safetensors serialises ``__metadata__`` from a hash map, so its order (and
    hence the file bytes) varies from run to run; sorting makes regeneration
    byte-for-byte reproducible.  Data offsets are relative to the end of the
    header, so only the header changes.
    """
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    new = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + n:])


def make_layout(unet_mod, name: str, spec: dict, out_dir: Path, commit: str) -> dict:
    seed, size, kw = spec["seed"], spec["size"], spec["kwargs"]
    gd_kwargs = dict(image_size=size, **_COMMON, **kw)
    ctor = dict(gd_kwargs)
    ctor["attention_resolutions"] = tuple(kw["attention_resolutions"])
    ctor["channel_mult"] = tuple(kw["channel_mult"])

    model = unet_mod.UNetModel(**ctor).eval()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    sd = random_state_dict(shapes, seed)
    model.load_state_dict(sd, strict=True)

    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    t_int = torch.tensor(T_INT, dtype=torch.float32)
    t_frac = torch.tensor(T_FRAC, dtype=torch.float32)
    y = torch.tensor(Y, dtype=torch.int64) if kw["num_classes"] is not None else None
    extra = {} if y is None else {"y": y}

    with torch.no_grad():
        out_int = model(x, t_int, **extra).contiguous()
        out_frac = model(x, t_frac, **extra).contiguous()

        gaps = {}
        m64 = unet_mod.UNetModel(**ctor).eval()
        m64.load_state_dict(sd, strict=True)
        m64.double()
        for f64_emb in (True, False):
            with _float64_mode(unet_mod, m64, f64_emb):
                ref_i = m64(x.double(), t_int.double(), **extra)
                ref_f = m64(x.double(), t_frac.double(), **extra)
            gaps["full_f64" if f64_emb else "f64_net_f32_emb"] = max(
                (out_int.double() - ref_i).abs().max().item(),
                (out_frac.double() - ref_f).abs().max().item(),
            )

    tensors = {"x": x, "t_int": t_int, "t_frac": t_frac,
               "out_int": out_int, "out_frac": out_frac, **extra}
    metadata = {
        "gd_kwargs": json.dumps(gd_kwargs, sort_keys=True),
        "shapes": json.dumps(shapes),
        "seed": str(seed),
        "gd_commit": commit,
        "weights_checksum": weights_checksum(sd),
    }
    path = out_dir / f"gd_{name}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    _canonicalize_header(path)

    nbytes = path.stat().st_size
    if nbytes > MAX_BYTES:
        raise SystemExit(f"{path} is {nbytes} bytes, over {MAX_BYTES}")
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == metadata
        assert torch.equal(f.get_tensor("out_int"), out_int)

    return dict(
        path=str(path.relative_to(REPO) if path.is_relative_to(REPO) else path),
        bytes=nbytes, keys=len(shapes),
        params=sum(math.prod(s) for s in shapes.values()),
        out_absmax=max(out_int.abs().max().item(), out_frac.abs().max().item()),
        **gaps,
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gd", required=True, type=Path,
                    help="path to a guided-diffusion checkout (contains guided_diffusion/)")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data")
    ap.add_argument("--gd-commit", default=None,
                    help="commit sha to record when --gd is not a git work tree")
    ap.add_argument("--only", nargs="*", choices=sorted(LAYOUTS), default=None)
    args = ap.parse_args(argv)

    gd = args.gd.resolve()
    if not (gd / "guided_diffusion" / "unet.py").is_file():
        raise SystemExit(f"{gd} is not a guided-diffusion checkout")
    sys.path.insert(0, str(gd))
    import guided_diffusion.unet as unet_mod

    commit = args.gd_commit or _gd_commit(gd)
    torch.set_num_threads(1)  # deterministic reduction order on CPU
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or LAYOUTS:
        info = make_layout(unet_mod, name, LAYOUTS[name], args.out, commit)
        print(f"{name}: " + ", ".join(
            f"{k}={v:.3e}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items()))
    print(f"guided-diffusion commit: {commit}")


if __name__ == "__main__":
    main()
