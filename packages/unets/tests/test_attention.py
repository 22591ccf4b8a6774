"""Attention layers against a direct softmax oracle (cosine-sim, multi-query, null key); linear attention."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from imagen.unets.attention import Attention, CrossAttention, LinearAttention, LinearCrossAttention
from imagen.unets.embeddings import PerceiverResampler


def _oracle(q, k, v, keep, q_scale, k_scale, scale=8.0):
    """softmax(scale * cos-sim) v over the kept keys, one head: q (n, d), k, v (m, d), keep (m,)."""
    q = q / q.norm(dim=-1, keepdim=True) * q_scale
    k = k / k.norm(dim=-1, keepdim=True) * k_scale
    scores = (q @ k.T * scale).masked_fill(~keep[None], float("-inf"))
    return scores.softmax(-1) @ v


def _heads(t, heads):
    return t.unflatten(-1, (heads, -1)).transpose(0, 1)  # (n, h*d) -> (h, n, d)


def _randomise_scales(attn, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (attn.q_scale, attn.k_scale):
            p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@given(st.integers(1, 3), st.lists(st.booleans(), min_size=4, max_size=4))
def test_cross_attention_matches_the_oracle(heads, keep):
    torch.manual_seed(0)
    attn = CrossAttention(6, context_dim=5, heads=heads, dim_head=4).double()
    _randomise_scales(attn, heads)
    x, ctx = torch.randn(1, 3, 6).double(), torch.randn(1, 4, 5).double()
    keep = torch.tensor(keep)
    with torch.no_grad():
        out = attn(x, ctx, keep[None])
        q = _heads(attn.to_q(attn.norm(x))[0], heads)
        k, v = attn.to_kv(ctx)[0].chunk(2, -1)
        nk, nv = attn.null_kv  # one null key/value, shared by the heads
        k = torch.cat((nk.expand(heads, 1, -1), _heads(k, heads)), dim=1)
        v = torch.cat((nv.expand(heads, 1, -1), _heads(v, heads)), dim=1)
        full_keep = torch.cat((torch.tensor([True]), keep))
        expected = torch.cat([_oracle(q[i], k[i], v[i], full_keep, attn.q_scale, attn.k_scale)
                              for i in range(heads)], dim=-1)
        expected = attn.to_out(expected)
    torch.testing.assert_close(out[0], expected)


def test_self_attention_is_multi_query_with_context_first():
    """Keys [context; null; x] from ONE key/value head, shared by every query head."""
    torch.manual_seed(1)
    attn = Attention(6, heads=2, dim_head=4, context_dim=5).double()
    _randomise_scales(attn, 7)
    assert attn.to_kv.out_features == 2 * 4  # one head of keys and values
    x, ctx = torch.randn(1, 3, 6).double(), torch.randn(1, 2, 5).double()
    keep = torch.tensor([True, False])
    with torch.no_grad():
        out = attn(x, ctx, keep[None])
        xn = attn.norm(x)[0]
        q = _heads(attn.to_q(xn), 2)
        k, v = attn.to_kv(xn).chunk(2, -1)
        ck, cv = attn.to_context(ctx)[0].chunk(2, -1)
        nk, nv = attn.null_kv
        k, v = torch.cat((ck, nk[None], k)), torch.cat((cv, nv[None], v))
        full_keep = torch.tensor([True, False] + [True] * 4)
        expected = attn.to_out(torch.cat([_oracle(q[i], k, v, full_keep, attn.q_scale, attn.k_scale)
                                          for i in range(2)], dim=-1))
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


def test_linear_attention_matches_the_oracle():
    """softmax(q) over features * d^-1/2, softmax(k) over the pixels and context tokens, per head."""
    torch.manual_seed(3)
    attn = LinearAttention(4, heads=2, dim_head=3, context_dim=5).double().eval()
    fmap, ctx = torch.randn(1, 4, 2, 3).double(), torch.randn(1, 2, 5).double()
    with torch.no_grad():
        out = attn(fmap, ctx)
        normed = attn.norm(fmap)
        q, k, v = (fn(normed)[0].flatten(1).T for fn in (attn.to_q, attn.to_k, attn.to_v))  # (pixels, h*d)
        ck, cv = attn.to_context(ctx)[0].chunk(2, -1)
        k, v = torch.cat((k, ck)), torch.cat((v, cv))
        heads = []
        for i in range(2):
            qi, ki, vi = (t[:, 3 * i:3 * (i + 1)] for t in (q, k, v))
            heads.append(qi.softmax(-1) * 3**-0.5 @ (ki.softmax(0).T @ vi))
        expected = attn.to_out(attn.nonlin(torch.cat(heads, dim=-1).T.reshape(1, 6, 2, 3)))
    torch.testing.assert_close(out, expected)


@given(st.integers(1, 4), st.booleans())
def test_perceiver_shared_rows_equal_the_concatenated_sequence(shared_len, masked):
    """``shared`` rows (keys and values computed once) give the output and gradients of the full sequence."""
    torch.manual_seed(shared_len)
    pool = PerceiverResampler(dim=8, depth=2, dim_head=4, heads=2, num_latents=3, max_seq_len=8).double()
    for attn, _ in pool.layers:
        _randomise_scales(attn, shared_len)
    x, shared = torch.randn(2, 3, 8).double(), torch.randn(1, shared_len, 8).double()
    mask = torch.rand(2, 3 + shared_len) > 0.4 if masked else None

    def run(with_shared):
        xs, ss = x.clone().requires_grad_(), shared.clone().requires_grad_()
        out = pool(xs, mask, shared=ss) if with_shared else pool(torch.cat((xs, ss.expand(2, -1, -1)), dim=1), mask)
        grads = torch.autograd.grad(out.square().sum(), (xs, ss, *pool.parameters()))
        return out, grads

    (out, grads), (expected, expected_grads) = run(True), run(False)
    torch.testing.assert_close(out, expected)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)
