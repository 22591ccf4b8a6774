"""The one image-grid writer: columns, padding, captions under the cells, atomic PNG writes."""

import numpy as np
import pytest
import torch
from PIL import Image

from imagen.trainer.sampling import MIN_CAPTIONED_CELL_WIDTH, grid_picture, image_grid, save_image_grid


def constant_images(count, channels=3, h=4, w=6):
    """Image i is filled with (i + 1) / 10: (B, C, H, W)."""
    return (torch.arange(count, dtype=torch.float32) + 1).view(count, 1, 1, 1).expand(count, channels, h, w) / 10


def test_columns_and_padding_place_each_image_in_its_framed_cell():
    images = constant_images(5)
    grid = image_grid(images, columns=2, padding=1)
    cell_h, cell_w = 4 + 2, 6 + 2
    assert grid.shape == (3, 3 * cell_h, 2 * cell_w)  # 5 images in 2 columns: 3 rows
    for i in range(6):
        r, q = divmod(i, 2)
        cell = grid[:, r * cell_h : (r + 1) * cell_h, q * cell_w : (q + 1) * cell_w]
        inner = cell[:, 1:-1, 1:-1]
        assert torch.all(inner == ((i + 1) / 10 if i < 5 else 0.0))
        frame = cell.clone()
        frame[:, 1:-1, 1:-1] = 0
        assert torch.all(frame == 0)  # the padding is black


def test_saved_png_is_the_grid_in_bytes_and_leaves_no_temporary_file(tmp_path):
    images = torch.rand(3, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    path = save_image_grid(images, tmp_path / "deep" / "grid.png", columns=3, padding=2)
    expected = image_grid(images, 3, 2).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(path)), expected)
    assert [p.name for p in path.parent.iterdir()] == ["grid.png"]


def test_captions_go_under_their_cells_and_leave_the_images_untouched():
    images = constant_images(3, h=8, w=8)
    captions = ["a red square", "", "a blue circle on the left of a very long caption that wraps"]
    picture = np.asarray(grid_picture(images, columns=3, captions=captions))
    factor = MIN_CAPTIONED_CELL_WIDTH // 8  # small images are enlarged (nearest) so text fits under them
    cell = 8 * factor
    assert picture.shape[1] == 3 * cell and picture.shape[0] > cell
    for i in range(3):
        assert np.all(picture[:cell, i * cell : (i + 1) * cell] == round((i + 1) / 10 * 255))
    strips = [picture[cell:, i * cell : (i + 1) * cell] for i in range(3)]
    assert strips[0].max() > 0 and strips[2].max() > 0  # text was drawn
    assert strips[1].max() == 0  # an empty caption leaves its strip black
    # the long caption wraps to more lines: it has text lower down than the short one
    lowest = [np.nonzero(s.max(axis=(1, 2)))[0].max() for s in (strips[0], strips[2])]
    assert lowest[1] > lowest[0]


def test_captioned_grid_rows_each_get_a_strip():
    images = constant_images(4, h=130, w=130)  # wide enough: not enlarged
    picture = np.asarray(grid_picture(images, columns=2, captions=["x"] * 4))
    assert picture.shape[1] == 260
    strip = (picture.shape[0] - 2 * 130) // 2
    assert strip > 0 and picture.shape[0] == 2 * (130 + strip)
    second_row = picture[130 + strip : 260 + strip, :130]
    assert np.all(second_row == round(0.3 * 255))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"columns": 0}, "columns"),
        ({"padding": -1}, "padding"),
        ({"captions": ["only one"]}, "captions"),
        ({"captions": [1, 2]}, "captions"),
    ],
)
def test_bad_grid_arguments_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        grid_picture(constant_images(2), **kwargs)


def test_grids_refuse_videos():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        image_grid(torch.zeros(1, 3, 2, 4, 4))
