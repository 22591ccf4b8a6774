"""The spec README's cascade examples not covered elsewhere give the reference's numbers.

Each example runs scaled down (tiny U-Nets, few steps, small images), with the reference's U-Nets
randomised and loaded strictly into ours, and every random draw of both sides from one seeded tape
(see ``test_cascade.py``): the unconditional cascade (``condition_on_text=False``, an SR stage),
super-resolution only behind a ``NullUnet`` (``start_at_unet_number=2`` from given low-res images),
and text-to-video with ``Unet3D`` (training on videos, sampling a number of frames).
"""

from __future__ import annotations

import pytest
import torch
from imagen_pytorch import imagen_pytorch as ref_module
from imagen_pytorch import imagen_video as ref_video
from ref_testing import assert_close, load_same_weights, randomize_
from test_cascade import BATCH, OUTPUT_SCALE, TEXT_DIM, UNET, run_both, text_condition

import imagen.cascade as ours
from imagen.unets import NullUnet, Unet, Unet3D

_rand, _randn = torch.rand, torch.randn
UNCONDITIONAL = dict(UNET, layer_cross_attns=False)
VIDEO_UNET = dict(dim=8, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=(False, True),
                  layer_cross_attns=(False, True), attn_heads=2, attn_dim_head=8, cond_dim=16,
                  text_embed_dim=TEXT_DIM, max_text_len=UNET["max_text_len"])


def same_cascades(reference_unets, our_unets, **keywords):
    """(ours, reference) Imagen with the reference's randomised weights loaded into ours."""
    reference = ref_module.Imagen(unets=reference_unets, **keywords)
    randomize_(reference, seed=5)
    with torch.no_grad():
        for unet in reference.unets:
            if hasattr(unet, "final_conv"):
                unet.final_conv.weight.mul_(OUTPUT_SCALE / 0.2)
    mine = ours.Imagen(unets=our_unets, **keywords)
    load_same_weights(mine, reference)
    return mine.eval(), reference.eval()


def test_unconditional_cascade_trains_and_samples_as_the_reference(monkeypatch):
    keywords = dict(condition_on_text=False, image_sizes=(8, 16), timesteps=(3, 2))
    mine, reference = same_cascades(
        (ref_module.Unet(**UNCONDITIONAL), ref_module.Unet(**UNCONDITIONAL)),
        (Unet(**UNCONDITIONAL), Unet(**UNCONDITIONAL)), **keywords)
    images = _rand(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for unet_number in (1, 2):
        got, expected = run_both(unet_number, monkeypatch, lambda n=unet_number: reference(images, unet_number=n),
                                 lambda n=unet_number: mine(images, unet_number=n))
        assert_close(got, expected)
    kwargs = dict(batch_size=BATCH, use_tqdm=False, return_all_unet_outputs=True)
    got, expected = run_both(3, monkeypatch, lambda: reference.sample(**kwargs), lambda: mine.sample(**kwargs))
    for stage_got, stage_expected in zip(got, expected, strict=True):
        assert_close(stage_got, stage_expected)


def test_super_resolution_only_behind_a_null_unet_equals_the_reference(monkeypatch):
    keywords = dict(image_sizes=(8, 16), timesteps=3, cond_drop_prob=0.1, text_embed_dim=TEXT_DIM)
    mine, reference = same_cascades((ref_module.NullUnet(), ref_module.Unet(**UNET)),
                                    (NullUnet(), Unet(**UNET)), **keywords)
    images = _rand(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    embeds, masks = text_condition()
    train = dict(text_embeds=embeds, text_masks=masks, unet_number=2)
    got, expected = run_both(4, monkeypatch, lambda: reference(images, **train), lambda: mine(images, **train))
    assert_close(got, expected)
    lowres = _rand(BATCH, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    sample = dict(text_embeds=embeds, text_masks=masks, start_at_unet_number=2, start_image_or_video=lowres,
                  cond_scale=3.0, use_tqdm=False)
    got, expected = run_both(5, monkeypatch, lambda: reference.sample(**sample), lambda: mine.sample(**sample))
    assert got.shape == (BATCH, 3, 16, 16)
    assert_close(got, expected)


@pytest.mark.parametrize("frames", [2, 3])
def test_text_to_video_trains_and_samples_as_the_reference(frames, monkeypatch):
    keywords = dict(image_sizes=(8, 16), timesteps=(2, 2), text_embed_dim=TEXT_DIM, cond_drop_prob=0.5)
    mine, reference = same_cascades((ref_video.Unet3D(**VIDEO_UNET), ref_video.Unet3D(**VIDEO_UNET)),
                                    (Unet3D(**VIDEO_UNET), Unet3D(**VIDEO_UNET)), **keywords)
    videos = _rand(BATCH, 3, frames, 16, 16, generator=torch.Generator().manual_seed(6))
    embeds, masks = text_condition()
    for unet_number in (1, 2):
        train = dict(text_embeds=embeds, text_masks=masks, unet_number=unet_number)
        got, expected = run_both(7, monkeypatch, lambda t=train: reference(videos, **t),
                                 lambda t=train: mine(videos, **t))
        assert_close(got, expected)
    sample = dict(text_embeds=embeds, text_masks=masks, video_frames=frames, cond_scale=2.0, use_tqdm=False)
    got, expected = run_both(8, monkeypatch, lambda: reference.sample(**sample), lambda: mine.sample(**sample))
    assert got.shape == (BATCH, 3, frames, 16, 16)
    assert_close(got, expected)
