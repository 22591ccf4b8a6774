"""The shapes checker reads the generator's own images back exactly: colour, shape and position."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from imagen.cli import shapes


def _tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("size", [16, 32, 64])
def test_every_combination_is_read_back_at_every_jitter(size):
    rng = random.Random(size)
    prompts = shapes.combinations() * 4  # 360 images: every combination with four random jitters and radii
    images = torch.stack([_tensor(shapes.draw(*p, size, rng)) for p in prompts])
    assert shapes.score(images, prompts) == {"colour": 1.0, "shape": 1.0, "position": 1.0, "all": 1.0}


def test_wrong_prompts_score_zero_and_blank_images_read_nothing():
    rng = random.Random(0)
    image = _tensor(shapes.draw("red", "triangle", "top left", 32, rng))
    assert shapes.read_all(image) == ("red", "triangle", "top left")
    assert shapes.score(image[None], [("blue", "circle", "center")]) == {
        "colour": 0.0, "shape": 0.0, "position": 0.0, "all": 0.0}
    blank = torch.tensor(shapes.BACKGROUND).view(3, 1, 1).expand(3, 32, 32) / 255
    assert shapes.read_all(blank) == (None, None, None)
    assert shapes.read_back(image) == ("red", "top left")


@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_shape_of_closed_form_masks(shape):
    # binary masks drawn from the shapes' equations on a 64 px grid, no anti-aliasing
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    x, y = (xs - 31.5) / 12, (ys - 31.5) / 12
    masks = {
        "circle": x**2 + y**2 <= 1,
        "square": (x.abs() <= 0.85) & (y.abs() <= 0.85),
        "triangle": (y <= 0.8) & (y >= -1 + 1.8 * x.abs()),  # apex (0, -1), base y = 0.8 from x = -1 to 1
    }
    assert shapes.shape_of(masks[shape].float()) == shape
