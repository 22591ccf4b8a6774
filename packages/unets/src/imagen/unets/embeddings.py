"""Conditioning embeddings: learned sinusoidal noise-level features and the Perceiver text resampler.

The noise level is whatever scalar the caller's diffusion process uses (continuous time in
[0, 1], log-SNR or EDM's c_noise): it goes through learned sinusoidal features, so no fixed
range is assumed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from .attention import FeedForward, _unit_scaled
from .layers import LayerNorm

__all__ = ["LearnedSinusoidalPosEmb", "PerceiverAttention", "PerceiverResampler"]


class LearnedSinusoidalPosEmb(nn.Module):
    """Features ``[t, sin(2 pi w t), cos(2 pi w t)]`` with learned frequencies ``w`` (dim // 2 of them).

    Input ``(b,)`` float, output ``(b, dim + 1)``.
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"learned_sinu_pos_emb_dim must be an even int >= 2, got {dim!r}")
        self.weights = nn.Parameter(torch.randn(dim // 2))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (b,) -> (b, dim + 1)."""
        t = t[:, None]
        freqs = t * self.weights[None, :] * 2 * math.pi
        return torch.cat((t, freqs.sin(), freqs.cos()), dim=-1)


class PerceiverAttention(nn.Module):
    """Latents attend (cosine-sim, per-head keys) to ``[x; latents]`` (Imagen's variant of Perceiver)."""

    def __init__(self, *, dim: int, dim_head: int = 64, heads: int = 8, scale: float = 8.0):
        super().__init__()
        self.heads, self.scale = heads, scale
        inner = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Sequential(nn.Linear(inner, dim, bias=False), nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor, latents: torch.Tensor, mask: torch.Tensor | None = None, *,
                shared: torch.Tensor | None = None) -> torch.Tensor:
        """x: (b, n, dim); latents: (b, r, dim); shared: (1, t, dim) rows after x in every sample, or None;
        mask: (b, n + t) bool over x and shared (latents always visible) -> (b, r, dim)."""
        (b, n), latents = x.shape[:2], self.norm_latents(latents)
        q = self._heads(self.to_q(latents))
        k, v = self._keys_values(torch.cat((self.norm(x), latents), dim=1))
        if shared is not None:  # keys and values of the shared rows once, not per sample
            sk, sv = (t.expand(b, -1, -1, -1) for t in self._keys_values(self.norm(shared)))
            k, v = (torch.cat((t[:, :, :n], s, t[:, :, n:]), dim=2) for t, s in ((k, sk), (v, sv)))
        attn_mask = None
        if mask is not None:
            attn_mask = rearrange(F.pad(mask, (0, latents.shape[1]), value=True), "b j -> b 1 1 j")
        out = F.scaled_dot_product_attention(_unit_scaled(q, self.q_scale), k, v, attn_mask=attn_mask,
                                             scale=self.scale)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return rearrange(t, "b n (h d) -> b h n d", h=self.heads)

    def _keys_values(self, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-scaled keys and values (b, h, m, d) of normalised rows (b, m, dim)."""
        k, v = (self._heads(t) for t in self.to_kv(normed).chunk(2, dim=-1))
        return _unit_scaled(k, self.k_scale), v


class PerceiverResampler(nn.Module):
    """Attention pooling: ``num_latents_mean_pooled + num_latents`` latents read a token sequence.

    The sequence gets learned position embeddings; ``num_latents_mean_pooled`` latents come from
    its mean (over every position), the others are learned. Input ``(b, n, dim)`` with
    ``n <= max_seq_len``; output ``(b, num_latents_mean_pooled + num_latents, dim)``.
    """

    def __init__(self, *, dim: int, depth: int, dim_head: int = 64, heads: int = 8, num_latents: int = 64,
                 num_latents_mean_pooled: int = 4, max_seq_len: int = 512, ff_mult: float = 4.0):
        super().__init__()
        if num_latents < 1:
            raise ValueError(f"attn_pool_num_latents must be an int >= 1, got {num_latents!r}")
        self.pos_emb = nn.Embedding(max_seq_len, dim)
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.num_latents_mean_pooled = num_latents_mean_pooled
        self.to_latents_from_mean_pooled_seq = None
        if num_latents_mean_pooled > 0:
            self.to_latents_from_mean_pooled_seq = nn.Sequential(
                LayerNorm(dim), nn.Linear(dim, dim * num_latents_mean_pooled)
            )
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim=dim, dim_head=dim_head, heads=heads), FeedForward(dim, mult=ff_mult)])
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *,
                shared: torch.Tensor | None = None) -> torch.Tensor:
        """x: (b, n, dim); mask: (b, n + t) bool (True = attend) or None -> (b, latents, dim).

        ``shared`` (1, t, dim), when given, continues every sample's sequence after ``x`` (the null text
        embedding at the padding positions): the result is ``forward(cat(x, shared.expand(b, -1, -1)))``,
        with the shared rows' keys and values computed once instead of per sample.
        """
        n = x.shape[1]
        pos = self.pos_emb(torch.arange(n + (0 if shared is None else shared.shape[1]), device=x.device))
        x_with_pos = x + pos[:n]
        shared_with_pos = None if shared is None else shared + pos[n:]
        latents = repeat(self.latents, "r d -> b r d", b=x.shape[0])
        if self.to_latents_from_mean_pooled_seq is not None:
            mean = x.mean(dim=1) if shared is None else (x.sum(dim=1) + shared.sum(dim=1)) / pos.shape[0]
            pooled = self.to_latents_from_mean_pooled_seq(mean)  # (b, r' * dim)
            pooled = rearrange(pooled, "b (r d) -> b r d", r=self.num_latents_mean_pooled)
            latents = torch.cat((pooled, latents), dim=1)
        for attn, ff in self.layers:
            latents = attn(x_with_pos, latents, mask=mask, shared=shared_with_pos) + latents
            latents = ff(latents) + latents
        return latents
