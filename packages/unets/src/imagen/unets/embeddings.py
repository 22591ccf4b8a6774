"""Conditioning embeddings: the noise level, the text tokens and the learned null text.

The noise level is whatever scalar the caller's diffusion process uses (continuous time in
[0, 1], log-SNR or EDM's c_noise = log(sigma) / 4): it goes through learned sinusoidal features,
so no fixed range is assumed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from .attention import FeedForward

__all__ = ["LearnedSinusoidalPosEmb", "NoiseLevelEmbedding", "PerceiverResampler", "TextConditioning"]


class LearnedSinusoidalPosEmb(nn.Module):
    """Features ``[t, sin(2 pi w t), cos(2 pi w t)]`` with learned frequencies ``w`` (dim // 2 of them).

    Input ``(b,)`` float, output ``(b, dim + 1)``.
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"learned_sinu_pos_emb_dim must be an even number >= 2, got {dim!r}")
        self.weights = nn.Parameter(torch.randn(dim // 2))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (b,) -> (b, dim + 1)."""
        t = t.to(self.weights.dtype)[:, None]
        freqs = t * self.weights[None, :] * (2 * math.pi)
        return torch.cat((t, freqs.sin(), freqs.cos()), dim=-1)


class NoiseLevelEmbedding(nn.Module):
    """A noise level -> a conditioning vector ``(b, cond_dim_out)`` and ``num_tokens`` context tokens."""

    def __init__(self, *, sinu_dim: int, hidden_dim: int, token_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.to_hidden = nn.Sequential(
            LearnedSinusoidalPosEmb(sinu_dim), nn.Linear(sinu_dim + 1, hidden_dim), nn.SiLU()
        )
        self.to_cond = nn.Linear(hidden_dim, hidden_dim)
        self.to_tokens = nn.Linear(hidden_dim, token_dim * num_tokens) if num_tokens > 0 else None

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """t: (b,) -> (cond (b, hidden_dim), tokens (b, num_tokens, token_dim) or None)."""
        hidden = self.to_hidden(t)
        tokens = None
        if self.to_tokens is not None:
            tokens = rearrange(self.to_tokens(hidden), "b (r d) -> b r d", r=self.num_tokens)
        return self.to_cond(hidden), tokens


class _PerceiverLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: float):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm_x, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.ff = FeedForward(dim, mult=ff_mult)

    def forward(self, x: torch.Tensor, latents: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # latents attend to [x; latents]; x: (b, n, d), latents: (b, r, d), mask: (b, n)
        x, normed = self.norm_x(x), self.norm_latents(latents)
        q = self.to_q(normed)
        k, v = self.to_kv(torch.cat((x, normed), dim=1)).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        attn_mask = None
        if mask is not None:
            attn_mask = rearrange(F.pad(mask, (0, latents.shape[1]), value=True), "b n -> b 1 1 n")
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        latents = latents + self.to_out(rearrange(out, "b h n d -> b n (h d)"))
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    """Perceiver-style attention pooling: ``num_latents`` learned queries read a masked token sequence.

    Input ``(b, n, dim)`` with ``n <= max_seq_len`` and a key mask ``(b, n)``; output ``(b, num_latents, dim)``.
    """

    def __init__(
        self, *, dim: int, depth: int = 2, heads: int = 8, dim_head: int = 64, num_latents: int = 32,
        max_seq_len: int = 512, ff_mult: float = 4.0,
    ):
        super().__init__()
        if num_latents < 1:
            raise ValueError(f"attn_pool_num_latents must be >= 1, got {num_latents!r}")
        self.pos_emb = nn.Embedding(max_seq_len, dim)
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList([_PerceiverLayer(dim, heads, dim_head, ff_mult) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (b, n, dim); mask: (b, n) bool -> (b, num_latents, dim)."""
        x = x + self.pos_emb(torch.arange(x.shape[1], device=x.device)).to(x.dtype)
        latents = repeat(self.latents, "r d -> b r d", b=x.shape[0]).to(x.dtype)
        for layer in self.layers:
            latents = layer(x, latents, mask)
        return self.norm(latents)


class TextConditioning(nn.Module):
    """Text embeddings -> context tokens for cross-attention and a pooled vector for the time embedding.

    Positions where ``text_mask`` is False, and every position of a dropped sample
    (classifier-free guidance), are replaced by learned null tokens; a dropped sample's pooled
    vector is a learned null vector too. The returned key mask is the text mask for kept
    samples and all True for dropped ones (they attend to their null tokens).
    """

    def __init__(
        self, *, text_embed_dim: int, cond_dim: int, hidden_dim: int, max_text_len: int, attn_pool: bool,
        num_latents: int, heads: int, dim_head: int,
    ):
        super().__init__()
        self.text_embed_dim, self.max_text_len = text_embed_dim, max_text_len
        self.to_cond = nn.Linear(text_embed_dim, cond_dim)
        self.null_tokens = nn.Parameter(torch.randn(max_text_len, cond_dim))
        self.null_hidden = nn.Parameter(torch.randn(hidden_dim))
        self.attn_pool = None
        if attn_pool:
            self.attn_pool = PerceiverResampler(
                dim=cond_dim, heads=heads, dim_head=dim_head, num_latents=num_latents, max_seq_len=max_text_len
            )
        self.to_hidden = nn.Sequential(
            nn.LayerNorm(cond_dim), nn.Linear(cond_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim)
        )

    def _fit_length(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # truncate or pad (b, L, d) / (b, L) to max_text_len
        n = self.max_text_len
        embeds, mask = embeds[:, :n], mask[:, :n]
        pad = n - embeds.shape[1]
        if pad > 0:
            embeds = F.pad(embeds, (0, 0, 0, pad))
            mask = F.pad(mask, (0, pad), value=False)
        return embeds, mask

    def forward(
        self, text_embeds: torch.Tensor | None, text_mask: torch.Tensor | None, drop: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """text_embeds: (b, L, text_embed_dim) or None (= all dropped); text_mask: (b, L) bool; drop: (b,) bool.

        Returns tokens (b, n, cond_dim), their key mask (b, n) or None (all visible), pooled (b, hidden_dim).
        """
        b = drop.shape[0]
        if text_embeds is None:
            text_embeds = self.null_tokens.new_zeros(b, 1, self.text_embed_dim)
            drop = torch.ones_like(drop)
        if text_mask is None:
            text_mask = torch.ones(text_embeds.shape[:2], dtype=torch.bool, device=text_embeds.device)
        embeds, mask = self._fit_length(text_embeds, text_mask.bool())
        tokens = self.to_cond(embeds)
        keep = mask & ~drop[:, None]  # (b, n)
        tokens = torch.where(keep[..., None], tokens, self.null_tokens.to(tokens.dtype))
        mask = torch.where(drop[:, None], True, mask)
        mask = mask | ~mask.any(dim=1, keepdim=True)  # an empty text attends to its null tokens
        if self.attn_pool is not None:
            tokens, mask = self.attn_pool(tokens, mask), None
        weights = torch.ones(tokens.shape[:2], device=tokens.device) if mask is None else mask.float()
        pooled = (tokens * weights[..., None].to(tokens.dtype)).sum(1) / weights.sum(1, keepdim=True).to(tokens.dtype)
        hidden = self.to_hidden(pooled)
        hidden = torch.where(drop[:, None], self.null_hidden.to(hidden.dtype), hidden)
        return tokens, mask, hidden
