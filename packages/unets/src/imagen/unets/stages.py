"""One resolution stage of the U-Net on the way down, the middle, and one stage on the way up."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import Cond, Downsample, ResnetBlock, TemporalAttentionBlock, TransformerBlock, Upsample

__all__ = ["DownStage", "MidStage", "StageOptions", "UpStage", "call"]


def call(block: nn.Module, x: torch.Tensor, cond: Cond, use_checkpoint: bool) -> torch.Tensor:
    """``block(x, cond)``, through activation checkpointing when asked and gradients are on."""
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(block, x, cond, use_reentrant=False)
    return block(x, cond)


def _after_stride(cond: Cond, stride: int, down: bool) -> Cond:
    if stride == 1 or cond.ignore_time:
        return cond
    return cond.at_frames(cond.frames // stride if down else cond.frames * stride)


@dataclass(frozen=True)
class StageOptions:
    """The options of one stage (already resolved from the per-stage tuples) and the shared ones."""

    num_blocks: int
    groups: int
    attn: bool
    attn_depth: int
    linear_attn: bool
    cross_attn: bool
    linear_cross_attn: bool
    temporal_stride: int
    time_cond_dim: int
    cond_dim: int
    heads: int
    dim_head: int
    ff_mult: float
    dropout: float
    use_gca: bool
    add_text_cond: bool
    video: bool
    time_causal_attn: bool
    time_rel_pos_bias_depth: int
    ff_time_token_shift: bool

    def resnet(self, dim_in: int, dim_out: int, *, cross: bool = False, gca: bool = False) -> ResnetBlock:
        """A resnet block; ``cross`` adds (linear) cross-attention when the stage has it."""
        has_cross = cross and (self.cross_attn or self.linear_cross_attn)
        return ResnetBlock(
            dim_in, dim_out, time_cond_dim=self.time_cond_dim, cond_dim=self.cond_dim if has_cross else None,
            linear_cross_attn=self.linear_cross_attn, groups=self.groups, use_gca=gca and self.use_gca,
            dropout=self.dropout, temporal=self.video, heads=self.heads, dim_head=self.dim_head,
        )

    def transformer(self, dim: int, depth: int | None = None, force: bool = False) -> TransformerBlock | None:
        """The stage's spatial attention block (full, or linear), or None when it has neither."""
        if not (force or self.attn or self.linear_attn):
            return None
        return TransformerBlock(
            dim, depth=depth or self.attn_depth, heads=self.heads, dim_head=self.dim_head, ff_mult=self.ff_mult,
            context_dim=self.cond_dim if self.add_text_cond else None, linear=not (force or self.attn),
            dropout=self.dropout, time_token_shift=self.video and self.ff_time_token_shift,
        )

    def temporal(self, dim: int) -> TemporalAttentionBlock | None:
        """Attention across frames (video only)."""
        if not self.video:
            return None
        return TemporalAttentionBlock(
            dim, heads=self.heads, dim_head=self.dim_head, causal=self.time_causal_attn,
            rel_pos_bias_depth=self.time_rel_pos_bias_depth,
        )


class DownStage(nn.Module):
    """[downsample if memory-efficient] -> resnet blocks -> attention -> [downsample otherwise].

    Pushes one skip feature map per resnet block plus one after the attention.
    """

    def __init__(self, dim_in: int, dim_out: int, opts: StageOptions, *, memory_efficient: bool, is_last: bool,
                 cross_embed: bool, cross_embed_kernel_sizes: tuple[int, ...]):
        super().__init__()
        down = dict(
            cross_embed=cross_embed, kernel_sizes=cross_embed_kernel_sizes, temporal_stride=opts.temporal_stride
        )
        self.pre = Downsample(dim_in, dim_out, **down) if memory_efficient else None
        dim = dim_out if memory_efficient else dim_in
        self.skip_dim = dim
        self.init_block = opts.resnet(dim, dim, cross=True)
        self.blocks = nn.ModuleList(opts.resnet(dim, dim, gca=True) for _ in range(opts.num_blocks))
        self.attn = opts.transformer(dim)
        self.temporal_attn = opts.temporal(dim)
        self.post = None if memory_efficient else Downsample(dim, dim_out, **down, spatial=not is_last)
        self.stride = opts.temporal_stride

    def forward(self, x: torch.Tensor, cond: Cond, skips: list[torch.Tensor], ckpt: bool) -> tuple[torch.Tensor, Cond]:
        """x: (b * f, dim_in, h, w) -> the stage output and the conditioning at its frame count."""
        if self.pre is not None:
            x, cond = self.pre(x, cond), _after_stride(cond, self.stride, down=True)
        x = call(self.init_block, x, cond, ckpt)
        for block in self.blocks:
            x = call(block, x, cond, ckpt)
            skips.append(x)
        for block in (self.attn, self.temporal_attn):
            if block is not None:
                x = call(block, x, cond, ckpt)
        skips.append(x)
        if self.post is not None:
            x, cond = self.post(x, cond), _after_stride(cond, self.stride, down=True)
        return x, cond


class MidStage(nn.Module):
    """Resnet block -> attention (optional) -> temporal attention (video) -> resnet block, at the bottleneck."""

    def __init__(self, dim: int, opts: StageOptions, *, attend: bool, depth: int):
        super().__init__()
        self.block1 = opts.resnet(dim, dim, cross=True)
        self.attn = opts.transformer(dim, depth=depth, force=True) if attend else None
        self.temporal_attn = opts.temporal(dim)
        self.block2 = opts.resnet(dim, dim, cross=True)

    def forward(self, x: torch.Tensor, cond: Cond, ckpt: bool) -> torch.Tensor:
        """x: (b * f, dim, h, w) -> same shape."""
        for block in (self.block1, self.attn, self.temporal_attn, self.block2):
            if block is not None:
                x = call(block, x, cond, ckpt)
        return x


class UpStage(nn.Module):
    """Resnet blocks fed [x, skip] -> attention -> upsample; mirror of a :class:`DownStage`."""

    def __init__(self, dim_in: int, dim_out: int, skip_dim: int, opts: StageOptions, *, up_stride: int,
                 spatial: bool, pixel_shuffle: bool, resize_mode: str):
        super().__init__()
        self.init_block = opts.resnet(dim_out + skip_dim, dim_out, cross=True)
        self.blocks = nn.ModuleList(opts.resnet(dim_out + skip_dim, dim_out, gca=True) for _ in range(opts.num_blocks))
        self.attn = opts.transformer(dim_out)
        self.temporal_attn = opts.temporal(dim_out)
        self.upsample = Upsample(dim_out, dim_in, pixel_shuffle=pixel_shuffle, resize_mode=resize_mode,
                                 temporal_stride=up_stride, spatial=spatial)
        self.stride = up_stride

    def forward(self, x: torch.Tensor, cond: Cond, skips: list[torch.Tensor], skip_scale: float, ckpt: bool,
                fmaps: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, Cond]:
        """x: (b * f, dim_out, h, w) -> (upsampled output, conditioning at its frame count); pops the skips."""
        for block in (self.init_block, *self.blocks):
            x = torch.cat((x, skips.pop() * skip_scale), dim=1)
            x = call(block, x, cond, ckpt)
        for block in (self.attn, self.temporal_attn):
            if block is not None:
                x = call(block, x, cond, ckpt)
        fmaps.append((x, cond.frames))
        return self.upsample(x, cond), _after_stride(cond, self.stride, down=False)
