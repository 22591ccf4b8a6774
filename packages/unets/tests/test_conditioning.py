"""Text masking, classifier-free-guidance dropping, guidance and the noise-level conditioning."""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from imagen.unets import Unet


@pytest.fixture(scope="module", params=[(True, False), (False, False), (True, True), (False, True)],
                ids=["attn_pool", "no_pool", "attn_pool-masked", "no_pool-masked"])
def unet(request, h):
    pool, masked = request.param
    return h.make(Unet, **h.tiny(attn_pool_text=pool, mask_text_padding=masked, layer_attns=True,
                                 use_linear_cross_attn=(True, False)))


def _inputs(h, b=3, length=5):
    t = torch.rand(b, generator=torch.Generator().manual_seed(2))
    return h.randn(b, 3, 8, 8, seed=1), t, h.randn(b, length, 12)


@settings(max_examples=8)
@given(st.integers(1, 4), st.integers(0, 10_000))
def test_changing_masked_positions_does_not_change_the_output(unet, h, n_real, seed):
    x, t, text = _inputs(h)
    mask = torch.arange(5)[None].expand(3, -1) < n_real
    other = torch.where(mask[..., None], text, h.randn(*text.shape, seed=seed))
    with torch.no_grad():
        a = unet(x, t, text_embeds=text, text_mask=mask)
        b = unet(x, t, text_embeds=other, text_mask=mask)
    assert torch.equal(a, b)


def test_unmasked_text_changes_the_output(unet, h):
    x, t, text = _inputs(h)
    with torch.no_grad():
        assert not torch.allclose(unet(x, t, text_embeds=text), unet(x, t, text_embeds=text + 1))


def test_full_drop_ignores_the_text(unet, h):
    x, t, text = _inputs(h)
    with torch.no_grad():
        a = unet(x, t, text_embeds=text, cond_drop_prob=1.0)
        b = unet(x, t, text_embeds=h.randn(3, 2, 12, seed=9), cond_drop_prob=1.0)
        c = unet(x, t)  # no text at all: no text tokens (the reference's meaning), not the null text
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_drop_mask_all_true_equals_drop_prob_one(unet, h):
    x, t, text = _inputs(h)
    with torch.no_grad():
        a = unet(x, t, text_embeds=text, cond_drop_mask=torch.ones(3, dtype=torch.bool))
        b = unet(x, t, text_embeds=text, cond_drop_prob=1.0)
        c = unet(x, t, text_embeds=text, cond_drop_mask=torch.zeros(3, dtype=torch.bool), cond_drop_prob=1.0)
        d = unet(x, t, text_embeds=text)
    assert torch.equal(a, b)
    assert torch.equal(c, d)  # the mask overrides the probability


def test_guidance_batch_halves_match_separate_runs(unet, h):
    """Conditional and null halves in one batch give what they give alone (samples are independent).

    In float64: float32 differs by rounding alone (the batched kernels sum in another order).
    """
    unet = copy.deepcopy(unet).double()
    x, t, text = (v.double() for v in _inputs(h))
    drop = torch.tensor([False] * 3 + [True] * 3)
    with torch.no_grad():
        both = unet(torch.cat((x, x)), torch.cat((t, t)), text_embeds=torch.cat((text, text)), cond_drop_mask=drop)
        cond = unet(x, t, text_embeds=text)
        null = unet(x, t, text_embeds=text, cond_drop_prob=1.0)
    torch.testing.assert_close(both, torch.cat((cond, null)), rtol=1e-10, atol=1e-10)


def test_drop_prob_draws_from_the_generator(unet, h):
    x, t, text = _inputs(h, b=8)
    with torch.no_grad():
        a = unet(x, t, text_embeds=text, cond_drop_prob=0.5, generator=torch.Generator().manual_seed(5))
        b = unet(x, t, text_embeds=text, cond_drop_prob=0.5, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_text_is_padded_or_truncated_to_max_text_len(unet, h):
    """Tokens past max_text_len (6) are cut; missing ones are masked padding when a mask is given
    (that one in float64 and close, not equal: the padding's null tokens go through the perceiver
    once, not per sample, and the matrix products' rounding depends on their number of rows)."""
    x, t, text = _inputs(h, length=6)
    longer = torch.cat((text, h.randn(3, 4, 12, seed=3)), dim=1)
    shorter_mask = torch.tensor([True] * 4 + [False] * 2).expand(3, -1)
    four = torch.ones(3, 4, dtype=torch.bool)
    unet64, x64, t64, text64 = copy.deepcopy(unet).double(), x.double(), t.double(), text.double()
    with torch.no_grad():
        assert torch.equal(unet(x, t, text_embeds=text), unet(x, t, text_embeds=longer))
        torch.testing.assert_close(unet64(x64, t64, text_embeds=text64[:, :4], text_mask=four),
                                   unet64(x64, t64, text_embeds=text64, text_mask=shorter_mask))


def test_noise_level_conditions_the_output(unet, h):
    x, t, text = _inputs(h)
    with torch.no_grad():
        assert not torch.allclose(unet(x, t, text_embeds=text), unet(x, t + 0.5, text_embeds=text))


def test_lowres_noise_time_conditions_the_output(h):
    unet = h.make(Unet, **h.tiny(lowres_cond=True, cond_on_text=False))
    x = h.randn(2, 3, 8, 8)
    low = h.randn(2, 3, 8, 8, seed=4)
    with torch.no_grad():
        a = unet(x, torch.zeros(2), lowres_cond_img=low, lowres_noise_times=torch.zeros(2))
        b = unet(x, torch.zeros(2), lowres_cond_img=low, lowres_noise_times=torch.ones(2))
        c = unet(x, torch.zeros(2), lowres_cond_img=-low, lowres_noise_times=torch.zeros(2))
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


def test_self_cond_defaults_to_zeros(h):
    unet = h.make(Unet, **h.tiny(self_cond=True))
    x = h.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(unet(x, torch.zeros(2)), unet(x, torch.zeros(2), self_cond=torch.zeros_like(x)))


def test_cond_images_are_resized_to_the_input(h):
    unet = h.make(Unet, **h.tiny(cond_images_channels=2, resize_mode="nearest"))
    x, small = h.randn(1, 3, 8, 8), h.randn(1, 2, 4, 4)
    big = small.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)  # nearest 2x
    with torch.no_grad():
        assert torch.equal(unet(x, torch.zeros(1), cond_images=small), unet(x, torch.zeros(1), cond_images=big))


def test_masked_positions_hold_the_null_embedding_unless_mask_text_padding(h):
    """Reference: a masked position is the learned null embedding, attended; ours on request: hidden."""
    x, t, text = _inputs(h)
    mask = torch.tensor([[True, True, False, False, False]] * 3)
    for masked in (False, True):
        unet = h.make(Unet, **h.tiny(attn_pool_text=False, mask_text_padding=masked))
        with torch.no_grad():
            before = unet(x, t, text_embeds=text, text_mask=mask)
            unet.null_text_embed[:, 2:].add_(1.0)
            after = unet(x, t, text_embeds=text, text_mask=mask)
        assert torch.equal(before, after) == masked


def test_forward_with_cond_scale_is_the_guided_combination(unet, h):
    """One batched forward gives cond + (cond - null) * (s - 1), less the part parallel to cond (float64)."""
    unet = copy.deepcopy(unet).double()
    x, t, text = (v.double() for v in _inputs(h))
    with torch.no_grad():
        cond = unet(x, t, text_embeds=text)
        null = unet(x, t, text_embeds=text, cond_drop_mask=torch.ones(3, dtype=torch.bool))
        plain = unet.forward_with_cond_scale(x, t, text_embeds=text, cond_scale=3.0, remove_parallel_component=False)
        orthogonal = unet.forward_with_cond_scale(x, t, text_embeds=text, cond_scale=3.0)
        assert torch.equal(unet.forward_with_cond_scale(x, t, text_embeds=text), cond)
    torch.testing.assert_close(plain, cond + 2 * (cond - null), rtol=1e-10, atol=1e-10)
    update = (cond - null).flatten(1)
    unit = cond.flatten(1) / cond.flatten(1).norm(dim=1, keepdim=True)
    update = update - (update * unit).sum(1, keepdim=True) * unit
    torch.testing.assert_close(orthogonal, cond + 2 * update.view_as(cond), rtol=1e-10, atol=1e-10)


def test_a_prepared_text_conditioning_gives_the_text_keywords_output(unet, h):
    """forward(text_conditioning=text_conditioning(...)) is forward(text_embeds=...), bit for bit."""
    x, t, text = _inputs(h)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [True] + [False] * 4])
    drop = torch.tensor([False, True, False])
    with torch.no_grad():
        for keywords in (dict(), dict(text_mask=mask), dict(text_mask=mask, cond_drop_mask=drop)):
            prepared = unet.text_conditioning(text, keywords.get("text_mask"),
                                              cond_drop_mask=keywords.get("cond_drop_mask"))
            assert torch.equal(unet(x, t, text_conditioning=prepared), unet(x, t, text_embeds=text, **keywords))
        assert unet.text_conditioning(None) is None


def test_the_null_text_conditioning_is_every_sample_dropped(unet, h):
    """One null sample, broadcast, conditions like text_conditioning(cond_drop_mask=all True) (float64)."""
    unet = copy.deepcopy(unet).double()
    _, _, text = (v.double() for v in _inputs(h))
    mask = torch.tensor([[True, True, False, False, False]] * 3)
    with torch.no_grad():
        dropped = unet.text_conditioning(text, mask, cond_drop_mask=torch.ones(3, dtype=torch.bool))
        null = unet.null_text_conditioning(dropped)
    assert null.tokens.shape[0] == 1 and (null.mask is None) == (dropped.mask is None)
    for got, expected in zip(null, dropped):
        if expected is not None:
            torch.testing.assert_close(got.expand_as(expected), expected, rtol=1e-10, atol=1e-10)


def test_guidance_takes_a_prepared_text_conditioning(unet, h):
    x, t, text = _inputs(h)
    mask = torch.tensor([[True, True, True, False, False]] * 3)
    with torch.no_grad():
        prepared = unet.text_conditioning(text, mask)
        expected = unet.forward_with_cond_scale(x, t, text_embeds=text, text_mask=mask, cond_scale=3.0)
        assert torch.equal(unet.forward_with_cond_scale(x, t, text_conditioning=prepared, cond_scale=3.0), expected)


def test_a_text_conditioning_with_text_keywords_or_of_another_batch_is_refused(unet, h):
    x, t, text = _inputs(h)
    with torch.no_grad():
        prepared = unet.text_conditioning(text)
        for extra in (dict(text_embeds=text), dict(cond_drop_prob=0.5), dict(cond_drop_mask=torch.ones(3, dtype=bool))):
            with pytest.raises(ValueError, match=r"^give text_conditioning or text_embeds"):
                unet(x, t, text_conditioning=prepared, **extra)
        with pytest.raises(ValueError, match=r"^text_conditioning must be a TextConditioning of batch 2 .*got "
                                             r"torch.Size\(\[3, "):
            unet(x[:2], t[:2], text_conditioning=prepared)
        with pytest.raises(ValueError, match=r"^text_conditioning must be a TextConditioning of batch 3 .*got tuple"):
            unet(x, t, text_conditioning=tuple(prepared))
