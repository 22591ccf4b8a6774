"""Sampling behaviour: seeds, guidance, inpainting, save/load round trips."""

import pytest
import torch
from cascade_testing import randomize_cascade_, tiny_unet

from imagen.cascade import ElucidatedImagen, Imagen, load_imagen_from_checkpoint
from imagen.diffusion import classifier_free_guidance


def text_imagen(cls=Imagen, **settings):
    settings = {"image_sizes": (8, 16), "text_embed_dim": 16, "cond_drop_prob": 0.2, **settings}
    if cls is Imagen:
        settings.setdefault("timesteps", 3)
    else:
        settings.setdefault("num_sample_steps", 3)
    return randomize_cascade_(cls(unets=(tiny_unet(), tiny_unet()), **settings), seed=1).eval()


@pytest.mark.parametrize("cls", [Imagen, ElucidatedImagen])
def test_a_seed_gives_the_same_samples_whatever_the_batch(cls):
    imagen = text_imagen(cls)
    embeds = torch.randn(4, 5, 16)
    four = imagen.sample(text_embeds=embeds, cond_scale=2.0, generator=7, use_tqdm=False)
    one = imagen.sample(text_embeds=embeds[:1], cond_scale=2.0, generator=7, use_tqdm=False)
    torch.testing.assert_close(one[0], four[0], atol=1e-3, rtol=0)  # batched kernels round differently
    again = imagen.sample(text_embeds=embeds, cond_scale=2.0, generator=7, use_tqdm=False)
    assert torch.equal(four, again)


def test_batched_guidance_equals_separate_conditional_and_null_forwards():
    imagen = text_imagen()
    unet = imagen.unets[0]
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 3.0])
    cond = dict(text_embeds=torch.randn(2, 5, 16), text_mask=torch.ones(2, 5, dtype=torch.bool),
                cond_drop_mask=torch.zeros(2, dtype=torch.bool))
    base = imagen.stages[0].x0_model(unet, "ddim")  # the sigma-space denoiser of the network
    null_cond = {"cond_drop_mask": torch.ones(2, dtype=torch.bool)}
    with torch.no_grad():
        conditional = base(x, sigma, **cond)
        null = base(x, sigma, **{**cond, **null_cond})
        guided = classifier_free_guidance(base, 3.0, null_cond)(x, sigma, **cond)
        at_one = classifier_free_guidance(base, 1.0, null_cond)(x, sigma, **cond)
    # batch 4 and batch 2 kernels round differently (x3 by the scale): 1e-4, far below a wrong formula
    torch.testing.assert_close(guided, null + 3.0 * (conditional - null), atol=1e-4, rtol=1e-4)
    assert torch.equal(at_one, conditional)


def test_cond_scale_one_samples_equal_the_plain_conditional_path():
    imagen = text_imagen()
    embeds = torch.randn(2, 5, 16)
    guided = imagen.sample(text_embeds=embeds, cond_scale=1.0, generator=3, use_tqdm=False)
    imagen_without_dropout = text_imagen(cond_drop_prob=0.0)
    imagen_without_dropout.load_state_dict(imagen.state_dict())
    plain = imagen_without_dropout.sample(text_embeds=embeds, generator=3, use_tqdm=False)
    assert torch.equal(guided, plain)


@pytest.mark.parametrize("cls", [Imagen, ElucidatedImagen])
def test_inpainting_keeps_the_known_region_and_fills_the_rest(cls):
    imagen = text_imagen(cls)
    known = torch.rand(2, 3, 16, 16)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[:, :, :8] = True
    out = imagen.sample(text_embeds=torch.randn(2, 5, 16), inpaint_images=known, inpaint_masks=masks,
                        inpaint_resample_times=2, generator=0, use_tqdm=False)
    keep = masks.unsqueeze(1).expand_as(known)
    torch.testing.assert_close(out[keep], known[keep], atol=1e-5, rtol=0)
    assert (out[~keep] - known[~keep]).abs().mean() > 0.05


@pytest.mark.parametrize("cls", [Imagen, ElucidatedImagen])
def test_save_and_load_give_bit_identical_samples(cls, tmp_path):
    imagen = text_imagen(cls)
    embeds = torch.randn(2, 5, 16)
    imagen.save_pretrained(tmp_path / "saved")
    loaded = cls.from_pretrained(tmp_path / "saved").eval()
    assert loaded.config == imagen.config
    first = imagen.sample(text_embeds=embeds, cond_scale=2.0, generator=1, use_tqdm=False)
    second = loaded.sample(text_embeds=embeds, cond_scale=2.0, generator=1, use_tqdm=False)
    assert torch.equal(first, second)
    assert torch.equal(load_imagen_from_checkpoint(tmp_path / "saved").unets[1].state_dict()[
        next(iter(imagen.unets[1].state_dict()))], next(iter(imagen.unets[1].state_dict().values())))


def test_every_stage_output_and_pil_images():
    imagen = text_imagen(condition_on_text=False, text_embed_dim=None, cond_drop_prob=0.0)
    outputs = imagen.sample(batch_size=2, return_all_unet_outputs=True, use_tqdm=False)
    assert [o.shape for o in outputs] == [(2, 3, 8, 8), (2, 3, 16, 16)]
    pils = imagen.sample(batch_size=2, return_pil_images=True, use_tqdm=False)
    assert len(pils) == 2 and pils[0].size == (16, 16)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "euler"])
def test_any_sampler_and_steps_per_stage(sampler):
    imagen = text_imagen(condition_on_text=False, text_embed_dim=None, cond_drop_prob=0.0)
    out = imagen.sample(batch_size=1, sampler=(sampler, "ddpm"), steps=(4, 2), use_tqdm=False)
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()


def test_init_images_with_skip_steps_start_from_the_given_image():
    imagen = text_imagen(condition_on_text=False, text_embed_dim=None, cond_drop_prob=0.0, timesteps=4)
    init = torch.rand(2, 3, 16, 16)
    # skipping all but the last step starts at the smallest noise level: the result stays near init
    out = imagen.sample(batch_size=2, init_images=init, skip_steps=3, stop_at_unet_number=1, use_tqdm=False)
    assert out.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"skip_steps for unet 1 must be an int in \[0, 4\)"):
        imagen.sample(batch_size=2, init_images=init, skip_steps=4, use_tqdm=False)


def test_images_already_in_model_range_without_auto_normalize():
    imagen = text_imagen(condition_on_text=False, text_embed_dim=None, cond_drop_prob=0.0, auto_normalize_img=False)
    imagen(torch.rand(2, 3, 16, 16) * 2 - 1, unet_number=2).backward()
    out = imagen.sample(batch_size=1, use_tqdm=False)
    assert out.min() >= -1 and out.max() <= 1 and out.min() < 0  # returned in [-1, 1], not unnormalized


def test_video_conditioning_frames_before_and_after():
    from cascade_testing import tiny_unet3d

    imagen = ElucidatedImagen(unets=(tiny_unet3d(), tiny_unet3d()), image_sizes=(8, 16), text_embed_dim=16,
                              temporal_downsample_factor=(2, 1), num_sample_steps=2, cond_drop_prob=0.1)
    videos, before, after = torch.rand(2, 3, 4, 16, 16), torch.rand(2, 3, 2, 16, 16), torch.rand(2, 3, 2, 16, 16)
    embeds = torch.randn(2, 5, 16)
    for number in (1, 2):
        imagen(videos, text_embeds=embeds, unet_number=number, cond_video_frames=before,
               post_cond_video_frames=after).backward()
    out = imagen.sample(text_embeds=embeds, video_frames=4, cond_video_frames=before, post_cond_video_frames=after,
                        use_tqdm=False)
    assert out.shape == (2, 3, 4, 16, 16)
    with pytest.raises(ValueError, match="cond_video_frames are"):
        text_imagen()(torch.rand(2, 3, 16, 16), text_embeds=embeds, unet_number=1,
                      cond_video_frames=torch.rand(2, 3, 16, 16))
