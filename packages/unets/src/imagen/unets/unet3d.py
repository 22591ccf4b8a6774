""":class:`Unet3D` for video (Imagen Video, Ho et al. 2022), the reference 2.1.0 ``Unet3D`` layer for layer.

Feature maps are ``(b, c, f, h, w)`` throughout. Per-frame layers are the dimension-generic blocks
with per-frame convolutions; between them sit the temporal layers of :mod:`~imagen.unets.video`.
Children sit where the reference's state dict puts them (``downs.{i}.0`` ... ``downs.{i}.7``,
``ups.{i}.0`` ... ``ups.{i}.6``, ``init_temporal_peg``, ``mid_temporal_attn``, ...), so reference
state dicts load unchanged.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks as chk
from .config import register_unet
from .core import TextConditioning, UnetBase, pixel_coordinates
from .layers import Parallel
from .stages import call
from .video import (
    TemporalAttention,
    TemporalDownsample,
    TemporalPixelShuffleUpsample,
    TemporalPositionConv,
    VideoAttention,
    VideoCrossEmbedLayer,
    VideoLinearAttentionTransformerBlock,
    VideoPixelShuffleUpsample,
    VideoResnetBlock,
    VideoTransformerBlock,
    VideoUpsampleCombiner,
    frame_conv,
    video_downsample,
    video_nearest_upsample,
)

__all__ = ["Unet3D"]


class VideoDownStage(nn.ModuleList):
    """[pre_downsample] -> init_block -> resnet_blocks -> attn_block -> temporal_peg -> temporal_attn
    -> [temporal_downsample] -> [post_downsample]; one skip per resnet block and one after the temporal layers."""

    def __init__(self, pre_downsample, init_block, resnet_blocks, attn_block, temporal_peg, temporal_attn,
                 temporal_downsample, post_downsample):
        super().__init__([pre_downsample, init_block, nn.ModuleList(resnet_blocks), attn_block, temporal_peg,
                          temporal_attn, temporal_downsample, post_downsample])

    def forward(self, x, t, c, c_mask, skips: list[torch.Tensor], ignore_time: bool,
                ckpt: bool = False) -> torch.Tensor:
        """x: (b, dim_in, f, h, w); t: (b, time_cond_dim); c: (b, m, cond_dim); c_mask: (b, m) bool or None."""
        pre, init_block, resnets, attn, peg, temporal_attn, temporal_down, post = self
        if pre is not None:
            x = pre(x)
        x = call(init_block, ckpt, x, t, c, c_mask, ignore_time=ignore_time)
        for block in resnets:
            x = call(block, ckpt, x, t, None, None, ignore_time=ignore_time)
            skips.append(x)
        if attn is not None:
            x = call(attn, ckpt, x, c, c_mask)
        if not ignore_time:
            x = temporal_attn(peg(x))
        skips.append(x)
        if temporal_down is not None and not ignore_time:
            x = temporal_down(x)
        if post is not None:
            x = post(x)
        return x


class VideoUpStage(nn.ModuleList):
    """[temporal_upsample] -> init_block and resnet_blocks, each fed [x, skip * skip_scale] -> attn_block
    -> temporal_peg -> temporal_attn -> [upsample]."""

    def __init__(self, init_block, resnet_blocks, attn_block, temporal_peg, temporal_attn, temporal_upsample,
                 upsample):
        super().__init__([init_block, nn.ModuleList(resnet_blocks), attn_block, temporal_peg, temporal_attn,
                          temporal_upsample, upsample])

    def forward(self, x, t, c, c_mask, skips: list[torch.Tensor], skip_scale: float, ignore_time: bool,
                ckpt: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Pops the stage's skips; returns (upsampled output, the output before upsampling)."""
        init_block, resnets, attn, peg, temporal_attn, temporal_up, upsample = self
        if temporal_up is not None and not ignore_time:
            x = temporal_up(x)
        x = call(init_block, ckpt, torch.cat((x, skips.pop() * skip_scale), dim=1), t, c, c_mask,
                 ignore_time=ignore_time)
        for block in resnets:
            x = call(block, ckpt, torch.cat((x, skips.pop() * skip_scale), dim=1), t, None, None,
                     ignore_time=ignore_time)
        if attn is not None:
            x = call(attn, ckpt, x, c, c_mask)
        if not ignore_time:
            x = temporal_attn(peg(x))
        before = x
        if upsample is not None:
            x = upsample(x)
        return x, before


class _MidAttention(nn.Module):
    """Residual self-attention over every pixel of every frame (child ``fn``: the attention)."""

    def __init__(self, dim: int, *, heads: int, dim_head: int):
        super().__init__()
        self.fn = VideoAttention(dim, heads=heads, dim_head=dim_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, dim, f, h, w) -> same shape."""
        tokens = x.flatten(2).transpose(1, 2)  # (b, f h w, dim)
        return (self.fn(tokens) + tokens).transpose(1, 2).reshape(x.shape)


class _Layout:
    """Builds the blocks of a :class:`Unet3D` from its keywords ``o`` and per-stage options ``stage``."""

    def __init__(self, o: dict, stage: dict, *, cond_dim: int, time_cond_dim: int):
        self.o, self.stage, self.cond_dim = o, stage, cond_dim
        self.heads = dict(heads=o["attn_heads"], dim_head=o["attn_dim_head"])
        self.block = dict(time_cond_dim=time_cond_dim, dropout=o["dropout"], norm_kind=o["block_norm"])

    def resnet(self, d_in: int, d_out: int, *, stage: int | None = None, cond: bool = False,
               gca: bool = False) -> VideoResnetBlock:
        """A resnet block; ``stage`` i: a stage's first block, cross-attending as ``layer_cross_attns[i]`` says
        (linearly with ``use_linear_cross_attn`` where it does not); ``cond``: the middle blocks, which
        cross-attend with the reference's default 8 heads of 64."""
        if cond:
            return VideoResnetBlock(d_in, d_out, cond_dim=self.cond_dim, **self.block)
        if stage is None:
            return VideoResnetBlock(d_in, d_out, use_gca=gca, **self.block)
        full = self.stage["layer_cross_attns"][stage]
        linear = not full and self.stage["use_linear_cross_attn"][stage]
        return VideoResnetBlock(d_in, d_out, cond_dim=self.cond_dim if full or linear else None, linear_attn=linear,
                                **self.heads, **self.block)

    def transformer(self, i: int, dim: int) -> nn.Module | None:
        """Stage i's attention block: full (``layer_attns``), per-frame linear (``use_linear_attn``) or none."""
        o = self.o
        kw = dict(depth=self.stage["layer_attns_depth"][i], ff_mult=o["ff_mult"],
                  ff_time_token_shift=o["ff_time_token_shift"], context_dim=self.cond_dim, **self.heads)
        if self.stage["layer_attns"][i]:
            return VideoTransformerBlock(dim, **kw)
        return VideoLinearAttentionTransformerBlock(dim, **kw) if self.stage["use_linear_attn"][i] else None

    def temporal(self, dim: int) -> tuple[TemporalPositionConv, TemporalAttention]:
        causal = self.o["time_causal_attn"]
        return TemporalPositionConv(dim, causal=causal), TemporalAttention(dim, causal=causal, **self.heads)

    def down(self, d_in: int, d_out: int) -> nn.Module:
        if self.o["cross_embed_downsample"]:
            return VideoCrossEmbedLayer(d_in, tuple(self.o["cross_embed_downsample_kernel_sizes"]), d_out)
        return video_downsample(d_in, d_out)

    def up(self, d_in: int, d_out: int) -> nn.Module:
        return (VideoPixelShuffleUpsample if self.o["pixel_shuffle_upsample"] else video_nearest_upsample)(d_in, d_out)


@register_unet
class Unet3D(UnetBase):
    """Video U-Net with the reference ``Unet3D``'s keywords, defaults, layers and state-dict keys.

    Each resnet block's 3x3 convolutions are space-time convolutions (a per-frame conv, then a
    causal conv over 3 frames, Dirac-initialised as in the reference); every stage has a temporal
    position conv and causal temporal attention (``time_causal_attn``) after its attention block;
    attention blocks and the middle attention attend over all pixels of all frames; feed-forwards
    shift half of their hidden channels one frame later (``ff_time_token_shift``);
    ``temporal_strides`` (one int or one per stage) divides the frames at each stage and
    multiplies them back on the way up. ``forward(..., ignore_time=True)`` skips the temporal
    convolutions, position convs, temporal attention and temporal resampling, so single images
    (f = 1) train it as an image U-Net. ``time_rel_pos_bias_depth`` is accepted and, as in the
    reference, the bias MLP has depth 2; ``num_image_tokens``, ``out_dim`` and
    ``layer_attns_add_text_cond`` are accepted and unused, as there. Our options (defaults = the
    reference): ``mask_text_padding``, ``block_norm`` and ``coordinate_channels`` (as :class:`Unet`;
    the same coordinates in every frame), ``gradient_checkpointing``.
    Where the reference cannot run an option, ours does what it means: ``use_linear_attn`` attends
    within each frame, nearest upsampling (``pixel_shuffle_upsample=False``) keeps the frames,
    ``combine_upsample_fmaps`` resizes in time too, ``cross_embed_downsample`` builds, and
    ``post_cond_video_frames`` follow the video.
    """

    is_video = True

    def __init__(
        self, *, dim: int, text_embed_dim: int = 768, num_resnet_blocks=1, cond_dim: int | None = None,
        num_image_tokens: int = 4, num_time_tokens: int = 2, learned_sinu_pos_emb_dim: int = 16,
        out_dim: int | None = None, dim_mults=(1, 2, 4, 8), temporal_strides=1, cond_images_channels: int = 0,
        channels: int = 3, channels_out: int | None = None, attn_dim_head: int = 64, attn_heads: int = 8,
        ff_mult: float = 2.0, ff_time_token_shift: bool = True, lowres_cond: bool = False, layer_attns=False,
        layer_attns_depth=1, layer_attns_add_text_cond: bool = True, attend_at_middle: bool = True,
        time_rel_pos_bias_depth: int = 2, time_causal_attn: bool = True, layer_cross_attns=True,
        use_linear_attn=False, use_linear_cross_attn=False, cond_on_text: bool = True, max_text_len: int = 256,
        init_dim: int | None = None, init_conv_kernel_size: int = 7, init_cross_embed: bool = True,
        init_cross_embed_kernel_sizes=(3, 7, 15), cross_embed_downsample: bool = False,
        cross_embed_downsample_kernel_sizes=(2, 4), attn_pool_text: bool = True, attn_pool_num_latents: int = 32,
        dropout: float = 0.0, memory_efficient: bool = False, init_conv_to_final_conv_residual: bool = False,
        use_global_context_attn: bool = True, scale_skip_connection: bool = True, final_resnet_block: bool = True,
        final_conv_kernel_size: int = 3, self_cond: bool = False, combine_upsample_fmaps: bool = False,
        pixel_shuffle_upsample: bool = True, resize_mode: str = "nearest", mask_text_padding: bool = False,
        gradient_checkpointing: bool = False, block_norm: str = "rms", coordinate_channels: bool = False,
    ):
        super().__init__()
        o = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self._record_config(o)
        n = len(chk.check_dims("dim_mults", dim_mults))
        self._check_options(o)
        stage = {k: chk.per_stage(k, o[k], n, kind) for k, kind in (
            ("num_resnet_blocks", int), ("layer_attns", bool), ("layer_attns_depth", int), ("layer_cross_attns", bool),
            ("use_linear_attn", bool), ("use_linear_cross_attn", bool), ("temporal_strides", int))}
        if any(s < 1 for s in stage["temporal_strides"]):
            raise ValueError(f"temporal_strides must be ints >= 1, got {temporal_strides!r}")

        self.channels, self.lowres_cond, self.self_cond = channels, lowres_cond, self_cond
        self.channels_out = channels_out or channels
        self.cond_images_channels, self.cond_on_text = cond_images_channels, cond_on_text
        self.text_embed_dim, self.max_text_len = text_embed_dim, max_text_len
        self.resize_mode, self.memory_efficient = resize_mode, memory_efficient
        self.mask_text_padding, self.coordinate_channels = mask_text_padding, coordinate_channels
        self.gradient_checkpointing = gradient_checkpointing
        self.downsample_factor = 2 ** (n if memory_efficient else n - 1)
        self.time_downsample_factor = math.prod(stage["temporal_strides"])
        self.skip_connect_scale = 2**-0.5 if scale_skip_connection else 1.0

        init_dim = init_dim or dim
        dims = [init_dim, *(dim * m for m in dim_mults)]
        cond_dim = cond_dim or dim
        time_cond_dim = dim * 4 * (2 if lowres_cond else 1)
        self._build_conditioning(o, cond_dim=cond_dim, time_cond_dim=time_cond_dim)

        in_channels = channels * (1 + int(lowres_cond) + int(self_cond)) + cond_images_channels
        in_channels += 2 * int(coordinate_channels)
        if init_cross_embed:
            self.init_conv = VideoCrossEmbedLayer(in_channels, tuple(init_cross_embed_kernel_sizes), init_dim, stride=1)
        else:
            self.init_conv = frame_conv(in_channels, init_dim, init_conv_kernel_size)
        lay = _Layout(o, stage, cond_dim=cond_dim, time_cond_dim=time_cond_dim)
        self.init_resnet_block = None
        if memory_efficient:
            self.init_resnet_block = lay.resnet(init_dim, init_dim, gca=use_global_context_attn)
        self.init_temporal_peg, self.init_temporal_attn = lay.temporal(init_dim)
        self._build_stages(lay, dims)
        top = dims[0] if memory_efficient else dims[1]  # channels after the last up stage (the reference: dim)
        self.upsample_combiner = VideoUpsampleCombiner(top, enabled=combine_upsample_fmaps,
                                                       dim_ins=tuple(reversed(dims[1:])), dim_outs=dim)
        self.init_conv_to_final_conv_residual = init_conv_to_final_conv_residual
        final_dim = self.upsample_combiner.dim_out + (init_dim if init_conv_to_final_conv_residual else 0)
        self.final_res_block = None
        if final_resnet_block:
            self.final_res_block = lay.resnet(final_dim, dim, gca=True)
            final_dim = dim
        final_dim += channels if lowres_cond else 0
        self.final_conv = frame_conv(final_dim, self.channels_out, final_conv_kernel_size)
        nn.init.zeros_(self.final_conv.weight)
        nn.init.zeros_(self.final_conv.bias)

    def _build_stages(self, lay: _Layout, dims: list[int]) -> None:
        """``downs``, the middle (``mid_block1``, ``mid_attn``, ``mid_temporal_*``, ``mid_block2``) and ``ups``."""
        n, efficient, gca = len(dims) - 1, lay.o["memory_efficient"], lay.o["use_global_context_attn"]
        pairs = list(itertools.pairwise(dims))
        downs, skip_dims = [], []
        for i, (d_in, d_out) in enumerate(pairs):
            d = d_out if efficient else d_in
            skip_dims.append(d)
            post = None
            if not efficient:
                last = i == n - 1
                post = Parallel(frame_conv(d_in, d_out, 3), frame_conv(d_in, d_out, 1)) if last else lay.down(d, d_out)
            stride = lay.stage["temporal_strides"][i]
            downs.append(VideoDownStage(
                lay.down(d_in, d_out) if efficient else None, lay.resnet(d, d, stage=i),
                [lay.resnet(d, d, gca=gca) for _ in range(lay.stage["num_resnet_blocks"][i])],
                lay.transformer(i, d), *lay.temporal(d), TemporalDownsample(d, stride=stride) if stride > 1 else None,
                post,
            ))
        self.downs = nn.ModuleList(downs)

        mid = dims[-1]
        self.mid_block1 = lay.resnet(mid, mid, cond=True)
        self.mid_attn = _MidAttention(mid, **lay.heads) if lay.o["attend_at_middle"] else None
        self.mid_temporal_peg, self.mid_temporal_attn = lay.temporal(mid)
        self.mid_block2 = lay.resnet(mid, mid, cond=True)

        ups = []
        for i in reversed(range(n)):
            (d_in, d_out), d_skip = pairs[i], skip_dims[i]
            stride = lay.stage["temporal_strides"][i]
            ups.append(VideoUpStage(
                lay.resnet(d_out + d_skip, d_out, stage=i),
                [lay.resnet(d_out + d_skip, d_out, gca=gca) for _ in range(lay.stage["num_resnet_blocks"][i])],
                lay.transformer(i, d_out), *lay.temporal(d_out),
                TemporalPixelShuffleUpsample(d_out, stride=stride) if stride > 1 else None,
                lay.up(d_out, d_in) if i > 0 or efficient else None,
            ))
        self.ups = nn.ModuleList(ups)

    @staticmethod
    def _check_options(o: dict) -> None:
        for name in ("dim", "channels", "attn_heads", "attn_dim_head", "max_text_len", "text_embed_dim"):
            chk.at_least(name, o[name], 1)
        for name in ("num_time_tokens", "cond_images_channels"):
            chk.at_least(name, o[name], 0)
        for name in ("cond_dim", "init_dim", "channels_out"):
            if o[name] is not None:
                chk.at_least(name, o[name], 1)
        chk.check_choice("resize_mode", o["resize_mode"], chk.RESIZE_MODES)
        chk.check_choice("block_norm", o["block_norm"], ("rms", "group"))
        if not o["ff_mult"] > 0:
            raise ValueError(f"ff_mult must be > 0, got {o['ff_mult']!r}")
        for name in ("init_conv_kernel_size", "final_conv_kernel_size"):
            if o[name] < 1 or o[name] % 2 == 0:
                raise ValueError(f"{name} must be an odd int >= 1, got {o[name]!r}")

    # ------------------------------------------------------------------------------------- forward
    def forward(
        self, x: torch.Tensor, time: torch.Tensor, *, text_embeds: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None, cond_images: torch.Tensor | None = None,
        lowres_cond_img: torch.Tensor | None = None, lowres_noise_times: torch.Tensor | None = None,
        self_cond: torch.Tensor | None = None, cond_drop_prob: float = 0.0, cond_drop_mask: torch.Tensor | None = None,
        ignore_time: bool = False, cond_video_frames: torch.Tensor | None = None,
        post_cond_video_frames: torch.Tensor | None = None, generator: torch.Generator | None = None,
        text_conditioning: TextConditioning | None = None,
    ) -> torch.Tensor:
        """Predict from a noisy video batch.

        x: (b, channels, f, h, w) (an image batch goes in as f = 1 with ``ignore_time=True``);
        time, text_embeds, text_mask, cond_drop_prob, cond_drop_mask, generator, text_conditioning as in
        :meth:`Unet.forward`; lowres_cond_img and self_cond: (b, channels, f, h, w);
        lowres_noise_times: (b,); cond_images: (b, cond_images_channels, h', w'), resized and shared
        by every frame; cond_video_frames / post_cond_video_frames: (b, channels, f', h', w') clean
        frames placed before / after x in time (resized to h x w; they fill every input slot of
        their frames: x, self_cond and lowres_cond_img) and cut from the output. Unless
        ``ignore_time``, each of f, f_pre and f_post must be divisible by ``time_downsample_factor``.
        Returns (b, channels_out, f, h, w).
        """
        if not isinstance(x, torch.Tensor) or x.ndim != 5:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"Unet3D takes video x of shape (batch, channels, frames, height, width), got {shape}; "
                             "feed images as (batch, channels, 1, height, width) with ignore_time=True")
        b, frames = x.shape[0], x.shape[2]
        self._check_spatial(x)
        pre, post = (self._cond_frames(name, v, x, ignore_time) for name, v in (
            ("cond_video_frames", cond_video_frames), ("post_cond_video_frames", post_cond_video_frames)))
        self._check_frames("x", frames, ignore_time)
        inputs = self._inputs(x, self_cond, lowres_cond_img, cond_images, pre, post)
        time = self._check_time("time", time, b, x.device)
        if self.lowres_cond:
            lowres_noise_times = self._check_time("lowres_noise_times", lowres_noise_times, b, x.device)
        text = self._forward_text(text_embeds, text_mask, text_conditioning, b, x.device, cond_drop_prob,
                                  cond_drop_mask, generator)
        t, c, c_mask = self._condition(time, lowres_noise_times, text)
        lowres_all = inputs[:, -self.channels:] if self.lowres_cond else None
        out = self._body(inputs, t, c, c_mask, lowres_all, ignore_time)
        start = 0 if pre is None else pre.shape[2]
        return out[:, :, start:start + frames]

    def _body(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, c_mask: torch.Tensor | None,
              lowres: torch.Tensor | None, ignore_time: bool) -> torch.Tensor:
        """x: (b, in_channels, F, h, w) all inputs concatenated; t: (b, time_cond_dim); c: (b, m, cond_dim)
        with c_mask (b, m) bool or None; lowres: (b, channels, F, h, w) for the final conv or None."""
        ckpt = self.gradient_checkpointing and self.training
        x = self.init_conv(x)
        if not ignore_time:
            x = self.init_temporal_attn(self.init_temporal_peg(x))
        residual = x.clone() if self.init_conv_to_final_conv_residual else None
        if self.init_resnet_block is not None:
            x = call(self.init_resnet_block, ckpt, x, t, None, None, ignore_time=ignore_time)
        skips: list[torch.Tensor] = []
        for stage in self.downs:
            x = stage(x, t, c, c_mask, skips, ignore_time, ckpt)
        x = call(self.mid_block1, ckpt, x, t, c, c_mask, ignore_time=ignore_time)
        if self.mid_attn is not None:
            x = call(self.mid_attn, ckpt, x)
        if not ignore_time:
            x = self.mid_temporal_attn(self.mid_temporal_peg(x))
        x = call(self.mid_block2, ckpt, x, t, c, c_mask, ignore_time=ignore_time)
        fmaps = []
        for stage in self.ups:
            x, before = stage(x, t, c, c_mask, skips, self.skip_connect_scale, ignore_time, ckpt)
            fmaps.append(before)
        x = self.upsample_combiner(x, fmaps)
        if residual is not None:
            x = torch.cat((x, residual), dim=1)
        if self.final_res_block is not None:
            x = call(self.final_res_block, ckpt, x, t, None, None, ignore_time=ignore_time)
        if lowres is not None:
            x = torch.cat((x, lowres), dim=1)
        return self.final_conv(x)

    def forward_with_cond_scale(self, x: torch.Tensor, time, *args, cond_scale: float = 1.0,
                                remove_parallel_component: bool = False, keep_parallel_frac: float = 0.0,
                                **kwargs) -> torch.Tensor:
        """Classifier-free guidance in one forward of the doubled batch, as :meth:`Unet.forward_with_cond_scale`
        but, as the reference's video U-Net, keeping the update's parallel component by default."""
        return super().forward_with_cond_scale(x, time, *args, cond_scale=cond_scale,
                                               remove_parallel_component=remove_parallel_component,
                                               keep_parallel_frac=keep_parallel_frac, **kwargs)

    # --------------------------------------------------------------------------------- input checks
    def _check_frames(self, name: str, frames: int, ignore_time: bool) -> None:
        if not ignore_time and frames % self.time_downsample_factor:
            raise ValueError(f"{name} has {frames} frames but this Unet3D needs a multiple of its "
                             f"time_downsample_factor={self.time_downsample_factor} (the product of "
                             "temporal_strides), or ignore_time=True")

    def _cond_frames(self, name: str, value, x: torch.Tensor, ignore_time: bool) -> torch.Tensor | None:
        """Conditioning frames checked and resized (nearest) to the frame size of x: (b, channels, f', h, w)."""
        if value is None:
            return None
        chk.check_tensor(name, value, 5, "(batch, channels, frames, height, width)")
        if value.shape[:2] != x.shape[:2]:
            raise ValueError(f"{name} must have the batch size and channels of x {tuple(x.shape[:2])}, got shape "
                             f"{tuple(value.shape)}")
        self._check_frames(name, value.shape[2], ignore_time)
        if value.shape[-2:] != x.shape[-2:]:
            value = _resize_frames(value, x.shape[-2:], "nearest")
        return value.to(x.dtype)

    def _inputs(self, x, self_cond, lowres_cond_img, cond_images, pre, post) -> torch.Tensor:
        """All image-like inputs on the channels, conditioning frames on the frames:
        (b, [cond_images_channels +] channels * (1 + self_cond + lowres_cond) [+ 2 coordinates],
        f_pre + f + f_post, h, w)."""
        chk.check_channels("x", x, self.channels, "channels")
        slots = [x]
        if self.self_cond:
            slots.append(torch.zeros_like(x) if self_cond is None else _same_shape("self_cond", self_cond, x))
        if self.lowres_cond:
            if lowres_cond_img is None:
                raise ValueError("lowres_cond_img is required: this unet has lowres_cond=True")
            slots.append(_same_shape("lowres_cond_img", lowres_cond_img, x))
        elif lowres_cond_img is not None:
            raise ValueError("lowres_cond_img was given but this unet has lowres_cond=False")
        inputs = torch.cat(slots, dim=1)
        ends = [(p.repeat(1, len(slots), 1, 1, 1)) for p in (pre, post) if p is not None]
        if pre is not None:
            inputs = torch.cat((ends[0], inputs), dim=2)
        if post is not None:
            inputs = torch.cat((inputs, ends[-1]), dim=2)
        if self.cond_images_channels > 0:
            if cond_images is None:
                raise ValueError(f"cond_images is required: this unet has cond_images_channels="
                                 f"{self.cond_images_channels}")
            chk.check_tensor("cond_images", cond_images, 4, "(batch, channels, height, width): condition on frames "
                             "with cond_video_frames")
            chk.check_channels("cond_images", cond_images, self.cond_images_channels, "cond_images_channels")
            if cond_images.shape[-2:] != x.shape[-2:]:
                cond_images = F.interpolate(cond_images, size=tuple(x.shape[-2:]), mode=self.resize_mode)
            frames = cond_images[:, :, None].expand(-1, -1, inputs.shape[2], -1, -1).to(x.dtype)
            inputs = torch.cat((frames, inputs), dim=1)
        elif cond_images is not None:
            raise ValueError("cond_images were given but this unet has cond_images_channels=0")
        if self.coordinate_channels:
            coordinates = pixel_coordinates(inputs[:, :, 0])[:, :, None].expand(-1, -1, inputs.shape[2], -1, -1)
            inputs = torch.cat((inputs, coordinates), dim=1)
        return inputs


def _same_shape(name: str, value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if tuple(value.shape) != tuple(x.shape):
        raise ValueError(f"{name} must have the shape of x {tuple(x.shape)}, got {tuple(value.shape)}")
    return value


def _resize_frames(video: torch.Tensor, size, mode: str) -> torch.Tensor:
    """Resize every frame of (b, c, f, h, w) to ``size`` (h', w')."""
    b = video.shape[0]
    folded = video.transpose(1, 2).flatten(0, 1)  # (b f) c h w
    return F.interpolate(folded, size=tuple(size), mode=mode).unflatten(0, (b, -1)).transpose(1, 2)
