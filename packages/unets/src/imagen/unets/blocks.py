"""U-Net blocks of the reference 2.x architecture: resnet, transformer, resampling, the fmap combiner.

Feature maps are ``(b, c, *spatial)``. The blocks that only mix channels or pixels of one image
take a ``conv`` factory (:data:`~imagen.unets.layers.ConvFactory`) and ``spatial_dims``, so the
video U-Net builds the same blocks (same state-dict names) from its own space-time convolutions.
Child names follow the reference's state-dict keys.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, ChanFeedForward, CrossAttention, FeedForward, LinearAttention, LinearCrossAttention
from .layers import ConvFactory, block_norm, conv2d

__all__ = [
    "Block", "CrossEmbedLayer", "GlobalContext", "LinearAttentionTransformerBlock", "PixelShuffleUpsample",
    "ResnetBlock", "TransformerBlock", "UpsampleCombiner", "downsample", "nearest_upsample",
]


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(b, c, *spatial) -> (b, prod(spatial), c)."""
    return x.flatten(2).transpose(1, 2)


def _from_tokens(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(b, n, c) -> the shape of ``like`` (b, c, *spatial)."""
    return tokens.transpose(1, 2).reshape(like.shape[0], tokens.shape[-1], *like.shape[2:])


class Block(nn.Module):
    """Norm (ChanRMSNorm, or ``norm_kind`` "group") -> (scale + 1, shift) -> SiLU -> [dropout] -> 3x3 conv."""

    def __init__(self, dim: int, dim_out: int, *, norm: bool = True, dropout: float = 0.0,
                 conv: ConvFactory = conv2d, spatial_dims: int = 2, norm_kind: str = "rms"):
        super().__init__()
        self.norm = block_norm(norm_kind)(dim, spatial_dims=spatial_dims) if norm else nn.Identity()
        self.activation = nn.SiLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None  # ours; the reference ignores `dropout`
        self.project = conv(dim, dim_out, 3)

    def forward(self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None,
                **conv_kwargs) -> torch.Tensor:
        """x: (b, dim, *spatial); scale_shift: two (b, dim, 1, ...) -> (b, dim_out, *spatial).

        ``conv_kwargs`` go to the projection (``ignore_time`` of a space-time convolution).
        """
        if isinstance(self.norm, nn.Identity):
            x = x if scale_shift is None else x * (scale_shift[0] + 1) + scale_shift[1]
            x = self.activation(x)
        elif scale_shift is None:  # the norm applies the FiLM and the SiLU in its own passes
            x = self.norm(x, silu=True)
        else:
            x = self.norm(x, scale=scale_shift[0] + 1, shift=scale_shift[1], silu=True)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.project(x, **conv_kwargs)


class GlobalContext(nn.Module):
    """Global context attention (Cao et al. 2019): attention-pooled features gate the channels.

    ``conv`` builds the 1x1 convolutions (``nn.Conv2d`` for images, per-frame ``nn.Conv3d`` for
    videos: their weights are stored as the reference stores them); pooling covers every
    trailing axis.
    """

    def __init__(self, *, dim_in: int, dim_out: int, conv: ConvFactory = conv2d):
        super().__init__()
        self.to_k = conv(dim_in, 1, 1)
        hidden = max(3, dim_out // 2)
        self.net = nn.Sequential(conv(dim_in, hidden, 1), nn.SiLU(), conv(hidden, dim_out, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, dim_in, *spatial) -> gate (b, dim_out, 1, ..., 1)."""
        flat = x.flatten(2)  # (b, c, n)
        logits = F.conv1d(flat, self.to_k.weight.flatten(2), self.to_k.bias)  # (b, 1, n)
        pooled = torch.einsum("bin,bcn->bci", logits.softmax(dim=-1), flat)  # (b, c, 1)
        return self.net(pooled.reshape(*pooled.shape[:2], *((1,) * (x.ndim - 2))))


class ResnetBlock(nn.Module):
    """block1 -> (cross-attention to the context, residual) -> block2 scaled/shifted by t -> GC gate, + res_conv.

    ``cond_dim`` adds the cross-attention (``linear_attn``: :class:`LinearCrossAttention`);
    ``time_cond_dim`` the (scale, shift) of block2 from the conditioning vector.
    """

    def __init__(
        self, dim: int, dim_out: int, *, cond_dim: int | None = None, time_cond_dim: int | None = None,
        linear_attn: bool = False, use_gca: bool = False, heads: int = 8, dim_head: int = 64, dropout: float = 0.0,
        conv: ConvFactory = conv2d, spatial_dims: int = 2, norm_kind: str = "rms",
    ):
        super().__init__()
        self.time_mlp = None
        if time_cond_dim is not None:
            self.time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_cond_dim, dim_out * 2))
        self.cross_attn = None
        if cond_dim is not None:
            klass = LinearCrossAttention if linear_attn else CrossAttention
            self.cross_attn = klass(dim_out, context_dim=cond_dim, heads=heads, dim_head=dim_head)
        self.block1 = Block(dim, dim_out, conv=conv, spatial_dims=spatial_dims, norm_kind=norm_kind)
        self.block2 = Block(dim_out, dim_out, dropout=dropout, conv=conv, spatial_dims=spatial_dims,
                            norm_kind=norm_kind)
        self.gca = GlobalContext(dim_in=dim_out, dim_out=dim_out, conv=conv) if use_gca else None
        self.res_conv = conv(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                cond_mask: torch.Tensor | None = None, **conv_kwargs) -> torch.Tensor:
        """x: (b, dim, *spatial); time_emb: (b, time_cond_dim); cond: (b, m, cond_dim); cond_mask: (b, m) bool.

        ``conv_kwargs`` go to both blocks' 3x3 projections (``ignore_time`` for videos).
        Returns (b, dim_out, *spatial).
        """
        scale_shift = None
        if self.time_mlp is not None and time_emb is not None:
            t = self.time_mlp(time_emb)
            scale_shift = t.reshape(*t.shape, *((1,) * (x.ndim - 2))).chunk(2, dim=1)
        h = self.block1(x, **conv_kwargs)
        if self.cross_attn is not None:
            if cond is None:
                raise ValueError("this resnet block cross-attends: cond (b, tokens, cond_dim) is required")
            h = _from_tokens(self.cross_attn(_to_tokens(h), cond, cond_mask), h) + h
        h = self.block2(h, scale_shift=scale_shift, **conv_kwargs)
        if self.gca is not None:
            h = h * self.gca(h)
        return h + self.res_conv(x)


class TransformerBlock(nn.Module):
    """``depth`` x [multi-query cosine-sim self-attention (context joins the keys), feed-forward], residual."""

    def __init__(self, dim: int, *, depth: int = 1, heads: int = 8, dim_head: int = 32, ff_mult: float = 2.0,
                 context_dim: int | None = None):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads=heads, dim_head=dim_head, context_dim=context_dim),
                           FeedForward(dim, mult=ff_mult)])
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (b, dim, *spatial); context: (b, m, context_dim) or None; context_mask: (b, m) -> same shape as x."""
        tokens = _to_tokens(x)
        for attn, ff in self.layers:
            tokens = attn(tokens, context=context, context_mask=context_mask) + tokens
            tokens = ff(tokens) + tokens
        return _from_tokens(tokens, x)


class LinearAttentionTransformerBlock(nn.Module):
    """``depth`` x [linear attention on the feature map, channel feed-forward], residual.

    ``attention(dim, heads=, dim_head=, context_dim=)`` and ``feed_forward(dim, mult=)`` build the
    layers (the video block passes its per-frame attention and time-shifting feed-forward).
    """

    def __init__(self, dim: int, *, depth: int = 1, heads: int = 8, dim_head: int = 32, ff_mult: float = 2.0,
                 context_dim: int | None = None, attention: Callable[..., nn.Module] = LinearAttention,
                 feed_forward: Callable[..., nn.Module] = ChanFeedForward):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([attention(dim, heads=heads, dim_head=dim_head, context_dim=context_dim),
                           feed_forward(dim, mult=ff_mult)])
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (b, dim, *spatial); context: (b, m, context_dim) or None -> same shape as x."""
        for attn, ff in self.layers:
            x = attn(x, context=context, context_mask=context_mask) + x
            x = ff(x) + x
        return x


class CrossEmbedLayer(nn.Module):
    """Convolutions of several kernel sizes side by side, their outputs concatenated (CrossFormer).

    Sorted kernels get ``int(dim_out / 2)``, ``int(dim_out / 4)``, ... channels and the largest the rest.
    """

    def __init__(self, dim_in: int, kernel_sizes, dim_out: int | None = None, stride: int = 2,
                 conv: ConvFactory = conv2d):
        super().__init__()
        kernel_sizes = sorted(kernel_sizes)
        if not kernel_sizes or any(k % 2 != stride % 2 or k < stride for k in kernel_sizes):
            raise ValueError(f"cross-embed kernel sizes must be >= the stride {stride} and of its parity, "
                             f"got {tuple(kernel_sizes)!r}")
        dim_out = dim_in if dim_out is None else dim_out
        dims = [int(dim_out / 2**i) for i in range(1, len(kernel_sizes))]
        dims.append(dim_out - sum(dims))
        if min(dims) < 1:
            raise ValueError(f"{dim_out} channels are too few for {len(kernel_sizes)} cross-embed kernels "
                             f"{tuple(kernel_sizes)!r}")
        self.convs = nn.ModuleList(
            conv(dim_in, d, k, stride=stride, padding=(k - stride) // 2) for k, d in zip(kernel_sizes, dims)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, dim_in, [f,] h, w) -> (b, dim_out, [f,] h / stride, w / stride)."""
        return torch.cat([conv(x) for conv in self.convs], dim=1)


def downsample(dim: int, dim_out: int | None = None) -> nn.Sequential:
    """Halve height and width: space-to-depth (channels ``(c s1 s2)``) then a 1x1 conv (SP-conv)."""
    return nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(dim * 4, dim if dim_out is None else dim_out, 1))


def nearest_upsample(dim: int, dim_out: int | None = None) -> nn.Sequential:
    """Double height and width: nearest-neighbour resize then a 3x3 conv."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(dim, dim if dim_out is None else dim_out, 3, padding=1))


class PixelShuffleUpsample(nn.Module):
    """Double height and width: 1x1 conv to 4x channels -> SiLU -> pixel shuffle.

    The four sub-pixels of each output channel start with the same weights (ICNR, Aitken et al.
    2017), so the layer starts as a nearest-neighbour upsampling of a 1x1 conv: no checkerboard.
    """

    def __init__(self, dim: int, dim_out: int | None = None):
        super().__init__()
        dim_out = dim if dim_out is None else dim_out
        conv = nn.Conv2d(dim, dim_out * 4, 1)
        base = torch.empty(dim_out, dim, 1, 1)
        nn.init.kaiming_uniform_(base)
        with torch.no_grad():
            conv.weight.copy_(base.repeat_interleave(4, dim=0))
            conv.bias.zero_()
        self.net = nn.Sequential(conv, nn.SiLU(), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, dim, h, w) -> (b, dim_out, 2h, 2w)."""
        return self.net(x)


class UpsampleCombiner(nn.Module):
    """Resize every up-stage output to the final size, project each with a :class:`Block`, concatenate (U-Net²).

    ``conv`` and ``spatial_dims`` build the blocks (videos: space-time convolutions, temporal conv
    always on); the resize covers every trailing axis.
    """

    def __init__(self, dim: int, *, enabled: bool = False, dim_ins: tuple[int, ...] = (), dim_outs=(),
                 conv: ConvFactory = conv2d, spatial_dims: int = 2):
        super().__init__()
        dim_outs = tuple(dim_outs) if isinstance(dim_outs, (tuple, list)) else (dim_outs,) * len(dim_ins)
        self.enabled = enabled
        self.dim_out = dim
        self.fmap_convs = None
        if enabled:
            self.fmap_convs = nn.ModuleList(Block(a, b, conv=conv, spatial_dims=spatial_dims)
                                            for a, b in zip(dim_ins, dim_outs))
            self.dim_out = dim + sum(dim_outs)

    def forward(self, x: torch.Tensor, fmaps: list[torch.Tensor]) -> torch.Tensor:
        """x: (b, dim, *spatial); fmaps: one (b, dim_in_i, *spatial_i) per up stage -> (b, dim_out, *spatial)."""
        if self.fmap_convs is None or not fmaps:
            return x
        size = x.shape[2:]
        outs = [conv(F.interpolate(f, size=size, mode="nearest") if f.shape[2:] != size else f)
                for f, conv in zip(fmaps, self.fmap_convs)]
        return torch.cat((x, *outs), dim=1)
