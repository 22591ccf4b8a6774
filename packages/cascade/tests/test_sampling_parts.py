"""The small parts of cascade sampling on their own (no U-Net): inpainting mask checks and resizing,
uint8 pixels, mask broadcasting, self-conditioning, the autocast wrapper, the one-time warning and
refine_from_step's checks (the gaps mutation testing found; each runs in milliseconds)."""

import warnings

import pytest
import torch
from cascade_testing import tiny_unet

from imagen.cascade import Imagen, sampling
from imagen.cascade.sampling import (
    Autocast,
    SelfConditioned,
    _as_float_images,
    _broadcastable,
    _warn_once,
    check_inpaint_masks,
    resize_mask,
)


def test_inpaint_masks_of_images_and_videos_and_the_error_naming_the_accepted_shapes():
    image, video = torch.zeros(2, 3, 8, 9), torch.zeros(2, 3, 5, 8, 9)
    assert check_inpaint_masks(torch.ones(2, 8, 9), image).dtype == torch.bool
    assert check_inpaint_masks(torch.ones(2, 8, 9), video).shape == (2, 8, 9)
    assert check_inpaint_masks(torch.ones(2, 5, 8, 9), video).shape == (2, 5, 8, 9)
    with pytest.raises(ValueError, match=r"^inpaint_masks must have shape \(2, 8, 9\), got \(2, 9, 8\)$"):
        check_inpaint_masks(torch.ones(2, 9, 8), image)
    with pytest.raises(ValueError, match=r"^inpaint_masks must have shape \(2, 8, 9\) or \(2, 5, 8, 9\), got None$"):
        check_inpaint_masks(None, video)
    with pytest.raises(ValueError, match=r"^inpaint_masks must have shape \(2, 8, 9\) or \(2, 5, 8, 9\), "
                                         r"got \(2, 4, 8, 9\)$"):
        check_inpaint_masks(torch.ones(2, 4, 8, 9), video)


def test_resize_mask_keeps_any_nonzero_nearest_pixel_and_resizes_video_frames():
    mask = torch.zeros(1, 2, 2)
    mask[0, 0, 1] = 0.5
    up = resize_mask(mask, 4, None)
    assert up.dtype == torch.bool and up.tolist() == [[[False, False, True, True], [False, False, True, True],
                                                       [False, False, False, False], [False, False, False, False]]]
    video = torch.zeros(1, 2, 2, 2)
    video[0, 1] = 1
    resized = resize_mask(video, 4, 4)  # frames 2 -> 4 (nearest), pixels 2 -> 4
    assert resized.shape == (1, 4, 4, 4)
    assert resized[0, :, 0, 0].tolist() == [False, False, True, True]
    assert torch.equal(resize_mask(video, 4, None), resize_mask(video, 4, 2))  # None keeps the frames


def test_uint8_pixels_are_divided_by_255_others_kept():
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert torch.equal(_as_float_images(pixels), torch.tensor([0.0, 0.2, 1.0]))
    floats = torch.tensor([0.5, 2.0])
    assert torch.equal(_as_float_images(floats), floats)


def test_masks_broadcast_against_images_and_videos():
    assert _broadcastable(torch.ones(2, 8, 9), torch.zeros(2, 3, 8, 9)).shape == (2, 1, 8, 9)
    assert _broadcastable(torch.ones(2, 5, 8, 9), torch.zeros(2, 3, 5, 8, 9)).shape == (2, 1, 5, 8, 9)
    assert _broadcastable(torch.ones(2, 8, 9), torch.zeros(2, 3, 5, 8, 9)).shape == (2, 1, 1, 8, 9)


def test_self_conditioning_feeds_each_call_the_previous_estimate():
    calls = []

    def x0_model(x, level, *, self_cond, scale):
        calls.append((x, level, self_cond))
        return x * scale + level

    model = SelfConditioned(x0_model)
    first = model(torch.ones(2), 0.5, scale=3.0)
    second = model(torch.zeros(2), 0.25, scale=3.0)
    assert torch.equal(first, torch.full((2,), 3.5)) and torch.equal(second, torch.full((2,), 0.25))
    assert calls[0][2] is None and calls[1][2] is first
    assert calls[1][1] == 0.25 and torch.equal(calls[1][0], torch.zeros(2))


def test_autocast_runs_the_network_in_the_dtype_and_returns_float32():
    seen = []

    def net(x, noise_cond, *, text):
        seen.append((torch.get_autocast_dtype("cpu"), torch.is_autocast_enabled("cpu")))
        return (x @ text) + noise_cond

    x, text, cond = torch.randn(2, 3), torch.randn(3, 3), torch.randn(2, 3)
    out = Autocast(net, torch.bfloat16, "cpu")(x, cond, text=text)
    assert seen == [(torch.bfloat16, True)]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x @ text + cond, rtol=2e-2, atol=5e-2)


def test_a_warning_once_per_message(monkeypatch):
    monkeypatch.setattr(sampling, "_WARNED", set())  # the once-set is process-wide: start afresh
    message = "test_sampling_parts: a message seen once"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _warn_once(message)
        _warn_once(message)
    assert [str(w.message) for w in caught] == [message] and caught[0].category is UserWarning


@pytest.mark.parametrize(("step", "ok"), [(0, True), (2, True), (3, False), (-1, False)])
def test_refine_from_step_bounds(step, ok):
    imagen = Imagen(unets=(tiny_unet(), tiny_unet()), image_sizes=(8, 16), text_embed_dim=16, timesteps=3,
                    condition_on_text=False)
    kwargs = {"refine_from_step": (None, step), "start_at_unet_number": 2,
              "start_image_or_video": torch.rand(1, 3, 8, 8)}
    if ok:
        assert imagen.sampling_plan(**kwargs)[0].skip_steps == step
    else:
        with pytest.raises(ValueError, match=rf"refine_from_step for unet 2 must be None or an int in \[0, 3\) "
                                             rf"\(its steps\), got {step}"):
            imagen.sampling_plan(**kwargs)


def test_refine_from_step_on_a_later_first_stage_needs_a_start_image():
    imagen = Imagen(unets=(tiny_unet(), tiny_unet()), image_sizes=(8, 16), text_embed_dim=16, timesteps=3,
                    condition_on_text=False)
    with pytest.raises(ValueError, match=r"refine_from_step for unet 2: there is no image to refine \(unet 2 is the "
                                         r"first stage sampled; give its init_images, or start_image_or_video with "
                                         r"start_at_unet_number > 1\)"):
        imagen.sampling_plan(refine_from_step=(None, 1), start_at_unet_number=2)
