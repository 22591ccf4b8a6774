"""The channel RMS norm's fused scale/shift and its hand-written backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from imagen.unets.layers import ChanRMSNorm


def test_rms_norm_with_scale_and_shift_is_the_plain_expression():
    torch.manual_seed(0)
    norm = ChanRMSNorm(6)
    x, gamma = torch.randn(2, 6, 4, 4), torch.randn(6, 1, 1)
    scale, shift = torch.randn(2, 6, 1, 1), torch.randn(2, 6, 1, 1)
    expected = F.normalize(x, dim=1) * 6**0.5 * gamma * scale + shift
    torch.testing.assert_close(functional_call(norm, {"gamma": gamma}, (x,), {"scale": scale, "shift": shift}),
                               expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("spatial", [2, 3], ids=["image", "video"])
def test_rms_norm_gradients_are_exact(spatial):
    """gradcheck in float64 of x, gamma, scale and shift."""
    torch.manual_seed(0)
    norm = ChanRMSNorm(4, spatial_dims=spatial).double()
    x = torch.randn(2, 4, *((3,) * spatial), dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(4, *((1,) * spatial), dtype=torch.float64, requires_grad=True)
    scale, shift = (torch.randn(2, 4, *((1,) * spatial), dtype=torch.float64, requires_grad=True) for _ in range(2))

    def film(x, g, a, b):
        return functional_call(norm, {"gamma": g}, (x,), {"scale": a, "shift": b})

    assert torch.autograd.gradcheck(film, (x, gamma, scale, shift))
    assert torch.autograd.gradcheck(lambda x, g: functional_call(norm, {"gamma": g}, (x,)), (x, gamma))
