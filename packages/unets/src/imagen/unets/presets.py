"""The Imagen paper's U-Nets (Saharia et al. 2022, appendix F), every keyword overridable."""

from __future__ import annotations

from typing import Any

from .config import register_unet
from .unet import Unet

__all__ = ["BaseUnet64", "SRUnet256", "SRUnet1024"]

_BASE64 = dict(
    dim=512, dim_mults=(1, 2, 3, 4), num_resnet_blocks=3, layer_attns=(False, True, True, True),
    layer_cross_attns=(False, True, True, True), attn_heads=8, ff_mult=2.0, memory_efficient=False,
)
_SR256 = dict(
    dim=128, dim_mults=(1, 2, 4, 8), num_resnet_blocks=(2, 4, 8, 8), layer_attns=(False, False, False, True),
    layer_cross_attns=(False, False, False, True), attn_heads=8, ff_mult=2.0, memory_efficient=True,
)
_SR1024 = dict(
    dim=128, dim_mults=(1, 2, 4, 8), num_resnet_blocks=(2, 4, 8, 8), layer_attns=False,
    layer_cross_attns=(False, False, False, True), attn_heads=8, ff_mult=2.0, memory_efficient=True,
)


@register_unet
class BaseUnet64(Unet):
    """The 64x64 base U-Net: dim 512, dim_mults (1, 2, 3, 4), 3 resnet blocks per stage, attention below 64x64."""

    def __init__(self, **kwargs: Any):
        super().__init__(**{**_BASE64, **kwargs})


@register_unet
class SRUnet256(Unet):
    """The 64 -> 256 super-resolution Efficient U-Net: dim 128, (2, 4, 8, 8) resnet blocks, attention at the bottom."""

    def __init__(self, **kwargs: Any):
        super().__init__(**{**_SR256, **kwargs})


@register_unet
class SRUnet1024(Unet):
    """The 256 -> 1024 super-resolution Efficient U-Net: like SRUnet256 without self-attention."""

    def __init__(self, **kwargs: Any):
        super().__init__(**{**_SR1024, **kwargs})
