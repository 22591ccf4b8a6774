"""Attention layers on token sequences ``(batch, tokens, dim)``.

Every softmax attention goes through :func:`torch.nn.functional.scaled_dot_product_attention`;
heads are a tensor dimension, never a python loop. Masks are boolean, ``True`` = attend.
Layers that read a context (text and time tokens) prepend one learned *null* key/value, so a
query always has something to attend to, even when every context token is masked out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = ["Attention", "CrossAttention", "FeedForward", "LinearAttention", "LinearCrossAttention", "TemporalAttention"]


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    # (b, n, h*d) -> (b, h, n, d)
    return rearrange(t, "b n (h d) -> b h n d", h=heads)


def _key_mask(mask: torch.Tensor | None, extra_front: int, extra_back: int = 0) -> torch.Tensor | None:
    """Pad a key mask (b, n) with ``True`` for always-visible keys and shape it for SDPA: (b, 1, 1, n')."""
    if mask is None:
        return None
    mask = F.pad(mask, (extra_front, extra_back), value=True)
    return rearrange(mask, "b n -> b 1 1 n")


class _NullKV(nn.Module):
    """One learned key/value token per head, prepended to the keys and values."""

    def __init__(self, inner_dim: int):
        super().__init__()
        self.kv = nn.Parameter(torch.randn(2, 1, inner_dim) * 0.02)

    def forward(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # k, v: (b, n, inner) -> (b, 1 + n, inner)
        nk, nv = (t.to(k.dtype).expand(k.shape[0], -1, -1) for t in self.kv)
        return torch.cat((nk, k), dim=1), torch.cat((nv, v), dim=1)


class Attention(nn.Module):
    """Multi-head self-attention over ``x``; context tokens, when given, are appended to the keys.

    With ``context_dim`` set, the context (time and text tokens, Imagen appendix D.3.1) joins the
    keys and values after a learned null token, so ``forward(x, context, context_mask)`` lets
    every position of ``x`` attend to the image tokens and the unmasked context tokens.
    """

    def __init__(self, dim: int, *, heads: int = 8, dim_head: int = 64, context_dim: int | None = None):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.null_kv = _NullKV(inner)
        self.to_context_kv = None
        if context_dim is not None:
            self.to_context_kv = nn.Sequential(nn.LayerNorm(context_dim), nn.Linear(context_dim, inner * 2, bias=False))
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (b, n, dim); context: (b, m, context_dim); context_mask: (b, m) bool -> (b, n, dim)."""
        x = self.norm(x)
        q = self.to_q(x)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        k, v = self.null_kv(k, v)
        mask = None
        if self.to_context_kv is not None and context is not None:
            ck, cv = self.to_context_kv(context).chunk(2, dim=-1)
            k, v = torch.cat((k, ck), dim=1), torch.cat((v, cv), dim=1)
            mask = _key_mask(context_mask, extra_front=1 + x.shape[1])
        q, k, v = (_split_heads(t, self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class CrossAttention(nn.Module):
    """Queries from ``x``, keys and values from the context tokens (plus a learned null token)."""

    def __init__(self, dim: int, *, context_dim: int, heads: int = 8, dim_head: int = 64):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, inner * 2, bias=False)
        self.null_kv = _NullKV(inner)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (b, n, dim); context: (b, m, context_dim); context_mask: (b, m) bool -> (b, n, dim)."""
        q = self.to_q(self.norm(x))
        k, v = self.null_kv(*self.to_kv(self.norm_context(context)).chunk(2, dim=-1))
        q, k, v = (_split_heads(t, self.heads) for t in (q, k, v))
        return self.to_out(rearrange(self._attend(q, k, v, context_mask), "b h n d -> b n (h d)"))

    def _attend(self, q, k, v, context_mask):
        """q: (b, h, n, d); k, v: (b, h, 1 + m, d) with the null token first -> (b, h, n, d)."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_key_mask(context_mask, extra_front=1))


def _linear_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Linear attention (Shen et al. 2021): softmax(q) over features, softmax(k) over keys.

    q: (b, h, n, d); k, v: (b, h, m, d); key_mask: (b, m) bool or None -> (b, h, n, d).
    """
    q = q.softmax(dim=-1) * q.shape[-1] ** -0.5
    if key_mask is not None:
        keep = rearrange(key_mask, "b m -> b 1 m 1")
        k = k.masked_fill(~keep, torch.finfo(k.dtype).min)
        v = v.masked_fill(~keep, 0.0)
    k = k.softmax(dim=-2)
    summary = torch.einsum("bhmd,bhme->bhde", k, v)
    return torch.einsum("bhnd,bhde->bhne", q, summary)


class LinearAttention(nn.Module):
    """Linear-cost self-attention over ``x`` (context tokens, when given, join the keys)."""

    def __init__(self, dim: int, *, heads: int = 8, dim_head: int = 32, context_dim: int | None = None):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_context_kv = None
        if context_dim is not None:
            self.to_context_kv = nn.Sequential(nn.LayerNorm(context_dim), nn.Linear(context_dim, inner * 2, bias=False))
        self.to_out = nn.Sequential(nn.Linear(inner, dim, bias=False), nn.LayerNorm(dim))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (b, n, dim); context: (b, m, context_dim); context_mask: (b, m) bool -> (b, n, dim)."""
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        mask = None
        if self.to_context_kv is not None and context is not None:
            ck, cv = self.to_context_kv(context).chunk(2, dim=-1)
            k, v = torch.cat((k, ck), dim=1), torch.cat((v, cv), dim=1)
            if context_mask is not None:
                mask = F.pad(context_mask, (x.shape[1], 0), value=True)
        q, k, v = (_split_heads(t, self.heads) for t in (q, k, v))
        out = _linear_attend(q, k, v, mask)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class LinearCrossAttention(CrossAttention):
    """Linear-cost cross-attention: queries from ``x``, keys from the context (plus a null token)."""

    def __init__(self, dim: int, *, context_dim: int, heads: int = 8, dim_head: int = 64):
        super().__init__(dim, context_dim=context_dim, heads=heads, dim_head=dim_head)
        self.to_out = nn.Sequential(self.to_out, nn.LayerNorm(dim))

    def _attend(self, q, k, v, context_mask):
        mask = None if context_mask is None else F.pad(context_mask, (1, 0), value=True)
        return _linear_attend(q, k, v, mask)


class TemporalAttention(nn.Module):
    """Self-attention across frames, with a learned continuous relative-position bias.

    The bias is an MLP of the signed frame distance (``rel_pos_bias_depth`` layers), one value
    per head; with ``causal`` a frame attends only to itself and earlier frames.
    """

    def __init__(
        self, dim: int, *, heads: int = 8, dim_head: int = 64, causal: bool = True, rel_pos_bias_depth: int = 2
    ):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.causal = heads, causal
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        hidden = max(dim_head, 16)
        layers: list[nn.Module] = [nn.Linear(1, hidden), nn.SiLU()]
        for _ in range(max(rel_pos_bias_depth, 1) - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.rel_pos_mlp = nn.Sequential(*layers, nn.Linear(hidden, heads))

    def _bias(self, frames: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        pos = torch.arange(frames, device=device)
        rel = (pos[:, None] - pos[None, :]).to(self.rel_pos_mlp[0].weight.dtype)  # (f, f): i - j
        dist = torch.sign(rel) * torch.log1p(rel.abs())
        bias = rearrange(self.rel_pos_mlp(dist[..., None]), "i j h -> h i j").to(dtype)
        if self.causal:
            bias = bias.masked_fill(rel[None] < 0, float("-inf"))
        return bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, frames, dim) -> (b, frames, dim)."""
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        q, k, v = (_split_heads(t, self.heads) for t in (q, k, v))
        bias = self._bias(x.shape[1], x.device, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class FeedForward(nn.Module):
    """Pre-norm MLP ``dim -> dim * mult -> dim`` with GELU and a normalised hidden layer.

    With ``time_token_shift`` (video), a quarter of the hidden channels is shifted one frame
    forward in time when ``forward`` is told the number of frames.
    """

    def __init__(self, dim: int, *, mult: float = 2.0, dropout: float = 0.0, time_token_shift: bool = False):
        super().__init__()
        hidden = int(dim * mult)
        self.time_token_shift = time_token_shift
        self.net_in = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden, bias=False), nn.GELU())
        self.net_out = nn.Sequential(nn.LayerNorm(hidden), nn.Dropout(dropout), nn.Linear(hidden, dim, bias=False))

    def forward(self, x: torch.Tensor, frames: int = 1) -> torch.Tensor:
        """x: (b * frames, n, dim), frames of one sample consecutive -> same shape."""
        h = self.net_in(x)
        if self.time_token_shift and frames > 1:
            h = _shift_frames(h, frames)
        return self.net_out(h)


def _shift_frames(h: torch.Tensor, frames: int) -> torch.Tensor:
    """Shift the first quarter of the channels of h ((b f), n, c) one frame later (zeros at frame 0)."""
    h = rearrange(h, "(b f) n c -> b f n c", f=frames)
    k = h.shape[-1] // 4
    shifted = F.pad(h[:, :-1, :, :k], (0, 0, 0, 0, 1, 0))
    h = torch.cat((shifted, h[..., k:]), dim=-1)
    return rearrange(h, "b f n c -> (b f) n c")
