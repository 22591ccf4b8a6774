"""The 2D :class:`Unet` of Imagen (Saharia et al. 2022): the reference imagen-pytorch 2.x architecture."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from . import _checks as chk
from .blocks import (
    CrossEmbedLayer,
    LinearAttentionTransformerBlock,
    PixelShuffleUpsample,
    ResnetBlock,
    TransformerBlock,
    UpsampleCombiner,
    downsample,
    nearest_upsample,
)
from .config import register_unet
from .core import TextConditioning, UnetBase, _resize_to, _same_shape, pixel_coordinates
from .layers import Parallel
from .stages import DownStage, UpStage, call

__all__ = ["Unet"]

_PER_STAGE = (("num_resnet_blocks", int), ("layer_attns", bool), ("layer_attns_depth", int),
              ("layer_cross_attns", bool), ("use_linear_attn", bool), ("use_linear_cross_attn", bool))


@register_unet
class Unet(UnetBase):
    """Text-conditioned 2D U-Net; keywords, defaults, layers and state-dict keys of the reference ``Unet``.

    Per-stage options (``num_resnet_blocks``, ``layer_attns``, ``layer_attns_depth``,
    ``layer_cross_attns``, ``use_linear_attn``, ``use_linear_cross_attn``) take one value or a
    tuple with one per ``dim_mults`` entry. ``memory_efficient`` downsamples at the start of each
    stage (Efficient U-Net); ``lowres_cond`` adds a low-resolution image input and the embedding
    of its augmentation noise level (super-resolution stages); ``self_cond`` adds the previous x0
    estimate as input; ``cond_images_channels`` adds conditioning images (resized to the input);
    ``attn_pool_text`` pools the text tokens with a Perceiver resampler. ``out_dim``,
    ``num_image_tokens`` and ``layer_attns_add_text_cond`` are accepted and ignored, as by the
    reference (its stage attention always reads the time and text tokens).

    Our options (defaults = the reference): ``mask_text_padding`` hides masked text positions from
    every attention instead of letting them be attended as null embeddings; ``dropout`` applies
    dropout in the resnet blocks (the reference ignores it); ``block_norm="group"`` normalises the
    resnet blocks over channels and pixels (``ChanGroupNorm``) instead of the reference's per-pixel
    ``ChanRMSNorm`` ("rms"; the same parameters); ``coordinate_channels`` gives the first
    convolution two more input channels holding each pixel's x and y in [-1, 1] (CoordConv), so
    that absolute position is an input rather than something read from the zero padding;
    ``gradient_checkpointing``
    recomputes each block in the backward pass (training mode only). The output
    ``(b, channels_out, h, w)`` starts at zero (zero-initialised final convolution); ``h`` and
    ``w`` must be divisible by ``downsample_factor``.
    """

    def __init__(
        self, *, dim: int, text_embed_dim: int = 768, num_resnet_blocks=1, cond_dim: int | None = None,
        num_image_tokens: int = 4, num_time_tokens: int = 2, learned_sinu_pos_emb_dim: int = 16,
        out_dim: int | None = None, dim_mults=(1, 2, 4, 8), cond_images_channels: int = 0, channels: int = 3,
        channels_out: int | None = None, attn_dim_head: int = 64, attn_heads: int = 8, ff_mult: float = 2.0,
        lowres_cond: bool = False, layer_attns=True, layer_attns_depth=1, layer_mid_attns_depth: int = 1,
        layer_attns_add_text_cond: bool = True, attend_at_middle: bool = True, layer_cross_attns=True,
        use_linear_attn=False, use_linear_cross_attn=False, cond_on_text: bool = True, max_text_len: int = 256,
        init_dim: int | None = None, init_conv_kernel_size: int = 7, init_cross_embed: bool = True,
        init_cross_embed_kernel_sizes=(3, 7, 15), cross_embed_downsample: bool = False,
        cross_embed_downsample_kernel_sizes=(2, 4), attn_pool_text: bool = True, attn_pool_num_latents: int = 32,
        dropout: float = 0.0, memory_efficient: bool = False, init_conv_to_final_conv_residual: bool = False,
        use_global_context_attn: bool = True, scale_skip_connection: bool = True, final_resnet_block: bool = True,
        final_conv_kernel_size: int = 3, self_cond: bool = False, resize_mode: str = "nearest",
        combine_upsample_fmaps: bool = False, pixel_shuffle_upsample: bool = True,
        mask_text_padding: bool = False, gradient_checkpointing: bool = False, block_norm: str = "rms",
        coordinate_channels: bool = False,
    ):
        super().__init__()
        o = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self._record_config(o)
        n = len(chk.check_dims("dim_mults", dim_mults))
        _check_scalars(o)
        stage = {k: chk.per_stage(k, o[k], n, kind) for k, kind in _PER_STAGE}

        self.channels, self.channels_out = channels, channels_out or channels
        self.lowres_cond, self.self_cond, self.cond_on_text = lowres_cond, self_cond, cond_on_text
        self.cond_images_channels, self.has_cond_image = cond_images_channels, cond_images_channels > 0
        self.text_embed_dim, self.max_text_len = text_embed_dim, max_text_len
        self.resize_mode, self.mask_text_padding = resize_mode, mask_text_padding
        self.gradient_checkpointing, self.memory_efficient = gradient_checkpointing, memory_efficient
        self.downsample_factor = 2 ** (n if memory_efficient else n - 1)
        self.skip_connect_scale = 2**-0.5 if scale_skip_connection else 1.0
        self.init_conv_to_final_conv_residual = init_conv_to_final_conv_residual
        self.coordinate_channels = coordinate_channels

        init_dim = init_dim or dim
        cond_dim = cond_dim or dim
        time_cond_dim = dim * 4 * (2 if lowres_cond else 1)
        in_channels = channels * (1 + int(lowres_cond) + int(self_cond)) + cond_images_channels
        in_channels += 2 * int(coordinate_channels)
        if init_cross_embed:
            self.init_conv = CrossEmbedLayer(in_channels, init_cross_embed_kernel_sizes, dim_out=init_dim, stride=1)
        else:
            k = init_conv_kernel_size
            self.init_conv = nn.Conv2d(in_channels, init_dim, k, padding=k // 2)
        self._build_conditioning(o, cond_dim=cond_dim, time_cond_dim=time_cond_dim)

        attn = dict(heads=attn_heads, dim_head=attn_dim_head)
        norm = dict(norm_kind=block_norm)
        self.init_resnet_block = None
        if memory_efficient:
            self.init_resnet_block = ResnetBlock(init_dim, init_dim, time_cond_dim=time_cond_dim,
                                                 use_gca=use_global_context_attn, **attn, **norm)
        dims = [init_dim, *(dim * m for m in dim_mults)]
        pairs = list(itertools.pairwise(dims))

        def down(dim_in: int, dim_out: int) -> nn.Module:
            if cross_embed_downsample:
                return CrossEmbedLayer(dim_in, cross_embed_downsample_kernel_sizes, dim_out=dim_out, stride=2)
            return downsample(dim_in, dim_out)

        def attn_block(i: int, d: int) -> nn.Module | None:
            klass = TransformerBlock if stage["layer_attns"][i] else (
                LinearAttentionTransformerBlock if stage["use_linear_attn"][i] else None)
            if klass is None:
                return None
            return klass(d, depth=stage["layer_attns_depth"][i], ff_mult=ff_mult, context_dim=cond_dim, **attn)

        def resnet(i: int, d_in: int, d_out: int, *, init: bool) -> ResnetBlock:
            if not init:
                return ResnetBlock(d_in, d_out, time_cond_dim=time_cond_dim, use_gca=use_global_context_attn,
                                   dropout=dropout, **norm)
            cross = stage["layer_cross_attns"][i] or stage["use_linear_cross_attn"][i]
            return ResnetBlock(d_in, d_out, cond_dim=cond_dim if cross else None, time_cond_dim=time_cond_dim,
                               linear_attn=stage["use_linear_cross_attn"][i], dropout=dropout, **attn, **norm)

        skip_dims, downs = [], []
        for i, (dim_in, dim_out) in enumerate(pairs):
            d = dim_out if memory_efficient else dim_in
            skip_dims.append(d)
            post = None
            if not memory_efficient:
                post = down(d, dim_out) if i < n - 1 else Parallel(
                    nn.Conv2d(dim_in, dim_out, 3, padding=1), nn.Conv2d(dim_in, dim_out, 1))
            downs.append(DownStage(
                down(dim_in, dim_out) if memory_efficient else None, resnet(i, d, d, init=True),
                [resnet(i, d, d, init=False) for _ in range(stage["num_resnet_blocks"][i])], attn_block(i, d), post,
            ))
        self.downs = nn.ModuleList(downs)

        mid = dims[-1]  # the reference's middle blocks cross-attend with the default 8 heads of 64
        self.mid_block1 = ResnetBlock(mid, mid, cond_dim=cond_dim, time_cond_dim=time_cond_dim, dropout=dropout,
                                      **norm)
        self.mid_attn = TransformerBlock(mid, depth=layer_mid_attns_depth, **attn) if attend_at_middle else None
        self.mid_block2 = ResnetBlock(mid, mid, cond_dim=cond_dim, time_cond_dim=time_cond_dim, dropout=dropout,
                                      **norm)

        upsample = PixelShuffleUpsample if pixel_shuffle_upsample else nearest_upsample
        ups, fmap_dims = [], []
        for i in reversed(range(n)):
            dim_in, dim_out = pairs[i]
            skip = skip_dims[i]
            fmap_dims.append(dim_out)
            ups.append(UpStage(
                resnet(i, dim_out + skip, dim_out, init=True),
                [resnet(i, dim_out + skip, dim_out, init=False) for _ in range(stage["num_resnet_blocks"][i])],
                attn_block(i, dim_out), upsample(dim_out, dim_in) if i > 0 or memory_efficient else None,
            ))
        self.ups = nn.ModuleList(ups)

        top = dims[0] if memory_efficient else dims[1]  # channels after the last up stage
        self.upsample_combiner = UpsampleCombiner(top, enabled=combine_upsample_fmaps, dim_ins=tuple(fmap_dims),
                                                  dim_outs=dim)
        final_dim = self.upsample_combiner.dim_out + (init_dim if init_conv_to_final_conv_residual else 0)
        self.final_res_block = None
        if final_resnet_block:
            self.final_res_block = ResnetBlock(final_dim, dim, time_cond_dim=time_cond_dim, use_gca=True, **norm)
            final_dim = dim
        final_dim += channels if lowres_cond else 0
        k = final_conv_kernel_size
        self.final_conv = nn.Conv2d(final_dim, self.channels_out, k, padding=k // 2)
        nn.init.zeros_(self.final_conv.weight)
        nn.init.zeros_(self.final_conv.bias)

    def forward(
        self, x: torch.Tensor, time: torch.Tensor, *, text_embeds: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None, cond_images: torch.Tensor | None = None,
        lowres_cond_img: torch.Tensor | None = None, lowres_noise_times: torch.Tensor | None = None,
        self_cond: torch.Tensor | None = None, cond_drop_prob: float = 0.0, cond_drop_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        text_conditioning: TextConditioning | None = None,
    ) -> torch.Tensor:
        """Predict from a noisy image batch.

        x: (b, channels, h, w); time: (b,) float noise level; text_embeds: (b, L, text_embed_dim)
        (any L, padded or truncated to max_text_len; None = no text tokens, as in the reference);
        text_mask: (b, L) bool, True = real token; cond_images: (b, cond_images_channels, h', w');
        lowres_cond_img: (b, channels, h, w) and lowres_noise_times: (b,), required iff
        lowres_cond; self_cond: (b, channels, h, w) previous x0 estimate (zeros when omitted);
        cond_drop_prob: probability of dropping the text per sample (drawn with ``generator``);
        cond_drop_mask: (b,) bool, True = drop, overrides cond_drop_prob; text_conditioning: the
        text part computed once by :meth:`text_conditioning` (instead of the text keywords above).
        Returns (b, channels_out, h, w).
        """
        chk.check_tensor("x", x, 4, "(batch, channels, height, width)")
        self._check_spatial(x)
        b = x.shape[0]
        time = self._check_time("time", time, b, x.device)
        if self.lowres_cond:
            lowres_noise_times = self._check_time("lowres_noise_times", lowres_noise_times, b, x.device)
        text = self._forward_text(text_embeds, text_mask, text_conditioning, b, x.device, cond_drop_prob,
                                  cond_drop_mask, generator)
        inputs = self._inputs(x, self_cond, lowres_cond_img, cond_images)
        t, c, c_mask = self._condition(time, lowres_noise_times, text)
        return self._body(inputs, t, c, c_mask, lowres_cond_img if self.lowres_cond else None)

    def _body(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, c_mask: torch.Tensor | None,
              lowres_cond_img: torch.Tensor | None) -> torch.Tensor:
        """x: (b, in_channels, h, w), every image input concatenated -> (b, channels_out, h, w)."""
        ckpt = self.gradient_checkpointing and self.training
        x = self.init_conv(x)
        residual = x if self.init_conv_to_final_conv_residual else None
        if self.init_resnet_block is not None:
            x = call(self.init_resnet_block, ckpt, x, t)
        skips: list[torch.Tensor] = []
        for stage in self.downs:
            x = stage(x, t, c, c_mask, skips, ckpt)
        x = call(self.mid_block1, ckpt, x, t, c, c_mask)
        if self.mid_attn is not None:
            x = call(self.mid_attn, ckpt, x)
        x = call(self.mid_block2, ckpt, x, t, c, c_mask)
        fmaps = []
        for stage in self.ups:
            x, fmap = stage(x, t, c, c_mask, skips, self.skip_connect_scale, ckpt)
            fmaps.append(fmap)
        x = self.upsample_combiner(x, fmaps)
        if residual is not None:
            x = torch.cat((x, residual), dim=1)
        if self.final_res_block is not None:
            x = call(self.final_res_block, ckpt, x, t)
        if lowres_cond_img is not None:
            x = torch.cat((x, lowres_cond_img), dim=1)
        return self.final_conv(x)

    def _inputs(self, x, self_cond, lowres_cond_img, cond_images) -> torch.Tensor:
        """[cond_images (resized), x, self_cond, lowres_cond_img] on channels, as the reference orders
        them, then the pixel coordinates with ``coordinate_channels``."""
        chk.check_channels("x", x, self.channels, "channels")
        parts = [x]
        if self.self_cond:
            self_cond = torch.zeros_like(x) if self_cond is None else self_cond
            _same_shape("self_cond", self_cond, x)
            parts.append(self_cond)
        if self.lowres_cond:
            if lowres_cond_img is None:
                raise ValueError("lowres_cond_img is required: this unet has lowres_cond=True")
            _same_shape("lowres_cond_img", lowres_cond_img, x)
            parts.append(lowres_cond_img)
        elif lowres_cond_img is not None:
            raise ValueError("lowres_cond_img was given but this unet has lowres_cond=False")
        if self.has_cond_image:
            if cond_images is None:
                raise ValueError(f"cond_images is required: this unet has cond_images_channels="
                                 f"{self.cond_images_channels}")
            chk.check_tensor("cond_images", cond_images, 4, "(batch, cond_images_channels, height, width)")
            chk.check_channels("cond_images", cond_images, self.cond_images_channels, "cond_images_channels")
            parts.insert(0, _resize_to(cond_images, x.shape[-2:], self.resize_mode).to(x.dtype))
        elif cond_images is not None:
            raise ValueError("cond_images were given but this unet has cond_images_channels=0")
        if self.coordinate_channels:
            parts.append(pixel_coordinates(x))
        return torch.cat(parts, dim=1)


def _check_scalars(o: dict[str, Any]) -> None:
    for name in ("dim", "channels", "attn_heads", "attn_dim_head", "max_text_len", "text_embed_dim",
                 "layer_mid_attns_depth"):
        chk.at_least(name, o[name], 1)
    for name in ("num_time_tokens", "cond_images_channels"):
        chk.at_least(name, o[name], 0)
    for name in ("cond_dim", "init_dim", "channels_out"):
        if o[name] is not None:
            chk.at_least(name, o[name], 1)
    chk.at_least("learned_sinu_pos_emb_dim", o["learned_sinu_pos_emb_dim"], 2)
    chk.check_choice("resize_mode", o["resize_mode"], chk.RESIZE_MODES)
    chk.check_choice("block_norm", o["block_norm"], ("rms", "group"))
    if not 0.0 <= o["dropout"] < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {o['dropout']!r}")
    if not o["ff_mult"] > 0:
        raise ValueError(f"ff_mult must be > 0, got {o['ff_mult']!r}")
    for name in ("init_conv_kernel_size", "final_conv_kernel_size"):
        if o[name] < 1 or o[name] % 2 == 0:
            raise ValueError(f"{name} must be an odd int >= 1, got {o[name]!r}")
