"""Pixel-space helpers: value ranges, resizing of images and videos, crops, PIL conversion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from imagen.diffusion import GeneratorArg, first_generator, randint


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1], the range the diffusion stages work in."""
    return images * 2 - 1


def unnormalize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return (images + 1) * 0.5


def resize(x: torch.Tensor, size: int, *, frames: int | None = None, mode: str = "nearest") -> torch.Tensor:
    """Resizes images (B, C, H, W) to (B, C, size, size), or videos (B, C, F, H, W) to
    (B, C, frames, size, size) (``frames`` None keeps F). Identity when nothing changes."""
    if x.ndim == 4:
        if x.shape[-2:] == (size, size):
            return x
        return F.interpolate(x, size=(size, size), mode=mode, **_align(mode))
    frames = x.shape[2] if frames is None else frames
    if x.shape[2:] == (frames, size, size):
        return x
    if mode in ("bilinear", "bicubic"):  # 5D tensors interpolate trilinearly
        mode = "trilinear"
    return F.interpolate(x, size=(frames, size, size), mode=mode, **_align(mode))


def _align(mode: str) -> dict:
    return {"align_corners": False} if mode in ("bilinear", "bicubic", "trilinear") else {}


def random_crop(tensors: list[torch.Tensor | None], size: int, generator: GeneratorArg = None):
    """Crops every tensor (same spatial size, last two dims) at one random size x size window
    (drawn from the first generator of a per-sample list)."""
    height, width = next(t for t in tensors if t is not None).shape[-2:]
    if size > min(height, width):
        raise ValueError(f"random crop size {size} exceeds the stage's image size {height}x{width}")
    generator = first_generator(generator)
    top = int(randint(0, height - size + 1, (), generator))
    left = int(randint(0, width - size + 1, (), generator))
    return [None if t is None else t[..., top : top + size, left : left + size] for t in tensors]


def to_pil_images(images: torch.Tensor) -> list[Image.Image]:
    """Images (B, C, H, W) in [0, 1] -> a list of PIL images (RGB, or L for one channel)."""
    if images.ndim != 4:
        raise ValueError(f"PIL conversion takes images (B, C, H, W); got a tensor of shape {tuple(images.shape)}")
    array = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in array]
