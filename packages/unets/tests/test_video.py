"""Unet3D: ignore_time, the temporal layers, conditioning frames, temporal strides, guidance, configs.

(Equality with the reference's numbers is checked in reference/test_unet3d.py.)
"""

import pytest
import torch

from imagen.unets import Unet3D, unet_from_config
from imagen.unets.attention import LinearAttention, LinearCrossAttention
from imagen.unets.video import (
    SpaceTimeConv,
    TemporalAttention,
    TemporalPositionConv,
    TimeTokenShift,
    VideoLinearAttention,
)

VIDEO = dict(dim=8, dim_mults=(1, 2), cond_dim=16, text_embed_dim=12, max_text_len=6, attn_heads=2, attn_dim_head=8,
             attn_pool_num_latents=3, layer_attns=(False, True), layer_cross_attns=(False, True))


def video_unet(h, seed: int = 0, **changes) -> Unet3D:
    """A tiny Unet3D with random weights everywhere (temporal layers and output layer included), eval mode."""
    unet = h.make(Unet3D, seed=seed, **{**VIDEO, **changes})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return unet


def perturb_temporal_layers_(unet: Unet3D) -> None:
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "temporal" in name:
                p.add_(1.0)


def test_ignore_time_skips_every_temporal_layer(h):
    """With ignore_time the temporal convolutions, position convs, attention and resampling do nothing."""
    unet = video_unet(h, temporal_strides=(2, 1), memory_efficient=True)
    x, t, text = h.randn(2, 3, 4, 8, 8), torch.rand(2), h.randn(2, 4, 12)
    with torch.no_grad():
        before, with_time = unet(x, t, text_embeds=text, ignore_time=True), unet(x, t, text_embeds=text)
        perturb_temporal_layers_(unet)
        after, with_time_after = unet(x, t, text_embeds=text, ignore_time=True), unet(x, t, text_embeds=text)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert not torch.allclose(with_time_after, with_time)


def test_single_frames_train_without_the_temporal_layers(h):
    """An image batch as one-frame videos with ignore_time: each image is denoised on its own, by the
    spatial layers only (any number of frames is accepted, whatever the temporal strides)."""
    unet = video_unet(h, temporal_strides=2)
    x, t = h.randn(3, 3, 1, 8, 8), torch.rand(3)
    with torch.no_grad():
        together = unet(x, t, ignore_time=True)
        apart = torch.cat([unet(x[i:i + 1], t[i:i + 1], ignore_time=True) for i in range(3)])
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-5)
    assert together.shape == x.shape


def test_spatial_layers_mix_frames_even_with_ignore_time(h):
    """As in the reference, the global-context gate, the attention blocks and the middle attention see every
    frame (and the feed-forwards' time token shift still shifts), so frames are not independent."""
    unet = video_unet(h, layer_attns=True)
    x, t = h.randn(1, 3, 3, 8, 8), torch.rand(1)
    with torch.no_grad():
        together = unet(x, t, ignore_time=True)
        apart = torch.cat([unet(x[:, :, i:i + 1], t, ignore_time=True) for i in range(3)], dim=2)
    assert not torch.allclose(together, apart, atol=1e-4)


def test_space_time_conv_starts_as_the_per_frame_conv_one_frame_late(h):
    """The reference's Dirac initialisation puts the identity at the centre tap of a causal kernel."""
    conv = SpaceTimeConv(4, 6)
    x = h.randn(2, 4, 5, 3, 3)
    with torch.no_grad():
        per_frame = torch.stack([conv.spatial_conv(x[:, :, i]) for i in range(5)], dim=2)
        out = conv(x)
        torch.testing.assert_close(out[:, :, 1:], per_frame[:, :, :-1])
        assert not out[:, :, 0].any()
        torch.testing.assert_close(conv(x, ignore_time=True), per_frame)


def test_temporal_attention_starts_as_the_identity(h):
    x = h.randn(2, 8, 4, 3, 3)
    with torch.no_grad():
        assert torch.equal(TemporalAttention(8, heads=2, dim_head=4)(x), x)


@pytest.mark.parametrize("layer", [
    lambda: SpaceTimeConv(4, 4), lambda: TemporalPositionConv(4), lambda: TemporalAttention(4, heads=2, dim_head=4),
    TimeTokenShift,
], ids=["space-time conv", "position conv", "attention", "token shift"])
def test_causal_temporal_layers_do_not_look_ahead(h, layer):
    module = layer()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        x = h.randn(2, 4, 6, 3, 3)
        later = x.clone()
        later[:, :, 4:] = h.randn(2, 4, 2, 3, 3, seed=1)
        a, b = module(x), module(later)
    torch.testing.assert_close(a[:, :, :4], b[:, :, :4])
    assert not torch.allclose(a[:, :, 4:], b[:, :, 4:])


def test_non_causal_attention_looks_both_ways(h):
    attn = TemporalAttention(4, heads=2, dim_head=4, causal=False)
    with torch.no_grad():
        attn.fn.fn.to_out[-1].g.fill_(1.0)
        x = h.randn(1, 4, 4, 2, 2)
        later = x.clone()
        later[:, :, 3:] = h.randn(1, 4, 1, 2, 2, seed=1)
        assert not torch.allclose(attn(x)[:, :, 0], attn(later)[:, :, 0])


def test_time_token_shift_moves_the_second_half_one_frame_later(h):
    x = h.randn(1, 4, 3, 2, 2)
    out = TimeTokenShift()(x)
    assert torch.equal(out[:, :2], x[:, :2])
    assert torch.equal(out[:, 2:, 1:], x[:, 2:, :-1]) and not out[:, 2:, 0].any()
    assert torch.equal(TimeTokenShift()(x[:, :, 0]), x[:, :, 0])  # images pass unchanged


def test_conditioning_frames_are_the_video_extended_in_time(h):
    """cond_video_frames / post_cond_video_frames go before / after x in every input slot (x, self_cond,
    lowres_cond_img), are resized to its frames, and are cut from the output."""
    unet = video_unet(h, lowres_cond=True, self_cond=True)
    x, lowres, self_cond = h.randn(1, 3, 2, 8, 8), h.randn(1, 3, 2, 8, 8, seed=1), h.randn(1, 3, 2, 8, 8, seed=2)
    pre, post = h.randn(1, 3, 2, 4, 4, seed=3), h.randn(1, 3, 1, 8, 8, seed=4)
    t, lt = torch.rand(1), torch.rand(1)
    big_pre = pre.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)  # nearest resize to 8 x 8
    with torch.no_grad():
        out = unet(x, t, lowres_cond_img=lowres, lowres_noise_times=lt, self_cond=self_cond,
                   cond_video_frames=pre, post_cond_video_frames=post)
        whole = unet(torch.cat((big_pre, x, post), 2), t, lowres_cond_img=torch.cat((big_pre, lowres, post), 2),
                     lowres_noise_times=lt, self_cond=torch.cat((big_pre, self_cond, post), 2))
        other = unet(x, t, lowres_cond_img=lowres, lowres_noise_times=lt, self_cond=self_cond,
                     cond_video_frames=pre + 1, post_cond_video_frames=post)
    assert out.shape == x.shape
    torch.testing.assert_close(out, whole[:, :, 2:4], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, other)


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_temporal_strides_keep_the_shape_and_need_divisible_frames(h, memory_efficient):
    unet = video_unet(h, temporal_strides=2, memory_efficient=memory_efficient)  # the last stage pools time too
    assert unet.time_downsample_factor == 4
    with torch.no_grad():
        assert unet(h.randn(1, 3, 8, 8, 8), torch.rand(1)).shape == (1, 3, 8, 8, 8)
        assert unet(h.randn(1, 3, 3, 8, 8), torch.rand(1), ignore_time=True).shape == (1, 3, 3, 8, 8)
        with pytest.raises(ValueError, match=r"6 frames .* time_downsample_factor=4"):
            unet(h.randn(1, 3, 6, 8, 8), torch.rand(1))
        with pytest.raises(ValueError, match="cond_video_frames has 2 frames"):
            unet(h.randn(1, 3, 4, 8, 8), torch.rand(1), cond_video_frames=h.randn(1, 3, 2, 8, 8))


def test_temporal_strides_are_checked(h):
    with pytest.raises(ValueError, match="temporal_strides"):
        Unet3D(**VIDEO, temporal_strides=(2, 0))
    with pytest.raises(ValueError, match="temporal_strides"):
        Unet3D(**VIDEO, temporal_strides=(2, 2, 2))


def test_bad_inputs_name_the_argument_and_shape(h):
    unet = Unet3D(**VIDEO, cond_images_channels=2)
    x, t = torch.randn(2, 3, 2, 8, 8), torch.rand(2)
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\)"):
        unet(torch.randn(2, 3, 8, 8), t)
    with pytest.raises(ValueError, match="cond_images must be 4D"):
        unet(x, t, cond_images=torch.randn(2, 2, 2, 8, 8))
    with pytest.raises(ValueError, match="cond_images is required"):
        unet(x, t)
    with pytest.raises(ValueError, match="cond_video_frames must have the batch size and channels"):
        unet(x, t, cond_images=torch.randn(2, 2, 8, 8), cond_video_frames=torch.randn(2, 1, 2, 8, 8))


def test_forward_with_cond_scale_is_one_batched_forward(h):
    unet = video_unet(h).double()  # float64: the batched and unbatched forwards round differently in float32
    x, t, text = h.randn(2, 3, 2, 8, 8).double(), torch.rand(2, dtype=torch.float64), h.randn(2, 4, 12).double()
    calls = []
    unet.final_conv.register_forward_hook(lambda module, args, out: calls.append(out.shape[0]))
    with torch.no_grad():
        cond = unet(x, t, text_embeds=text)
        null = unet(x, t, text_embeds=text, cond_drop_mask=torch.ones(2, dtype=torch.bool))
        calls.clear()
        guided = unet.forward_with_cond_scale(x, t, text_embeds=text, cond_scale=3.0)
    assert calls == [4]
    torch.testing.assert_close(guided, cond + 2 * (cond - null), rtol=1e-5, atol=1e-5)


def test_config_rebuilds_and_recasts(h):
    unet = Unet3D(**VIDEO, temporal_strides=(2, 1))
    again = unet_from_config(unet.config)
    assert type(again) is Unet3D and again.config == unet.config
    assert again.load_state_dict(unet.state_dict()) is not None
    sr = unet.recast(lowres_cond=True)
    assert sr.lowres_cond and not unet.lowres_cond and unet.recast() is unet
    assert unet.cast_model_parameters(lowres_cond=False, text_embed_dim=12, channels=3, channels_out=None,
                                      cond_on_text=True) is unet


def test_gradient_checkpointing_gives_the_same_gradients(h):
    x, t, text = h.randn(1, 3, 2, 8, 8), torch.rand(1), h.randn(1, 4, 12)
    grads = []
    for checkpointing in (False, True):
        unet = video_unet(h, gradient_checkpointing=checkpointing).train()
        unet(x, t, text_embeds=text).square().mean().backward()
        grads.append([p.grad for p in unet.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_readme_video_unet_runs():
    """Unet3D(dim = 64, dim_mults = (1, 2, 4, 8)) on (B, 3, F, 16, 16), as in the reference README."""
    video = Unet3D(dim=64, dim_mults=(1, 2, 4, 8), text_embed_dim=12, max_text_len=4).eval()
    with torch.no_grad():
        out = video(torch.randn(1, 3, 2, 16, 16), torch.rand(1), text_embeds=torch.randn(1, 3, 12))
    assert out.shape == (1, 3, 2, 16, 16)


def test_gradients_reach_every_parameter_the_reference_uses(h):
    """Every parameter gets a gradient, except those the reference's video U-Net holds but never uses:
    the null-key score of attentions without a position bias, the cosine-sim scales of linear
    cross-attention and the global-context logits' bias (a softmax ignores it). With random weights:
    a fresh net's temporal attentions start with zero gain."""
    unet = video_unet(h, lowres_cond=True, self_cond=True, cond_images_channels=1, use_linear_attn=True,
                      use_linear_cross_attn=True, layer_cross_attns=(False, True), combine_upsample_fmaps=True,
                      init_conv_to_final_conv_residual=True, memory_efficient=True, temporal_strides=(2, 1)).train()
    shape = (2, 3, 4, 8, 8)
    kwargs = dict(text_embeds=h.randn(2, 4, 12), lowres_cond_img=h.randn(*shape, seed=1),
                  lowres_noise_times=torch.rand(2), self_cond=h.randn(*shape, seed=2), cond_images=h.randn(2, 1, 8, 8),
                  cond_drop_mask=torch.tensor([True, False]))
    unet(h.randn(*shape), torch.rand(2), **kwargs).square().mean().backward()
    dead = {n for n, p in unet.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
    linear = [n for n, m in unet.named_modules() if isinstance(m, LinearCrossAttention)]
    unused = {n for n in dead if n.endswith("gca.to_k.bias") or (n.endswith("null_attn_bias") and ".fn.fn." not in n)
              or n in {f"{m}.{s}_scale" for m in linear for s in "qk"}}
    assert unused and dead == unused


@pytest.mark.slow
def test_torch_compile_full_graph_without_breaks(h):
    unet = video_unet(h, lowres_cond=True, self_cond=True).train()
    x, t = h.randn(2, 3, 2, 8, 8), torch.rand(2)
    kwargs = dict(text_embeds=h.randn(2, 4, 12), lowres_cond_img=h.randn(2, 3, 2, 8, 8, seed=1),
                  lowres_noise_times=torch.rand(2), self_cond=h.randn(2, 3, 2, 8, 8, seed=2))
    compiled = torch.compile(unet, fullgraph=True, backend="aot_eager")
    out = compiled(x, t, **kwargs)
    out.square().mean().backward()
    torch.testing.assert_close(out, unet(x, t, **kwargs), rtol=1e-4, atol=1e-5)


def test_mask_text_padding_hides_the_padding(h):
    """Our option, as Unet's: the null embeddings at masked text positions stop mattering (the reference
    attends to them)."""
    x, t, text = h.randn(1, 3, 2, 8, 8), torch.rand(1), h.randn(1, 4, 12)
    mask = torch.tensor([[True, True, False, False]])
    for hide in (False, True):
        unet = video_unet(h, mask_text_padding=hide, attn_pool_text=False, use_linear_cross_attn=True,
                          layer_cross_attns=(False, True))
        with torch.no_grad():
            before = unet(x, t, text_embeds=text, text_mask=mask)
            unet.null_text_embed[:, 2:] += 1.0
            after = unet(x, t, text_embeds=text, text_mask=mask)
        assert torch.allclose(before, after, atol=1e-6) == hide


def test_video_linear_attention_is_the_image_layer_on_every_frame(h):
    """Our meaning of use_linear_attn for videos (the reference's raises): the image layer, same weights, per frame."""
    video = VideoLinearAttention(8, heads=2, dim_head=4, context_dim=6).eval()
    image = LinearAttention(8, heads=2, dim_head=4, context_dim=6).eval()
    with torch.no_grad():
        for p in video.parameters():
            p.normal_(generator=torch.Generator().manual_seed(p.numel()))
        image.load_state_dict({k: v.reshape(image.state_dict()[k].shape) for k, v in video.state_dict().items()})
        x, context, mask = h.randn(2, 8, 3, 4, 4), h.randn(2, 5, 6, seed=1), torch.tensor([[1, 1, 0, 0, 0], [1] * 5])
        out = video(x, context, mask.bool())
        for f in range(3):
            torch.testing.assert_close(out[:, :, f], image(x[:, :, f], context, mask.bool()), rtol=1e-5, atol=1e-5)


def test_a_prepared_text_conditioning_gives_the_text_keywords_output(h):
    unet = h.make(Unet3D, **h.tiny())
    x, t = h.randn(2, 3, 2, 8, 8), torch.rand(2, generator=torch.Generator().manual_seed(1))
    text, mask = h.randn(2, 4, 12, seed=2), torch.tensor([[True] * 4, [True, False, False, False]])
    with torch.no_grad():
        prepared = unet.text_conditioning(text, mask)
        assert torch.equal(unet(x, t, text_conditioning=prepared), unet(x, t, text_embeds=text, text_mask=mask))
