"""Unet3D: shared blocks with Unet, ignore_time, temporal layers, conditioning frames, strides."""

import pytest
import torch

from imagen.unets import Unet, Unet3D
from imagen.unets.attention import TemporalAttention
from imagen.unets.blocks import Cond, TemporalConv

TEMPORAL = ("temporal", "time_")


def _pair(h, **changes):
    kw = h.tiny(**changes)
    video = h.make(Unet3D, **kw)
    image = Unet(**kw).eval()
    result = image.load_state_dict(video.state_dict(), strict=False)
    return image, video, result


def test_unet3d_is_unet_plus_temporal_layers(h):
    """Every Unet parameter exists in Unet3D under the same name; the extra ones are temporal."""
    _, _, result = _pair(h)
    assert result.missing_keys == []
    assert result.unexpected_keys and all(any(t in k for t in TEMPORAL) for k in result.unexpected_keys)


@pytest.mark.parametrize("changes", [{}, {"memory_efficient": True, "layer_attns": True}], ids=["plain", "efficient"])
def test_ignore_time_matches_the_2d_unet(h, changes):
    image, video, _ = _pair(h, **changes)
    x, t, text = h.randn(2, 3, 8, 8), torch.rand(2), h.randn(2, 4, 12)
    with torch.no_grad():
        expected = image(x, t, text_embeds=text)
        single = video(x[:, :, None], t, text_embeds=text, ignore_time=True)[:, :, 0]
    torch.testing.assert_close(single, expected, rtol=1e-5, atol=1e-5)


def test_ignore_time_treats_frames_independently(h):
    video = h.make(Unet3D, **h.tiny())
    x, t = h.randn(1, 3, 3, 8, 8), torch.rand(1)
    with torch.no_grad():
        together = video(x, t, ignore_time=True)
        apart = torch.cat([video(x[:, :, i:i + 1], t, ignore_time=True) for i in range(3)], dim=2)
        with_time = video(x, t)
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(together, with_time)


def test_temporal_conv_starts_as_identity(h):
    conv = TemporalConv(4)
    x = h.randn(2 * 5, 4, 3, 3)
    cond = Cond(torch.zeros(2, 1), None, None, frames=5, ignore_time=False)
    assert torch.equal(conv(x, cond), x)


def test_causal_temporal_attention_does_not_look_ahead(h):
    attn = TemporalAttention(8, heads=2, dim_head=4, causal=True)
    x = h.randn(3, 6, 8)
    later = x.clone()
    later[:, 4:] = h.randn(3, 2, 8, seed=1)
    with torch.no_grad():
        a, b = attn(x), attn(later)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_conditioning_frames_are_cut_from_the_output_and_condition_it(h):
    video = h.make(Unet3D, **h.tiny())
    x, t = h.randn(1, 3, 2, 8, 8), torch.rand(1)
    pre, post = h.randn(1, 3, 2, 8, 8, seed=1), h.randn(1, 3, 1, 8, 8, seed=2)
    with torch.no_grad():
        out = video(x, t, cond_video_frames=pre, post_cond_video_frames=post)
        other = video(x, t, cond_video_frames=pre + 1, post_cond_video_frames=post)
        alone = video(x, t, cond_video_frames=pre, post_cond_video_frames=post, ignore_time=True)
    assert out.shape == x.shape
    assert not torch.allclose(out, other)
    torch.testing.assert_close(alone, video(x, t, ignore_time=True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_temporal_strides_keep_the_shape_and_need_divisible_frames(h, memory_efficient):
    strides = (2, 2) if memory_efficient else (2, 1)
    video = h.make(Unet3D, **h.tiny(temporal_strides=strides, memory_efficient=memory_efficient))
    factor = 4 if memory_efficient else 2
    assert video.time_downsample_factor == factor
    with torch.no_grad():
        assert video(h.randn(1, 3, 2 * factor, 8, 8), torch.rand(1)).shape == (1, 3, 2 * factor, 8, 8)
        assert video(h.randn(1, 3, 3, 8, 8), torch.rand(1), ignore_time=True).shape == (1, 3, 3, 8, 8)
        with pytest.raises(ValueError, match="frames"):
            video(h.randn(1, 3, factor + 1, 8, 8), torch.rand(1))


def test_last_stage_stride_needs_memory_efficient(h):
    with pytest.raises(ValueError, match="temporal_strides"):
        Unet3D(**h.tiny(temporal_strides=(1, 2)))


def test_4d_input_to_unet3d_names_the_shape(h):
    video = Unet3D(**h.tiny())
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\)"):
        video(torch.randn(2, 3, 8, 8), torch.rand(2))


def test_readme_video_unet_runs(h):
    """Unet3D(dim=64, dim_mults=(1, 2, 4, 8)) on (B, 3, F, 16, 16), as in the reference README."""
    video = Unet3D(dim=64, dim_mults=(1, 2, 4, 8), text_embed_dim=12, max_text_len=4).eval()
    with torch.no_grad():
        out = video(torch.randn(1, 3, 2, 16, 16), torch.rand(1), text_embeds=torch.randn(1, 3, 12))
    assert out.shape == (1, 3, 2, 16, 16)
