"""``refine_from_step``: a later stage starts from the previous stage's output noised to the level
of step k (SDEdit) instead of from pure noise, inside one ``sample`` call."""

import pytest
import torch
from cascade_testing import randomize_cascade_, tiny_unet

from imagen.cascade import ElucidatedImagen, Imagen
from imagen.diffusion import karras_sigmas, q_sample, randn


def two_stage(cls, **settings):
    settings = {"image_sizes": (8, 16), "text_embed_dim": 16, "cond_drop_prob": 0.2, **settings}
    settings.setdefault("timesteps" if cls is Imagen else "num_sample_steps", 6)
    return randomize_cascade_(cls(unets=(tiny_unet(), tiny_unet()), **settings), seed=1).eval()


def first_network_input(imagen, index: int, **sample_kwargs) -> torch.Tensor:
    """The x that unet ``index`` sees first while ``imagen.sample(**sample_kwargs)`` runs."""
    seen = []
    hook = imagen.unets[index].register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        imagen.sample(text_embeds=torch.randn(1, 5, 16), use_tqdm=False, **sample_kwargs)
    finally:
        hook.remove()
    return seen[0]


def generators(count: int, seed: int = 5) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(count)]


@pytest.mark.parametrize("skip", [1, 3, 4])
def test_an_edm_stage_refines_exactly_as_the_karras_schedule_cut_at_step_k(skip):
    """The reference's own way to the same start: ``init_images`` plus ``sigma_max`` = the level of
    step k and ``steps - k`` steps (a Karras schedule cut at level k is the Karras schedule of the
    remaining levels), sampled stage by stage with the same per-sample generators."""
    imagen = two_stage(ElucidatedImagen)
    embeds = torch.randn(2, 5, 16)
    common = dict(text_embeds=embeds, use_tqdm=False, cond_scale=2.0, sampler="dpmpp_2m",
                  schedule="karras")
    base, refined = imagen.sample(generator=generators(2), refine_from_step=(None, skip),
                                  return_all_unet_outputs=True, **common)
    streams = generators(2)
    base_alone = imagen.sample(generator=streams, stop_at_unet_number=1, **common)
    stage = imagen.stages[1]
    level = float(karras_sigmas(6, stage.sigma_min, stage.sigma_max, rho=stage.rho)[skip])
    by_hand = imagen.sample(generator=streams, start_at_unet_number=2, start_image_or_video=base_alone,
                            init_images=base_alone, sigma_max=(None, level), steps=(None, 6 - skip), **common)
    assert torch.equal(base, base_alone)
    torch.testing.assert_close(refined, by_hand, atol=1e-5, rtol=0)


def test_a_gaussian_stage_starts_at_q_sample_of_the_upsampled_image_at_step_k():
    """The first network input of the refined stage is z_t = alpha_t x + sigma_t eps for the time t of
    step k, x the previous output upsampled, eps the stage's first draw from each sample's stream."""
    imagen = two_stage(Imagen)
    skip, seed = 2, 11
    image = torch.rand(1, 3, 8, 8)
    first = first_network_input(imagen, 1, start_at_unet_number=2, start_image_or_video=image,
                                refine_from_step=skip, generator=[torch.Generator().manual_seed(seed)])
    stream = torch.Generator().manual_seed(seed)
    randn((1, 3, 16, 16), [stream])  # the low-res augmentation's draw comes first
    eps = randn((1, 3, 16, 16), [stream])
    upsampled = imagen._to_model_range(imagen._resize(image, 1, None))
    t = torch.linspace(1, 0, 7)[skip]
    expected = q_sample(upsampled, imagen.stages[1].schedule.log_snr(t.expand(1)), eps)
    torch.testing.assert_close(first, expected, atol=1e-6, rtol=0)


def test_the_first_stage_refines_its_init_images_img2img():
    """With ``init_images`` on unet 1, ``refine_from_step`` starts it from q(z_t | init) at step k."""
    imagen = two_stage(Imagen)
    skip, seed = 3, 2
    image = torch.rand(1, 3, 8, 8)
    first = first_network_input(imagen, 0, init_images=image, refine_from_step=skip, stop_at_unet_number=1,
                                generator=[torch.Generator().manual_seed(seed)])
    eps = randn((1, 3, 8, 8), [torch.Generator().manual_seed(seed)])
    t = torch.linspace(1, 0, 7)[skip]
    expected = q_sample(image * 2 - 1, imagen.stages[0].schedule.log_snr(t.expand(1)), eps)
    torch.testing.assert_close(first, expected, atol=1e-6, rtol=0)


def test_refining_differs_from_redrawing_and_keeps_the_base_picture_closer():
    imagen = two_stage(ElucidatedImagen)
    embeds = torch.randn(3, 5, 16)
    common = dict(text_embeds=embeds, use_tqdm=False, return_all_unet_outputs=True)
    base, redrawn = imagen.sample(generator=3, **common)
    _, refined = imagen.sample(generator=3, refine_from_step=(None, 4), **common)
    upsampled = torch.nn.functional.interpolate(base, size=16, mode="bilinear", antialias=True)
    assert (refined - upsampled).abs().mean() < (redrawn - upsampled).abs().mean()


@pytest.mark.parametrize(("settings", "match"), [
    (dict(refine_from_step=2), "no image to refine"),
    (dict(refine_from_step=(None, 6)), r"refine_from_step for unet 2 must be None or an int in \[0, 6\)"),
    (dict(refine_from_step=(None, True)), "refine_from_step for unet 2"),
    (dict(refine_from_step=(None, 2), skip_steps=(0, 1)), "replaces skip_steps"),
    (dict(refine_from_step=(None, 2, 1)), "refine_from_step"),
])
def test_bad_refine_from_step_names_the_keyword(settings, match):
    imagen = two_stage(Imagen)
    with pytest.raises(ValueError, match=match):
        imagen.sampling_plan(**settings)
