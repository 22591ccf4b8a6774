"""Random crops: one window per sample (kornia's draw), the same window for every tensor of a sample."""

import torch

from imagen.cascade.images import crop_at, crop_windows


def test_crop_at_equals_slicing_each_sample_at_its_window():
    x = torch.randn(3, 2, 4, 9, 7)  # videos: the window is shared by every frame of a sample
    windows = torch.tensor([[0, 0], [5, 2], [3, 3]])
    expected = torch.stack([x[i, ..., t : t + 4, l : l + 4] for i, (t, l) in enumerate(windows.tolist())])
    assert torch.equal(crop_at(x, windows, 4), expected)
    assert crop_at(None, windows, 4) is None


def test_windows_are_kornias_floor_of_uniforms_and_stay_inside():
    generator = torch.Generator().manual_seed(0)
    windows = crop_windows(500, 10, 13, 4, generator)
    again = torch.Generator().manual_seed(0)
    u_x, u_y = torch.rand(500, generator=again), torch.rand(500, generator=again)
    assert torch.equal(windows[:, 1], (u_x * 10).floor().long())
    assert torch.equal(windows[:, 0], (u_y * 7).floor().long())
    assert windows[:, 0].max() == 6 and windows[:, 1].max() == 9 and windows.min() == 0  # every offset reachable


def test_per_sample_generators_give_each_sample_its_own_window():
    streams = [torch.Generator().manual_seed(s) for s in (1, 2)]
    alone = crop_windows(1, 16, 16, 8, [torch.Generator().manual_seed(2)])
    assert torch.equal(crop_windows(2, 16, 16, 8, streams)[1], alone[0])
