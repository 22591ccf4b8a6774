"""Attention layers against a direct softmax oracle; linear attention masking."""

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from imagen.unets.attention import Attention, CrossAttention, LinearCrossAttention


def _oracle(q, k, v, keep):
    """softmax(q k^T / sqrt(d)) v with masked keys removed, one head at a time. q: (n, d), k, v: (m, d)."""
    scores = q @ k.T / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~keep[None], float("-inf"))
    return scores.softmax(-1) @ v


def _heads(t, heads):
    return t.unflatten(-1, (heads, -1)).transpose(0, 1)  # (n, h*d) -> (h, n, d)


@given(st.integers(1, 3), st.lists(st.booleans(), min_size=4, max_size=4))
def test_cross_attention_matches_the_oracle(heads, keep):
    torch.manual_seed(0)
    attn = CrossAttention(6, context_dim=5, heads=heads, dim_head=4).double()
    x, ctx = torch.randn(1, 3, 6).double(), torch.randn(1, 4, 5).double()
    keep = torch.tensor(keep)
    with torch.no_grad():
        out = attn(x, ctx, keep[None])
        q = _heads(attn.to_q(attn.norm(x))[0], heads)
        k, v = attn.to_kv(attn.norm_context(ctx))[0].chunk(2, -1)
        nk, nv = attn.null_kv.kv[:, 0]
        k, v = _heads(torch.cat((nk[None], k)), heads), _heads(torch.cat((nv[None], v)), heads)
        full_keep = torch.cat((torch.tensor([True]), keep))
        expected = torch.cat([_oracle(q[i], k[i], v[i], full_keep) for i in range(heads)], dim=-1)
        expected = attn.to_out(expected)
    torch.testing.assert_close(out[0], expected)


def test_self_attention_with_context_matches_the_oracle():
    torch.manual_seed(1)
    attn = Attention(6, heads=2, dim_head=4, context_dim=5).double()
    x, ctx = torch.randn(1, 3, 6).double(), torch.randn(1, 2, 5).double()
    keep = torch.tensor([True, False])
    with torch.no_grad():
        out = attn(x, ctx, keep[None])
        xn = attn.norm(x)[0]
        q = _heads(attn.to_q(xn), 2)
        k, v = attn.to_kv(xn).chunk(2, -1)
        ck, cv = attn.to_context_kv(ctx)[0].chunk(2, -1)
        nk, nv = attn.null_kv.kv[:, 0]
        k, v = (_heads(torch.cat((n[None], a, c)), 2) for n, a, c in ((nk, k, ck), (nv, v, cv)))
        full_keep = torch.tensor([True] * 4 + [True, False])
        expected = attn.to_out(torch.cat([_oracle(q[i], k[i], v[i], full_keep) for i in range(2)], dim=-1))
    torch.testing.assert_close(out[0], expected)


def test_linear_cross_attention_ignores_masked_keys():
    torch.manual_seed(2)
    attn = LinearCrossAttention(6, context_dim=5, heads=2, dim_head=4)
    x, ctx = torch.randn(2, 3, 6), torch.randn(2, 4, 5)
    keep = torch.tensor([[True, True, False, False]] * 2)
    other = torch.where(keep[..., None], ctx, torch.randn(2, 4, 5))
    with torch.no_grad():
        torch.testing.assert_close(attn(x, ctx, keep), attn(x, other, keep))
        torch.testing.assert_close(attn(x, ctx, keep), attn(x, ctx[:, :2]))
