"""Training and sampling on the test device (IMAGEN_TEST_DEVICE, cpu by default) with generators
on that device: every draw of a step (times, noise, low-res augmentation, crops, the
self-conditioning coin, conditioning dropout) must come from the device generator."""

import pytest
import torch
from cascade_testing import randomize_cascade_, tiny_unet

from imagen.cascade import ElucidatedImagen, Imagen


def cascade_on(device, cls, **settings):
    settings = {"image_sizes": (8, 16), "text_embed_dim": 16, "cond_drop_prob": 0.3, "random_crop_sizes": (None, 8),
                **settings}
    settings.setdefault("timesteps" if cls is Imagen else "num_sample_steps", 6)
    unets = (tiny_unet(), tiny_unet(self_cond=True))  # stage 2: super-resolution with self-conditioning
    return randomize_cascade_(cls(unets=unets, **settings), seed=1).to(device)


@pytest.mark.parametrize("cls", [Imagen, ElucidatedImagen])
@pytest.mark.parametrize("unet_number", [1, 2])
def test_a_training_step_draws_from_a_device_generator(cls, unet_number, device):
    imagen = cascade_on(device, cls)
    images = torch.rand(3, 3, 16, 16, device=device)
    embeds = torch.randn(3, 5, 16, device=device)
    losses = []
    for _ in range(2):  # the same generator state gives the same loss
        generator = torch.Generator(device).manual_seed(4)
        loss = imagen(images, text_embeds=embeds, unet_number=unet_number, generator=generator)
        losses.append(loss)
    loss.backward()
    assert loss.device.type == device.type and torch.isfinite(loss)
    assert torch.equal(losses[0], losses[1])
    assert all(p.grad is not None for p in imagen.unets[unet_number - 1].parameters() if p.requires_grad)


@pytest.mark.parametrize("cls", [Imagen, ElucidatedImagen])
def test_guided_refined_sampling_on_the_device_matches_a_per_sample_seed(cls, device):
    imagen = cascade_on(device, cls).eval()
    embeds = torch.randn(3, 5, 16, device=device)
    options = dict(cond_scale=(3.0, 2.0), refine_from_step=(None, 2), sampler="dpmpp_2m", use_tqdm=False)
    streams = [torch.Generator(device).manual_seed(20 + i) for i in range(3)]
    images = imagen.sample(text_embeds=embeds, generator=streams, **options)
    alone = imagen.sample(text_embeds=embeds[1:2], generator=[torch.Generator(device).manual_seed(21)], **options)
    assert images.device.type == device.type and images.shape == (3, 3, 16, 16)
    torch.testing.assert_close(images[1:2], alone, atol=1e-3, rtol=0)  # batched kernels round differently


def test_bf16_sampling_on_the_device_stays_close_to_fp32(device):
    imagen = cascade_on(device, Imagen).eval()
    embeds = torch.randn(2, 5, 16, device=device)
    options = dict(text_embeds=embeds, cond_scale=2.0, sampler="ddim", steps=4, generator=5, use_tqdm=False)
    full = imagen.sample(**options)
    half = imagen.sample(dtype=torch.bfloat16, **options)
    assert half.dtype == torch.float32 and not torch.equal(full, half)  # bf16 really ran
    assert (full - half).abs().mean() < 0.05
