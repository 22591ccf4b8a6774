"""Video-only layers of :class:`~imagen.unets.Unet3D` (the reference's ``imagen_video`` blocks).

Video feature maps are ``(b, c, f, h, w)``. Per-frame ("spatial") convolutions are stored as
``nn.Conv3d`` with a ``(1, k, k)`` kernel, as the reference stores them, so state dicts load as
they are. The space-time convolution (Make-A-Video's pseudo-3D conv) is a 2D conv per frame
followed by a causal 1D conv across frames that starts as the identity. Temporal attention
attends across the frames of each pixel with a learned relative-position bias; ``ignore_time``
skips the temporal convolutions (the U-Net skips the temporal layers around them).

The dimension-generic blocks (:mod:`~imagen.unets.blocks`) are reused with the convolutions of
this module; blocks whose video computation differs from the image one are written here.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from einops.layers.torch import Rearrange
from torch import nn

from .attention import Attention, LinearAttention
from .blocks import (
    CrossEmbedLayer,
    LinearAttentionTransformerBlock,
    ResnetBlock,
    UpsampleCombiner,
    _from_tokens,
    _to_tokens,
)
from .layers import LayerNorm

__all__ = [
    "RelativePositionBias", "SpaceTimeConv", "TemporalAttention", "TemporalDownsample", "TemporalPixelShuffleUpsample",
    "TemporalPositionConv", "TimeTokenShift", "VideoAttention", "VideoChanFeedForward", "VideoChanLayerNorm",
    "VideoCrossEmbedLayer", "VideoLinearAttention", "VideoLinearAttentionTransformerBlock",
    "VideoPixelShuffleUpsample", "VideoResnetBlock", "VideoTransformerBlock", "VideoUpsampleCombiner", "frame_conv",
    "space_time_conv", "video_downsample", "video_nearest_upsample",
]


def _fold(x: torch.Tensor) -> torch.Tensor:
    """(b, c, f, h, w) -> (b f, c, h, w)."""
    return rearrange(x, "b c f h w -> (b f) c h w")


def _unfold(x: torch.Tensor, batch: int) -> torch.Tensor:
    """(b f, c, h, w) -> (b, c, f, h, w)."""
    return rearrange(x, "(b f) c h w -> b c f h w", b=batch)


def frame_conv(dim_in: int, dim_out: int, kernel_size: int, *, stride: int = 1, padding: int | None = None,
               **kwargs) -> nn.Conv3d:
    """A per-frame 2D convolution as ``nn.Conv3d`` with kernel ``(1, k, k)`` ('same' padding by default)."""
    padding = kernel_size // 2 if padding is None else padding
    return nn.Conv3d(dim_in, dim_out, (1, kernel_size, kernel_size), stride=(1, stride, stride),
                     padding=(0, padding, padding), **kwargs)


class SpaceTimeConv(nn.Module):
    """A k x k conv per frame (``spatial_conv``), then a causal conv of k frames (``temporal_conv``).

    The temporal conv sees frame t and the k - 1 before it (zeros before the first frame). It is
    initialised as the reference initialises it, with Dirac weights (the kernel's centre tap) and
    zero bias: with the causal padding a fresh layer passes frame t - 1 to frame t (zeros at the
    first frame), a one-frame delay of the per-frame conv. Kernel size 1 has no temporal conv.
    """

    def __init__(self, dim: int, dim_out: int | None = None, kernel_size: int = 3):
        super().__init__()
        dim_out = dim if dim_out is None else dim_out
        self.kernel_size = kernel_size
        self.spatial_conv = nn.Conv2d(dim, dim_out, kernel_size, padding=kernel_size // 2)
        self.temporal_conv = None
        if kernel_size > 1:
            self.temporal_conv = nn.Conv1d(dim_out, dim_out, kernel_size)
            nn.init.dirac_(self.temporal_conv.weight)
            nn.init.zeros_(self.temporal_conv.bias)

    def forward(self, x: torch.Tensor, ignore_time: bool = False) -> torch.Tensor:
        """x: (b, dim, f, h, w) -> (b, dim_out, f, h, w); ``ignore_time`` skips the temporal conv."""
        b, _, _, h, w = x.shape
        x = _unfold(self.spatial_conv(_fold(x)), b)
        if ignore_time or self.temporal_conv is None:
            return x
        x = rearrange(x, "b c f h w -> (b h w) c f")
        x = self.temporal_conv(F.pad(x, (self.kernel_size - 1, 0)))
        return rearrange(x, "(b h w) c f -> b c f h w", h=h, w=w)


def space_time_conv(dim_in: int, dim_out: int, kernel_size: int, **kwargs) -> nn.Module:
    """The video :data:`~imagen.unets.layers.ConvFactory` of the resnet blocks: k > 1 is a
    :class:`SpaceTimeConv`, k = 1 (the residual projection) a per-frame 1x1 conv."""
    if kernel_size == 1:
        return frame_conv(dim_in, dim_out, 1, **kwargs)
    return SpaceTimeConv(dim_in, dim_out, kernel_size)


class _Residual(nn.Module):
    """``x + fn(x)`` (child ``fn``)."""

    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


class TemporalPositionConv(_Residual):
    """Positional encoding by a depthwise conv over 3 frames, residual (the reference's temporal "PEG").

    ``causal``: frames t-2..t (zeros before the first), else t-1..t+1.
    """

    def __init__(self, dim: int, *, causal: bool = True):
        pad = (0, 0, 0, 0, 2, 0) if causal else (0, 0, 0, 0, 1, 1)
        super().__init__(nn.Sequential(nn.ConstantPad3d(pad, 0.0), nn.Conv3d(dim, dim, (3, 1, 1), groups=dim)))


class RelativePositionBias(nn.Module):
    """An MLP from the signed frame offset i - j to one attention bias per head (continuous position bias).

    ``mlp``: Linear(1, dim) -> LayerNorm -> SiLU, (depth - 1) x [Linear(dim, dim) -> LayerNorm -> SiLU],
    Linear(dim, heads).
    """

    def __init__(self, dim: int, *, heads: int, depth: int = 2):
        super().__init__()
        hidden = [nn.Sequential(nn.Linear(1 if i == 0 else dim, dim), LayerNorm(dim), nn.SiLU())
                  for i in range(max(depth, 1))]
        self.mlp = nn.ModuleList([*hidden, nn.Linear(dim, heads)])

    def forward(self, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Returns the bias (heads, n, n) with entry [h, i, j] = mlp(i - j)[h]."""
        pos = torch.arange(-n + 1, n, device=device, dtype=dtype)[:, None]  # offsets -(n-1) .. n-1
        for layer in self.mlp:
            pos = layer(pos)
        i = torch.arange(n, device=device)
        offsets = i[:, None] - i[None, :] + n - 1  # (n, n) index into pos
        return rearrange(pos[offsets], "i j h -> h i j")


class VideoAttention(Attention):
    """The video U-Net's :class:`~imagen.unets.attention.Attention`: a learned score for the null key
    (``null_attn_bias``, used with a position bias), optional relative-position bias and causal mask.

    ``init_zero`` zeroes the output gain, so the residual layer starts as the identity.
    """

    def __init__(self, dim: int, *, heads: int = 8, dim_head: int = 64, context_dim: int | None = None,
                 causal: bool = False, rel_pos_bias: bool = False, rel_pos_bias_depth: int = 2,
                 init_zero: bool = False):
        super().__init__(dim, heads=heads, dim_head=dim_head, context_dim=context_dim)
        self.causal = causal
        self.null_attn_bias = nn.Parameter(torch.randn(heads))
        self.rel_pos_bias = RelativePositionBias(dim, heads=heads, depth=rel_pos_bias_depth) if rel_pos_bias else None
        if init_zero:
            nn.init.zeros_(self.to_out[-1].g)

    def _bias(self, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
        """Scores added over the keys [null; x] (no context): (heads, n, 1 + n), -inf where causal hides."""
        bias = None
        if self.rel_pos_bias is not None:
            null = self.null_attn_bias.to(dtype)[:, None, None].expand(-1, n, 1)
            bias = torch.cat((null, self.rel_pos_bias(n, device, dtype)), dim=-1)
        if self.causal:
            hidden = torch.ones(n, n + 1, dtype=torch.bool, device=device).triu(2)  # key j + 1 > query i + 1
            bias = torch.zeros(n, n + 1, dtype=dtype, device=device) if bias is None else bias
            bias = bias.masked_fill(hidden, float("-inf"))
        return bias

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (b, n, dim); context: (b, m, context_dim) or None -> (b, n, dim)."""
        bias = None
        if context is None:
            bias = self._bias(x.shape[1], x.device, x.dtype)
        elif self.causal or self.rel_pos_bias is not None:
            raise ValueError("a causal or position-biased VideoAttention takes no context")
        return super().forward(x, context=context, context_mask=context_mask, attn_bias=bias)


class TemporalAttention(nn.Module):
    """Residual attention across the frames of each pixel: (b, c, f, h, w) -> same shape.

    Causal (``causal``: a frame sees itself and earlier frames), with a relative-position bias,
    and zero-initialised output gain (a fresh layer is the identity). Child ``fn.fn`` is the
    :class:`VideoAttention`, as in the reference's state dict.
    """

    def __init__(self, dim: int, *, heads: int, dim_head: int, causal: bool = True):
        super().__init__()
        attention = VideoAttention(dim, heads=heads, dim_head=dim_head, causal=causal, rel_pos_bias=True,
                                   init_zero=True)
        self.fn = _Residual(attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, _, h, w = x.shape
        tokens = rearrange(x, "b c f h w -> (b h w) f c")
        return rearrange(self.fn(tokens), "(b h w) f c -> b c f h w", b=b, h=h, w=w)


class VideoChanLayerNorm(LayerNorm):
    """:class:`~imagen.unets.layers.LayerNorm` over the channels of (b, c, f, h, w); gain ``g`` (1, c, 1, 1, 1)."""

    def __init__(self, feats: int, *, stable: bool = False):
        super().__init__(feats, stable=stable, dim=-4)
        self.g = nn.Parameter(torch.ones(1, feats, 1, 1, 1))


class TimeTokenShift(nn.Module):
    """Shift the second half of the channels one frame later (zeros at the first frame); images pass unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, c, f, h, w) -> same shape."""
        if x.ndim != 5:
            return x
        keep, shift = x.chunk(2, dim=1)
        shift = F.pad(shift, (0, 0, 0, 0, 1, -1))
        return torch.cat((keep, shift), dim=1)


class VideoChanFeedForward(nn.Sequential):
    """Channel MLP on (b, dim, f, h, w): ChanLayerNorm, 1x1 conv, GELU, [:class:`TimeTokenShift`],
    ChanLayerNorm, 1x1 conv (no biases)."""

    def __init__(self, dim: int, mult: float = 2.0, time_token_shift: bool = True):
        hidden = int(dim * mult)
        shift = [TimeTokenShift()] if time_token_shift else []
        super().__init__(VideoChanLayerNorm(dim), frame_conv(dim, hidden, 1, bias=False), nn.GELU(),
                         *shift, VideoChanLayerNorm(hidden), frame_conv(hidden, dim, 1, bias=False))


class VideoTransformerBlock(nn.Module):
    """``depth`` x [self-attention over every pixel of every frame (context joins the keys),
    channel feed-forward with time token shift], residual: (b, dim, f, h, w) -> same shape."""

    def __init__(self, dim: int, *, depth: int = 1, heads: int = 8, dim_head: int = 32, ff_mult: float = 2.0,
                 ff_time_token_shift: bool = True, context_dim: int | None = None):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([VideoAttention(dim, heads=heads, dim_head=dim_head, context_dim=context_dim),
                           VideoChanFeedForward(dim, mult=ff_mult, time_token_shift=ff_time_token_shift)])
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (b, dim, f, h, w); context: (b, m, context_dim) or None; context_mask: (b, m) bool or None."""
        for attn, ff in self.layers:
            x = _from_tokens(attn(_to_tokens(x), context=context, context_mask=context_mask), x) + x
            x = ff(x) + x
        return x


class VideoLinearAttention(LinearAttention):
    """:class:`~imagen.unets.attention.LinearAttention` within each frame of (b, dim, f, h, w).

    The reference's video linear attention cannot run (it reshapes a video as an image); each frame
    attending to its own pixels and the context is the image layer applied frame by frame, with
    per-frame convolutions and the video channel norm (as the reference stores them).
    """

    def __init__(self, dim: int, *, heads: int = 8, dim_head: int = 32, dropout: float = 0.05,
                 context_dim: int | None = None):
        super().__init__(dim, heads=heads, dim_head=dim_head, dropout=dropout, context_dim=context_dim,
                         conv=frame_conv, norm=VideoChanLayerNorm)


class VideoLinearAttentionTransformerBlock(LinearAttentionTransformerBlock):
    """``depth`` x [per-frame linear attention, channel feed-forward with time token shift], residual."""

    def __init__(self, dim: int, *, depth: int = 1, heads: int = 8, dim_head: int = 32, ff_mult: float = 2.0,
                 ff_time_token_shift: bool = True, context_dim: int | None = None):
        super().__init__(dim, depth=depth, heads=heads, dim_head=dim_head, ff_mult=ff_mult, context_dim=context_dim,
                         attention=VideoLinearAttention,
                         feed_forward=partial(VideoChanFeedForward, time_token_shift=ff_time_token_shift))


class VideoResnetBlock(ResnetBlock):
    """:class:`~imagen.unets.blocks.ResnetBlock` on (b, c, f, h, w) with :class:`SpaceTimeConv` convolutions.

    ``forward(..., ignore_time=True)`` skips their temporal convolutions; the global-context gate
    pools over all frames (as the reference's video block does).
    """

    def __init__(self, dim: int, dim_out: int, **kwargs):
        super().__init__(dim, dim_out, conv=space_time_conv, spatial_dims=3, **kwargs)


class VideoCrossEmbedLayer(CrossEmbedLayer):
    """:class:`~imagen.unets.blocks.CrossEmbedLayer` applied to every frame (kernels ``(1, k, k)``)."""

    def __init__(self, dim_in: int, kernel_sizes, dim_out: int | None = None, stride: int = 2):
        super().__init__(dim_in, kernel_sizes, dim_out=dim_out, stride=stride, conv=frame_conv)


def video_downsample(dim: int, dim_out: int | None = None) -> nn.Sequential:
    """Halve height and width of every frame: space-to-depth (channels ``(c s1 s2)``) then a 1x1 conv."""
    return nn.Sequential(Rearrange("b c f (h s1) (w s2) -> b (c s1 s2) f h w", s1=2, s2=2),
                         frame_conv(dim * 4, dim if dim_out is None else dim_out, 1))


def video_nearest_upsample(dim: int, dim_out: int | None = None) -> nn.Sequential:
    """Double height and width of every frame: nearest-neighbour resize then a 3x3 conv.

    (The reference doubles the frames too, which its skip connections cannot take.)
    """
    return nn.Sequential(nn.Upsample(scale_factor=(1, 2, 2), mode="nearest"),
                         frame_conv(dim, dim if dim_out is None else dim_out, 3))


class VideoPixelShuffleUpsample(nn.Module):
    """Double height and width of every frame: 1x1 conv to 4x channels -> SiLU -> pixel shuffle (ICNR init)."""

    def __init__(self, dim: int, dim_out: int | None = None):
        super().__init__()
        dim_out = dim if dim_out is None else dim_out
        conv = frame_conv(dim, dim_out * 4, 1)
        _icnr_(conv, 4)
        self.net = nn.Sequential(conv, nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, dim, f, h, w) -> (b, dim_out, f, 2h, 2w)."""
        return _unfold(F.pixel_shuffle(_fold(self.net(x)), 2), x.shape[0])


def _icnr_(conv: nn.Module, copies: int) -> None:
    """Give each group of ``copies`` consecutive output channels the same (Kaiming) weights, zero bias."""
    base = torch.empty(conv.weight.shape[0] // copies, *conv.weight.shape[1:])
    nn.init.kaiming_uniform_(base)
    with torch.no_grad():
        conv.weight.copy_(base.repeat_interleave(copies, dim=0))
        conv.bias.zero_()


class TemporalDownsample(nn.Sequential):
    """Divide the frames by ``stride``: stack each group of frames on the channels (``(c p)``), 1x1 conv."""

    def __init__(self, dim: int, dim_out: int | None = None, stride: int = 2):
        super().__init__(Rearrange("b c (f p) h w -> b (c p) f h w", p=stride),
                         frame_conv(dim * stride, dim if dim_out is None else dim_out, 1))


class TemporalPixelShuffleUpsample(nn.Module):
    """Multiply the frames by ``stride``: 1x1 conv to ``stride`` x channels -> SiLU -> frames from channels."""

    def __init__(self, dim: int, dim_out: int | None = None, stride: int = 2):
        super().__init__()
        self.stride = stride
        conv = nn.Conv1d(dim, (dim if dim_out is None else dim_out) * stride, 1)
        _icnr_(conv, stride)
        self.net = nn.Sequential(conv, nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, dim, f, h, w) -> (b, dim_out, f * stride, h, w)."""
        _, _, _, h, w = x.shape
        out = self.net(rearrange(x, "b c f h w -> (b h w) c f"))
        return rearrange(out, "(b h w) (c r) f -> b c (f r) h w", h=h, w=w, r=self.stride)


class VideoUpsampleCombiner(UpsampleCombiner):
    """:class:`~imagen.unets.blocks.UpsampleCombiner` of videos: every up-stage output resized to the final
    (frames, height, width), projected by a space-time block (temporal conv always on)."""

    def __init__(self, dim: int, *, enabled: bool = False, dim_ins: tuple[int, ...] = (), dim_outs=()):
        super().__init__(dim, enabled=enabled, dim_ins=dim_ins, dim_outs=dim_outs, conv=space_time_conv,
                         spatial_dims=3)
