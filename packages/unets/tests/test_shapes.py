"""Output shape equals input shape for random valid configurations (hypothesis)."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from imagen.unets import Unet, Unet3D

stage_flags = st.lists(st.booleans(), min_size=2, max_size=2).map(tuple)


@st.composite
def configs(draw):
    """Random tiny valid keyword sets (two stages) and the conditioning they need."""
    kw = dict(
        dim=8, dim_mults=draw(st.sampled_from([(1, 2), (2, 1)])), cond_dim=16, text_embed_dim=12, max_text_len=6,
        attn_heads=draw(st.integers(1, 2)), attn_dim_head=4, attn_pool_num_latents=3,
        num_resnet_blocks=draw(st.sampled_from([0, 1, (1, 0)])), num_time_tokens=draw(st.integers(0, 2)),
        layer_attns=draw(stage_flags), layer_cross_attns=draw(stage_flags), use_linear_attn=draw(st.booleans()),
        use_linear_cross_attn=draw(st.booleans()), attend_at_middle=draw(st.booleans()),
        cond_on_text=draw(st.booleans()), attn_pool_text=draw(st.booleans()), lowres_cond=draw(st.booleans()),
        self_cond=draw(st.booleans()), cond_images_channels=draw(st.sampled_from([0, 2])),
        memory_efficient=draw(st.booleans()), init_cross_embed=draw(st.booleans()),
        cross_embed_downsample=draw(st.booleans()), pixel_shuffle_upsample=draw(st.booleans()),
        combine_upsample_fmaps=draw(st.booleans()), final_resnet_block=draw(st.booleans()),
        init_conv_to_final_conv_residual=draw(st.booleans()), use_global_context_attn=draw(st.booleans()),
        channels=draw(st.sampled_from([1, 3])), channels_out=draw(st.sampled_from([None, 2])),
        resize_mode=draw(st.sampled_from(["nearest", "bilinear"])),
    )
    with_text, with_mask = draw(st.booleans()), draw(st.booleans())
    return kw, with_text and kw["cond_on_text"], with_mask, draw(st.integers(1, 9))


def _kwargs(unet, kw, x, with_text, with_mask, text_len):
    b = x.shape[0]
    out = {}
    if with_text:
        out["text_embeds"] = torch.randn(b, text_len, 12)
        if with_mask:
            out["text_mask"] = torch.arange(text_len)[None].expand(b, -1) < torch.tensor([[1], [text_len]])
    if kw["lowres_cond"]:
        out["lowres_cond_img"], out["lowres_noise_times"] = torch.randn_like(x), torch.rand(b)
    if kw["self_cond"]:
        out["self_cond"] = torch.randn_like(x)
    if kw["cond_images_channels"]:
        out["cond_images"] = torch.randn(b, 2, 4, 4)
    return out


@given(configs())
def test_unet_output_shape_matches_input(case):
    kw, with_text, with_mask, text_len = case
    unet = Unet(**kw).eval()
    x = torch.randn(2, kw["channels"], 8, 8)
    with torch.no_grad():
        out = unet(x, torch.rand(2), **_kwargs(unet, kw, x, with_text, with_mask, text_len))
    assert out.shape == (2, kw["channels_out"] or kw["channels"], 8, 8)
    assert torch.isfinite(out).all()


@given(configs(), st.integers(1, 3), st.booleans(), st.sampled_from([1, (2, 1)]))
def test_unet3d_output_shape_matches_input(case, frames, ignore_time, strides):
    kw, with_text, with_mask, text_len = case
    if strides != 1 and not ignore_time:
        frames = 2 * frames
    unet = Unet3D(**kw, temporal_strides=strides).eval()
    x = torch.randn(2, kw["channels"], frames, 8, 8)
    with torch.no_grad():
        out = unet(x, torch.rand(2), ignore_time=ignore_time, **_kwargs(unet, kw, x, with_text, with_mask, text_len))
    assert out.shape == (2, kw["channels_out"] or kw["channels"], frames, 8, 8)
    assert torch.isfinite(out).all()
