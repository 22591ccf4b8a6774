"""The trainer on the test device (IMAGEN_TEST_DEVICE): its generators live there, so every draw of
a super-resolution, self-conditioning step must be made on that device."""

import torch

from imagen.cascade import Imagen
from imagen.trainer import ImagenTrainer


def test_a_super_resolution_self_conditioning_stage_trains_and_samples_on_the_device(unet_factory, device):
    unets = (unet_factory(), unet_factory(self_cond=True))
    imagen = Imagen(unets=unets, image_sizes=(8, 16), text_embed_dim=16, timesteps=3, cond_drop_prob=0.5,
                    random_crop_sizes=(None, 8))
    trainer = ImagenTrainer(imagen, verbose=False, accelerate_cpu=device.type == "cpu")
    assert trainer.device.type == device.type
    images, embeds = torch.rand(4, 3, 16, 16), torch.randn(4, 5, 16)
    for unet_number in (1, 2):
        loss = trainer(images, text_embeds=embeds, unet_number=unet_number)
        trainer.update(unet_number=unet_number)
        assert torch.isfinite(torch.tensor(loss))
    samples = trainer.sample(text_embeds=embeds[:2], cond_scale=2.0, generator=3)
    assert samples.shape == (2, 3, 16, 16) and samples.device.type == device.type
