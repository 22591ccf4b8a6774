"""sample(schedule=...): the spacing of each stage's levels, the tuned defaults, the refusals."""

import pytest
import torch
from cascade_testing import randomize_cascade_, tiny_unet

from imagen.cascade import ElucidatedImagen, Imagen
from imagen.diffusion import VPDenoiser, VPX0Model, spaced_sigmas, vp_time_grid


def _cascade(cls, **settings):
    steps = {"timesteps": 4} if cls is Imagen else {"num_sample_steps": 4}
    return randomize_cascade_(cls(unets=(tiny_unet(), tiny_unet()), image_sizes=(8, 16), text_embed_dim=16,
                                  cond_drop_prob=0.2, **steps, **settings), seed=1).eval()


def test_asking_nothing_keeps_the_reference_grids():
    imagen, elucidated = _cascade(Imagen), _cascade(ElucidatedImagen)
    plan = imagen.sampling_plan()[0]
    assert (plan.sampler, plan.schedule, plan.sigma_floor) == ("ddpm", "time", None)
    assert torch.equal(plan.levels, vp_time_grid(4))
    assert isinstance(imagen.stages[0].x0_model(imagen.unets[0], plan.sampler, plan.schedule), VPX0Model)
    plan = elucidated.sampling_plan()[1]
    assert (plan.sampler, plan.schedule) == ("heun", "karras")


def test_named_schedules_space_the_levels_per_stage():
    imagen = _cascade(Imagen)
    plans = imagen.sampling_plan(sampler="dpmpp_2m", steps=12, schedule=["karras", "exponential"])
    assert [p.schedule for p in plans] == ["karras", "exponential"]
    torch.testing.assert_close(plans[0].levels, spaced_sigmas("karras", 12, 0.002, 80.0))
    torch.testing.assert_close(plans[1].levels, spaced_sigmas("exponential", 12, 0.002, 80.0))
    # ddpm on sigmas: the sigma-form DDPM with the VP denoiser, not the time grid
    plan = imagen.sampling_plan(schedule="sech")[0]
    assert plan.sampler == "ddpm" and plan.levels[0] == 80.0
    assert isinstance(imagen.stages[0].x0_model(imagen.unets[0], plan.sampler, plan.schedule), VPDenoiser)


@pytest.mark.parametrize("cls", [Imagen, ElucidatedImagen])
def test_few_step_default_is_sech_down_to_the_floor(cls):
    plan = _cascade(cls).sampling_plan(sampler="unipc", steps=5)[0]
    assert (plan.schedule, plan.sigma_floor) == ("sech", 0.05)
    assert plan.levels[-1] == 0 and plan.levels[-2].item() == pytest.approx(0.05)
    assert _cascade(cls).sampling_plan(sampler="unipc", steps=15)[0].sigma_floor is None
    assert _cascade(cls).sampling_plan(sampler="dpmpp_2m", steps=30)[0].schedule == "karras"


@pytest.mark.parametrize("cls", [Imagen, ElucidatedImagen])
def test_every_schedule_samples(cls):
    cascade = _cascade(cls)
    embeds = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    outs = {}
    for schedule in ("karras", "exponential", "sech", "default"):
        outs[schedule] = cascade.sample(text_embeds=embeds, sampler="unipc", steps=5, schedule=schedule,
                                        stop_at_unet_number=1, generator=3, use_tqdm=False)
        assert outs[schedule].shape == (2, 3, 8, 8) and torch.isfinite(outs[schedule]).all()
    assert not torch.equal(outs["karras"], outs["exponential"])


@pytest.mark.parametrize(("sampler", "steps", "limit"), [("heun", 5, 6), ("dpmpp_3m", 9, 10)])
def test_divergent_step_counts_are_refused(sampler, steps, limit):
    with pytest.raises(ValueError, match=f"steps={steps} .* {sampler} .* below {limit} steps"):
        _cascade(ElucidatedImagen).sampling_plan(sampler=sampler, steps=steps)
    _cascade(ElucidatedImagen).sampling_plan(sampler=sampler, steps=limit)
    # the configured reference path (num_sample_steps=4 with its default Heun) is left as the reference runs it
    assert _cascade(ElucidatedImagen).sampling_plan()[0].steps == 4


def test_bad_schedules_are_named():
    with pytest.raises(ValueError, match=r"schedule must be one of .* got 'cosine'"):
        _cascade(Imagen).sampling_plan(schedule="cosine")
    with pytest.raises(ValueError, match="schedule='time' is the Gaussian stages' time grid"):
        _cascade(ElucidatedImagen).sampling_plan(schedule="time")
