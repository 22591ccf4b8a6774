"""The trainer's small modules alone: batch chunking and sample grids."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from imagen.trainer.chunks import split_batch
from imagen.trainer.sampling import ema_weights, image_grid


@given(st.integers(1, 12), st.one_of(st.none(), st.integers(1, 15)))
def test_chunks_partition_the_batch(batch, max_batch_size):
    images = torch.arange(batch).view(batch, 1, 1, 1)
    texts = [f"t{i}" for i in range(batch)]
    chunks = list(split_batch(images, {"texts": texts, "cond_scale": 3.0}, max_batch_size))
    assert torch.equal(torch.cat([c[1] for c in chunks]), images)
    assert [t for c in chunks for t in c[2]["texts"]] == texts
    assert all(c[2]["cond_scale"] == 3.0 for c in chunks)
    assert sum(c[0] for c in chunks) == pytest.approx(1.0)
    assert all(c[0] == c[1].shape[0] / batch for c in chunks)
    assert all(c[1].shape[0] <= (max_batch_size or batch) for c in chunks)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_bad_max_batch_size(bad):
    with pytest.raises(ValueError, match="max_batch_size"):
        list(split_batch(torch.zeros(4, 1), {}, bad))


def test_image_grid_tiles_row_by_row():
    images = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 2, 2, 3) / 10  # (B, C, H, W)
    grid = image_grid(images)
    assert grid.shape == (2, 2 * 2, 3 * 3)  # 5 images: 3 columns, 2 rows
    for i in range(6):
        r, q = divmod(i, 3)
        cell = grid[:, r * 2 : (r + 1) * 2, q * 3 : (q + 1) * 3]
        assert torch.all(cell == (i / 10 if i < 5 else 0.0))


def test_ema_weights_are_restored_after_an_error():
    from ema_pytorch import EMA

    unets = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    ema = EMA(unets[0], include_online_model=False)
    with torch.no_grad():
        ema.ema_model.weight.fill_(7.0)
    online = unets[0].weight.clone()
    with pytest.raises(RuntimeError, match="boom"), ema_weights(unets, {0: ema}):
        assert torch.all(unets[0].weight == 7.0)
        raise RuntimeError("boom")
    assert torch.equal(unets[0].weight, online)
