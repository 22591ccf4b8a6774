"""The reference's defaults and keywords: config classes, padded noise schedules, dict U-Nets,
loading weights, unconditional cascades, per-unet sample keywords and the sampling plan."""

import json
import warnings

import pytest
import torch
from cascade_testing import randomize_cascade_, tiny_unet

from imagen.cascade import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    ElucidatedImagen,
    ElucidatedImagenConfig,
    Imagen,
    ImagenConfig,
    load_imagen_from_checkpoint,
    write_container,
)
from imagen.unets import NullUnet

DICT_UNET = dict(dim=8, dim_mults=(1, 2), layer_attns=(False, True), layer_cross_attns=(False, True), max_text_len=8)


def test_config_classes_default_cond_drop_prob_to_half_and_the_cascades_to_a_tenth():
    assert ImagenConfig(unets=[DICT_UNET], image_sizes=8).cond_drop_prob == 0.5
    assert ElucidatedImagenConfig(unets=[DICT_UNET], image_sizes=8).cond_drop_prob == 0.5
    assert Imagen(unets=tiny_unet(), image_sizes=8, text_embed_dim=16).cond_drop_prob == 0.1
    assert ElucidatedImagen(unets=tiny_unet(), image_sizes=8, text_embed_dim=16).cond_drop_prob == 0.1
    imagen = ImagenConfig(unets=[DICT_UNET], image_sizes=8, text_embed_dim=16).create()
    assert imagen.cond_drop_prob == 0.5 and imagen.config.cond_drop_prob == 0.5


@pytest.mark.parametrize(
    ("given", "num_unets", "expected"),
    [
        ("cosine", 1, ("cosine",)),
        ("cosine", 3, ("cosine", "cosine", "linear")),
        ("linear", 3, ("linear", "cosine", "linear")),
        (("linear", "linear"), 4, ("linear", "linear", "linear", "linear")),
        (("cosine", "cosine", "cosine"), 3, ("cosine", "cosine", "cosine")),
    ],
)
def test_noise_schedules_are_padded_as_the_reference_pads_them(given, num_unets, expected):
    config = ImagenConfig(unets=[DICT_UNET] * num_unets, image_sizes=(8,) * num_unets, noise_schedules=given)
    assert config.noise_schedules == expected


def test_too_many_noise_schedules_is_an_error():
    with pytest.raises(ValueError, match="noise_schedules has 3 entries"):
        ImagenConfig(unets=[DICT_UNET] * 2, image_sizes=(8, 16), noise_schedules=("cosine",) * 3)


def test_dict_unets_get_the_reference_unet_config_defaults_and_is_null_is_a_null_unet():
    config = ImagenConfig(unets=[dict(is_null=True), DICT_UNET], image_sizes=(8, 16), text_embed_dim=16)
    imagen = config.create()
    assert isinstance(imagen.unets[0], NullUnet)
    unet = imagen.unets[1]
    assert (unet.config["attn_heads"], unet.config["attn_dim_head"]) == (16, 32)
    assert unet.config["cond_dim"] is None and unet.config["channels"] == 3
    assert ImagenConfig(unets=[dict(DICT_UNET, attn_heads=2)], image_sizes=8).unets[0]["attn_heads"] == 2
    with pytest.raises(ValueError, match=r"unets\[0\] must give \['dim_mults'\]"):
        ImagenConfig(unets=[dict(dim=8)], image_sizes=8)


def _checkpoint(tmp_path, imagen):
    """A trainer-style checkpoint: online weights under imagen.*, EMA weights (here: doubled) under ema_imagen.*."""
    state = {k: v.contiguous() for k, v in imagen.state_dict().items()}
    tensors = {f"imagen.{k}": v for k, v in state.items()}
    tensors.update({f"ema_imagen.{k}": (v * 2 if v.is_floating_point() else v) for k, v in state.items()})
    path = tmp_path / "checkpoint.safetensors"
    write_container(path, tensors, format=CHECKPOINT_FORMAT, version=CHECKPOINT_FORMAT_VERSION,
                    metadata={"imagen_config": imagen.config.to_json()})
    return path, state


def test_load_imagen_from_checkpoint_gives_the_trained_weights_unless_ema_is_asked_for(tmp_path):
    imagen = randomize_cascade_(Imagen(unets=(tiny_unet(), tiny_unet()), image_sizes=(8, 16), text_embed_dim=16))
    path, state = _checkpoint(tmp_path, imagen)
    key = next(k for k, v in state.items() if v.is_floating_point() and v.abs().sum() > 0)
    assert torch.equal(load_imagen_from_checkpoint(path).state_dict()[key], state[key])
    assert torch.equal(load_imagen_from_checkpoint(path, load_ema_if_available=True).state_dict()[key], 2 * state[key])
    fresh = load_imagen_from_checkpoint(path, load_weights=False)
    assert fresh.config == imagen.config and not torch.equal(fresh.state_dict()[key], state[key])
    imagen.save_pretrained(tmp_path / "folder")
    assert torch.equal(load_imagen_from_checkpoint(tmp_path / "folder").state_dict()[key], state[key])


def unconditional(**settings):
    imagen = Imagen(unets=(tiny_unet(), tiny_unet()), image_sizes=(8, 16), condition_on_text=False, timesteps=2,
                    **settings)
    return randomize_cascade_(imagen).eval()


def test_unconditional_cascades_ignore_texts_and_guidance_with_one_warning(monkeypatch):
    from imagen.cascade import sampling

    monkeypatch.setattr(sampling, "_WARNED", set())  # the once-set is process-wide: whatever ran before
    imagen = unconditional()
    plain = imagen.sample(batch_size=2, generator=0, use_tqdm=False)
    with pytest.warns(UserWarning, match="cond_scale != 1 .* is ignored"):
        guided = imagen.sample(batch_size=2, cond_scale=3.0, generator=0, use_tqdm=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time: no warning
        imagen.sample(batch_size=2, cond_scale=3.0, generator=0, use_tqdm=False)
    assert torch.equal(plain, guided)
    imagen(torch.rand(2, 3, 16, 16), texts=["a whale", "a cake"], unet_number=1)  # texts ignored in training too
    with pytest.raises(ValueError, match="takes no text_embeds"):
        imagen.sample(text_embeds=torch.randn(2, 4, 16), use_tqdm=False)
    with pytest.raises(ValueError, match="cond_drop_prob > 0"):
        unconditional(cond_drop_prob=0.0).sample(batch_size=1, cond_scale=2.0, use_tqdm=False)


def test_per_unet_cond_scale_init_images_and_skip_steps_are_one_plan_per_stage():
    imagen = Imagen(unets=(tiny_unet(), tiny_unet()), image_sizes=(8, 16), text_embed_dim=16, timesteps=(4, 3))
    init = torch.rand(1, 3, 16, 16)
    plans = imagen.sampling_plan(cond_scale=(3.0, 1.5), init_images=[None, init], skip_steps=(0, 2),
                                 sampler=(None, "k_euler"), texts=["ignored by the plan"])
    assert [p.cond_scale for p in plans] == [3.0, 1.5]
    assert plans[0].init_images is None and plans[1].init_images is init
    assert [(p.sampler, p.steps, p.skip_steps) for p in plans] == [("ddpm", 4, 0), ("euler", 3, 2)]
    assert plans[0].levels.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])  # the reference's time grid
    assert [p.lowres_noise_level for p in plans] == [None, 0.2]
    assert [p.unet_number for p in imagen.sampling_plan(start_at_unet_number=2)] == [2]
    with pytest.raises(ValueError, match="cond_scale has 3 entries"):
        imagen.sampling_plan(cond_scale=(1.0, 2.0, 3.0))
    with pytest.raises(TypeError, match="unknown keywords"):
        imagen.sampling_plan(cond_scael=2.0)


def test_elucidated_plans_take_sigma_overrides_and_keep_the_heun_options_under_an_alias():
    imagen = ElucidatedImagen(unets=(tiny_unet(), tiny_unet()), image_sizes=(8, 16), text_embed_dim=16,
                              num_sample_steps=3)
    first, second = imagen.sampling_plan(sigma_min=0.01, sigma_max=(40.0, 20.0), sampler=(None, "k_heun"))
    assert first.levels[0].item() == pytest.approx(40.0) and second.levels[0].item() == pytest.approx(20.0)
    assert first.levels[-2].item() == pytest.approx(0.01, rel=1e-4)
    assert second.sampler == "heun" and second.sampler_options["S_churn"] == 80.0
    with pytest.raises(ValueError, match="ElucidatedImagen sample keywords"):
        Imagen(unets=tiny_unet(), image_sizes=8, text_embed_dim=16).sampling_plan(sigma_max=10.0)


def test_config_json_round_trip_keeps_padded_schedules_and_dict_unets():
    config = ImagenConfig(unets=[DICT_UNET, DICT_UNET, dict(is_null=True)], image_sizes=(8, 16, 32))
    again = ImagenConfig.from_json(config.to_json())
    assert again == config and json.loads(config.to_json())["noise_schedules"] == ["cosine", "cosine", "linear"]


def test_uint8_images_are_divided_by_255():
    imagen = randomize_cascade_(Imagen(unets=tiny_unet(), image_sizes=8, text_embed_dim=16))
    images = (torch.rand(2, 3, 8, 8) * 255).to(torch.uint8)
    embeds = torch.randn(2, 4, 16)
    torch.manual_seed(1)
    as_bytes = imagen(images, text_embeds=embeds)
    torch.manual_seed(1)
    as_floats = imagen(images / 255, text_embeds=embeds)
    assert torch.equal(as_bytes, as_floats)



def test_use_one_unet_in_gpu_keeps_only_the_sampling_stage_on_the_accelerator(monkeypatch):
    """On an accelerator each stage samples with the other unets parked on the CPU, and every unet
    goes back afterwards (recorded here through ``.to`` on a CPU machine)."""
    imagen = Imagen(unets=(tiny_unet(), tiny_unet()), image_sizes=(8, 16), text_embed_dim=16)
    accelerator = torch.device("cuda", 0)
    moves = []
    for number, unet in enumerate(imagen.unets, start=1):
        monkeypatch.setattr(unet, "to", lambda device, number=number, unet=unet: moves.append((number, str(device)))
                            or unet)
    monkeypatch.setattr(type(imagen), "device", property(lambda self: accelerator))
    with imagen._one_unet_on(1, enabled=True):
        assert moves == [(1, "cpu"), (2, "cuda:0")]
    assert moves[2:] == [(1, "cpu"), (2, "cpu")]  # back where they were (the CPU here)
    moves.clear()
    with imagen._one_unet_on(1, enabled=False):
        pass
    assert moves == []
