"""Sampling helpers of the trainer: EMA weights swapped in for a block, and the one image-grid
writer of the monorepo (columns, padding, captions under the cells, atomic PNG writes)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch

from imagen.cascade import atomic_write

__all__ = ["MIN_CAPTIONED_CELL_WIDTH", "ema_weights", "grid_picture", "image_grid", "save_image_grid"]

MIN_CAPTIONED_CELL_WIDTH = 128
"""Captioned grids enlarge smaller images (nearest neighbour, integer factor) to at least this width."""


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


def image_grid(images: torch.Tensor, columns: int | None = None, padding: int = 0) -> torch.Tensor:
    """Tiles images (B, C, H, W) row by row into a grid (C, rows * (H + 2p), cols * (W + 2p)) of
    ``columns`` columns (None: a near-square grid), each image framed by ``padding`` = p black
    pixels; cells after the last image stay black."""
    if images.ndim != 4:
        raise ValueError(f"image_grid takes images (B, C, H, W), got a tensor of shape {tuple(images.shape)}")
    b, c, h, w = images.shape
    cols = _columns(b, columns)
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0 (pixels around each image), got {padding!r}")
    rows = math.ceil(b / cols)
    cell_h, cell_w = h + 2 * padding, w + 2 * padding
    grid = torch.zeros(c, rows * cell_h, cols * cell_w, dtype=images.dtype)
    for i in range(b):
        r, q = divmod(i, cols)
        top, left = r * cell_h + padding, q * cell_w + padding
        grid[:, top : top + h, left : left + w] = images[i]
    return grid


def _columns(count: int, columns: int | None) -> int:
    if columns is None:
        return max(1, math.ceil(math.sqrt(count)))
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be None or an int >= 1, got {columns!r}")
    return columns


def _wrap(draw, text: str, font, width: int, max_lines: int) -> list[str]:
    """``text`` broken into at most ``max_lines`` lines no wider than ``width`` pixels (words split
    where one alone is too wide; a cut caption ends in "...")."""
    lines, line = [], ""
    for word in text.split():
        while word:
            candidate = f"{line} {word}" if line else word
            if draw.textlength(candidate, font=font) <= width:
                line, word = candidate, ""
            elif line:
                lines.append(line)
                line = ""
            else:  # one word wider than the cell: cut it where it fits
                cut = max(1, max(n for n in range(1, len(word) + 1)
                                 if n == 1 or draw.textlength(word[:n], font=font) <= width))
                lines.append(word[:cut])
                word = word[cut:]
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], lines[max_lines - 1] + "..."]
    return lines


def grid_picture(
    images: torch.Tensor,
    *,
    columns: int | None = None,
    captions: list[str] | None = None,
    padding: int = 0,
    min_cell_width: int = MIN_CAPTIONED_CELL_WIDTH,
    caption_lines: int = 3,
):
    """Images (B, C, H, W) in [0, 1] (C = 1 or 3) as one RGB (or greyscale) PIL grid.

    With ``captions`` (one string per image) each row of cells gets a black strip below it where
    each image's caption is written in white (PIL's default font), wrapped to the cell's width in at
    most ``caption_lines`` lines; images narrower than ``min_cell_width`` are first enlarged by an
    integer factor (nearest neighbour) so the text fits. Without captions the picture is exactly
    :func:`image_grid` scaled to 0..255.
    """
    from PIL import Image, ImageDraw, ImageFont

    images = images.detach().float().clamp(0, 1).cpu()
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (B, 1 or 3, H, W) in [0, 1], got a tensor of shape {tuple(images.shape)}")
    if captions is not None:
        captions = [captions] if isinstance(captions, str) else list(captions)
        if len(captions) != images.shape[0] or not all(isinstance(text, str) for text in captions):
            raise ValueError(f"captions must be {images.shape[0]} strings (one per image), got {captions!r}")
        factor = max(1, math.ceil(min_cell_width / images.shape[-1]))
        images = images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    cols = _columns(images.shape[0], columns)
    grid = image_grid(images, cols, padding)
    array = grid.mul(255).round().to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy()  # (H, W[, C])
    picture = Image.fromarray(array)
    if captions is None:
        return picture
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(picture)
    cell_w = images.shape[-1] + 2 * padding
    cell_h = images.shape[-2] + 2 * padding
    wrapped = [_wrap(draw, text, font, cell_w - 4, caption_lines) for text in captions]
    line_h = int(font.getbbox("Ag|")[3]) + 2
    strip_h = line_h * max(1, max((len(lines) for lines in wrapped), default=1)) + 4
    rows = math.ceil(len(captions) / cols)
    canvas = Image.new(picture.mode, (picture.width, rows * (cell_h + strip_h)))
    pen = ImageDraw.Draw(canvas)
    white = 255 if picture.mode == "L" else (255, 255, 255)
    for r in range(rows):
        canvas.paste(picture.crop((0, r * cell_h, picture.width, (r + 1) * cell_h)), (0, r * (cell_h + strip_h)))
    for i, lines in enumerate(wrapped):
        r, q = divmod(i, cols)
        for k, line in enumerate(lines):
            pen.text((q * cell_w + 2, r * (cell_h + strip_h) + cell_h + 2 + k * line_h), line, fill=white, font=font)
    return canvas


def save_image_grid(
    images: torch.Tensor, path, *, columns: int | None = None, captions: list[str] | None = None, padding: int = 0,
) -> Path:
    """Writes images (B, C, H, W) in [0, 1] as one PNG grid at ``path`` (see :func:`grid_picture`),
    atomically (fsync + rename); missing folders are created."""
    picture = grid_picture(images, columns=columns, captions=captions, padding=padding)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: picture.save(p, format="PNG"))
    return path
