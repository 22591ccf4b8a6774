"""The reference README's cascade examples, scaled down to CPU sizes (tiny dims, 8-32 pixels, few
steps). Only the imports and sizes change; keyword names and meanings are the README's."""

import torch
from cascade_testing import tiny_unet, tiny_unet3d

from imagen.cascade import ElucidatedImagen, ElucidatedImagenConfig, Imagen, load_imagen_from_checkpoint
from imagen.text import get_encoded_dim
from imagen.unets import NullUnet, SRUnet256

TEXTS = ["a whale breaching from afar", "young girl blowing out candles on her birthday cake",
         "fireworks with blue and green sparkles"]


def test_usage_train_each_unet_then_sample_from_texts(tiny_t5):
    unet1 = tiny_unet(cond_dim=32, num_resnet_blocks=3)
    unet2 = tiny_unet(cond_dim=32, num_resnet_blocks=(2, 4))
    imagen = Imagen(unets=(unet1, unet2), text_encoder_name=tiny_t5, image_sizes=(8, 16), timesteps=4,
                    cond_drop_prob=0.1)
    dim = get_encoded_dim(tiny_t5)
    text_embeds = torch.randn(4, 12, dim)
    images = torch.rand(4, 3, 16, 16)
    for i in (1, 2):
        loss = imagen(images, text_embeds=text_embeds, unet_number=i)
        loss.backward()
        assert loss.ndim == 0 and torch.isfinite(loss)
    images = imagen.sample(texts=TEXTS, cond_scale=3.0, use_tqdm=False)
    assert images.shape == (3, 3, 16, 16)
    assert images.min() >= 0 and images.max() <= 1


def test_usage_train_with_text_strings(tiny_t5):
    imagen = Imagen(unets=(tiny_unet(), tiny_unet()), text_encoder_name=tiny_t5, image_sizes=(8, 16), timesteps=4)
    texts = ["a red circle", "a green square", "blue sparkles", "a whale"]
    images = torch.rand(4, 3, 16, 16)
    for i in (1, 2):
        imagen(images, texts=texts, unet_number=i).backward()


def test_unconditional_imagen_with_sr_preset():
    unet1 = tiny_unet(layer_cross_attns=False, use_linear_attn=True)
    unet2 = SRUnet256(dim=8, dim_mults=(1, 2), num_resnet_blocks=(2, 2), layer_attns=(False, True),
                      layer_cross_attns=False, attn_heads=2, attn_dim_head=8)
    imagen = Imagen(condition_on_text=False, unets=(unet1, unet2), image_sizes=(8, 16), timesteps=3)
    training_images = torch.rand(4, 3, 32, 32)
    imagen(training_images, unet_number=1).backward()
    images = imagen.sample(batch_size=5, use_tqdm=False)
    assert images.shape == (5, 3, 16, 16)


def test_only_super_resolution_with_null_unet():
    imagen = Imagen(unets=(NullUnet(), tiny_unet()), image_sizes=(8, 16), timesteps=3, cond_drop_prob=0.1,
                    text_embed_dim=24)
    text_embeds = torch.randn(4, 10, 24)
    images = torch.rand(4, 3, 16, 16)
    imagen(images, text_embeds=text_embeds, unet_number=2).backward()
    lowres_images = torch.rand(3, 3, 8, 8)
    images = imagen.sample(text_embeds=torch.randn(3, 10, 24), start_at_unet_number=2,
                           start_image_or_video=lowres_images, cond_scale=3.0, use_tqdm=False)
    assert images.shape == (3, 3, 16, 16)


def test_elucidated_config_create_and_checkpoint(tmp_path):
    imagen = ElucidatedImagenConfig(
        unets=[dict(dim=8, dim_mults=(1, 2), layer_attns=False, layer_cross_attns=False),
               dict(dim=8, dim_mults=(1, 2), layer_attns=False, layer_cross_attns=False)],
        image_sizes=(8, 16),
        cond_drop_prob=0.5,
        num_sample_steps=3,
        text_embed_dim=16,
    ).create()
    assert isinstance(imagen, ElucidatedImagen)
    imagen.save_pretrained(tmp_path / "model")
    again = load_imagen_from_checkpoint(tmp_path / "model")
    assert again.config == imagen.config


def test_elucidated_imagen_keywords():
    imagen = ElucidatedImagen(
        unets=(tiny_unet(), tiny_unet()), image_sizes=(8, 16), cond_drop_prob=0.1, num_sample_steps=(4, 3),
        sigma_min=0.002, sigma_max=(80, 160), sigma_data=0.5, rho=7, P_mean=-1.2, P_std=1.2, S_churn=80,
        S_tmin=0.05, S_tmax=50, S_noise=1.003, text_embed_dim=16,
    )
    embeds = torch.randn(2, 6, 16)
    for i in (1, 2):
        imagen(torch.rand(2, 3, 16, 16), text_embeds=embeds, unet_number=i).backward()
    assert imagen.sample(text_embeds=embeds, cond_scale=2.0, use_tqdm=False).shape == (2, 3, 16, 16)


def test_text_to_video_with_temporal_downsampling_and_more_frames(tiny_t5):
    imagen = ElucidatedImagen(
        unets=(tiny_unet3d(), tiny_unet3d()), text_encoder_name=tiny_t5, image_sizes=(8, 16),
        random_crop_sizes=(None, 8), temporal_downsample_factor=(2, 1), num_sample_steps=2, cond_drop_prob=0.1,
        sigma_min=0.002, sigma_max=(80, 160), sigma_data=0.5, rho=7, P_mean=-1.2, P_std=1.2, S_churn=80,
        S_tmin=0.05, S_tmax=50, S_noise=1.003,
    )
    texts = ["a whale breaching from afar", "blue sparkles"]
    videos = torch.rand(2, 3, 4, 16, 16)
    imagen(videos, texts=texts, unet_number=1, ignore_time=False).backward()
    imagen(videos, texts=texts, unet_number=2).backward()
    imagen(torch.rand(2, 3, 16, 16), texts=texts, unet_number=1).backward()  # images as single frames
    videos = imagen.sample(texts=texts, video_frames=6, use_tqdm=False)  # more frames than trained
    assert videos.shape == (2, 3, 6, 16, 16)


def test_inpainting_images_and_videos(tiny_t5):
    imagen = Imagen(unets=tiny_unet(), text_encoder_name=tiny_t5, image_sizes=8, timesteps=3)
    masks = torch.ones(2, 8, 8).bool()
    out = imagen.sample(texts=TEXTS[:2], inpaint_images=torch.rand(2, 3, 8, 8), inpaint_masks=masks,
                        inpaint_resample_times=2, cond_scale=5.0, use_tqdm=False)
    assert out.shape == (2, 3, 8, 8)
    video = ElucidatedImagen(unets=tiny_unet3d(), text_encoder_name=tiny_t5, image_sizes=8, num_sample_steps=2)
    out = video.sample(texts=TEXTS[:2], inpaint_videos=torch.rand(2, 3, 3, 8, 8),
                       inpaint_masks=torch.ones(2, 3, 8, 8).bool(), inpaint_resample_times=2, cond_scale=5.0,
                       use_tqdm=False)
    assert out.shape == (2, 3, 3, 8, 8)
