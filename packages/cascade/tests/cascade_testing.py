"""Tiny real components shared by the cascade tests (conftest.py puts this folder on sys.path)."""

import torch

from imagen.unets import Unet, Unet3D

WORDS = [
    "a", "whale", "breaching", "from", "afar", "young", "girl", "blowing", "out", "candles", "on", "her",
    "birthday", "cake", "fireworks", "with", "blue", "and", "green", "sparkles", "red", "circle", "square",
]
TINY = dict(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=(False, True), layer_cross_attns=(False, True),
            attn_heads=2, attn_dim_head=8, max_text_len=16)


def randomize_zero_init_(unet: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Seeded noise in every all-zero parameter (the zero-initialised output layer and biases), so
    that the unet's output depends on its inputs: a freshly built U-Net outputs exactly zero, on
    which guidance, loading and seeding tests would pass whatever the code does."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in unet.parameters():
            if parameter.is_floating_point() and not parameter.any():
                parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))
    return unet


def randomize_cascade_(cascade, seed: int = 0):
    """``randomize_zero_init_`` on every unet of a built cascade (the cascade rebuilds unets whose
    settings it changes, so randomise after building it)."""
    for number, unet in enumerate(cascade.unets):
        randomize_zero_init_(unet, seed + number)
    return cascade


def tiny_unet(seed: int = 0, **overrides):
    """A tiny ``Unet`` whose output layer is randomised (see ``randomize_zero_init_``)."""
    return randomize_zero_init_(Unet(**{**TINY, **overrides}), seed)


def tiny_unet3d(seed: int = 0, **overrides):
    return randomize_zero_init_(Unet3D(**{**TINY, **overrides}), seed)
