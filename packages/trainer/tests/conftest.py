"""Shared test helpers: a toy cascade with the interface of imagen.cascade's Imagen, for fast tests of the
trainer's mechanics (the real cascade is exercised in test_trainer_cascade.py)."""

import json

import pytest
import torch
from torch import nn


class ToyUnet(nn.Module):
    is_null = False

    def __init__(self, channels=3):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.norm = nn.GroupNorm(1, channels)

    def forward(self, x):
        return self.conv(self.norm(x))


class ToyNullUnet(nn.Module):
    is_null = True

    def forward(self, x):
        return x


class ToyConfig:
    def __init__(self, **fields):
        self.fields = fields

    def to_json(self):
        return json.dumps(self.fields, sort_keys=True)


class ToyCascade(nn.Module):
    """loss = mean over the batch of |unet(x + eps) - x|^2, with eps ~ N(0, 1) from the generator when
    ``noisy`` (else eps = 0, a deterministic per-sample mean: chunking must not change gradients)."""

    only_train_unet_number = None

    def __init__(self, num_unets=2, null_first=False, noisy=True, channels=3):
        super().__init__()
        self.unets = nn.ModuleList(
            ToyNullUnet() if (null_first and i == 0) else ToyUnet(channels) for i in range(num_unets)
        )
        self.noisy, self.channels = noisy, channels
        self.config = ToyConfig(kind="toy", num_unets=num_unets, null_first=null_first, noisy=noisy)
        self.calls = []
        self.wrapped_calls = []  # the ``unet=`` module each training forward called (None: the stage's own)

    @property
    def num_unets(self):
        return len(self.unets)

    def get_unet(self, unet_number):
        return self.unets[unet_number - 1]

    def forward(self, images, *, unet_number=1, generator=None, texts=None, text_embeds=None, unet=None, **kwargs):
        self.calls.append(dict(batch=images.shape[0], texts=texts, text_embeds=text_embeds, **kwargs))
        self.wrapped_calls.append(unet)
        unet = unet if unet is not None else self.get_unet(unet_number)
        noise = torch.randn(images.shape, generator=generator) if self.noisy else torch.zeros_like(images)
        x = images * 2 - 1
        if text_embeds is not None:
            x = x + text_embeds.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return (unet(x + noise) - x).pow(2).mean()

    @torch.no_grad()
    def sample(self, batch_size=1, use_tqdm=True, return_pil_images=False, stop_at_unet_number=None, **kwargs):
        unet = self.unets[-1]
        x = torch.zeros(batch_size, self.channels, 4, 4)
        return unet(x).sigmoid()


@pytest.fixture
def toy_cascade():
    """The ToyCascade class (tests build their own instances)."""
    return ToyCascade


def tiny_unet(**overrides):
    """A real imagen.unets.Unet at CPU test size."""
    from imagen.unets import Unet

    settings = dict(
        dim=8,
        dim_mults=(1, 2),
        num_resnet_blocks=1,
        layer_attns=False,
        layer_cross_attns=False,
        attn_heads=2,
        attn_dim_head=8,
    )
    return Unet(**{**settings, **overrides})


@pytest.fixture
def unet_factory():
    """Builds tiny real U-Nets."""
    return tiny_unet


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    """A folder holding a tiny T5 encoder and tokenizer, loaded like a real model."""
    from imagen.text.testing import build_tiny_t5

    words = [
        "a",
        "puppy",
        "looking",
        "anxiously",
        "at",
        "giant",
        "donut",
        "on",
        "the",
        "table",
        "milky",
        "way",
        "galaxy",
        "in",
        "style",
        "of",
        "monet",
    ]
    return str(build_tiny_t5(tmp_path_factory.mktemp("t5"), words=words))


def write_images(folder, count, size=16, seed=0):
    """Writes ``count`` random PNG images into ``folder``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i:03d}.png")
    return folder


@pytest.fixture
def image_folder():
    """Writes random PNG images: ``image_folder(path, count, size=16)``."""
    return write_images
