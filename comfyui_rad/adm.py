"""The ADM UNet of guided-diffusion (Dhariwal & Nichol 2021), with RAD's spatial noise embedding (paper §3.3).

State-dict keys and numerics match openai/guided-diffusion's ``UNetModel``: legacy attention head order, GroupNorm
and softmax in float32, ``[cos, sin]`` timestep embedding, fractional timesteps allowed. The model takes either one
timestep per image, ``t`` [B], or one per pixel, ``t`` [B,1,H,W] (the spatial noise embedding: the time MLP acts as
1x1 convolutions and every ResBlock resizes the embedding bilinearly to its own resolution).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ADMConfig", "ADM", "timestep_embedding", "SpatialEmbedding"]


@dataclass(frozen=True)
class ADMConfig:
    """Architecture of a guided-diffusion ``UNetModel``; field names follow guided-diffusion's arguments.

    ``attention_ds`` holds the downsampling factors (1, 2, 4, ...) at which attention blocks sit, which is what
    guided-diffusion's ``attention_resolutions`` becomes inside ``UNetModel`` (``image_size // resolution``).

    The last fields describe networks trained in diffusers (the RAD authors' ``LocalUNet2DModel``), named as its
    config names them; their defaults are guided-diffusion's: ``norm_eps`` of every GroupNorm, ``norm_num_groups``
    of every GroupNorm but the middle attention's (``attn_norm_num_groups``, None = the same), and the sinusoidal
    timestep embedding's ``freq_shift`` (frequencies exp(-ln(max_period) j / (half - freq_shift))),
    ``flip_sin_to_cos`` ([cos, sin] when True, else [sin, cos]) and ``max_period``.
    """

    model_channels: int
    num_res_blocks: int
    channel_mult: tuple[float, ...]
    attention_ds: tuple[int, ...]
    in_channels: int = 3
    out_channels: int = 6
    num_classes: int | None = None
    num_heads: int = 1
    num_head_channels: int = 64
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    conv_resample: bool = True
    use_new_attention_order: bool = False
    image_size: int = 256
    # diffusers-trained networks (the RAD authors' checkpoints): guided-diffusion's values by default
    norm_eps: float = 1e-5
    norm_num_groups: int = 32
    attn_norm_num_groups: int | None = None
    freq_shift: float = 0.0
    flip_sin_to_cos: bool = True
    max_period: float = 10000.0

    def __post_init__(self):
        for name in ("channel_mult", "attention_ds"):  # JSON and argument lists give lists: one hashable form
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def to_dict(self) -> dict:
        """The fields as plain values (what files and training checkpoints record; ``ADMConfig(**d)`` reads it)."""
        return asdict(self)

    @property
    def learn_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    def heads_for(self, channels: int, upsample: bool = False) -> int:
        """Number of attention heads for a block of ``channels`` channels, as guided-diffusion decides it."""
        if self.num_head_channels != -1:
            if channels % self.num_head_channels:
                raise ValueError(
                    f"attention block has {channels} channels, not a multiple of num_head_channels="
                    f"{self.num_head_channels}: pass num_head_channels that divides it, or num_heads with "
                    "num_head_channels=-1"
                )
            return channels // self.num_head_channels
        heads = self.num_heads_upsample if upsample and self.num_heads_upsample != -1 else self.num_heads
        if heads < 1 or channels % heads:
            raise ValueError(f"num_heads={heads} does not divide the {channels} channels of an attention block")
        return heads


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, freq_shift: float = 0.0,
                       flip_sin_to_cos: bool = True) -> torch.Tensor:
    """ADM's sinusoidal embedding ``[cos, sin]`` of float timesteps ``t`` [N] -> [N, dim] (float32).

    ``freq_shift`` and ``flip_sin_to_cos`` as diffusers' ``get_timestep_embedding`` (0 and True: guided-diffusion's).
    """
    half = dim // 2
    arange = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * arange / (half - freq_shift))
    args = t.float()[:, None] * freqs[None]
    parts = [torch.cos(args), torch.sin(args)]
    emb = torch.cat(parts if flip_sin_to_cos else parts[::-1], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32) computed in float32 whatever the weights' dtype, as guided-diffusion does (``groups`` and
    ``eps`` for networks trained with others)."""

    def __init__(self, channels: int, groups: int = 32, eps: float = 1e-5):
        super().__init__(groups, channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


class Upsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


def _axis_taps(n_in: int, n_out: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear (align_corners=True) source taps along one axis: indices i0, i1 and the weight of i1, as F.interpolate."""
    if n_out == 1 or n_in == 1:
        src = torch.zeros(n_out, dtype=torch.float32, device=device)
    else:
        src = torch.arange(n_out, dtype=torch.float32, device=device) * ((n_in - 1) / (n_out - 1))
    i0 = src.floor().long().clamp_(0, n_in - 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    return i0, i1, src - i0


class SpatialEmbedding:
    """A per-pixel time embedding, evaluated lazily at each ResBlock's resolution (paper §3.3, RAD_NOTES §2).

    Per pixel it is SiLU(time_embed(tau)); a ResBlock asks for ``project(weight, bias, h, w)``: its emb_layers
    Linear applied as a 1x1 conv to the embedding bilinearly resized (align_corners=True) to h x w. Bilinear resizing
    makes each output pixel a convex combination of source pixels, so the Linear (bias included) commutes with it,
    and a map with K distinct values needs the K embedding rows only. Three exact evaluations of the same thing:

    - ``onehot`` (few values, e.g. a binary mask: two per step): ``rows`` [B' in {1, B}, K, D] (B' = B when each
      image has its own K values: a training batch); the K-channel one-hot map of ``index`` is resized per resolution
      (cached) and the projection is one small batched matmul.
    - ``taps`` (many values, e.g. a soft mask): each output pixel mixes its 4 bilinear source taps; per block either
      the distinct rows the taps touch are projected first and then mixed, or, when they outnumber the block's
      pixels, the rows are mixed first (cached per resolution) and then projected. Cost O(min(K, h*w)) projections.
    - ``dense`` (the paper's literal definition, kept as the reference): ``rows`` is the [B, D, H, W] map, resized
      per resolution (cached) and projected by a 1x1 conv.
    """

    def __init__(self, rows: torch.Tensor, index: torch.Tensor | None, size: tuple[int, int], mode: str):
        self.rows, self.index, self.size, self.mode = rows, index, size, mode
        self._cache: dict[tuple, object] = {}

    def _cached(self, key: tuple, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _resized(self, src: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if (h, w) == self.size:
            return src
        return F.interpolate(src, size=(h, w), mode="bilinear", align_corners=True)

    def project(self, weight: torch.Tensor, bias: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``weight``/``bias`` as a 1x1 conv over the embedding resized to h x w -> [B, out, h, w]."""
        if self.mode == "dense":
            maps = self._cached(("dense", h, w), lambda: self._resized(self.rows, h, w))
            return F.conv2d(maps, weight[:, :, None, None], bias)
        if self.mode == "onehot":
            k = self.rows.shape[1]
            maps = self._cached(("onehot", h, w), lambda: self._resized(
                F.one_hot(self.index, k).permute(0, 3, 1, 2).to(self.rows.dtype), h, w))
            values = F.linear(self.rows, weight, bias)  # [B', K, out]
            out = torch.matmul(values.transpose(1, 2), maps.reshape(maps.shape[0], k, h * w))  # [B, out, h*w]
            return out.view(maps.shape[0], -1, h, w)
        return self._project_taps(weight, bias, h, w)

    def _taps(self, h: int, w: int) -> list:
        """Per image: (distinct rows touched [Ku], [(tap -> position in those rows [h*w], weight [h*w] or None)])."""
        def make():
            if (h, w) == self.size:
                taps, weights = [lambda i: i.reshape(-1)], [None]
            else:
                y0, y1, ly = _axis_taps(self.size[0], h, self.index.device)
                x0, x1, lx = _axis_taps(self.size[1], w, self.index.device)
                taps = [lambda i, a=a, b=b: i[a][:, b].reshape(-1) for a in (y0, y1) for b in (x0, x1)]
                ly, lx = ly[:, None], lx[None, :]
                weights = [wt.reshape(-1).to(self.rows.dtype)
                           for wt in ((1 - ly) * (1 - lx), (1 - ly) * lx, ly * (1 - lx), ly * lx)]
            out = []
            for image in self.index:  # [H, W] indices into the K rows
                used, where = torch.unique(torch.stack([tap(image) for tap in taps]), return_inverse=True)
                out.append((used, list(zip(where.unbind(0), weights))))
            return out
        return self._cached(("taps", h, w), make)

    @staticmethod
    def _mix(table_t: torch.Tensor, taps: list) -> torch.Tensor:
        """sum over taps of weight * table_t[:, tap] -> [rows of table_t, h*w]."""
        out = None
        for tap, wt in taps:
            g = table_t.index_select(1, tap)
            out = g if wt is None else (g.mul_(wt) if out is None else out.addcmul_(g, wt))
        return out

    def _project_taps(self, weight: torch.Tensor, bias: torch.Tensor, h: int, w: int) -> torch.Tensor:
        outs = []
        for b, (used, taps) in enumerate(self._taps(h, w)):
            rows = self.rows[b if self.rows.shape[0] > 1 else 0][used]  # [Ku, D]
            if used.numel() < h * w:  # project the distinct rows, then mix the projections
                outs.append(self._mix(F.linear(rows, weight, bias).t().contiguous(), taps))
            else:  # mix the embedding (cached), then project
                mixed = self._cached(("mixed", h, w, b), lambda: self._mix(rows.t().contiguous(), taps))
                outs.append(torch.addmm(bias[:, None], weight, mixed))
        return torch.stack(outs).view(len(outs), -1, h, w)


def _per_image_values(index: torch.Tensor, count: int, limit: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Renumber ``index`` [B,H,W] (into ``count`` values shared by the batch) per image, when every image uses at
    most ``limit`` of them: (order [B, K'] the shared value behind each image's slot, local index [B,H,W] into
    those slots), K' the most any image uses; slots past an image's own count point at values it never reads.
    None when some image uses more."""
    b = index.shape[0]
    present = torch.zeros(b, count, dtype=torch.bool, device=index.device)
    present.scatter_(1, index.reshape(b, -1), True)
    used = int(present.sum(1).max())
    if used > limit:
        return None
    order = torch.argsort((~present).to(torch.uint8), dim=1, stable=True)[:, :used]  # present values first, in order
    slot = present.cumsum(1) - 1
    return order, slot.gather(1, index.reshape(b, -1)).view_as(index)


def _emb_out(emb: torch.Tensor | SpatialEmbedding, linear: nn.Linear, h: torch.Tensor,
             scale_one: bool = False) -> torch.Tensor:
    """The ResBlock's emb_layers (SiLU then Linear) for a per-image [B, D] or per-pixel embedding -> [B, out, 1, 1]
    or [B, out, h, w]. ``scale_one`` adds 1 to the first (scale) half: 1 + scale comes out of the projection, so
    the modulation is one fused pass even per pixel."""
    bias = linear.bias
    if scale_one:
        bias = torch.cat([bias[: bias.shape[0] // 2] + 1, bias[bias.shape[0] // 2:]])
    if isinstance(emb, SpatialEmbedding):
        return emb.project(linear.weight, bias, h.shape[-2], h.shape[-1]).to(h.dtype)
    return F.linear(F.silu(emb), linear.weight, bias).to(h.dtype)[:, :, None, None]


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, scale_shift: bool,
                 up: bool = False, down: bool = False, norm: tuple[int, float] = (32, 1e-5)):
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(GroupNorm32(channels, *norm), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, (2 if scale_shift else 1) * out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels, *norm), nn.SiLU(), nn.Dropout(0.0),
            nn.Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | SpatialEmbedding) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        emb_out = _emb_out(emb, self.emb_layers[1], h, scale_one=self.scale_shift)
        if self.scale_shift:
            scale1, shift = emb_out.chunk(2, dim=1)  # scale1 = 1 + scale
            h = self.out_layers[1:](torch.addcmul(shift, self.out_layers[0](h), scale1))
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over all positions; ``legacy`` is guided-diffusion's default head order (RAD_NOTES §5)."""

    def __init__(self, channels: int, num_heads: int, legacy: bool = True, norm: tuple[int, float] = (32, 1e-5)):
        super().__init__()
        self.num_heads = num_heads
        self.legacy = legacy
        self.norm = GroupNorm32(channels, *norm)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, emb=None) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))  # [B, 3C, T]
        heads, ch, length = self.num_heads, c // self.num_heads, x.shape[-1]
        if self.legacy:  # per head [q; k; v] blocks of ch rows
            q, k, v = qkv.reshape(b, heads, 3 * ch, length).split(ch, dim=2)
        else:  # [q of all heads; k of all heads; v of all heads]
            q, k, v = (part.reshape(b, heads, ch, length) for part in qkv.chunk(3, dim=1))
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        h = self.proj_out(a.transpose(-1, -2).reshape(b, c, length))
        return (x + h).reshape(b, c, *spatial)


class EmbedSequential(nn.Sequential):
    """guided-diffusion's TimestepEmbedSequential: passes the embedding to the blocks that take one."""

    def forward(self, x: torch.Tensor, emb) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


def _norm(cfg: ADMConfig, middle_attention: bool = False) -> tuple[int, float]:
    """(groups, eps) of a GroupNorm; the middle block's attention has its own group count (diffusers' wiring)."""
    groups = cfg.attn_norm_num_groups if middle_attention and cfg.attn_norm_num_groups else cfg.norm_num_groups
    return groups, cfg.norm_eps


def _attention(cfg: ADMConfig, ch: int, upsample: bool = False, middle: bool = False) -> AttentionBlock:
    return AttentionBlock(ch, cfg.heads_for(ch, upsample), legacy=not cfg.use_new_attention_order,
                          norm=_norm(cfg, middle))


def _res(cfg: ADMConfig, ch: int, out: int, **updown: bool) -> ResBlock:
    return ResBlock(ch, cfg.time_embed_dim, out, cfg.use_scale_shift_norm, norm=_norm(cfg), **updown)


def _encoder(cfg: ADMConfig) -> tuple[nn.ModuleList, list[int], int]:
    ch = int(cfg.channel_mult[0] * cfg.model_channels)
    blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
    chans, ds = [ch], 1
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            out = int(mult * cfg.model_channels)
            layers = [_res(cfg, ch, out)]
            ch = out
            if ds in cfg.attention_ds:
                layers.append(_attention(cfg, ch))
            blocks.append(EmbedSequential(*layers))
            chans.append(ch)
        if level != len(cfg.channel_mult) - 1:
            down = (_res(cfg, ch, ch, down=True) if cfg.resblock_updown
                    else Downsample(ch, cfg.conv_resample))
            blocks.append(EmbedSequential(down))
            chans.append(ch)
            ds *= 2
    return blocks, chans, ds


def _decoder(cfg: ADMConfig, chans: list[int], ch: int, ds: int) -> tuple[nn.ModuleList, int]:
    blocks, chans = nn.ModuleList(), list(chans)
    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
        for i in range(cfg.num_res_blocks + 1):
            out = int(mult * cfg.model_channels)
            layers = [_res(cfg, ch + chans.pop(), out)]
            ch = out
            if ds in cfg.attention_ds:
                layers.append(_attention(cfg, ch, upsample=True))
            if level and i == cfg.num_res_blocks:
                layers.append(_res(cfg, ch, ch, up=True) if cfg.resblock_updown
                              else Upsample(ch, cfg.conv_resample))
                ds //= 2
            blocks.append(EmbedSequential(*layers))
    return blocks, ch


class ADM(nn.Module):
    """guided-diffusion's ``UNetModel``: ``model(x, t, y=None)`` -> [B, out_channels, H, W].

    x: [B, in_channels, H, W] in the model's range ([-1, 1] for images), H and W multiples of 2**(levels-1).
    t: [B] float timesteps (0 .. 999, fractional allowed), or [B, 1, H, W] per-pixel timesteps (RAD).
    y: [B] class labels, required by class-conditional checkpoints and refused by the others.
    """

    def __init__(self, cfg: ADMConfig):
        super().__init__()
        self.config = cfg
        mc, ted = cfg.model_channels, cfg.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        if cfg.num_classes is not None:
            self.label_emb = nn.Embedding(cfg.num_classes, ted)
        self.input_blocks, chans, ds = _encoder(cfg)
        ch = chans[-1]
        self.middle_block = EmbedSequential(_res(cfg, ch, ch), _attention(cfg, ch, middle=True), _res(cfg, ch, ch))
        self.output_blocks, ch = _decoder(cfg, chans, ch, ds)
        self.out = nn.Sequential(GroupNorm32(ch, *_norm(cfg)), nn.SiLU(),
                                 nn.Conv2d(ch, cfg.out_channels, 3, padding=1))
        # Per-pixel maps with at most this many distinct values (in the batch, or else in every image: a training
        # batch of binary masks, each image at its own t) take the one-hot path, more take the 4-tap path.
        self.max_onehot_values = 8

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.channel_mult) - 1)

    def _label(self, y: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if self.config.num_classes is None:
            if y is not None:
                raise ValueError("this ADM is unconditional but class labels y were given: drop y")
            return None
        if y is None:
            raise ValueError(
                f"this ADM is class-conditional ({self.config.num_classes} classes): pass class labels y, shape [B]"
            )
        y = torch.as_tensor(y, device=self.label_emb.weight.device).long().reshape(-1)
        if y.numel() == 1:
            y = y.expand(batch)
        if y.numel() != batch or int(y.min()) < 0 or int(y.max()) >= self.config.num_classes:
            raise ValueError(f"class labels must be {batch} integers in [0, {self.config.num_classes}), got {y.tolist()}")
        return self.label_emb(y)

    def _time_mlp(self, t: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        emb = timestep_embedding(t, cfg.model_channels, cfg.max_period, cfg.freq_shift, cfg.flip_sin_to_cos)
        emb = emb.to(self.dtype)
        return self.time_embed(emb)

    def embed(self, t: torch.Tensor, y: torch.Tensor | None, x: torch.Tensor, dense: bool = False):
        """The time (and class) embedding: [B, D] for per-image t, a ``SpatialEmbedding`` for per-pixel t."""
        b, _, h, w = x.shape
        label = self._label(y, b)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        if t.ndim <= 1:
            t = t.reshape(-1).expand(b) if t.numel() == 1 else t
            if t.shape != (b,):
                raise ValueError(f"t has shape {tuple(t.shape)}, expected [{b}] or [{b}, 1, {h}, {w}]")
            emb = self._time_mlp(t)
            return emb if label is None else emb + label
        if t.shape != (b, 1, h, w):
            raise ValueError(f"per-pixel t has shape {tuple(t.shape)}, expected [{b}, 1, {h}, {w}] like x")
        values, index = torch.unique(t, return_inverse=True)
        if values.numel() == 1 and not dense:  # a constant map is the per-image embedding, exactly
            emb = self._time_mlp(values.expand(b))
            return emb if label is None else emb + label
        rows = self._time_mlp(values)[None]  # [1, K, D]: one embedding per distinct timestep
        if label is not None:
            rows = rows + label[:, None]
        rows = F.silu(rows)
        if dense:
            maps = rows[:, index[:, 0]] if rows.shape[0] == 1 else rows[torch.arange(b)[:, None, None], index[:, 0]]
            return SpatialEmbedding(maps.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous(), None, (h, w), "dense")
        index = index[:, 0]
        if values.numel() <= self.max_onehot_values:
            return SpatialEmbedding(rows, index, (h, w), "onehot")
        local = _per_image_values(index, values.numel(), self.max_onehot_values)
        if local is None:
            return SpatialEmbedding(rows, index, (h, w), "taps")
        order, index = local  # each image's own few values: a training batch (a different t per image)
        rows = rows.expand(b, -1, -1).gather(1, order[..., None].expand(-1, -1, rows.shape[-1]))
        return SpatialEmbedding(rows, index, (h, w), "onehot")

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, *,
                dense_embedding: bool = False) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"x has shape {tuple(x.shape)}, expected [B, {self.config.in_channels}, H, W]")
        f = self.downsample_factor
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(
                f"image size {x.shape[-2]}x{x.shape[-1]} is not a multiple of {f}, which this ADM needs: "
                "crop, pad or resize it"
            )
        emb = self.embed(t, y, x, dense=dense_embedding)
        h, hs = x.to(self.dtype), []
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h).to(x.dtype)
