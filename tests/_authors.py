"""Tiny checkpoints in the RAD authors' on-disk format, written by hand (no diffusers), and an independent reference
of their network's forward pass (shared/AUTHORS_FORMAT.md), both on diffusers-named tensors.

Nothing here uses comfyui_rad: the reference follows the authors' LocalUNet2DModel (diffusers' UNet2DModel wiring,
standard head split, GroupNorm eps from the config, per-pixel timestep embedding, SiLU(temb) resized bilinearly with
align_corners=True in every ResnetBlock2D, scale-shift), with LoRA applied unmerged: y = base(x) + B(A(x)).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

# The two ADM families the authors fine-tuned, shrunk: 256x256 ImageNet/LSUN (2 res blocks, attention at several
# resolutions, resblock up/down) and the 93 M FFHQ model (1 res block, attention at one resolution).
IMAGENET_LIKE = {
    "_class_name": "LocalUNet2DModel", "_diffusers_version": "0.30.0.dev0",
    "sample_size": 16, "in_channels": 3, "out_channels": 6, "center_input_sample": False,
    "time_embedding_type": "positional", "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ["ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"],
    "block_out_channels": [16, 16, 32, 32], "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "resnet", "upsample_type": "resnet", "dropout": 0.0,
    "act_fn": "silu", "attention_head_dim": 8, "norm_num_groups": 4, "attn_norm_num_groups": 4, "norm_eps": 1e-6,
    "resnet_time_scale_shift": "scale_shift", "add_attention": True, "class_embed_type": None,
    "num_class_embeds": None, "num_train_timesteps": 1, "attention_legacy_order": True,
}
FFHQ_LIKE = {
    **IMAGENET_LIKE,
    "sample_size": 32,
    "down_block_types": ["ResnetDownsampleBlock2D"] * 3 + ["AttnDownBlock2D", "ResnetDownsampleBlock2D"],
    "up_block_types": ["ResnetUpsampleBlock2D", "AttnUpBlock2D"] + ["ResnetUpsampleBlock2D"] * 3,
    "block_out_channels": [16, 16, 32, 32, 64], "layers_per_block": 1, "attention_head_dim": 16,
}


def _plain(config: dict) -> dict:
    """The same network as a plain diffusers UNet2DModel conversion of a guided-diffusion ADM."""
    return {**config, "_class_name": "UNet2DModel"}


def module_shapes(config: dict, rad: bool = True) -> dict[str, dict]:
    """{module: {"shape": weight shape, "lora": bool, "norm": bool, "gd": guided-diffusion name}} of the network
    (the "gd" names follow guided-diffusion's UNetModel numbering, for the conversion tests)."""
    boc, nrb, temb = config["block_out_channels"], config["layers_per_block"], 4 * config["block_out_channels"][0]
    mods: dict[str, dict] = {}

    def conv(name, cin, cout, gd, k=3, lora=True):
        mods[name] = {"shape": (cout, cin, k, k), "lora": lora, "gd": gd}

    def norm(name, c, gd):
        mods[name] = {"shape": (c,), "lora": False, "norm": True, "gd": gd}

    def linear(name, cin, cout, gd):
        mods[name] = {"shape": (cout, cin), "lora": True, "gd": gd}

    def time(name, cin, cout, gd):
        mods[name] = {"shape": (cout, cin, 1, 1) if rad else (cout, cin), "lora": False, "gd": gd}

    def resnet(p, cin, cout, gd):
        norm(p + ".norm1", cin, gd + ".in_layers.0")
        conv(p + ".conv1", cin, cout, gd + ".in_layers.2")
        time(p + ".time_emb_proj", temb, 2 * cout, gd + ".emb_layers.1")
        norm(p + ".norm2", cout, gd + ".out_layers.0")
        conv(p + ".conv2", cout, cout, gd + ".out_layers.3")
        if cin != cout:
            conv(p + ".conv_shortcut", cin, cout, gd + ".skip_connection", k=1, lora=False)

    def attention(p, c, gd):
        norm(p + ".group_norm", c, gd + ".norm")
        for part in ("to_q", "to_k", "to_v"):
            linear(f"{p}.{part}", c, c, f"{gd}.qkv[{part}]")
        linear(f"{p}.to_out.0", c, c, gd + ".proj_out")

    conv("conv_in", config["in_channels"], boc[0], "input_blocks.0.0")
    time("time_embedding.linear_1", boc[0], temb, "time_embed.0")
    time("time_embedding.linear_2", temb, temb, "time_embed.2")
    out, n = boc[0], 1
    for i, kind in enumerate(config["down_block_types"]):
        cin, out = out, boc[i]
        for j in range(nrb):
            resnet(f"down_blocks.{i}.resnets.{j}", cin if j == 0 else out, out, f"input_blocks.{n}.0")
            if "Attn" in kind:
                attention(f"down_blocks.{i}.attentions.{j}", out, f"input_blocks.{n}.1")
            n += 1
        if i < len(boc) - 1:
            resnet(f"down_blocks.{i}.downsamplers.0", out, out, f"input_blocks.{n}.0")
            n += 1
    resnet("mid_block.resnets.0", boc[-1], boc[-1], "middle_block.0")
    attention("mid_block.attentions.0", boc[-1], "middle_block.1")
    resnet("mid_block.resnets.1", boc[-1], boc[-1], "middle_block.2")
    rev = list(reversed(boc))
    prev, n = rev[0], 0
    for i, kind in enumerate(config["up_block_types"]):
        out, skip_in = rev[i], rev[min(i + 1, len(boc) - 1)]
        for j in range(nrb + 1):
            skip = skip_in if j == nrb else out
            resnet(f"up_blocks.{i}.resnets.{j}", (prev if j == 0 else out) + skip, out, f"output_blocks.{n}.0")
            if "Attn" in kind:
                attention(f"up_blocks.{i}.attentions.{j}", out, f"output_blocks.{n}.1")
            if j == nrb and i < len(boc) - 1:
                resnet(f"up_blocks.{i}.upsamplers.0", out, out, f"output_blocks.{n}.{2 if 'Attn' in kind else 1}")
            n += 1
        prev = out
    norm("conv_norm_out", boc[0], "out.0")
    conv("conv_out", boc[0], config["out_channels"], "out.2")
    return mods


def to_guided_diffusion(sd: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A plain diffusers conversion's tensors under guided-diffusion's keys: what the conversion split, joined back
    (qkv rows = [to_q; to_k; to_v], Conv1d shapes for qkv / proj_out)."""
    out, qkv = {}, {}
    for name, m in module_shapes(config, rad=False).items():
        for param in ("weight", "bias"):
            t = sd[f"{name}.{param}"]
            if "[" in m["gd"]:
                prefix, part = m["gd"][:-1].split("[")
                qkv.setdefault((prefix, param), {})[part] = t
                continue
            if m["gd"].endswith("proj_out") and param == "weight":
                t = t[:, :, None]
            out[f"{m['gd']}.{param}"] = t
    for (prefix, param), parts in qkv.items():
        t = torch.cat([parts["to_q"], parts["to_k"], parts["to_v"]])
        out[f"{prefix}.{param}"] = t[:, :, None] if param == "weight" else t  # prefix ends in .qkv
    return out


def authors_state_dict(config: dict, seed: int = 0, rank: int = 4, rad: bool = True) -> dict[str, torch.Tensor]:
    """Random tensors under the authors' keys: peft's ``.base_layer.`` / ``lora_{A,B}.default`` for LoRA targets
    (``rad``), else a plain UNet2DModel's keys with 2-D time weights. Scales keep activations O(1)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    sd = {}
    for name, m in module_shapes(config, rad).items():
        shape = m["shape"]
        if m.get("norm"):
            sd[name + ".weight"] = 1 + rand(*shape, scale=0.1)
            sd[name + ".bias"] = rand(*shape, scale=0.1)
            continue
        fan_in = math.prod(shape[1:])
        weight, bias = rand(*shape, scale=1 / math.sqrt(fan_in)), rand(shape[0], scale=0.1)
        if rad and m["lora"]:
            sd[name + ".base_layer.weight"], sd[name + ".base_layer.bias"] = weight, bias
            a_shape = (rank, *shape[1:])
            b_shape = (shape[0], rank, 1, 1) if len(shape) == 4 else (shape[0], rank)
            sd[name + ".lora_A.default.weight"] = rand(*a_shape, scale=1 / math.sqrt(fan_in))
            sd[name + ".lora_B.default.weight"] = rand(*b_shape, scale=0.3 / math.sqrt(rank))
        else:
            sd[name + ".weight"], sd[name + ".bias"] = weight, bias
    return sd


def write_checkpoint(root: Path, config: dict, seed: int = 0, rank: int = 4, ema: bool = False) -> Path:
    """An authors' ``checkpoint-N/`` folder: unet/ (+ unet_ema/), the LoRA-only export and accelerate's files."""
    root.mkdir(parents=True, exist_ok=True)
    sd = authors_state_dict(config, seed, rank)
    write_model(root / "unet", config, sd)
    if ema:
        ema_sd = authors_state_dict(config, seed + 1, rank)
        write_model(root / "unet_ema", {**config, "decay": 0.9999, "inv_gamma": 1.0, "power": 0.75}, ema_sd)
    lora_only = {}
    for k, v in sd.items():
        if ".lora_" in k:
            module, ab = k.split(".lora_")
            lora_only[f"unet.{module}.lora_{ab[0]}.weight"] = v
    save_file(lora_only, root / "pytorch_lora_weights.safetensors")
    (root / "optimizer.bin").write_bytes(b"\x80\x04not for unpickling")
    (root / "scheduler.bin").write_bytes(b"\x80\x04not for unpickling")
    (root / "random_states_0.pkl").write_bytes(b"\x80\x04not for unpickling")
    return root


def write_model(folder: Path, config: dict, sd: dict[str, torch.Tensor], bin: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if bin:
        path = folder / "diffusion_pytorch_model.bin"
        torch.save(sd, path)
    else:
        path = folder / "diffusion_pytorch_model.safetensors"
        save_file(sd, path)
    return path


# ------------------------------------------------------------------------------------- the reference forward pass


class Reference:
    """The authors' LocalUNet2DModel forward on a diffusers-named state dict, LoRA unmerged (scale 1)."""

    def __init__(self, sd: dict[str, torch.Tensor], config: dict):
        self.sd, self.cfg = {k: v.double() for k, v in sd.items()}, config
        self.eps, self.groups = config["norm_eps"], config["norm_num_groups"]

    def _w(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        base = name + (".base_layer" if name + ".base_layer.weight" in self.sd else "")
        return self.sd[base + ".weight"], self.sd[base + ".bias"]

    def conv(self, name: str, x: torch.Tensor) -> torch.Tensor:
        w, b = self._w(name)
        if w.ndim == 2:  # plain UNet2DModel time layers: Linear on each pixel
            w = w[:, :, None, None]
        pad = w.shape[-1] // 2
        y = F.conv2d(x, w, b, padding=pad)
        if name + ".lora_A.default.weight" in self.sd:
            a = F.conv2d(x, self.sd[name + ".lora_A.default.weight"], padding=pad)
            y = y + F.conv2d(a, self.sd[name + ".lora_B.default.weight"])
        return y

    def linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        w, b = self._w(name)
        y = F.linear(x, w, b)
        if name + ".lora_A.default.weight" in self.sd:
            y = y + F.linear(F.linear(x, self.sd[name + ".lora_A.default.weight"]),
                             self.sd[name + ".lora_B.default.weight"])
        return y

    def norm(self, name: str, x: torch.Tensor, groups: int | None = None) -> torch.Tensor:
        return F.group_norm(x, groups or self.groups, self.sd[name + ".weight"], self.sd[name + ".bias"], self.eps)

    def temb(self, tau: torch.Tensor) -> torch.Tensor:
        """Per-pixel [cos, sin] embedding of tau [B,1,H,W], then linear_1 / SiLU / linear_2 as 1x1 convs."""
        c0 = self.cfg["block_out_channels"][0]
        half, shift = c0 // 2, self.cfg["freq_shift"]
        n = self.cfg.get("num_train_timesteps", 1)
        max_period = math.pi / n if self.cfg["_class_name"] == "LocalUNet2DModel" and n not in (None, 1) else 10000
        # in float32, as their get_timestep_embedding_local (large arguments lose digits there, as in theirs)
        exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32) / (half - shift)
        args = tau.float() * torch.exp(exponent)[None, :, None, None]
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1).double()
        if self.cfg["flip_sin_to_cos"]:
            emb = torch.cat([emb[:, half:], emb[:, :half]], dim=1)
        h = F.silu(self.conv("time_embedding.linear_1", emb))
        return self.conv("time_embedding.linear_2", h)

    def resnet(self, p: str, x: torch.Tensor, temb: torch.Tensor, up: bool = False, down: bool = False):
        h = F.silu(self.norm(p + ".norm1", x))
        if up:
            x, h = (F.interpolate(v, scale_factor=2.0, mode="nearest") for v in (x, h))
        elif down:
            x, h = F.avg_pool2d(x, 2, 2), F.avg_pool2d(h, 2, 2)
        h = self.conv(p + ".conv1", h)
        t = F.interpolate(F.silu(temb), size=h.shape[-2:], mode="bilinear", align_corners=True)
        t = self.conv(p + ".time_emb_proj", t)
        scale, shift = t.chunk(2, dim=1)
        h = self.norm(p + ".norm2", h) * (1 + scale) + shift
        h = self.conv(p + ".conv2", F.silu(h))
        if p + ".conv_shortcut.weight" in self.sd:
            x = self.conv(p + ".conv_shortcut", x)
        return x + h

    def attention(self, p: str, x: torch.Tensor, groups: int | None = None) -> torch.Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(p + ".group_norm", x, groups).reshape(b, c, hh * ww).transpose(1, 2)  # [B, T, C]
        d = self.cfg["attention_head_dim"]
        heads = c // d
        q, k, v = (self.linear(f"{p}.{n}", h).reshape(b, -1, heads, d).transpose(1, 2)
                   for n in ("to_q", "to_k", "to_v"))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1) @ v  # [B, heads, T, d]
        out = self.linear(p + ".to_out.0", a.transpose(1, 2).reshape(b, hh * ww, c))
        return out.transpose(1, 2).reshape(b, c, hh, ww) + x

    def __call__(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        cfg, nrb = self.cfg, self.cfg["layers_per_block"]
        levels = len(cfg["block_out_channels"])
        tau = torch.as_tensor(tau, dtype=torch.float64)
        if tau.ndim <= 1:
            tau = tau.reshape(-1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[-2:])
        temb = self.temb(tau)
        h = self.conv("conv_in", x.double())
        skips = [h]
        for i, kind in enumerate(cfg["down_block_types"]):
            for j in range(nrb):
                h = self.resnet(f"down_blocks.{i}.resnets.{j}", h, temb)
                if "Attn" in kind:
                    h = self.attention(f"down_blocks.{i}.attentions.{j}", h)
                skips.append(h)
            if i < levels - 1:
                h = self.resnet(f"down_blocks.{i}.downsamplers.0", h, temb, down=True)
                skips.append(h)
        h = self.resnet("mid_block.resnets.0", h, temb)
        h = self.attention("mid_block.attentions.0", h, cfg.get("attn_norm_num_groups"))
        h = self.resnet("mid_block.resnets.1", h, temb)
        for i, kind in enumerate(cfg["up_block_types"]):
            for j in range(nrb + 1):
                h = self.resnet(f"up_blocks.{i}.resnets.{j}", torch.cat([h, skips.pop()], dim=1), temb)
                if "Attn" in kind:
                    h = self.attention(f"up_blocks.{i}.attentions.{j}", h)
            if i < levels - 1:
                h = self.resnet(f"up_blocks.{i}.upsamplers.0", h, temb, up=True)
        h = F.silu(self.norm("conv_norm_out", h))
        return self.conv("conv_out", h)
