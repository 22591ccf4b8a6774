"""A tiny cascade really learns: it overfits a handful of images."""

import pytest
import torch
from cascade_testing import tiny_unet

from imagen.cascade import ElucidatedImagen, Imagen


def two_images() -> torch.Tensor:
    """Two 8x8 images: left half bright / right half dark, and the transpose pattern."""
    images = torch.zeros(2, 3, 8, 8)
    images[0, :, :, :4] = 1.0
    images[1, :, :4, :] = 1.0
    images[1, 0] = 0.2
    return images


def nearest_distance(samples: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the RMS distance to the closest training image."""
    distances = torch.cdist(samples.flatten(1), images.flatten(1)) / samples[0].numel() ** 0.5
    return distances.min(dim=1).values.mean()


@pytest.mark.parametrize("cls", [Imagen, ElucidatedImagen])
def test_a_tiny_cascade_overfits_a_handful_of_images(cls):
    settings = dict(timesteps=20) if cls is Imagen else dict(num_sample_steps=20)
    imagen = cls(unets=tiny_unet(dim=16, layer_attns=False, layer_cross_attns=False), image_sizes=8,
                 condition_on_text=False, cond_drop_prob=0.0, **settings)
    images = two_images()
    generator = torch.Generator().manual_seed(0)

    def sample_distance():
        imagen.eval()
        samples = imagen.sample(batch_size=8, sampler="dpmpp_2m", steps=20, generator=11, use_tqdm=False)
        imagen.train()
        return nearest_distance(samples, images)

    untrained = sample_distance()
    optimizer = torch.optim.Adam(imagen.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        loss = imagen(images.repeat(4, 1, 1, 1), unet_number=1, generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.5 * first, (first, last)
    trained = sample_distance()
    assert trained < 0.5 * untrained, (untrained, trained)
