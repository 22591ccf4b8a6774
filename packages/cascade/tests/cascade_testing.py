"""Tiny real components shared by the cascade tests (conftest.py puts this folder on sys.path)."""

from imagen.unets import Unet, Unet3D

WORDS = [
    "a", "whale", "breaching", "from", "afar", "young", "girl", "blowing", "out", "candles", "on", "her",
    "birthday", "cake", "fireworks", "with", "blue", "and", "green", "sparkles", "red", "circle", "square",
]
TINY = dict(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=(False, True), layer_cross_attns=(False, True),
            attn_heads=2, attn_dim_head=8, max_text_len=16)


def tiny_unet(**overrides):
    return Unet(**{**TINY, **overrides})


def tiny_unet3d(**overrides):
    return Unet3D(**{**TINY, **overrides})
