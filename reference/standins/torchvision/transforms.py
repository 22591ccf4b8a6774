"""The few ``torchvision.transforms`` that imagen-pytorch 2.1.0 names (data loading, PIL output)."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image

__all__ = ["CenterCrop", "Compose", "Lambda", "RandomHorizontalFlip", "Resize", "ToPILImage", "ToTensor"]


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, value):
        for transform in self.transforms:
            value = transform(value)
        return value


class Lambda:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, value):
        return self.fn(value)


class Resize:
    """Resize a PIL image so that its shorter side is ``size`` (bilinear)."""

    def __init__(self, size):
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        scale = self.size / min(w, h)
        return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)


class CenterCrop:
    def __init__(self, size):
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        return image.crop((left, top, left + self.size, top + self.size))


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.transpose(Image.FLIP_LEFT_RIGHT) if random.random() < self.p else image


class ToTensor:
    """PIL image -> float tensor (c, h, w) in [0, 1]."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        array = np.asarray(image, dtype=np.float32) / 255.0
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array.copy()).permute(2, 0, 1)


class ToPILImage:
    """Float tensor (c, h, w) in [0, 1] -> PIL RGB image."""

    def __call__(self, tensor: torch.Tensor) -> Image.Image:
        array = (tensor.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)
