"""Pixel-space helpers: value ranges, resizing of images and videos, crops, PIL conversion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from imagen.diffusion import GeneratorArg, rand


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


def crop_windows(batch: int, height: int, width: int, size: int, generator: GeneratorArg = None,
                 device=None) -> torch.Tensor:
    """One random ``size`` x ``size`` window per sample, drawn as kornia's ``RandomCrop`` (the
    reference's) draws them: u_x then u_y uniform (B,) each, left = floor(u_x (W - size + 1)),
    top = floor(u_y (H - size + 1)). Returns (B, 2) int64 (top, left)."""
    if size > min(height, width):
        raise ValueError(f"random crop size {size} exceeds the stage's image size {height}x{width}")
    u_x = rand((batch,), generator, device=device)
    u_y = rand((batch,), generator, device=device)
    lefts = (u_x * (width - size + 1)).floor().long()
    tops = (u_y * (height - size + 1)).floor().long()
    return torch.stack([tops, lefts], dim=1)


def crop_at(x: torch.Tensor | None, windows: torch.Tensor, size: int) -> torch.Tensor | None:
    """Sample i of ``x`` (B, ..., H, W) cropped to its window ``windows[i]`` = (top, left), size x
    size, with gathers (no host read of the offsets); None stays None."""
    if x is None:
        return None
    span = torch.arange(size, device=x.device)
    lead = (x.shape[0], *[1] * (x.ndim - 3))
    rows = (windows[:, 0, None] + span).view(*lead, size, 1).expand(*x.shape[:-2], size, x.shape[-1])
    x = x.gather(-2, rows)
    cols = (windows[:, 1, None] + span).view(*lead, 1, size).expand(*x.shape[:-1], size)
    return x.gather(-1, cols)


def to_pil_images(images: torch.Tensor) -> list[Image.Image]:
    """Images (B, C, H, W) in [0, 1] -> a list of PIL images (RGB, or L for one channel)."""
    if images.ndim != 4:
        raise ValueError(f"PIL conversion takes images (B, C, H, W); got a tensor of shape {tuple(images.shape)}")
    array = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in array]
