"""Hypothesis fuzzing of the U-Net constructors (issue 13): every drawn set of keywords either builds
a U-Net that runs a forward pass, or raises our ValueError/TypeError with a message. The counts
are printed at the end (run with ``-s`` to see them)."""

import math

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from imagen.unets import NullUnet, Unet, Unet3D
from imagen.unets.testing import FuzzOutcomes, fuzz_examples

BAD = [-1, 0, 10**6, 2**64, 1.5, math.nan, math.inf, -math.inf, "8", None, (), (1, -1), [10**6], True, b"x"]

# small valid values per keyword (the first is the tiny default)
VALID = {
    "dim": [8, 16],
    "text_embed_dim": [8, 12],
    "num_resnet_blocks": [1, 2, (1, 2)],
    "cond_dim": [None, 8],
    "num_time_tokens": [1, 2],
    "learned_sinu_pos_emb_dim": [16, 8],
    "dim_mults": [(1, 2), (1,), (1, 2, 2)],
    "cond_images_channels": [0, 3],
    "channels": [3, 1],
    "channels_out": [None, 2],
    "attn_dim_head": [8, 4],
    "attn_heads": [2, 1],
    "ff_mult": [2.0, 1],
    "lowres_cond": [False, True],
    "layer_attns": [False, True, (False, True)],
    "layer_attns_depth": [1, 2],
    "layer_mid_attns_depth": [1],
    "attend_at_middle": [True, False],
    "layer_cross_attns": [False, (False, True)],
    "use_linear_attn": [False, True],
    "cond_on_text": [True, False],
    "max_text_len": [6, 4],
    "init_dim": [None, 8],
    "init_conv_kernel_size": [7, 3],
    "init_cross_embed": [True, False],
    "init_cross_embed_kernel_sizes": [(3, 7), (3,)],
    "cross_embed_downsample": [False, True],
    "attn_pool_text": [True, False],
    "attn_pool_num_latents": [3, 1],
    "dropout": [0.0, 0.1],
    "memory_efficient": [False, True],
    "init_conv_to_final_conv_residual": [False, True],
    "use_global_context_attn": [True, False],
    "final_resnet_block": [True, False],
    "final_conv_kernel_size": [3, 1],
    "self_cond": [False, True],
    "resize_mode": ["nearest", "bilinear"],
    "combine_upsample_fmaps": [False, True],
    "pixel_shuffle_upsample": [True, False],
    "mask_text_padding": [False, True],
    "coordinate_channels": [False, True],
}
VIDEO_ONLY = {"temporal_strides": [1, 2], "time_rel_pos_bias_depth": [2]}
OUTCOMES = FuzzOutcomes()



def keywords(video: bool):
    table = {**VALID, **(VIDEO_ONLY if video else {})}
    names = st.lists(st.sampled_from(sorted(table)), max_size=6, unique=True)

    def values(chosen):
        return st.fixed_dictionaries(
            {name: st.one_of(st.sampled_from(table[name]), st.sampled_from(BAD)) for name in chosen}
        )

    return names.flatmap(values)


def _inputs(unet, video: bool):
    side = unet.downsample_factor * 2
    frames = 2 * unet.time_downsample_factor if video else None  # temporal strides divide the frames
    shape = (2, unet.channels, frames, side, side) if video else (2, unet.channels, side, side)
    g = torch.Generator().manual_seed(0)
    kwargs = {}
    if unet.cond_on_text:
        kwargs["text_embeds"] = torch.randn(2, 3, unet.text_embed_dim, generator=g)
    if unet.lowres_cond:
        kwargs.update(lowres_cond_img=torch.randn(shape, generator=g), lowres_noise_times=torch.rand(2, generator=g))
    if unet.self_cond:
        kwargs["self_cond"] = torch.randn(shape, generator=g)
    if unet.cond_images_channels:
        kwargs["cond_images"] = torch.randn(2, unet.cond_images_channels, side, side, generator=g)
    return torch.randn(shape, generator=g), torch.rand(2, generator=g), kwargs


def _check_outcome(cls, chosen, video):
    base = {
        "dim": 8,
        "dim_mults": (1, 2),
        "attn_heads": 2,
        "attn_dim_head": 8,
        "max_text_len": 6,
        "text_embed_dim": 12,
        "layer_attns": False,
        "layer_cross_attns": False,
        "attn_pool_num_latents": 3,
    }
    try:
        unet = cls(**{**base, **chosen})
    except (ValueError, TypeError) as error:
        assert str(error), f"{type(error).__name__} without a message for {chosen}"
        OUTCOMES["refused"] += 1
        event("refused")
        return
    x, t, kwargs = _inputs(unet, video)
    with torch.no_grad():
        out = unet.eval()(x, t, **kwargs)
    assert out.shape[0] == 2 and out.shape[2:] == x.shape[2:]
    OUTCOMES["built and ran"] += 1
    event("built and ran")


@pytest.mark.parametrize("cls", [Unet, Unet3D])
@settings(max_examples=fuzz_examples(12), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
@OUTCOMES.counting
def test_fuzz_unet_constructors(cls, data):
    video = cls is Unet3D
    _check_outcome(cls, data.draw(keywords(video)), video)


@settings(max_examples=fuzz_examples(10), deadline=None)
@given(kwargs=st.dictionaries(st.sampled_from(sorted(VALID)), st.sampled_from([*BAD, 3, False]), max_size=5))
@OUTCOMES.counting
def test_fuzz_null_unet_accepts_anything(kwargs):
    unet = NullUnet(**kwargs)
    x = torch.randn(1, 3, 4, 4)
    assert unet(x) is x
    OUTCOMES["null unet"] += 1


def test_fuzz_counts():
    """Prints the fuzzing counts of this module (runs last in file order)."""
    assert OUTCOMES.report("unets") == 0  # every drawn input ended as documented
