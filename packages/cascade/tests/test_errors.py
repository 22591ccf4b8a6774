"""Bad input gets a ValueError that names the value."""

import pickle

import pytest
import torch
from cascade_testing import tiny_unet

from imagen.cascade import Imagen, ImagenConfig, load_imagen_from_checkpoint, read_safetensors
from imagen.cascade.persistence import load_weights_into as load_weights


@pytest.fixture
def imagen():
    return Imagen(unets=(tiny_unet(), tiny_unet()), image_sizes=(8, 16), text_embed_dim=16, timesteps=2)


def embeds(batch=2):
    return torch.randn(batch, 5, 16)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m(torch.rand(2, 3, 8, 8), text_embeds=embeds(), unet_number=2), "smaller than unet 2"),
        (lambda m: m(torch.rand(2, 1, 16, 16), text_embeds=embeds(), unet_number=1), "1 channels"),
        (lambda m: m(torch.rand(2, 3, 16, 16), text_embeds=embeds(), unet_number=3), "unet_number must be"),
        (lambda m: m(torch.rand(2, 3, 16, 16), text_embeds=embeds(), unet_number=0), "got 0"),
        (lambda m: m(torch.rand(2, 3, 16, 16), text_embeds=embeds(3), unet_number=1), "batch size 3"),
        (lambda m: m(torch.rand(2, 3, 16, 16), texts=["a cat", ""], unet_number=1), "texts\\[1\\]"),
        (lambda m: m(torch.rand(2, 3, 16, 16), text_embeds=torch.randn(2, 5, 7), unet_number=1), "width 7"),
        (lambda m: m(torch.rand(2, 3, 16, 16), unet_number=1), "conditions on text"),
        (lambda m: m.sample(text_embeds=embeds(), cond_scale=-1.0), "cond_scale must be a finite number >= 0"),
        (lambda m: m.sample(text_embeds=embeds(), inpaint_images=torch.rand(2, 3, 16, 16),
                            inpaint_masks=torch.ones(2, 8, 8).bool()), "inpaint_masks must have shape"),
        (lambda m: m.sample(text_embeds=embeds(), start_at_unet_number=2), "start_image_or_video"),
        (lambda m: m.sample(text_embeds=embeds(), sampler="nonsense"), "nonsense"),
        (lambda m: m.sample(text_embeds=embeds(), steps=(2, 2, 2)), "3 entries"),
    ],
)
def test_bad_input_is_a_value_error_naming_it(imagen, call, message):
    with pytest.raises(ValueError, match=message):
        call(imagen)


def test_cond_scale_needs_a_cascade_trained_for_guidance():
    imagen = Imagen(unets=tiny_unet(), image_sizes=8, text_embed_dim=16, cond_drop_prob=0.0, timesteps=2)
    with pytest.raises(ValueError, match="cond_drop_prob > 0"):
        imagen.sample(text_embeds=embeds(), cond_scale=3.0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(image_sizes=(8, 16, 32)), "image_sizes has 3 entries"),
        (dict(image_sizes=(16, 8)), "must not decrease"),
        (dict(image_sizes=(8, 9)), "divisible"),
        (dict(image_sizes=(8, 16), timesteps=(2, 2, 2)), "timesteps has 3 entries"),
        (dict(image_sizes=(8, 16), noise_schedules="quadratic"), "quadratic"),
        (dict(image_sizes=(8, 16), cond_drop_prob=1.5), "cond_drop_prob"),
        (dict(image_sizes=(8, 16), loss_type="l3"), "loss_type"),
        (dict(image_sizes=(8, 16), only_train_unet_number=3), "only_train_unet_number"),
    ],
)
def test_bad_settings_are_value_errors(settings, message):
    with pytest.raises(ValueError, match=message):
        Imagen(unets=(tiny_unet(), tiny_unet()), text_embed_dim=16, **settings)


def test_config_json_round_trip_and_unknown_keys():
    config = ImagenConfig(unets=[dict(dim=8, dim_mults=(1, 2))], image_sizes=8, timesteps=(3,), text_embed_dim=16)
    assert ImagenConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match=r"unknown ImagenConfig keys \['bogus'\]"):
        ImagenConfig.from_dict({**config.to_dict(), "bogus": 1})


def test_weights_of_another_config_are_refused(tmp_path):
    small = Imagen(unets=tiny_unet(), image_sizes=8, text_embed_dim=16, timesteps=2)
    small.save_pretrained(tmp_path / "small")
    big = Imagen(unets=tiny_unet(dim=16), image_sizes=8, text_embed_dim=16, timesteps=2)

    tensors, _ = read_safetensors(tmp_path / "small" / "model.safetensors")
    with pytest.raises(ValueError, match="do not match"):
        load_weights(big, tensors, "small")


def test_a_pickle_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ValueError, match="pickle"):
        load_imagen_from_checkpoint(path)
    assert not marker.exists()


def test_create_with_a_seed_is_reproducible_and_spares_the_global_rng():
    config = ImagenConfig(unets=[dict(dim=8, dim_mults=(1, 2))], image_sizes=8, text_embed_dim=16)
    state = torch.random.get_rng_state()
    first, second = config.create(seed=3), config.create(seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


def test_a_generator_makes_training_losses_reproducible():
    imagen = Imagen(unets=tiny_unet(), image_sizes=8, text_embed_dim=16, cond_drop_prob=0.5, timesteps=2)
    images, text = torch.rand(4, 3, 8, 8), torch.randn(4, 5, 16)
    losses = [imagen(images, text_embeds=text, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    torch.manual_seed(123)  # the global RNG plays no part
    losses.append(imagen(images, text_embeds=text, generator=torch.Generator().manual_seed(5)))
    assert losses[0] == losses[1] == losses[2]
