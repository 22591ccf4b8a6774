"""Dimension-generic U-Net blocks shared by :class:`Unet` and :class:`Unet3D`.

Feature maps are always ``(b * f, c, h, w)``: the frames of a video are folded into the batch
(``f = 1`` for images), frames of one sample consecutive. Spatial layers never look at ``f``;
the temporal layers (enabled by ``temporal=True``, skipped when ``cond.ignore_time``) unfold
it to mix information across frames. So the 2D U-Net is the 3D one without temporal layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .attention import Attention, CrossAttention, FeedForward, LinearAttention, LinearCrossAttention, TemporalAttention

__all__ = [
    "Block", "Cond", "CrossEmbedLayer", "Downsample", "GlobalContext", "ResnetBlock", "TemporalAttentionBlock",
    "TemporalConv", "TransformerBlock", "Upsample", "UpsampleCombiner",
]


@dataclass
class Cond:
    """What every block reads besides the feature map.

    t: (b, time_cond_dim) conditioning vector; context: (b, m, cond_dim) tokens or None;
    context_mask: (b, m) bool or None (all visible); frames: frames per sample at this level;
    ignore_time: skip every temporal layer (each frame is then an independent image).
    """

    t: torch.Tensor
    context: torch.Tensor | None
    context_mask: torch.Tensor | None
    frames: int = 1
    ignore_time: bool = True

    def per_frame(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        """(b, ...) -> (b * frames, ...), each sample repeated for its frames."""
        if tensor is None or self.frames == 1:
            return tensor
        return tensor.repeat_interleave(self.frames, dim=0)

    def at_frames(self, frames: int) -> Cond:
        """The same conditioning at another number of frames."""
        return Cond(self.t, self.context, self.context_mask, frames, self.ignore_time)


class TemporalConv(nn.Module):
    """A 1D convolution across frames, initialised to the identity (Ho et al. 2022, pseudo-3D conv)."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2)
        nn.init.dirac_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        """x: (b * f, c, h, w) -> same shape."""
        if cond.ignore_time:
            return x
        h, w = x.shape[-2:]
        x = rearrange(x, "(b f) c h w -> (b h w) c f", f=cond.frames)
        x = self.conv(x)
        return rearrange(x, "(b h w) c f -> (b f) c h w", h=h, w=w)


class Block(nn.Module):
    """GroupNorm -> (scale, shift) -> SiLU -> dropout -> 3x3 conv (+ temporal conv when ``temporal``)."""

    def __init__(self, dim_in: int, dim_out: int, *, groups: int = 8, dropout: float = 0.0, temporal: bool = False):
        super().__init__()
        self.norm = nn.GroupNorm(groups, dim_in)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(dropout)
        self.conv = nn.Conv2d(dim_in, dim_out, 3, padding=1)
        self.temporal = TemporalConv(dim_out) if temporal else None

    def forward(self, x: torch.Tensor, cond: Cond, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None):
        """x: (b * f, dim_in, h, w); scale_shift: two (b * f, dim_in, 1, 1) -> (b * f, dim_out, h, w)."""
        x = self.norm(x)
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        x = self.conv(self.dropout(self.act(x)))
        return x if self.temporal is None else self.temporal(x, cond)


class GlobalContext(nn.Module):
    """Global context attention (Cao et al. 2019): attention-pooled features gate the channels."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.to_logits = nn.Conv2d(dim_in, 1, 1, bias=False)  # a bias would cancel in the softmax
        hidden = max(3, dim_out // 2)
        self.net = nn.Sequential(nn.Linear(dim_in, hidden), nn.SiLU(), nn.Linear(hidden, dim_out), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, dim_in, h, w) -> gate (b, dim_out, 1, 1)."""
        weights = self.to_logits(x).flatten(2).softmax(dim=-1)  # (b, 1, hw)
        pooled = (x.flatten(2) * weights).sum(-1)  # (b, dim_in)
        return self.net(pooled)[..., None, None]


class ResnetBlock(nn.Module):
    """Residual block: Block -> (cross-attention to the context) -> Block scaled/shifted by t -> GC gate."""

    def __init__(
        self, dim_in: int, dim_out: int, *, time_cond_dim: int, cond_dim: int | None = None,
        linear_cross_attn: bool = False, groups: int = 8, use_gca: bool = False, dropout: float = 0.0,
        temporal: bool = False, heads: int = 8, dim_head: int = 64,
    ):
        super().__init__()
        self.time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_cond_dim, dim_out * 2))
        self.cross_attn = None
        if cond_dim is not None:
            klass = LinearCrossAttention if linear_cross_attn else CrossAttention
            self.cross_attn = klass(dim_out, context_dim=cond_dim, heads=heads, dim_head=dim_head)
        self.block1 = Block(dim_in, dim_out, groups=groups, temporal=temporal)
        self.block2 = Block(dim_out, dim_out, groups=groups, dropout=dropout, temporal=temporal)
        self.gca = GlobalContext(dim_out, dim_out) if use_gca else None
        self.res_conv = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        """x: (b * f, dim_in, h, w) -> (b * f, dim_out, h, w)."""
        scale_shift = cond.per_frame(self.time_mlp(cond.t))[..., None, None].chunk(2, dim=1)
        h = self.block1(x, cond)
        if self.cross_attn is not None and cond.context is not None:
            tokens = rearrange(h, "(b f) c x y -> b (f x y) c", f=cond.frames)  # queries of all frames at once
            out = self.cross_attn(tokens, cond.context, cond.context_mask)
            h = h + rearrange(out, "b (f x y) c -> (b f) c x y", f=cond.frames, x=h.shape[-2])
        h = self.block2(h, cond, scale_shift)
        if self.gca is not None:
            h = h * self.gca(h)
        return h + self.res_conv(x)


class TransformerBlock(nn.Module):
    """``depth`` x [spatial self-attention (context tokens appended to the keys), feed-forward], per frame."""

    def __init__(
        self, dim: int, *, depth: int = 1, heads: int = 8, dim_head: int = 64, ff_mult: float = 2.0,
        context_dim: int | None = None, linear: bool = False, dropout: float = 0.0, time_token_shift: bool = False,
    ):
        super().__init__()
        klass = LinearAttention if linear else Attention
        self.layers = nn.ModuleList(
            nn.ModuleList([
                klass(dim, heads=heads, dim_head=dim_head, context_dim=context_dim),
                FeedForward(dim, mult=ff_mult, dropout=dropout, time_token_shift=time_token_shift),
            ])
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        """x: (b * f, dim, h, w) -> same shape."""
        h, w = x.shape[-2:]
        tokens = rearrange(x, "bf c h w -> bf (h w) c")
        context, mask = cond.per_frame(cond.context), cond.per_frame(cond.context_mask)
        frames = 1 if cond.ignore_time else cond.frames
        for attn, ff in self.layers:
            tokens = tokens + attn(tokens, context, mask)
            tokens = tokens + ff(tokens, frames)
        return rearrange(tokens, "bf (h w) c -> bf c h w", h=h, w=w)


class TemporalAttentionBlock(nn.Module):
    """Residual attention across the frames at each pixel (video only; identity when ignoring time)."""

    def __init__(
        self, dim: int, *, heads: int = 8, dim_head: int = 64, causal: bool = True, rel_pos_bias_depth: int = 2
    ):
        super().__init__()
        self.attn = TemporalAttention(
            dim, heads=heads, dim_head=dim_head, causal=causal, rel_pos_bias_depth=rel_pos_bias_depth
        )

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        """x: (b * f, dim, h, w) -> same shape."""
        if cond.ignore_time:
            return x
        h, w = x.shape[-2:]
        tokens = rearrange(x, "(b f) c h w -> (b h w) f c", f=cond.frames)
        out = self.attn(tokens)
        return x + rearrange(out, "(b h w) f c -> (b f) c h w", h=h, w=w)


class CrossEmbedLayer(nn.Module):
    """Convolutions of several kernel sizes side by side, their outputs concatenated (CrossFormer).

    Larger kernels get fewer output channels: dim_out / 2, / 4, ... and the rest to the largest.
    """

    def __init__(self, dim_in: int, dim_out: int, kernel_sizes: tuple[int, ...], stride: int = 1):
        super().__init__()
        kernel_sizes = tuple(sorted(kernel_sizes))
        if any((k - stride) % 2 or k < stride for k in kernel_sizes):
            raise ValueError(
                f"cross-embed kernel sizes must be >= the stride {stride} and of the same parity, got {kernel_sizes!r}"
            )
        n = len(kernel_sizes)
        dims = [dim_out // 2 ** (i + 1) for i in range(n - 1)]
        dims.append(dim_out - sum(dims))
        if min(dims) < 1:
            raise ValueError(f"{dim_out} channels are too few for {n} cross-embed kernels {kernel_sizes!r}")
        self.convs = nn.ModuleList(
            nn.Conv2d(dim_in, d, k, stride=stride, padding=(k - stride) // 2) for k, d in zip(kernel_sizes, dims)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, dim_in, h, w) -> (b, dim_out, h / stride, w / stride)."""
        return torch.cat([conv(x) for conv in self.convs], dim=1)


def _fold_time(x: torch.Tensor, frames: int) -> torch.Tensor:
    return rearrange(x, "(b f) c h w -> b c f h w", f=frames)


def _unfold_time(x: torch.Tensor) -> torch.Tensor:
    return rearrange(x, "b c f h w -> (b f) c h w")


class Downsample(nn.Module):
    """Halve height and width (space-to-depth then 1x1 conv, or a strided cross-embed layer).

    With ``spatial=False`` the size is kept (a 3x3 conv).

    With ``temporal_stride > 1`` the frames are average-pooled by that stride too (unless time is ignored).
    """

    def __init__(
        self, dim_in: int, dim_out: int, *, cross_embed: bool = False, kernel_sizes: tuple[int, ...] = (2, 4),
        temporal_stride: int = 1, spatial: bool = True,
    ):
        super().__init__()
        self.temporal_stride = temporal_stride
        if not spatial:  # the last stage of a non-memory-efficient U-Net keeps its size
            self.net = nn.Conv2d(dim_in, dim_out, 3, padding=1)
        elif cross_embed:
            self.net = CrossEmbedLayer(dim_in, dim_out, kernel_sizes, stride=2)
        else:
            self.net = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(dim_in * 4, dim_out, 1))

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        """x: (b * f, dim_in, h, w) -> (b * f', dim_out, h / 2, w / 2), f' = f / temporal_stride."""
        x = self.net(x)
        if self.temporal_stride > 1 and not cond.ignore_time:
            s = self.temporal_stride
            x = _unfold_time(F.avg_pool3d(_fold_time(x, cond.frames), (s, 1, 1)))
        return x


class Upsample(nn.Module):
    """Double height and width (1x1 conv + pixel shuffle, or resize + 3x3 conv); repeat frames by the stride.

    With ``spatial=False`` the size is kept (a 1x1 conv where the widths differ).
    """

    def __init__(
        self, dim_in: int, dim_out: int, *, pixel_shuffle: bool = True, resize_mode: str = "nearest",
        temporal_stride: int = 1, spatial: bool = True,
    ):
        super().__init__()
        self.temporal_stride, self.resize_mode, self.spatial = temporal_stride, resize_mode, spatial
        self.pixel_shuffle = pixel_shuffle and spatial
        if not spatial:  # the first stage of a non-memory-efficient U-Net keeps its size
            self.net = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()
        elif pixel_shuffle:
            conv = nn.Conv2d(dim_in, dim_out * 4, 1)
            self._init_like_nearest(conv)
            self.net = nn.Sequential(conv, nn.SiLU(), nn.PixelShuffle(2))
        else:
            self.net = nn.Conv2d(dim_in, dim_out, 3, padding=1)

    @staticmethod
    def _init_like_nearest(conv: nn.Conv2d) -> None:
        # the 4 sub-pixels of each output channel start with the same weights (ICNR, Aitken et al. 2017)
        out4, dim_in = conv.weight.shape[:2]
        base = torch.empty(out4 // 4, dim_in, 1, 1)
        nn.init.kaiming_uniform_(base)
        with torch.no_grad():
            conv.weight.copy_(base.repeat_interleave(4, dim=0))
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        """x: (b * f, dim_in, h, w) -> (b * f * temporal_stride, dim_out, 2h, 2w)."""
        if self.temporal_stride > 1 and not cond.ignore_time:
            x = _unfold_time(_fold_time(x, cond.frames).repeat_interleave(self.temporal_stride, dim=2))
        if self.spatial and not self.pixel_shuffle:
            x = F.interpolate(x, scale_factor=2, mode=self.resize_mode)
        return self.net(x)


class UpsampleCombiner(nn.Module):
    """Resize every up-stage output to the final size, project each with a Block and concatenate (U-Net²)."""

    def __init__(self, dim: int, *, enabled: bool, dim_ins: tuple[int, ...], dim_out: int, resize_mode: str):
        super().__init__()
        self.enabled, self.resize_mode = enabled, resize_mode
        self.blocks = nn.ModuleList(Block(d, dim_out) for d in dim_ins) if enabled else nn.ModuleList()
        self.dim_out = dim + (dim_out * len(dim_ins) if enabled else 0)

    def forward(self, x: torch.Tensor, fmaps: list[tuple[torch.Tensor, int]], cond: Cond) -> torch.Tensor:
        """x: (b * f, dim, h, w); fmaps: (feature map, its frames) per up stage -> (b * f, dim_out, h, w)."""
        if not self.enabled:
            return x
        outs = [x]
        for block, (fmap, frames) in zip(self.blocks, fmaps):
            if frames != cond.frames:
                fmap = fmap.repeat_interleave(cond.frames // frames, dim=0)
            fmap = F.interpolate(fmap, size=x.shape[-2:], mode=self.resize_mode)
            outs.append(block(fmap, cond))
        return torch.cat(outs, dim=1)
