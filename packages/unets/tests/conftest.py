"""Shared helpers for the imagen.unets tests: tiny configurations and deterministic inputs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

TINY = dict(
    dim=8, dim_mults=(1, 2), cond_dim=16, text_embed_dim=12, max_text_len=6, attn_heads=2, attn_dim_head=8,
    num_resnet_blocks=1, attn_pool_num_latents=3, layer_attns=(False, True),
    layer_cross_attns=(False, True),
)


def tiny(**changes):
    """The tiny keyword set with ``changes`` applied."""
    return {**TINY, **changes}


def make(cls, seed: int = 0, **kwargs) -> nn.Module:
    """Build ``cls(**kwargs)`` with seeded weights, its zero-initialised final conv randomised, in eval mode."""
    torch.manual_seed(seed)  # tests may seed the global RNG; library code never does
    unet = cls(**kwargs)
    with torch.no_grad():
        unet.final_conv.weight.normal_(0, 0.1)
        unet.final_conv.bias.normal_(0, 0.1)
    return unet.eval()


def randn(*shape, seed: int = 0) -> torch.Tensor:
    """Standard normal tensor from its own generator."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="session")
def h():
    """The helpers above as one namespace (pytest's importlib mode cannot import conftest by name)."""
    return SimpleNamespace(TINY=TINY, tiny=tiny, make=make, randn=randn)
