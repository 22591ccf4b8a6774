"""``Unet(coordinate_channels=True)``: the pixel coordinates as two more input channels."""

import torch

from imagen.unets import Unet
from imagen.unets.core import pixel_coordinates


def test_pixel_coordinates_are_the_linspace_grids():
    x = torch.zeros(2, 3, 4, 6, dtype=torch.float64)
    grid = pixel_coordinates(x)
    assert grid.shape == (2, 2, 4, 6) and grid.dtype == torch.float64
    for b in range(2):
        for i, y in enumerate(torch.linspace(-1, 1, 4, dtype=torch.float64)):
            for j, x_coord in enumerate(torch.linspace(-1, 1, 6, dtype=torch.float64)):
                assert grid[b, 0, i, j] == x_coord and grid[b, 1, i, j] == y


def test_the_coordinates_reach_the_first_convolution_after_the_image(h):
    unet = h.make(Unet, **h.tiny(coordinate_channels=True, init_cross_embed=False))
    seen = []
    unet.init_conv.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = h.randn(2, 3, 8, 8, seed=1)
    with torch.no_grad():
        unet(x, torch.rand(2), text_embeds=h.randn(2, 5, 12))
    (inputs,) = seen
    assert torch.equal(inputs[:, :3], x)
    assert torch.equal(inputs[:, 3:], pixel_coordinates(x))


def test_without_their_weights_the_unet_is_the_plain_unet(h):
    """Zero weights on the two coordinate channels give exactly the U-Net without them: the option
    adds those inputs and nothing else."""
    plain = h.make(Unet, **h.tiny(init_cross_embed=False))
    coords = Unet(**h.tiny(coordinate_channels=True, init_cross_embed=False)).eval()
    state = plain.state_dict()
    weight = state["init_conv.weight"]
    state["init_conv.weight"] = torch.cat((weight, torch.zeros_like(weight[:, :2])), dim=1)
    coords.load_state_dict(state)
    x, t, text = h.randn(2, 3, 8, 8, seed=1), torch.rand(2), h.randn(2, 5, 12)
    with torch.no_grad():
        expected = plain(x, t, text_embeds=text)
        assert torch.equal(coords(x, t, text_embeds=text), expected)
        coords.init_conv.weight[:, 3:] = 0.1  # and the coordinates matter once weighted
        assert not torch.allclose(coords(x, t, text_embeds=text), expected)


def test_a_video_unet_sees_the_same_coordinates_in_every_frame(h):
    from imagen.unets import Unet3D

    unet = h.make(Unet3D, **h.tiny(coordinate_channels=True, init_cross_embed=False))
    seen = []
    unet.init_conv.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = h.randn(2, 3, 3, 8, 8, seed=1)
    with torch.no_grad():
        unet(x, torch.rand(2), text_embeds=h.randn(2, 5, 12))
    (inputs,) = seen
    assert torch.equal(inputs[:, :3], x)
    for frame in range(3):
        assert torch.equal(inputs[:, 3:, frame], pixel_coordinates(x[:, :, 0]))
