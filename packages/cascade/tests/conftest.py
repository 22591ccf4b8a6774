"""Tiny real components for the cascade tests: small U-Nets and a locally built T5."""

import pytest
import torch

from imagen.text.testing import build_tiny_t5
from imagen.unets import Unet, Unet3D

WORDS = [
    "a", "whale", "breaching", "from", "afar", "young", "girl", "blowing", "out", "candles", "on", "her",
    "birthday", "cake", "fireworks", "with", "blue", "and", "green", "sparkles", "red", "circle", "square",
]


def tiny_unet(**overrides):
    settings = dict(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=(False, True),
                    layer_cross_attns=(False, True), attn_heads=2, attn_dim_head=8, max_text_len=16)
    return Unet(**{**settings, **overrides})


def tiny_unet3d(**overrides):
    settings = dict(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=(False, True),
                    layer_cross_attns=(False, True), attn_heads=2, attn_dim_head=8, max_text_len=16)
    return Unet3D(**{**settings, **overrides})


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    """A folder holding a tiny T5 encoder and its tokenizer, loaded like a real model."""
    return str(build_tiny_t5(tmp_path_factory.mktemp("t5"), words=WORDS))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
