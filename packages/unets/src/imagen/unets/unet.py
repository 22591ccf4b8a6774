"""The 2D :class:`Unet` of Imagen (Saharia et al. 2022), with the Efficient U-Net options."""

from __future__ import annotations

import torch

from . import _checks as chk
from .config import register_unet
from .core import UnetCore

__all__ = ["Unet"]


@register_unet
class Unet(UnetCore):
    """Text-conditioned 2D U-Net; keywords and defaults follow the reference imagen-pytorch ``Unet``.

    Per-stage options (``num_resnet_blocks``, ``resnet_groups``, ``layer_attns``,
    ``layer_attns_depth``, ``layer_cross_attns``, ``use_linear_attn``, ``use_linear_cross_attn``)
    take one value or a tuple with one per ``dim_mults`` entry. Notable options:
    ``memory_efficient`` downsamples at the start of each stage (Efficient U-Net);
    ``lowres_cond`` adds a low-resolution image input and the embedding of its augmentation noise
    level (super-resolution stages); ``self_cond`` adds the previous x0 estimate as input;
    ``cond_images_channels`` adds conditioning images (resized to the input); ``attn_pool_text``
    pools the text tokens into ``attn_pool_num_latents`` Perceiver latents;
    ``gradient_checkpointing`` recomputes each block's activations in the backward pass
    (training mode only). The output ``(b, channels_out, h, w)`` starts at zero (zero-initialised
    final convolution). ``h`` and ``w`` must be divisible by ``downsample_factor``.
    """

    def __init__(
        self, *, dim: int, text_embed_dim: int = 768, num_resnet_blocks=1, cond_dim: int | None = None,
        num_time_tokens: int = 2, learned_sinu_pos_emb_dim: int = 16, dim_mults=(1, 2, 4, 8),
        cond_images_channels: int = 0, channels: int = 3, channels_out: int | None = None, attn_dim_head: int = 64,
        attn_heads: int = 8, ff_mult: float = 2.0, lowres_cond: bool = False, layer_attns=True,
        layer_attns_depth=1, layer_mid_attns_depth: int = 1, layer_attns_add_text_cond: bool = True,
        attend_at_middle: bool = True, layer_cross_attns=True, use_linear_attn=False, use_linear_cross_attn=False,
        cond_on_text: bool = True, max_text_len: int = 256, init_dim: int | None = None, resnet_groups=8,
        init_conv_kernel_size: int = 7, init_cross_embed: bool = True, init_cross_embed_kernel_sizes=(3, 7, 15),
        cross_embed_downsample: bool = False, cross_embed_downsample_kernel_sizes=(2, 4), attn_pool_text: bool = True,
        attn_pool_num_latents: int = 32, dropout: float = 0.0, memory_efficient: bool = False,
        init_conv_to_final_conv_residual: bool = False, use_global_context_attn: bool = True,
        scale_skip_connection: bool = True, final_resnet_block: bool = True, final_conv_kernel_size: int = 3,
        self_cond: bool = False, resize_mode: str = "nearest", combine_upsample_fmaps: bool = False,
        pixel_shuffle_upsample: bool = True, gradient_checkpointing: bool = False,
    ):
        super().__init__()
        options = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self._build(options, video=False)

    def forward(
        self, x: torch.Tensor, time: torch.Tensor, *, text_embeds: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None, cond_images: torch.Tensor | None = None,
        lowres_cond_img: torch.Tensor | None = None, lowres_noise_times: torch.Tensor | None = None,
        self_cond: torch.Tensor | None = None, cond_drop_prob: float = 0.0, cond_drop_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Predict from a noisy image batch.

        x: (b, channels, h, w); time: (b,) float noise level; text_embeds: (b, L, text_embed_dim)
        (any L, padded or truncated to max_text_len; None = the learned null text); text_mask:
        (b, L) bool, True = real token; cond_images: (b, cond_images_channels, h', w');
        lowres_cond_img: (b, channels, h, w) and lowres_noise_times: (b,), required iff
        lowres_cond; self_cond: (b, channels, h, w) previous x0 estimate (zeros when omitted);
        cond_drop_prob: probability of dropping the text per sample (drawn with ``generator``);
        cond_drop_mask: (b,) bool, True = drop, overrides cond_drop_prob.
        Returns (b, channels_out, h, w).
        """
        chk.check_tensor("x", x, 4, "(batch, channels, height, width)")
        self._check_spatial(x)
        b = x.shape[0]
        time = self._check_time("time", time, b, x.device)
        if self.lowres_cond:
            lowres_noise_times = self._check_time("lowres_noise_times", lowres_noise_times, b, x.device)
        text_embeds, text_mask = self._check_text(text_embeds, text_mask, b)
        drop = self._drop_mask(b, x.device, cond_drop_prob, cond_drop_mask, generator)
        inputs = self._inputs(x, self_cond, lowres_cond_img, cond_images)
        cond = self._conditioning(time, lowres_noise_times, text_embeds, text_mask, drop, 1, True)
        return self._body(inputs, cond)
