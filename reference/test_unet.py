"""The 2D U-Net equals imagen-pytorch 2.1.0's: same keywords -> same state-dict keys, counts and numbers.

For hypothesis-drawn combinations of the reference's options at tiny sizes, the reference
``Unet`` is built and randomised (seeded), ours is built from the same keywords and loads its
state dict strictly (no missing or unexpected key, no renaming), and both run on the same inputs:
the conditional forward, the forward with every sample's text dropped (the reference's
``cond_drop_prob=1`` against our ``cond_drop_mask`` all True) and ``forward_with_cond_scale``.

Tolerance: 1e-5 in float32, absolute for outputs up to 1 and relative to the largest output
magnitude beyond. The output layer is scaled so that outputs are of order 1 (randomised weights
otherwise give outputs in the hundreds, where float32 rounding alone exceeds 1e-5 absolute);
a real difference in the computation shows at order 1e-2 or more.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imagen_pytorch import imagen_pytorch as reference
from ref_testing import assert_close, load_same_weights, parameter_count, per_stage, randomize_

import imagen.unets as ours

BATCH, SIZE, TEXT_DIM, MAX_TEXT_LEN = 2, 16, 12, 6
OUTPUT_SCALE = 0.005  # final conv weights after randomize_, for outputs of order 1


@st.composite
def unet_options(draw):
    stages = draw(st.integers(1, 3))
    mults = (1, *draw(st.lists(st.sampled_from((1, 2)), min_size=stages - 1, max_size=stages - 1)))
    cond_on_text = draw(st.integers(0, 4)) > 0  # mostly text-conditioned
    options = dict(
        dim=draw(st.sampled_from((8, 16))),
        dim_mults=mults,
        cond_dim=draw(st.sampled_from((8, 16))),
        text_embed_dim=TEXT_DIM,
        max_text_len=MAX_TEXT_LEN,
        cond_on_text=cond_on_text,
        attn_heads=draw(st.sampled_from((2, 3))),
        attn_dim_head=8,
        attn_pool_text=draw(st.booleans()),
        attn_pool_num_latents=draw(st.integers(1, 3)),
        num_time_tokens=draw(st.integers(1, 2)),
        num_resnet_blocks=draw(per_stage(st.integers(0, 2), stages)),
        layer_attns=draw(per_stage(st.booleans(), stages)),
        layer_attns_depth=draw(per_stage(st.integers(1, 2), stages)),
        layer_mid_attns_depth=draw(st.integers(1, 2)),
        attend_at_middle=draw(st.booleans()),
        layer_cross_attns=draw(per_stage(st.booleans(), stages)),
        use_linear_attn=draw(per_stage(st.booleans(), stages)),
        use_linear_cross_attn=draw(per_stage(st.booleans(), stages)),
        lowres_cond=draw(st.booleans()),
        self_cond=draw(st.booleans()),
        cond_images_channels=draw(st.sampled_from((0, 0, 2))),
        memory_efficient=draw(st.booleans()),
        use_global_context_attn=draw(st.booleans()),
        init_cross_embed=draw(st.booleans()),
        init_cross_embed_kernel_sizes=draw(st.sampled_from(((3, 7, 15), (1, 3)))),
        init_conv_kernel_size=draw(st.sampled_from((3, 7))),
        combine_upsample_fmaps=draw(st.booleans()),
        pixel_shuffle_upsample=draw(st.booleans()),
        init_conv_to_final_conv_residual=draw(st.booleans()),
        final_resnet_block=draw(st.booleans()),
        final_conv_kernel_size=draw(st.sampled_from((1, 3))),
        scale_skip_connection=draw(st.booleans()),
        ff_mult=draw(st.sampled_from((1.0, 2.0))),
    )
    if not (options["memory_efficient"] or options["init_conv_to_final_conv_residual"]):
        options["init_dim"] = draw(st.sampled_from((None, 8, 16)))  # else the reference sizes layers by dim
    return options


@st.composite
def inputs(draw, options):
    """Seeded inputs for ``options``: text of any length (padded, truncated, masked), every image input."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    length = draw(st.integers(1, MAX_TEXT_LEN + 2))
    real = draw(st.lists(st.integers(0, length), min_size=BATCH, max_size=BATCH))
    kwargs = dict(
        text_embeds=torch.randn(BATCH, length, TEXT_DIM, generator=g),
        text_mask=torch.arange(length)[None, :] < torch.tensor(real)[:, None],
    )
    if draw(st.booleans()):
        del kwargs["text_mask"]
    image = (BATCH, 3, SIZE, SIZE)
    if options["lowres_cond"]:
        kwargs["lowres_cond_img"] = torch.randn(image, generator=g)
        kwargs["lowres_noise_times"] = torch.rand(BATCH, generator=g)
    if options["self_cond"]:
        kwargs["self_cond"] = torch.randn(image, generator=g)
    if options["cond_images_channels"]:
        side = draw(st.sampled_from((SIZE // 2, SIZE)))
        kwargs["cond_images"] = torch.randn(BATCH, options["cond_images_channels"], side, side, generator=g)
    return torch.randn(image, generator=g), torch.rand(BATCH, generator=g), kwargs


def assert_equal_outputs(mine: torch.Tensor, ref: torch.Tensor) -> None:
    """``assert_close`` after dividing both by max(1, max |ref|): 1e-5 absolute or relative to the output."""
    scale = max(1.0, ref.abs().max().item())
    assert_close(mine / scale, ref / scale)


def build_pair(options: dict, seed: int):
    """The reference unet randomised with ``seed`` and ours holding the same weights, both in eval mode."""
    ref = randomize_(reference.Unet(**options), seed).eval()
    with torch.no_grad():
        ref.final_conv.weight.mul_(OUTPUT_SCALE)
        ref.final_conv.bias.mul_(OUTPUT_SCALE)
    mine = ours.Unet(**options).eval()
    load_same_weights(mine, ref)
    assert set(mine.state_dict()) == set(ref.state_dict())
    assert parameter_count(mine) == parameter_count(ref)
    return ref, mine


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_forward_equals_the_reference(data):
    options = data.draw(unet_options())
    ref, mine = build_pair(options, data.draw(st.integers(0, 1000)))
    x, t, kwargs = data.draw(inputs(options))
    with torch.no_grad():
        assert_equal_outputs(mine(x, t, **kwargs), ref(x, t, **kwargs))
        dropped = torch.ones(BATCH, dtype=torch.bool)
        assert_equal_outputs(mine(x, t, cond_drop_mask=dropped, **kwargs), ref(x, t, cond_drop_prob=1.0, **kwargs))
        guidance = dict(cond_scale=data.draw(st.sampled_from((1.0, 2.0))),
                        remove_parallel_component=data.draw(st.booleans()),
                        keep_parallel_frac=data.draw(st.sampled_from((0.0, 0.5))))
        assert_equal_outputs(mine.forward_with_cond_scale(x, t, **guidance, **kwargs),
                             ref.forward_with_cond_scale(x, t, **guidance, **kwargs))


def test_random_drop_draws_what_the_reference_draws():
    """``cond_drop_prob`` keeps a sample where uniform < 1 - p: the same draws give the same drops."""
    options = dict(dim=8, dim_mults=(1, 2), cond_dim=8, text_embed_dim=TEXT_DIM, max_text_len=MAX_TEXT_LEN,
                   attn_heads=2, attn_dim_head=8, attn_pool_num_latents=2)
    ref, mine = build_pair(options, 3)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(8, 3, SIZE, SIZE, generator=g), torch.rand(8, generator=g)
    text = torch.randn(8, 4, TEXT_DIM, generator=g)
    with torch.no_grad():
        torch.manual_seed(11)
        expected = ref(x, t, text_embeds=text, cond_drop_prob=0.5)
        got = mine(x, t, text_embeds=text, cond_drop_prob=0.5, generator=torch.Generator().manual_seed(11))
    assert_equal_outputs(got, expected)


def test_benchmark_unet_has_the_reference_parameter_count():
    options = dict(dim=32, cond_dim=128, dim_mults=(1, 2, 4), num_resnet_blocks=2, layer_attns=(False, True, True),
                   layer_cross_attns=(False, True, True), text_embed_dim=64)
    with torch.device("meta"):
        assert parameter_count(ours.Unet(**options)) == parameter_count(reference.Unet(**options)) == 6_174_472


@pytest.mark.parametrize("name", ["BaseUnet64", "SRUnet256", "SRUnet1024"])
@pytest.mark.parametrize("lowres_cond", [False, True])
def test_presets_have_the_reference_keys_and_parameter_counts(name, lowres_cond):
    with torch.device("meta"):
        ref = getattr(reference, name)(lowres_cond=lowres_cond)
        mine = getattr(ours, name)(lowres_cond=lowres_cond)
    assert parameter_count(mine) == parameter_count(ref)
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in mine.state_dict().items()} == shapes


def test_null_unet_is_the_reference_null_unet():
    ref, mine = reference.NullUnet(), ours.NullUnet()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(mine(x, torch.rand(2)), ref(x, torch.rand(2)))
    assert set(mine.state_dict()) == set(ref.state_dict()) and mine.lowres_cond is ref.lowres_cond is False
    assert mine.cast_model_parameters(lowres_cond=True) is mine


def test_cross_embed_downsample_builds_where_the_reference_raises():
    """A difference on purpose: the reference passes dim_out as the kernel sizes and raises TypeError."""
    options = dict(dim=8, dim_mults=(1, 2), cond_dim=8, text_embed_dim=TEXT_DIM, attn_heads=2, attn_dim_head=8,
                   cross_embed_downsample=True)
    with pytest.raises(TypeError, match="kernel_sizes"):
        reference.Unet(**options)
    unet = ours.Unet(**options)
    assert [tuple(c.weight.shape[-2:]) for c in unet.downs[0].post_downsample.convs] == [(2, 2), (4, 4)]
