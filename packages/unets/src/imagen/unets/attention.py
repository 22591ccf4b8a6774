"""Attention layers of the reference 2.x U-Net, on token sequences ``(b, n, dim)`` or feature maps.

Softmax attention is *cosine-similarity* attention: queries and keys are l2-normalised, multiplied
by learned per-dimension scales (``q_scale``, ``k_scale``) and compared with a fixed ``scale``
(8), all through :func:`torch.nn.functional.scaled_dot_product_attention`. Self-attention is
*multi-query*: one key/value head shared by every query head (the heads' queries attend as one
head of ``n * heads`` queries, a view, never copied). Layers that
read a context start their keys with one learned null key/value (``null_kv``), so a query always
has something to attend to. Masks are boolean, ``True`` = attend; the reference never masks (its
masked text positions hold the null text embedding instead), so ``None`` is the default everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .layers import ChanLayerNorm, ConvFactory, LayerNorm, _inv_norm, _unit_backward, conv2d

__all__ = [
    "Attention", "ChanFeedForward", "CrossAttention", "FeedForward", "LinearAttention", "LinearCrossAttention",
    "cosine_sim_attention", "linear_attend",
]


def cosine_sim_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_scale: torch.Tensor, k_scale: torch.Tensor, scale: float,
    attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(scale * <q / |q| * q_scale, k / |k| * k_scale>) v through SDPA.

    q: (b, h, n, d); k, v: (b, h or 1, m, d) (one head serves all h, multi-query);
    q_scale, k_scale: (d,); attn_mask: bool (True = attend) or float bias, broadcastable to
    (b, h, n, m). Returns (b, h, n, d).
    """
    q, k = _unit_scaled(q, q_scale), _unit_scaled(k, k_scale)
    b, heads, n, d = q.shape
    if k.shape[1] == 1 < heads:  # multi-query: every head's queries as one head's, a view (n h) of q
        folded = q.transpose(1, 2).reshape(b, 1, n * heads, d)
        out = F.scaled_dot_product_attention(folded, k, v, attn_mask=_fold_heads(attn_mask, heads, n), scale=scale)
        return out.reshape(b, n, heads, d).transpose(1, 2)
    k, v = k.expand(-1, heads, -1, -1), v.expand(-1, heads, -1, -1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


def _fold_heads(mask: torch.Tensor | None, heads: int, n: int) -> torch.Tensor | None:
    """An SDPA mask broadcastable to (b, heads, n, m) for the queries folded to (b, 1, n * heads)."""
    if mask is None:
        return None
    mask = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))
    if mask.shape[1] == mask.shape[2] == 1:  # a key mask: the same for every query
        return mask
    return rearrange(mask.expand(-1, heads, n, -1), "b h n m -> b 1 (n h) m")


def _unit_scaled(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """``F.normalize(x, dim=-1) * gain`` as one reduction and two products (no division, cheaper backward)."""
    if torch.is_grad_enabled() and (x.requires_grad or gain.requires_grad):
        return _UnitScaled.apply(x, gain)
    return x * _inv_norm(x, -1) * gain


class _UnitScaled(torch.autograd.Function):
    """:func:`_unit_scaled` saving only ``x``, its per-vector rsqrt and ``gain``: autograd through the plain
    expression would also keep the unit vectors, one more copy of every query and key."""

    @staticmethod
    def forward(ctx, x, gain):
        inv = _inv_norm(x, -1)
        ctx.save_for_backward(x, inv, gain)
        return x * inv * gain

    @staticmethod
    def backward(ctx, grad):
        x, inv, gain = ctx.saved_tensors
        unit = x * inv
        grad_gain = (grad * unit).sum_to_size(gain.shape) if ctx.needs_input_grad[1] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = _unit_backward(grad * gain, unit, inv, -1)
        return grad_x, grad_gain


def _key_mask(mask: torch.Tensor | None, front: int = 0, back: int = 0) -> torch.Tensor | None:
    """A key mask (b, m) padded with always-visible keys and shaped for SDPA: (b, 1, 1, front + m + back)."""
    if mask is None:
        return None
    return rearrange(F.pad(mask, (front, back), value=True), "b m -> b 1 1 m")


def _with_bias(bias: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor | None:
    """Combine a float bias (.., n, m) and a bool mask (b, 1, 1, m) into one SDPA ``attn_mask``."""
    if bias is None:
        return mask
    if mask is None:
        return bias
    return bias.masked_fill(~mask, -torch.finfo(bias.dtype).max)


class Attention(nn.Module):
    """Multi-query cosine-sim self-attention; context tokens, when given, join the keys first.

    Keys and values are ``[context (to_context); null_kv; x (to_kv)]``, one head of ``dim_head``
    shared by the ``heads`` query heads (Imagen appendix D.3.1: the self-attention also attends
    to the text and time tokens). ``attn_bias`` (float, broadcastable to ``(b, h, n, keys)`` over
    all the keys in that order) is added to the scores (temporal attention's position bias).
    """

    def __init__(self, dim: int, *, heads: int = 8, dim_head: int = 64, context_dim: int | None = None,
                 scale: float = 8.0):
        super().__init__()
        self.heads, self.scale = heads, scale
        inner = heads * dim_head
        self.norm = LayerNorm(dim)
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, dim_head * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_context = None
        if context_dim is not None:
            self.to_context = nn.Sequential(nn.LayerNorm(context_dim), nn.Linear(context_dim, dim_head * 2))
        self.to_out = nn.Sequential(nn.Linear(inner, dim, bias=False), LayerNorm(dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """x: (b, n, dim); context: (b, m, context_dim) or None; context_mask: (b, m) bool -> (b, n, dim)."""
        b, n = x.shape[:2]
        x = self.norm(x)
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)
        k, v = self.to_kv(x).chunk(2, dim=-1)  # (b, n, d) each: one shared head
        nk, nv = (t.to(x.dtype).expand(b, 1, -1) for t in self.null_kv)
        ks, vs, mask = [nk, k], [nv, v], None
        if context is not None:
            if self.to_context is None:
                raise ValueError("context was given to an Attention built without context_dim")
            ck, cv = self.to_context(context).chunk(2, dim=-1)
            ks, vs = [ck, *ks], [cv, *vs]
            mask = _key_mask(context_mask, back=1 + n)
        k, v = (rearrange(torch.cat(t, dim=1), "b m d -> b 1 m d") for t in (ks, vs))
        out = cosine_sim_attention(q, k, v, self.q_scale, self.k_scale, self.scale, _with_bias(attn_bias, mask))
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class CrossAttention(nn.Module):
    """Cosine-sim cross-attention: queries from ``x``, per-head keys/values from the context after ``null_kv``."""

    def __init__(self, dim: int, *, context_dim: int | None = None, heads: int = 8, dim_head: int = 64,
                 norm_context: bool = False, scale: float = 8.0):
        super().__init__()
        self.heads, self.scale = heads, scale
        inner = heads * dim_head
        context_dim = dim if context_dim is None else context_dim
        self.norm = LayerNorm(dim)
        self.norm_context = LayerNorm(context_dim) if norm_context else nn.Identity()
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, inner * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Sequential(nn.Linear(inner, dim, bias=False), LayerNorm(dim))

    def _qkv(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q: (b, h, n, d); k, v: (b, h, 1 + m, d), the null key/value first."""
        b = x.shape[0]
        q = self.to_q(self.norm(x))
        k, v = self.to_kv(self.norm_context(context)).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        nk, nv = (t.to(k.dtype).expand(b, self.heads, 1, -1) for t in self.null_kv)
        return q, torch.cat((nk, k), dim=2), torch.cat((nv, v), dim=2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (b, n, dim); context: (b, m, context_dim); context_mask: (b, m) bool or None -> (b, n, dim)."""
        q, k, v = self._qkv(x, context)
        out = cosine_sim_attention(q, k, v, self.q_scale, self.k_scale, self.scale, _key_mask(context_mask, front=1))
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


def linear_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                  key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Linear attention (Shen et al. 2021): softmax(q) over features times scale, softmax(k) over keys.

    q: (b, h, n, d); k, v: (b, h, m, d); key_mask: (b, m) bool (True = attend) or None -> (b, h, n, d).
    """
    if key_mask is not None:
        keep = rearrange(key_mask, "b m -> b 1 m 1")
        k = k.masked_fill(~keep, -torch.finfo(k.dtype).max)
        v = v.masked_fill(~keep, 0.0)
    q = q.softmax(dim=-1) * scale
    k = k.softmax(dim=-2)
    summary = torch.einsum("bhmd,bhme->bhde", k, v)
    return torch.einsum("bhnd,bhde->bhne", q, summary)


class LinearCrossAttention(CrossAttention):
    """:class:`CrossAttention`'s layers, attending linearly (the fixed ``scale`` multiplies softmax(q))."""

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (b, n, dim); context: (b, m, context_dim); context_mask: (b, m) bool or None -> (b, n, dim)."""
        q, k, v = self._qkv(x, context)
        mask = None if context_mask is None else F.pad(context_mask, (1, 0), value=True)
        out = linear_attend(q, k, v, self.scale, mask)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class LinearAttention(nn.Module):
    """Linear self-attention within each image of a feature map (b, dim, *lead, h, w), depthwise-conv projections.

    q, k, v are each dropout -> 1x1 conv -> depthwise 3x3 conv of the channel-normalised input;
    context tokens (when given) join the keys after the pixels; the output is SiLU -> 1x1 conv ->
    channel layer norm. ``dropout`` (0.05 as in the reference) acts in training mode only.
    ``conv`` and ``norm`` build the convolutions and channel norms (videos: per-frame convs; every
    frame of ``lead`` then attends to its own pixels and the context).
    """

    def __init__(self, dim: int, *, heads: int = 8, dim_head: int = 32, dropout: float = 0.05,
                 context_dim: int | None = None, conv: ConvFactory = conv2d,
                 norm: Callable[[int], nn.Module] = ChanLayerNorm):
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        inner = heads * dim_head
        self.norm = norm(dim)
        self.nonlin = nn.SiLU()
        self.to_q, self.to_k, self.to_v = (
            nn.Sequential(nn.Dropout(dropout), conv(dim, inner, 1, bias=False),
                          conv(inner, inner, 3, groups=inner, bias=False))
            for _ in range(3)
        )
        self.to_context = None
        if context_dim is not None:
            self.to_context = nn.Sequential(nn.LayerNorm(context_dim), nn.Linear(context_dim, inner * 2, bias=False))
        self.to_out = nn.Sequential(conv(inner, dim, 1, bias=False), norm(dim))

    def forward(self, fmap: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """fmap: (b, dim, *lead, h, w); context: (b, m, context_dim); context_mask: (b, m) bool -> fmap's shape."""
        b, _, *lead, x, y = fmap.shape
        images = math.prod(lead)  # images per sample: 1, or the frames of a video
        fmap = self.norm(fmap)
        q, k, v = (rearrange(_images(fn(fmap)), "b (h c) x y -> b h (x y) c", h=self.heads)
                   for fn in (self.to_q, self.to_k, self.to_v))
        mask = None
        if context is not None:
            if self.to_context is None:
                raise ValueError("context was given to a LinearAttention built without context_dim")
            ck, cv = (rearrange(t, "b m (h d) -> b h m d", h=self.heads).repeat_interleave(images, dim=0)
                      for t in self.to_context(context).chunk(2, dim=-1))
            k, v = torch.cat((k, ck), dim=2), torch.cat((v, cv), dim=2)
            if context_mask is not None:
                mask = F.pad(context_mask, (x * y, 0), value=True).repeat_interleave(images, dim=0)
        out = rearrange(linear_attend(q, k, v, self.scale, mask), "b h (x y) d -> b (h d) x y", x=x, y=y)
        out = out.reshape(b, *lead, *out.shape[1:]).movedim(-3, 1)  # back to (b, inner, *lead, h, w)
        return self.to_out(self.nonlin(out))


def _images(fmap: torch.Tensor) -> torch.Tensor:
    """(b, c, *lead, h, w) -> (b * prod(lead), c, h, w): every image of ``lead`` its own batch entry."""
    return fmap.movedim(1, -3).flatten(0, -4)


class FeedForward(nn.Sequential):
    """Token MLP ``dim -> dim * mult -> dim``: LayerNorm, Linear, GELU, LayerNorm, Linear (no biases)."""

    def __init__(self, dim: int, mult: float = 2.0):
        hidden = int(dim * mult)
        super().__init__(LayerNorm(dim), nn.Linear(dim, hidden, bias=False), nn.GELU(), LayerNorm(hidden),
                         nn.Linear(hidden, dim, bias=False))


class ChanFeedForward(nn.Sequential):
    """:class:`FeedForward` on a feature map (b, dim, h, w): channel norms and 1x1 convolutions."""

    def __init__(self, dim: int, mult: float = 2.0):
        hidden = int(dim * mult)
        super().__init__(ChanLayerNorm(dim), nn.Conv2d(dim, hidden, 1, bias=False), nn.GELU(), ChanLayerNorm(hidden),
                         nn.Conv2d(hidden, dim, 1, bias=False))
