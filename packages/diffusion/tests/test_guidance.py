from typing import NamedTuple

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from imagen.diffusion import classifier_free_guidance, dynamic_thresholding, quantile, static_clipping


class Recorder:
    """A conditional toy denoiser, x0_hat = x * scale + text.mean(-1), that records its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, *, text, mask=None, scale=1.0):
        self.calls.append((x.shape[0], text.clone()))
        return x * scale + text.mean(-1)[:, :, None, None].expand_as(x) + sigma[:, None, None, None]


@given(st.integers(1, 4), st.integers(0, 2**31))
def test_guidance_at_scale_one_is_the_conditional_output_with_no_null_half(batch, seed):
    gen = torch.Generator().manual_seed(seed)
    x, text = torch.randn(batch, 2, 3, 3, generator=gen), torch.randn(batch, 2, 5, generator=gen)
    model = Recorder()
    guided = classifier_free_guidance(model, 1.0, {"text": torch.zeros(1, 2, 5)})
    out = guided(x, torch.ones(batch), text=text)
    assert torch.equal(out, Recorder()(x, torch.ones(batch), text=text))
    assert [c[0] for c in model.calls] == [batch]


def test_guidance_is_one_batched_forward_with_the_reference_formula():
    x, text, sigma = torch.randn(3, 2, 3, 3), torch.randn(3, 2, 5), torch.rand(3)
    mask = torch.ones(3, 2, dtype=torch.bool)
    model = Recorder()
    guided = classifier_free_guidance(model, 5.0, {"text": torch.zeros(1, 2, 5)})
    out = guided(x, sigma, text=text, mask=mask, scale=2.0)
    assert len(model.calls) == 1 and model.calls[0][0] == 6  # one forward over 2B
    assert torch.equal(model.calls[0][1][3:], torch.zeros(3, 2, 5))  # null half
    cond = Recorder()(x, sigma, text=text, scale=2.0)
    uncond = Recorder()(x, sigma, text=torch.zeros(3, 2, 5), scale=2.0)
    torch.testing.assert_close(out, uncond + 5.0 * (cond - uncond))


def test_negative_cond_scale_raises_naming_it():
    with pytest.raises(ValueError, match=r"cond_scale must be >= 0, got -1\.0"):
        classifier_free_guidance(Recorder(), -1.0, {})


def test_null_that_does_not_broadcast_raises():
    guided = classifier_free_guidance(Recorder(), 3.0, {"text": torch.zeros(4, 7)})
    with pytest.raises(ValueError, match="null_cond"):
        guided(torch.zeros(2, 2, 1, 1), torch.ones(2), text=torch.zeros(2, 2, 5))


@given(st.floats(0.01, 1.0), st.integers(0, 2**31))
def test_quantile_equals_torch_quantile(q, seed):
    x = torch.randn(3, 2, 7, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    torch.testing.assert_close(quantile(x, q), torch.quantile(x.flatten(1), q, dim=1))


def test_dynamic_thresholding_follows_the_imagen_rule():
    x0 = torch.stack([torch.linspace(-3, 3, 101), torch.linspace(-0.5, 0.5, 101)]).reshape(2, 1, 101, 1)
    out = dynamic_thresholding(lambda x, sigma: x, 0.9)(x0, torch.ones(2))
    s = torch.quantile(x0[0].abs().flatten(), 0.9)
    torch.testing.assert_close(out[0], x0[0].clamp(-s, s) / s)
    assert out[0].abs().max() == 1.0
    torch.testing.assert_close(out[1], x0[1])  # s clamps to 1: inside [-1, 1] nothing changes
    torch.testing.assert_close(static_clipping(lambda x, sigma: x, 1.0)(x0, torch.ones(2)), x0.clamp(-1, 1))


class Text(NamedTuple):
    tokens: torch.Tensor
    mask: torch.Tensor | None


def test_a_named_tuple_condition_pairs_field_by_field_with_its_null():
    seen = []

    def denoiser(x, sigma, *, text):
        seen.append(text)
        return x + text.tokens.mean(-1)[:, :, None, None]

    tokens, null = torch.randn(2, 3, 4), torch.zeros(1, 3, 4)
    x, sigma = torch.randn(2, 3, 5, 5), torch.ones(2)
    out = classifier_free_guidance(denoiser, 2.0, {"text": Text(null, None)})(x, sigma, text=Text(tokens, None))
    (both,) = seen
    assert type(both) is Text and both.mask is None
    assert torch.equal(both.tokens, torch.cat((tokens, null.expand_as(tokens))))
    cond = x + tokens.mean(-1)[:, :, None, None]
    torch.testing.assert_close(out, cond + (cond - x))
    with pytest.raises(TypeError, match=r"^null_cond\['text'\] must be a Text like cond\['text'\], got tuple"):
        classifier_free_guidance(denoiser, 2.0, {"text": (null, None)})(x, sigma, text=Text(tokens, None))
