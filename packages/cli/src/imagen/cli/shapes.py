"""The demo's built-in data: coloured shapes at positions, with captions, and a checker that reads
colour, shape and position back from a generated image.

Captions read "a red circle in the top left". Some colour x shape x position combinations are held
out of training; sampling them checks that a model composes what the text says rather than
recalling training images.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image, ImageDraw

COLOURS = {
    "red": (230, 30, 30),
    "green": (30, 200, 30),
    "blue": (40, 60, 235),
    "yellow": (235, 225, 30),
    "magenta": (225, 40, 225),
    "cyan": (30, 220, 225),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {  # centre of each region, as fractions of the image side (x, y)
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
    "center": (0.5, 0.5),
}
BACKGROUND = (20, 20, 20)


def caption(colour: str, shape: str, position: str) -> str:
    return f"a {colour} {shape} in the {position}"


def vocabulary() -> list[str]:
    """Every word a caption can use."""
    words = {"a", "in", "the", *SHAPES}
    words.update(COLOURS)
    for position in POSITIONS:
        words.update(position.split())
    return sorted(words)


def combinations() -> list[tuple[str, str, str]]:
    return list(itertools.product(COLOURS, SHAPES, POSITIONS))


def is_held_out(colour: str, shape: str, position: str) -> bool:
    """One combination in six is never shown in training; every colour-position pair, colour-shape
    pair and shape-position pair still appears in training with some other third attribute."""
    c, s, p = list(COLOURS).index(colour), SHAPES.index(shape), list(POSITIONS).index(position)
    return (c + 2 * s + p) % 6 == 0


def draw(colour: str, shape: str, position: str, size: int, rng: random.Random) -> Image.Image:
    """One image: the shape, in its colour, near its position's centre (small random jitter)."""
    scale = 4  # draw large, then downsample for smooth edges
    side = size * scale
    image = Image.new("RGB", (side, side), BACKGROUND)
    cx, cy = POSITIONS[position]
    jitter = 0.04
    cx, cy = (cx + rng.uniform(-jitter, jitter)) * side, (cy + rng.uniform(-jitter, jitter)) * side
    r = side * rng.uniform(0.15, 0.19)
    pen = ImageDraw.Draw(image)
    fill = COLOURS[colour]
    if shape == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        h = r * 0.85
        pen.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=fill)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def training_examples(count: int, size: int, seed: int = 0) -> Iterator[tuple[Image.Image, str]]:
    """``count`` (image, caption) pairs drawn from the combinations that are not held out."""
    rng = random.Random(seed)
    seen = [c for c in combinations() if not is_held_out(*c)]
    for _ in range(count):
        colour, shape, position = rng.choice(seen)
        yield draw(colour, shape, position, size, rng), caption(colour, shape, position)


def write_dataset(folder: Path, count: int, size: int, seed: int = 0) -> Path:
    """Writes the examples as PNG files with a sidecar ``.txt`` caption each."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (image, text) in enumerate(training_examples(count, size, seed)):
        image.save(folder / f"{i:05d}.png")
        (folder / f"{i:05d}.txt").write_text(text)
    return folder


def held_out_prompts() -> list[tuple[str, str, str]]:
    return [c for c in combinations() if is_held_out(*c)]


def _difference(image: torch.Tensor) -> torch.Tensor:
    """How far each pixel of an image (3, H, W) in [0, 1] is from the background: (H, W), max over channels."""
    background = torch.tensor(BACKGROUND, dtype=image.dtype).view(3, 1, 1) / 255
    return (image - background).abs().amax(dim=0)


def shape_of(weights: torch.Tensor) -> str:
    """Which of SHAPES a foreground is, from two closed-form moment ratios of its weights (H, W) >= 0
    (0 = background; the checker weighs each pixel by its difference from the background).

    With centred coordinates (x, y), weighted by the foreground: the skewness of y is 0 for the
    circle and the square and about -0.57 for the triangle (apex up: a long tail above); the ratio
    E[x^2 y^2] / (E[x^2] E[y^2]) is 1 for an axis-aligned square (x and y independent) and 2/3 for
    a disc. The thresholds sit between those values with room for pixelation: on the generator's
    images at 16 px the ranges are skewness <= -0.39 (triangle) vs >= -0.10, and the ratio <= 0.70
    (circle) vs >= 0.93 (square).
    """
    h, w = weights.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=weights.dtype), torch.arange(w, dtype=weights.dtype),
                            indexing="ij")
    mass = weights.sum()
    dx = xs - (weights * xs).sum() / mass
    dy = ys - (weights * ys).sum() / mass
    var_x, var_y = (weights * dx**2).sum() / mass, (weights * dy**2).sum() / mass
    if var_x <= 0 or var_y <= 0:
        return "square"  # a single row or column of pixels: no shape to speak of
    skew_y = (weights * dy**3).sum() / mass / var_y**1.5
    if skew_y < -0.25:
        return "triangle"
    independence = (weights * dx**2 * dy**2).sum() / mass / (var_x * var_y)
    return "square" if independence > 0.82 else "circle"


def read_all(image: torch.Tensor) -> tuple[str | None, str | None, str | None]:
    """(colour, shape, position) seen in an image (3, H, W) in [0, 1]; None each where no shape is found."""
    difference = _difference(image)
    foreground = difference > 0.25  # (H, W)
    if foreground.sum() < max(2, image.shape[-1] * image.shape[-2] // 200):
        return None, None, None
    mean_colour = image[:, foreground].mean(dim=1)
    palette = torch.tensor(list(COLOURS.values()), dtype=image.dtype) / 255
    colour = list(COLOURS)[int(torch.cdist(mean_colour[None], palette).argmin())]
    ys, xs = foreground.nonzero(as_tuple=True)
    centre = torch.stack([xs.float().mean() + 0.5, ys.float().mean() + 0.5]) / torch.tensor(image.shape[-1:-3:-1])
    regions = torch.tensor(list(POSITIONS.values()))
    position = list(POSITIONS)[int(torch.cdist(centre[None], regions).argmin())]
    weights = torch.where(difference > 0.1, difference / difference.max(), torch.zeros_like(difference))
    return colour, shape_of(weights), position


def read_back(image: torch.Tensor) -> tuple[str | None, str | None]:
    """(colour, position) seen in an image (3, H, W) in [0, 1]; None where no shape is found."""
    colour, _, position = read_all(image)
    return colour, position


def score(images: torch.Tensor, prompts: list[tuple[str, str, str]]) -> dict[str, float]:
    """Fractions of images (B, 3, H, W) in [0, 1] whose colour, shape, position, and all three at
    once, match their prompt's (colour, shape, position)."""
    hits = {"colour": 0, "shape": 0, "position": 0, "all": 0}
    for image, prompt in zip(images, prompts, strict=True):
        seen = read_all(image)
        right = [a == b for a, b in zip(seen, prompt)]
        for name, ok in zip(("colour", "shape", "position"), right):
            hits[name] += ok
        hits["all"] += all(right)
    return {name: count / len(prompts) for name, count in hits.items()}
