"""The video U-Net equals imagen-pytorch 2.1.0's ``Unet3D``: same keywords -> same keys, counts and numbers.

For hypothesis-drawn combinations of the reference's options at tiny sizes, the reference
``Unet3D`` is built and randomised (seeded), ours is built from the same keywords and loads its
state dict strictly (no missing or unexpected key, no renaming, same shapes), and both run on the
same videos with and without ``ignore_time``: the conditional forward, every sample's text dropped
(the reference's ``cond_drop_prob=1`` against our ``cond_drop_mask`` all True), conditioning
frames, and ``forward_with_cond_scale`` (ours one batched forward, the reference's two).

Options the reference cannot run are left out of the draws and tested as differences on purpose
at the end: its video linear attention reshapes a video as an image, its nearest upsampling also
doubles the frames, the feature-map combiner with temporal strides and ``cross_embed_downsample``
raise, and ``post_cond_video_frames`` are put *before* the video and the wrong frames cut.

Tolerance: 1e-5 absolute in float32, with the output layer scaled for outputs of order 1.
"""

from __future__ import annotations

import contextlib
import io
import math

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from imagen_pytorch import imagen_video as reference
from ref_testing import assert_close, load_same_weights, parameter_count, per_stage, randomize_

import imagen.unets as ours

BATCH, SIZE, TEXT_DIM, MAX_TEXT_LEN = 2, 8, 12, 6
OUTPUT_SCALE = 0.05  # final conv weights after randomize_, for outputs of order 1
NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]  # shrinking two U-Nets takes minutes


def reference_unet3d(**options) -> torch.nn.Module:
    with contextlib.redirect_stdout(io.StringIO()):  # its advice to use dim >= 128
        return reference.Unet3D(**options)


@st.composite
def unet3d_options(draw):
    stages = draw(st.integers(1, 2))
    strides = draw(per_stage(st.sampled_from((1, 1, 2)), stages))
    temporal_pooling = strides != 1 and strides != (1,) * stages
    return dict(
        dim=8,
        dim_mults=(1, 2)[:stages],
        cond_dim=draw(st.sampled_from((8, 16))),
        text_embed_dim=TEXT_DIM,
        max_text_len=MAX_TEXT_LEN,
        cond_on_text=draw(st.integers(0, 4)) > 0,
        attn_heads=2,
        attn_dim_head=8,
        attn_pool_text=draw(st.booleans()),
        attn_pool_num_latents=2,
        num_time_tokens=draw(st.integers(1, 2)),  # the reference cannot take 0
        num_resnet_blocks=draw(per_stage(st.integers(0, 2), stages)),
        layer_attns=draw(per_stage(st.booleans(), stages)),
        layer_attns_depth=draw(per_stage(st.integers(1, 2), stages)),
        attend_at_middle=draw(st.booleans()),
        layer_cross_attns=draw(per_stage(st.booleans(), stages)),
        use_linear_cross_attn=draw(st.booleans()),
        temporal_strides=strides,
        time_causal_attn=draw(st.booleans()),
        ff_time_token_shift=draw(st.booleans()),
        lowres_cond=draw(st.booleans()),
        self_cond=draw(st.booleans()),
        cond_images_channels=draw(st.sampled_from((0, 0, 2))),
        memory_efficient=draw(st.booleans()),
        use_global_context_attn=draw(st.booleans()),
        init_cross_embed=draw(st.booleans()),
        init_conv_kernel_size=draw(st.sampled_from((3, 7))),
        combine_upsample_fmaps=not temporal_pooling and draw(st.booleans()),
        init_conv_to_final_conv_residual=draw(st.booleans()),
        final_resnet_block=draw(st.booleans()),
        scale_skip_connection=draw(st.booleans()),
        ff_mult=draw(st.sampled_from((1.0, 2.0))),
    )


def divisor(options: dict) -> int:
    strides = options["temporal_strides"]
    return math.prod(strides) if isinstance(strides, tuple) else strides ** len(options["dim_mults"])


@st.composite
def inputs(draw, options, frames: int):
    """Seeded inputs: text of any length (padded, truncated, masked) and every video input of ``frames`` frames."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    length = draw(st.integers(1, MAX_TEXT_LEN + 2))
    real = draw(st.lists(st.integers(0, length), min_size=BATCH, max_size=BATCH))
    kwargs = dict(
        text_embeds=torch.randn(BATCH, length, TEXT_DIM, generator=g),
        text_mask=torch.arange(length)[None, :] < torch.tensor(real)[:, None],
    )
    if draw(st.booleans()):
        del kwargs["text_mask"]
    video = (BATCH, 3, frames, SIZE, SIZE)
    if options["lowres_cond"]:
        kwargs.update(lowres_cond_img=torch.randn(video, generator=g),
                      lowres_noise_times=torch.rand(BATCH, generator=g))
    if options["self_cond"]:
        kwargs["self_cond"] = torch.randn(video, generator=g)
    if options["cond_images_channels"]:
        side = draw(st.sampled_from((SIZE // 2, SIZE)))
        kwargs["cond_images"] = torch.randn(BATCH, options["cond_images_channels"], side, side, generator=g)
    return torch.randn(video, generator=g), torch.rand(BATCH, generator=g), kwargs


def build_pair(options: dict, seed: int):
    """The reference Unet3D randomised with ``seed`` and ours holding the same weights, both in eval mode."""
    ref = randomize_(reference_unet3d(**options), seed).eval()
    with torch.no_grad():
        ref.final_conv.weight.mul_(OUTPUT_SCALE)
        ref.final_conv.bias.mul_(OUTPUT_SCALE)
    mine = ours.Unet3D(**options).eval()
    load_same_weights(mine, ref)
    assert {k: v.shape for k, v in mine.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert parameter_count(mine) == parameter_count(ref)
    return ref, mine


@settings(max_examples=40, deadline=None, phases=NO_SHRINK,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_forward_equals_the_reference(data):
    options = data.draw(unet3d_options())
    ref, mine = build_pair(options, data.draw(st.integers(0, 1000)))
    ignore_time = data.draw(st.booleans())
    frames = divisor(options) * data.draw(st.integers(1, 2))
    if ignore_time:  # any number of frames, whatever the strides
        frames = data.draw(st.integers(1, 3))
    x, t, kwargs = data.draw(inputs(options, frames))
    if not options["self_cond"] and data.draw(st.booleans()):  # the reference cannot take both
        g = torch.Generator().manual_seed(5)
        kwargs["cond_video_frames"] = torch.randn(BATCH, 3, divisor(options), SIZE, SIZE, generator=g)
    with torch.no_grad():
        assert_close(mine(x, t, ignore_time=ignore_time, **kwargs), ref(x, t, ignore_time=ignore_time, **kwargs))
        dropped = torch.ones(BATCH, dtype=torch.bool)
        assert_close(mine(x, t, cond_drop_mask=dropped, ignore_time=ignore_time, **kwargs),
                     ref(x, t, cond_drop_prob=1.0, ignore_time=ignore_time, **kwargs))
        guidance = dict(cond_scale=data.draw(st.sampled_from((1.0, 3.0))),
                        remove_parallel_component=data.draw(st.booleans()), keep_parallel_frac=0.5)
        assert_close(mine.forward_with_cond_scale(x, t, ignore_time=ignore_time, **guidance, **kwargs),
                     ref.forward_with_cond_scale(x, t, ignore_time=ignore_time, **guidance, **kwargs),
                     tolerance=3e-5)


@pytest.mark.parametrize("ignore_time", [False, True])
def test_one_frame_and_small_conditioning_frames_equal_the_reference(ignore_time):
    """Single-frame videos (images trained with ignore_time) and conditioning frames at a lower resolution."""
    options = dict(dim=8, dim_mults=(1, 2), cond_dim=8, text_embed_dim=TEXT_DIM, max_text_len=MAX_TEXT_LEN,
                   attn_heads=2, attn_dim_head=8, attn_pool_num_latents=2, layer_attns=(False, True))
    ref, mine = build_pair(options, 7)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(BATCH, 3, 1, SIZE, SIZE, generator=g), torch.rand(BATCH, generator=g)
    kwargs = dict(text_embeds=torch.randn(BATCH, 3, TEXT_DIM, generator=g),
                  cond_video_frames=torch.randn(BATCH, 3, 2, SIZE // 2, SIZE // 2, generator=g))
    with torch.no_grad():
        assert_close(mine(x, t, ignore_time=ignore_time), ref(x, t, ignore_time=ignore_time))
        assert_close(mine(x, t, ignore_time=ignore_time, **kwargs), ref(x, t, ignore_time=ignore_time, **kwargs))


def test_readme_unet3d_has_the_reference_keys_and_parameter_count():
    """``Unet3D(dim = 64, dim_mults = (1, 2, 4, 8))`` from the reference README, with lowres_cond both ways."""
    for lowres_cond in (False, True):
        with torch.device("meta"):
            ref = reference_unet3d(dim=64, dim_mults=(1, 2, 4, 8), lowres_cond=lowres_cond)
            mine = ours.Unet3D(dim=64, dim_mults=(1, 2, 4, 8), lowres_cond=lowres_cond)
        assert parameter_count(mine) == parameter_count(ref)
        assert {k: v.shape for k, v in mine.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_readme_unet3d_forward_equals_the_reference():
    """The README's Unet3D with its default keywords (8 heads of 64, T5-base text width, four stages).

    Random weights at this depth give outputs of order 1e8, so the comparison is relative to the
    largest output value.
    """
    ref, mine = build_pair(dict(dim=64, dim_mults=(1, 2, 4, 8)), 3)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 3, 2, 16, 16, generator=g), torch.rand(1, generator=g)
    text = torch.randn(1, 7, 768, generator=g)
    with torch.no_grad():
        for ignore_time in (False, True):
            expected = ref(x, t, text_embeds=text, ignore_time=ignore_time)
            scale = expected.abs().max()
            assert_close(mine(x, t, text_embeds=text, ignore_time=ignore_time) / scale, expected / scale)


# ------------------------------------------------------------------------------ differences on purpose

SMALL = dict(dim=8, dim_mults=(1, 2), cond_dim=8, text_embed_dim=TEXT_DIM, max_text_len=MAX_TEXT_LEN, attn_heads=2,
             attn_dim_head=8, attn_pool_num_latents=2)


def test_post_cond_video_frames_follow_the_video():
    """Ours is the reference network run on [pre, x, post] (every input slot), cut to x's frames; the
    reference itself puts the post frames first and cuts the wrong ones."""
    options = dict(SMALL, lowres_cond=True, self_cond=True)
    ref, mine = build_pair(options, 11)
    g = torch.Generator().manual_seed(1)
    x, lowres, self_cond, pre, post = (torch.randn(BATCH, 3, f, SIZE, SIZE, generator=g) for f in (2, 2, 2, 1, 2))
    t, lowres_t = torch.rand(BATCH, generator=g), torch.rand(BATCH, generator=g)
    with torch.no_grad():
        got = mine(x, t, lowres_cond_img=lowres, lowres_noise_times=lowres_t, self_cond=self_cond,
                   cond_video_frames=pre, post_cond_video_frames=post)
        whole = ref(torch.cat((pre, x, post), 2), t, lowres_cond_img=torch.cat((pre, lowres, post), 2),
                    lowres_noise_times=lowres_t, self_cond=torch.cat((pre, self_cond, post), 2))
    assert_close(got, whole[:, :, 1:3])


def test_linear_attention_runs_per_frame_where_the_reference_raises():
    options = dict(SMALL, use_linear_attn=True)
    x, t = torch.randn(1, 3, 2, SIZE, SIZE), torch.rand(1)
    with pytest.raises(Exception, match="expected 4 dims"):
        randomize_(reference_unet3d(**options), 0)(x, t)
    mine = randomize_(ours.Unet3D(**options), 0).eval()
    with torch.no_grad():
        out = mine(x, t)
        per_frame = torch.cat([mine(x[:, :, i:i + 1], t) for i in range(2)], dim=2)
    assert out.shape == x.shape
    assert not torch.allclose(out, per_frame)  # the frames still meet in the temporal layers


def test_nearest_upsampling_keeps_the_frames_where_the_reference_doubles_them():
    options = dict(SMALL, pixel_shuffle_upsample=False)
    x, t = torch.randn(1, 3, 2, SIZE, SIZE), torch.rand(1)
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        reference_unet3d(**options)(x, t)
    with torch.no_grad():
        assert ours.Unet3D(**options)(x, t).shape == x.shape


def test_combined_feature_maps_with_temporal_strides_are_resized_in_time():
    options = dict(SMALL, combine_upsample_fmaps=True, temporal_strides=(2, 1))
    x, t = torch.randn(1, 3, 4, SIZE, SIZE), torch.rand(1)
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        reference_unet3d(**options)(x, t)
    with torch.no_grad():
        assert ours.Unet3D(**options)(x, t).shape == x.shape


def test_cross_embed_downsample_builds_where_the_reference_raises():
    options = dict(SMALL, cross_embed_downsample=True)
    with pytest.raises(TypeError, match="kernel_sizes"):
        reference_unet3d(**options)
    unet = ours.Unet3D(**options)
    assert [tuple(c.weight.shape[-3:]) for c in unet.downs[0][7].convs] == [(1, 2, 2), (1, 4, 4)]
