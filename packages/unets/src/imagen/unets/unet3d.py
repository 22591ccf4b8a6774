""":class:`Unet3D` for video (Ho et al. 2022, Video Diffusion Models), built from the same blocks as Unet."""

from __future__ import annotations

import torch
from einops import rearrange

from . import _checks as chk
from .config import register_unet
from .core import UnetCore, _same_shape

__all__ = ["Unet3D"]


@register_unet
class Unet3D(UnetCore):
    """Video U-Net: every :class:`Unet` keyword plus the temporal ones.

    Each 3x3 convolution is followed by a temporal convolution initialised to the identity
    (pseudo-3D), every stage has attention across frames (``time_causal_attn``: a frame sees
    only itself and earlier ones; relative-position bias MLP of ``time_rel_pos_bias_depth``
    layers), feed-forwards shift a quarter of their hidden channels one frame forward
    (``ff_time_token_shift``), and ``temporal_strides`` (one int or one per stage) pools frames
    along with the spatial downsampling. ``ignore_time=True`` in ``forward`` skips every temporal
    layer: each frame is then denoised as an independent image.
    """

    is_video = True

    def __init__(
        self, *, dim: int, text_embed_dim: int = 768, num_resnet_blocks=1, cond_dim: int | None = None,
        num_time_tokens: int = 2, learned_sinu_pos_emb_dim: int = 16, dim_mults=(1, 2, 4, 8), temporal_strides=1,
        cond_images_channels: int = 0, channels: int = 3, channels_out: int | None = None, attn_dim_head: int = 64,
        attn_heads: int = 8, ff_mult: float = 2.0, ff_time_token_shift: bool = True, lowres_cond: bool = False,
        layer_attns=False, layer_attns_depth=1, layer_mid_attns_depth: int = 1, layer_attns_add_text_cond: bool = True,
        attend_at_middle: bool = True, time_rel_pos_bias_depth: int = 2, time_causal_attn: bool = True,
        layer_cross_attns=True, use_linear_attn=False, use_linear_cross_attn=False, cond_on_text: bool = True,
        max_text_len: int = 256, init_dim: int | None = None, resnet_groups=8, init_conv_kernel_size: int = 7,
        init_cross_embed: bool = True, init_cross_embed_kernel_sizes=(3, 7, 15), cross_embed_downsample: bool = False,
        cross_embed_downsample_kernel_sizes=(2, 4), attn_pool_text: bool = True, attn_pool_num_latents: int = 32,
        dropout: float = 0.0, memory_efficient: bool = False, init_conv_to_final_conv_residual: bool = False,
        use_global_context_attn: bool = True, scale_skip_connection: bool = True, final_resnet_block: bool = True,
        final_conv_kernel_size: int = 3, self_cond: bool = False, combine_upsample_fmaps: bool = False,
        pixel_shuffle_upsample: bool = True, resize_mode: str = "nearest", gradient_checkpointing: bool = False,
    ):
        super().__init__()
        options = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        chk.at_least("time_rel_pos_bias_depth", time_rel_pos_bias_depth, 1)
        self._build(options, video=True)

    def forward(
        self, x: torch.Tensor, time: torch.Tensor, *, text_embeds: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None, cond_images: torch.Tensor | None = None,
        lowres_cond_img: torch.Tensor | None = None, lowres_noise_times: torch.Tensor | None = None,
        self_cond: torch.Tensor | None = None, cond_drop_prob: float = 0.0, cond_drop_mask: torch.Tensor | None = None,
        ignore_time: bool = False, cond_video_frames: torch.Tensor | None = None,
        post_cond_video_frames: torch.Tensor | None = None, generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Predict from a noisy video batch.

        x: (b, channels, f, h, w) (images go in as f = 1 with ``ignore_time=True``); time,
        text and drop arguments as in :meth:`Unet.forward`; lowres_cond_img and self_cond:
        (b, channels, f, h, w); cond_images: (b, cond_images_channels, h', w') shared by all
        frames or (b, cond_images_channels, f, h', w'); cond_video_frames /
        post_cond_video_frames: (b, channels, f_pre / f_post, h, w) clean frames placed before /
        after x in time (they condition, and are cut from the output). Unless ignore_time, the
        total frame count must be divisible by ``time_downsample_factor``.
        Returns (b, channels_out, f, h, w).
        """
        if not isinstance(x, torch.Tensor) or x.ndim != 5:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"Unet3D takes video x of shape (batch, channels, frames, height, width), got {shape}; "
                             "feed images as (batch, channels, 1, height, width) with ignore_time=True")
        self._check_spatial(x)
        b, frames = x.shape[0], x.shape[2]
        pre, post = (self._cond_frames(n, v, x) for n, v in (
            ("cond_video_frames", cond_video_frames), ("post_cond_video_frames", post_cond_video_frames)))
        time = self._check_time("time", time, b, x.device)
        if self.lowres_cond:
            lowres_noise_times = self._check_time("lowres_noise_times", lowres_noise_times, b, x.device)
        text_embeds, text_mask = self._check_text(text_embeds, text_mask, b)
        drop = self._drop_mask(b, x.device, cond_drop_prob, cond_drop_mask, generator)
        for name, value in (("self_cond", self_cond), ("lowres_cond_img", lowres_cond_img)):
            if value is not None:
                _same_shape(name, value, x)
        x_all, self_cond, lowres_cond_img = (None if v is None else _extend(pre, v, post)
                                             for v in (x, self_cond, lowres_cond_img))
        total = x_all.shape[2]
        if not ignore_time and total % self.time_downsample_factor:
            raise ValueError(f"the video has {total} frames (with conditioning frames) but Unet3D needs a multiple "
                             f"of time_downsample_factor={self.time_downsample_factor} (or ignore_time=True)")
        cond_images = self._frame_cond_images(cond_images, frames, pre, post)
        inputs = rearrange(self._inputs(x_all, self_cond, lowres_cond_img, cond_images), "b c f h w -> (b f) c h w")
        cond = self._conditioning(time, lowres_noise_times, text_embeds, text_mask, drop, total, ignore_time)
        out = rearrange(self._body(inputs, cond), "(b f) c h w -> b c f h w", b=b)
        start = 0 if pre is None else pre.shape[2]
        return out[:, :, start:start + frames]

    @staticmethod
    def _cond_frames(name: str, value: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
        if value is None:
            return None
        chk.check_tensor(name, value, 5, "(batch, channels, frames, height, width)")
        if value.shape[:2] != x.shape[:2] or value.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"{name} must match x {tuple(x.shape)} except in frames, got {tuple(value.shape)}")
        return value

    def _frame_cond_images(self, cond_images, frames: int, pre, post) -> torch.Tensor | None:
        """Conditioning images as (b, c, total frames, h', w'): broadcast over frames, or edge frames repeated."""
        if cond_images is None:
            return None
        n_pre, n_post = (0 if v is None else v.shape[2] for v in (pre, post))
        if cond_images.ndim == 4:
            return cond_images[:, :, None].expand(-1, -1, frames + n_pre + n_post, -1, -1)
        chk.check_tensor("cond_images", cond_images, 5, "(batch, channels, [frames,] height, width)")
        if cond_images.shape[2] == frames + n_pre + n_post:
            return cond_images
        if cond_images.shape[2] != frames:
            raise ValueError(f"cond_images has {cond_images.shape[2]} frames, expected {frames} (those of x) or "
                             f"{frames + n_pre + n_post} (with the conditioning frames)")
        first, last = cond_images[:, :, :1], cond_images[:, :, -1:]
        return torch.cat((first.expand(-1, -1, n_pre, -1, -1), cond_images, last.expand(-1, -1, n_post, -1, -1)), 2)


def _extend(pre: torch.Tensor | None, x: torch.Tensor, post: torch.Tensor | None) -> torch.Tensor:
    """Concatenate conditioning frames before and after x along time: (b, c, f, h, w)."""
    parts = [p for p in (pre, x, post) if p is not None]
    return torch.cat(parts, dim=2) if len(parts) > 1 else x
