"""The channel RMS norm's fused scale/shift and its hand-written backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from imagen.unets.layers import ChanRMSNorm


@pytest.mark.parametrize("silu", [False, True])
def test_rms_norm_with_scale_and_shift_is_the_plain_expression(silu):
    torch.manual_seed(0)
    norm = ChanRMSNorm(6)
    x, gamma = torch.randn(2, 6, 4, 4, requires_grad=True), torch.randn(6, 1, 1)
    scale, shift = torch.randn(2, 6, 1, 1), torch.randn(2, 6, 1, 1)
    expected = F.normalize(x, dim=1) * 6**0.5 * gamma * scale + shift
    expected = F.silu(expected) if silu else expected
    for grad in (False, True):  # the plain path and the hand-written autograd function
        with torch.set_grad_enabled(grad):
            out = functional_call(norm, {"gamma": gamma}, (x,), {"scale": scale, "shift": shift, "silu": silu})
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("silu", [False, True], ids=["norm", "norm-silu"])
@pytest.mark.parametrize("spatial", [2, 3], ids=["image", "video"])
def test_rms_norm_gradients_are_exact(spatial, silu):
    """gradcheck in float64 of x, gamma, scale and shift (and through the fused SiLU)."""
    torch.manual_seed(0)
    norm = ChanRMSNorm(4, spatial_dims=spatial).double()
    x = torch.randn(2, 4, *((3,) * spatial), dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(4, *((1,) * spatial), dtype=torch.float64, requires_grad=True)
    scale, shift = (torch.randn(2, 4, *((1,) * spatial), dtype=torch.float64, requires_grad=True) for _ in range(2))

    def film(x, g, a, b):
        return functional_call(norm, {"gamma": g}, (x,), {"scale": a, "shift": b, "silu": silu})

    assert torch.autograd.gradcheck(film, (x, gamma, scale, shift))
    assert torch.autograd.gradcheck(lambda x, g: functional_call(norm, {"gamma": g}, (x,), {"silu": silu}), (x, gamma))


def test_chan_group_norm_is_group_norm_times_gamma_with_the_film():
    from imagen.unets.layers import ChanGroupNorm

    norm = ChanGroupNorm(16)
    with torch.no_grad():
        norm.gamma.copy_(torch.rand(16, 1, 1) + 0.5)
    x, scale, shift = torch.randn(2, 16, 5, 5), torch.rand(2, 16, 1, 1), torch.randn(2, 16, 1, 1)
    expected = torch.nn.functional.group_norm(x, 8) * norm.gamma
    torch.testing.assert_close(norm(x), expected)
    torch.testing.assert_close(norm(x, scale=scale, shift=shift), expected * scale + shift)
    assert ChanGroupNorm(12).groups == 1 and ChanGroupNorm(24, spatial_dims=3).gamma.shape == (24, 1, 1, 1)


@pytest.mark.parametrize("video", [False, True])
def test_block_norm_group_keeps_the_parameters_and_changes_the_output(video):
    from imagen.unets import Unet, Unet3D
    from imagen.unets.layers import ChanGroupNorm

    cls = Unet3D if video else Unet
    keywords = dict(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=False, layer_cross_attns=False,
                    cond_on_text=False)
    rms, group = cls(**keywords), cls(**keywords, block_norm="group")
    assert rms.state_dict().keys() == group.state_dict().keys()
    assert not any(isinstance(m, ChanRMSNorm) for m in group.modules())
    count = lambda unet, kind: sum(isinstance(m, kind) for m in unet.modules())  # noqa: E731
    assert count(group, ChanGroupNorm) == count(rms, ChanRMSNorm) > 0
    group.load_state_dict(rms.state_dict())
    with torch.no_grad():
        for unet in (rms, group):
            unet.final_conv.weight.normal_(generator=torch.Generator().manual_seed(0))
    x, t = torch.randn((1, 3, 2, 8, 8) if video else (1, 3, 8, 8)), torch.rand(1)
    assert not torch.allclose(rms(x, t), group(x, t))
    with pytest.raises(ValueError, match="block_norm must be one of"):
        cls(**keywords, block_norm="batch")


def test_unit_scaled_queries_and_keys_are_the_plain_expression_with_exact_gradients():
    """The cosine-sim attention's q / |q| * q_scale: its hand-written backward against gradcheck (float64)."""
    from imagen.unets.attention import _unit_scaled

    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    gain = torch.randn(4, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(_unit_scaled(x, gain), F.normalize(x, dim=-1) * gain)
    with torch.no_grad():
        torch.testing.assert_close(_unit_scaled(x, gain), F.normalize(x, dim=-1) * gain)
    assert torch.autograd.gradcheck(_unit_scaled, (x, gain))
    assert torch.autograd.gradcheck(lambda x: _unit_scaled(x, gain.detach()), (x,))
