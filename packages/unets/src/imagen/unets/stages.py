"""One resolution stage of the U-Net on the way down and one on the way up.

Each stage is a :class:`torch.nn.ModuleList` whose children sit at the reference's indices
(``downs.{i}.0`` ... ``downs.{i}.4``, ``ups.{i}.0`` ... ``ups.{i}.3``), so reference state dicts
load unchanged; properties give the children their names.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["DownStage", "UpStage", "call"]


def call(block: nn.Module, ckpt: bool, *args, **kwargs):
    """``block(*args, **kwargs)``, through activation checkpointing when ``ckpt`` and gradients are on."""
    if ckpt and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False, **kwargs)
    return block(*args, **kwargs)


class DownStage(nn.ModuleList):
    """[pre_downsample] -> init_block (cross-attends) -> resnet_blocks -> attn_block -> [post_downsample].

    Pushes one skip feature map per resnet block and one after the attention block.
    """

    def __init__(self, pre_downsample: nn.Module | None, init_block: nn.Module, resnet_blocks: list[nn.Module],
                 attn_block: nn.Module | None, post_downsample: nn.Module | None):
        super().__init__([pre_downsample, init_block, nn.ModuleList(resnet_blocks), attn_block, post_downsample])

    pre_downsample = property(lambda self: self[0])
    init_block = property(lambda self: self[1])
    resnet_blocks = property(lambda self: self[2])
    attn_block = property(lambda self: self[3])
    post_downsample = property(lambda self: self[4])

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, c_mask: torch.Tensor | None,
                skips: list[torch.Tensor], ckpt: bool = False) -> torch.Tensor:
        """x: (b, dim_in, h, w); t: (b, time_cond_dim); c: (b, m, cond_dim); c_mask: (b, m) bool or None."""
        if self.pre_downsample is not None:
            x = self.pre_downsample(x)
        x = call(self.init_block, ckpt, x, t, c, c_mask)
        for block in self.resnet_blocks:
            x = call(block, ckpt, x, t)
            skips.append(x)
        if self.attn_block is not None:
            x = call(self.attn_block, ckpt, x, c, c_mask)
        skips.append(x)
        if self.post_downsample is not None:
            x = self.post_downsample(x)
        return x


class UpStage(nn.ModuleList):
    """init_block and resnet_blocks, each fed [x, skip * skip_scale] -> attn_block -> upsample."""

    def __init__(self, init_block: nn.Module, resnet_blocks: list[nn.Module], attn_block: nn.Module | None,
                 upsample: nn.Module | None):
        super().__init__([init_block, nn.ModuleList(resnet_blocks), attn_block, upsample])

    init_block = property(lambda self: self[0])
    resnet_blocks = property(lambda self: self[1])
    attn_block = property(lambda self: self[2])
    upsample = property(lambda self: self[3])

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, c_mask: torch.Tensor | None,
                skips: list[torch.Tensor], skip_scale: float, ckpt: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Pops the stage's skips; returns (upsampled output, the output before upsampling)."""
        x = call(self.init_block, ckpt, torch.cat((x, skips.pop() * skip_scale), dim=1), t, c, c_mask)
        for block in self.resnet_blocks:
            x = call(block, ckpt, torch.cat((x, skips.pop() * skip_scale), dim=1), t)
        if self.attn_block is not None:
            x = call(self.attn_block, ckpt, x, c, c_mask)
        before = x
        if self.upsample is not None:
            x = self.upsample(x)
        return x, before
