"""Sampling helpers of the trainer: EMA weights swapped in for a block, and PNG sample grids."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch

__all__ = ["ema_weights", "image_grid", "save_image_grid"]


@contextlib.contextmanager
def ema_weights(unets, emas: dict):
    """Within the block, ``unets[i]`` holds the weights of ``emas[i]`` (an ema-pytorch ``EMA``) for
    each index in ``emas``; the online weights are restored on exit, even after an error."""
    saved = {}
    try:
        with torch.no_grad():
            for index, ema in emas.items():
                saved[index] = {k: v.clone() for k, v in unets[index].state_dict().items()}
                unets[index].load_state_dict(ema.ema_model.state_dict())
        yield
    finally:
        with torch.no_grad():
            for index, state in saved.items():
                unets[index].load_state_dict(state)


def image_grid(images: torch.Tensor) -> torch.Tensor:
    """Tiles images (B, C, H, W) in [0, 1] row by row into a near-square grid (C, rows * H, cols * W);
    cells after the last image stay black."""
    if images.ndim != 4:
        raise ValueError(f"image_grid takes images (B, C, H, W), got a tensor of shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    grid = torch.zeros(c, rows * h, cols * w, dtype=images.dtype)
    for i in range(b):
        r, q = divmod(i, cols)
        grid[:, r * h : (r + 1) * h, q * w : (q + 1) * w] = images[i]
    return grid


def save_image_grid(images: torch.Tensor, path) -> Path:
    """Writes images (B, C, H, W) in [0, 1] as one PNG grid at ``path`` (folders are created)."""
    from PIL import Image

    grid = image_grid(images.detach().float().clamp(0, 1).cpu())
    array = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy()  # (H, W[, C])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path
