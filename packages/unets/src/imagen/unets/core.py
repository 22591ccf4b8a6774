"""The U-Net body shared by :class:`~imagen.unets.Unet` and :class:`~imagen.unets.Unet3D`.

``UnetCore`` builds every layer from the reference's keywords and runs on feature maps
``(b * f, c, h, w)`` (frames folded into the batch, see :mod:`imagen.unets.blocks`). The public
classes only check and lay out their inputs and choose whether the temporal layers exist.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks as chk
from .blocks import Cond, CrossEmbedLayer, ResnetBlock, TemporalConv, UpsampleCombiner
from .config import ConfigurableMixin
from .embeddings import NoiseLevelEmbedding, TextConditioning
from .stages import DownStage, MidStage, StageOptions, UpStage

__all__ = ["UnetCore"]


class UnetCore(ConfigurableMixin, nn.Module):
    """Layers and forward pass common to the 2D and 3D U-Nets (not used directly)."""

    is_null = False
    is_video = False

    def _build(self, o: dict[str, Any], *, video: bool) -> None:
        self._record_config(o)
        n = len(chk.check_dims("dim_mults", o["dim_mults"]))
        self._check_scalars(o)
        stage = {k: chk.per_stage(k, o[k], n, kind) for k, kind in (
            ("num_resnet_blocks", int), ("resnet_groups", int), ("layer_attns", bool), ("layer_attns_depth", int),
            ("layer_cross_attns", bool), ("use_linear_attn", bool), ("use_linear_cross_attn", bool))}
        strides = self._temporal_strides(o, n) if video else (1,) * n

        self.channels, self.lowres_cond, self.self_cond = o["channels"], o["lowres_cond"], o["self_cond"]
        self.channels_out = o["channels_out"] or o["channels"]
        self.cond_images_channels, self.cond_on_text = o["cond_images_channels"], o["cond_on_text"]
        self.text_embed_dim, self.max_text_len = o["text_embed_dim"], o["max_text_len"]
        self.gradient_checkpointing = o["gradient_checkpointing"]
        self.memory_efficient = o["memory_efficient"]
        self.downsample_factor = 2 ** (n if o["memory_efficient"] else n - 1)
        self.time_downsample_factor = math.prod(strides)
        self.skip_scale = 2**-0.5 if o["scale_skip_connection"] else 1.0

        dim = o["dim"]
        init_dim = o["init_dim"] or dim
        dims = [init_dim, *(dim * m for m in o["dim_mults"])]
        self._check_groups(dims, stage["resnet_groups"], dim)
        cond_dim = o["cond_dim"] or dim
        time_cond_dim = dim * 4 * (2 if o["lowres_cond"] else 1)
        self._build_conditioning(o, cond_dim, time_cond_dim)
        self._build_init(o, init_dim, video)

        shared = dict(
            time_cond_dim=time_cond_dim, cond_dim=cond_dim, heads=o["attn_heads"], dim_head=o["attn_dim_head"],
            ff_mult=o["ff_mult"], dropout=o["dropout"], use_gca=o["use_global_context_attn"],
            add_text_cond=o["layer_attns_add_text_cond"], video=video,
            time_causal_attn=o.get("time_causal_attn", True),
            time_rel_pos_bias_depth=o.get("time_rel_pos_bias_depth", 2),
            ff_time_token_shift=o.get("ff_time_token_shift", False),
        )
        opts = [StageOptions(
            num_blocks=stage["num_resnet_blocks"][i], groups=stage["resnet_groups"][i], attn=stage["layer_attns"][i],
            attn_depth=stage["layer_attns_depth"][i], linear_attn=stage["use_linear_attn"][i],
            cross_attn=stage["layer_cross_attns"][i], linear_cross_attn=stage["use_linear_cross_attn"][i],
            temporal_stride=strides[i], **shared) for i in range(n)]
        self._build_stages(o, dims, opts)
        self._build_final(o, dims, opts, init_dim)

    # ----------------------------------------------------------------------------- construction
    @staticmethod
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
        if not 0.0 <= o["dropout"] < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {o['dropout']!r}")
        if not o["ff_mult"] > 0:
            raise ValueError(f"ff_mult must be > 0, got {o['ff_mult']!r}")
        for name in ("init_conv_kernel_size", "final_conv_kernel_size"):
            if o[name] < 1 or o[name] % 2 == 0:
                raise ValueError(f"{name} must be an odd int >= 1, got {o[name]!r}")

    @staticmethod
    def _check_groups(dims: list[int], groups: tuple[int, ...], dim: int) -> None:
        for g, d in zip(groups, dims[1:]):
            if g < 1 or d % g or dims[0] % groups[0] or dim % groups[0]:
                raise ValueError(
                    f"resnet_groups {groups!r} must divide the stage widths {dims!r} (dim * dim_mults, init_dim)"
                )

    @staticmethod
    def _temporal_strides(o: dict[str, Any], n: int) -> tuple[int, ...]:
        strides = chk.per_stage("temporal_strides", o["temporal_strides"], n, int)
        if any(s < 1 for s in strides):
            raise ValueError(f"temporal_strides must be ints >= 1, got {o['temporal_strides']!r}")
        if not o["memory_efficient"] and strides[-1] != 1:
            if isinstance(o["temporal_strides"], (tuple, list)):
                raise ValueError(
                    f"temporal_strides {o['temporal_strides']!r}: the last stage does not downsample unless "
                    "memory_efficient=True, so its stride must be 1"
                )
            strides = (*strides[:-1], 1)
        return strides

    def _build_conditioning(self, o: dict[str, Any], cond_dim: int, time_cond_dim: int) -> None:
        emb = dict(sinu_dim=o["learned_sinu_pos_emb_dim"], hidden_dim=time_cond_dim, token_dim=cond_dim,
                   num_tokens=o["num_time_tokens"])
        self.time_embedding = NoiseLevelEmbedding(**emb)
        self.lowres_time_embedding = NoiseLevelEmbedding(**emb) if o["lowres_cond"] else None
        self.text_conditioning = None
        if o["cond_on_text"]:
            self.text_conditioning = TextConditioning(
                text_embed_dim=o["text_embed_dim"], cond_dim=cond_dim, hidden_dim=time_cond_dim,
                max_text_len=o["max_text_len"], attn_pool=o["attn_pool_text"],
                num_latents=o["attn_pool_num_latents"], heads=o["attn_heads"], dim_head=o["attn_dim_head"],
            )
        self.norm_cond = nn.LayerNorm(cond_dim)

    def _build_init(self, o: dict[str, Any], init_dim: int, video: bool) -> None:
        in_channels = o["channels"] * (1 + int(o["lowres_cond"]) + int(o["self_cond"])) + o["cond_images_channels"]
        if o["init_cross_embed"]:
            self.init_conv = CrossEmbedLayer(in_channels, init_dim, tuple(o["init_cross_embed_kernel_sizes"]))
        else:
            k = o["init_conv_kernel_size"]
            self.init_conv = nn.Conv2d(in_channels, init_dim, k, padding=k // 2)
        self.init_temporal_conv = TemporalConv(init_dim) if video else None

    def _build_stages(self, o: dict[str, Any], dims: list[int], opts: list[StageOptions]) -> None:
        n, me = len(opts), o["memory_efficient"]
        pairs = list(itertools.pairwise(dims))
        self.downs = nn.ModuleList(
            DownStage(a, b, opts[i], memory_efficient=me, is_last=i == n - 1, cross_embed=o["cross_embed_downsample"],
                      cross_embed_kernel_sizes=tuple(o["cross_embed_downsample_kernel_sizes"]))
            for i, (a, b) in enumerate(pairs)
        )
        self.mid = MidStage(dims[-1], opts[-1], attend=o["attend_at_middle"], depth=o["layer_mid_attns_depth"])
        ups = []
        for i in reversed(range(n)):
            up_stride = opts[i].temporal_stride if me else (opts[i - 1].temporal_stride if i > 0 else 1)
            ups.append(UpStage(*pairs[i], self.downs[i].skip_dim, opts[i], up_stride=up_stride,
                               spatial=me or i > 0, pixel_shuffle=o["pixel_shuffle_upsample"],
                               resize_mode=o["resize_mode"]))
        self.ups = nn.ModuleList(ups)

    def _build_final(self, o: dict[str, Any], dims: list[int], opts: list[StageOptions], init_dim: int) -> None:
        dim = o["dim"]
        self.combiner = UpsampleCombiner(init_dim, enabled=o["combine_upsample_fmaps"],
                                         dim_ins=tuple(reversed(dims[1:])), dim_out=dim, resize_mode=o["resize_mode"])
        self.init_residual = o["init_conv_to_final_conv_residual"]
        final_dim = self.combiner.dim_out + (init_dim if self.init_residual else 0)
        self.final_block = None
        if o["final_resnet_block"]:
            self.final_block = ResnetBlock(final_dim, dim, time_cond_dim=opts[0].time_cond_dim, groups=opts[0].groups,
                                           use_gca=True, temporal=opts[0].video)
            final_dim = dim
        k = o["final_conv_kernel_size"]
        self.final_conv = nn.Conv2d(final_dim, self.channels_out, k, padding=k // 2)
        nn.init.zeros_(self.final_conv.weight)
        nn.init.zeros_(self.final_conv.bias)

    # ----------------------------------------------------------------------------- forward
    def _conditioning(self, time, lowres_noise_times, text_embeds, text_mask, drop, frames, ignore_time) -> Cond:
        t, tokens = self.time_embedding(time)
        token_list = [tokens] if tokens is not None else []
        if self.lowres_time_embedding is not None:
            lt, ltokens = self.lowres_time_embedding(lowres_noise_times)
            t = t + lt
            token_list += [ltokens] if ltokens is not None else []
        masks = [torch.ones(tok.shape[:2], dtype=torch.bool, device=t.device) for tok in token_list]
        text_mask_out = None
        if self.text_conditioning is not None:
            text_tokens, text_mask_out, hidden = self.text_conditioning(text_embeds, text_mask, drop)
            t = t + hidden
            token_list.append(text_tokens.to(t.dtype) if text_tokens.dtype != t.dtype else text_tokens)
            masks.append(text_mask_out if text_mask_out is not None else torch.ones(
                text_tokens.shape[:2], dtype=torch.bool, device=t.device))
        context = self.norm_cond(torch.cat(token_list, dim=1)) if token_list else None
        mask = torch.cat(masks, dim=1) if text_mask_out is not None else None
        return Cond(t, context, mask, frames, ignore_time)

    def _body(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        """x: (b * f, in_channels, h, w) with all conditioning images concatenated -> (b * f, channels_out, h, w)."""
        ckpt = self.gradient_checkpointing and self.training
        x = self.init_conv(x)
        if self.init_temporal_conv is not None:
            x = self.init_temporal_conv(x, cond)
        residual = x if self.init_residual else None
        skips: list[torch.Tensor] = []
        for stage in self.downs:
            x, cond = stage(x, cond, skips, ckpt)
        x = self.mid(x, cond, ckpt)
        fmaps: list[tuple[torch.Tensor, int]] = []
        for stage in self.ups:
            x, cond = stage(x, cond, skips, self.skip_scale, ckpt, fmaps)
        x = self.combiner(x, fmaps, cond)
        if residual is not None:
            x = torch.cat((x, residual), dim=1)
        if self.final_block is not None:
            x = self.final_block(x, cond)
        return self.final_conv(x)

    # ----------------------------------------------------------------------------- input checks
    def _drop_mask(self, batch: int, device, cond_drop_prob: float, cond_drop_mask, generator) -> torch.Tensor:
        if cond_drop_mask is not None:
            mask = torch.as_tensor(cond_drop_mask, device=device)
            if mask.shape != (batch,) or mask.dtype != torch.bool:
                raise ValueError(f"cond_drop_mask must be a bool tensor of shape ({batch},), got "
                                 f"{mask.dtype} {tuple(mask.shape)}")
            return mask
        if not 0.0 <= cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1], got {cond_drop_prob!r}")
        if cond_drop_prob == 0.0:
            return torch.zeros(batch, dtype=torch.bool, device=device)
        if cond_drop_prob == 1.0:
            return torch.ones(batch, dtype=torch.bool, device=device)
        gen_device = generator.device if generator is not None else device
        return (torch.rand(batch, generator=generator, device=gen_device) < cond_drop_prob).to(device)

    def _check_time(self, name: str, time, batch: int, device) -> torch.Tensor:
        if time is None:
            raise ValueError(f"{name} is required (a float tensor of shape ({batch},))")
        time = torch.as_tensor(time, device=device)
        if time.ndim == 0:
            time = time.expand(batch)
        if time.shape != (batch,):
            raise ValueError(f"{name} must have shape ({batch},), got {tuple(time.shape)}")
        return time.float() if not time.is_floating_point() else time

    def _check_text(self, text_embeds, text_mask, batch: int):
        if text_embeds is None:
            return None, None
        if not self.cond_on_text:
            raise ValueError("text_embeds were given but this unet has cond_on_text=False")
        chk.check_tensor("text_embeds", text_embeds, 3, "(batch, tokens, text_embed_dim)")
        if text_embeds.shape[0] != batch or text_embeds.shape[-1] != self.text_embed_dim:
            raise ValueError(f"text_embeds must be ({batch}, tokens, {self.text_embed_dim}) (text_embed_dim="
                             f"{self.text_embed_dim}), got {tuple(text_embeds.shape)}")
        if text_mask is not None and tuple(text_mask.shape) != tuple(text_embeds.shape[:2]):
            raise ValueError(f"text_mask must have shape {tuple(text_embeds.shape[:2])}, got {tuple(text_mask.shape)}")
        return text_embeds, text_mask

    def _check_spatial(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        f = self.downsample_factor
        if h % f or w % f:
            raise ValueError(f"image size {h}x{w} (input shape {tuple(x.shape)}) must be divisible by {f}, the "
                             "unet's total downsampling (2 ** stages, one fewer unless memory_efficient)")

    def _inputs(self, x, self_cond, lowres_cond_img, cond_images) -> torch.Tensor:
        """Check the image-like inputs ((b, c, [f,] h, w), frames aligned) and concatenate them on channels."""
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
        if self.cond_images_channels > 0:
            if cond_images is None:
                raise ValueError(f"cond_images is required: this unet has cond_images_channels="
                                 f"{self.cond_images_channels}")
            chk.check_channels("cond_images", cond_images, self.cond_images_channels, "cond_images_channels")
            parts.append(_resize_to(cond_images, x.shape[-2:], self._config["resize_mode"]).to(x.dtype))
        elif cond_images is not None:
            raise ValueError("cond_images were given but this unet has cond_images_channels=0")
        return torch.cat(parts, dim=1)


def _same_shape(name: str, value: torch.Tensor, x: torch.Tensor) -> None:
    if tuple(value.shape) != tuple(x.shape):
        raise ValueError(f"{name} must have the shape of x {tuple(x.shape)}, got {tuple(value.shape)}")


def _resize_to(images: torch.Tensor, size, mode: str) -> torch.Tensor:
    """Resize (b, c, h, w) or (b, c, f, h, w) spatially to ``size``."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if images.ndim == 5:
        b = images.shape[0]
        folded = images.transpose(1, 2).flatten(0, 1)  # (b f) c h w
        out = F.interpolate(folded, size=tuple(size), mode=mode)
        return out.unflatten(0, (b, -1)).transpose(1, 2)
    return F.interpolate(images, size=tuple(size), mode=mode)
