import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from imagen.diffusion import (
    alpha_sigma_from_log_snr,
    edm_sigma_from_log_snr,
    exponential_sigmas,
    get_noise_schedule,
    karras_sigmas,
    log_snr_from_edm_sigma,
    schedule_sigmas,
    sech_sigmas,
    timesteps,
    uniform_sigmas,
)

names = st.sampled_from(["cosine", "linear"])


@given(names)
def test_log_snr_is_strictly_decreasing_and_finite_with_the_reference_end_points(name):
    schedule = get_noise_schedule(name)
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    log_snr = schedule.log_snr(t)
    assert torch.isfinite(log_snr).all()
    assert (log_snr[1:] < log_snr[:-1]).all()
    start = -math.log(math.expm1(1e-4)) if name == "linear" else -2 * math.log(math.tan(0.008 / 1.008 * math.pi / 2))
    assert log_snr[0].item() == pytest.approx(start, rel=1e-9)
    end = -math.log(math.expm1(10.0001)) if name == "linear" else -math.log(math.cos(math.pi / 2) ** -2 - 1)
    assert log_snr[-1].item() == pytest.approx(end, rel=1e-6)  # (nearly) pure noise at t = 1


def test_float32_log_snr_is_the_reference_float32_value_at_the_ends():
    """The reference evaluates the formulas in float32: the cosine reaches about -33.9 at t = 1."""
    t = torch.tensor([0.0, 1.0])
    cosine, linear = (get_noise_schedule(name).log_snr(t) for name in ("cosine", "linear"))
    assert cosine.dtype == torch.float32
    assert cosine[1].item() == pytest.approx(-33.8913, abs=1e-3)
    assert linear.tolist() == pytest.approx([9.21029, -10.00005], abs=1e-4)


@given(names, st.floats(0.0, 0.9999))  # the cosine's tan is capped within 6.4e-5 of t = 1
def test_time_inverts_log_snr(name, t):
    schedule = get_noise_schedule(name)
    t = torch.tensor([t], dtype=torch.float64)
    assert schedule.time(schedule.log_snr(t)).item() == pytest.approx(t.item(), abs=1e-6)


@given(st.floats(-30, 30))
def test_vp_alpha_sigma_are_a_unit_circle_and_match_edm_sigma(log_snr):
    log_snr = torch.tensor([log_snr], dtype=torch.float64)
    alpha, sigma = alpha_sigma_from_log_snr(log_snr)
    assert (alpha**2 + sigma**2).item() == pytest.approx(1.0, abs=1e-12)
    assert (sigma / alpha).item() == pytest.approx(edm_sigma_from_log_snr(log_snr).item(), rel=1e-9)
    assert log_snr_from_edm_sigma(edm_sigma_from_log_snr(log_snr)).item() == pytest.approx(log_snr.item(), abs=1e-9)


@given(st.integers(1, 60), st.floats(1e-3, 0.5), st.floats(1.0, 200.0), st.floats(1.0, 10.0))
def test_sigma_sequences_decrease_from_sigma_max_to_sigma_min_then_zero(steps, sigma_min, sigma_max, rho):
    for sigmas in (
        exponential_sigmas(steps, sigma_min, sigma_max),
        uniform_sigmas(steps, sigma_min, sigma_max),
        sech_sigmas(steps, sigma_min, sigma_max),
        sech_sigmas(steps, sigma_min, sigma_max, sigma_center=rho / 10, width=rho / 3),
    ):
        assert sigmas.shape == (steps + 1,)
        assert sigmas[-1] == 0 and (sigmas[1:] < sigmas[:-1]).all()
        assert sigmas[0].item() == pytest.approx(sigma_max, rel=1e-5)
        if steps > 1:
            assert sigmas[-2].item() == pytest.approx(sigma_min, rel=1e-5)
    # Karras sigmas are computed in float32 as the reference computes them: sigma_min is reached up to
    # the float32 rounding of sigma_max^(1/rho) - sigma_min^(1/rho)
    karras = karras_sigmas(steps, sigma_min, sigma_max, rho)
    assert karras.shape == (steps + 1,) and karras[-1] == 0 and (karras[1:] < karras[:-1]).all()
    assert karras[0].item() == pytest.approx(sigma_max, rel=1e-5)
    if steps > 1:
        assert karras[-2].item() == pytest.approx(sigma_min, rel=1e-4, abs=1e-6 * sigma_max)


@given(names, st.integers(1, 50), st.sampled_from(["uniform", "quadratic"]))
def test_schedule_sigmas_are_capped_like_edm(name, steps, spacing):
    sigmas = schedule_sigmas(name, steps, sigma_min=0.002, sigma_max=80.0, spacing=spacing)
    assert sigmas.shape == (steps + 1,) and sigmas[-1] == 0
    assert (sigmas[1:] < sigmas[:-1]).all()
    assert sigmas[0].item() == pytest.approx(80.0, rel=1e-4)  # not the schedule's ~1e4 at t = 1
    # sigma_min = 0.002 is below the schedule's range: the last level is the schedule's own at t = 0
    floor = edm_sigma_from_log_snr(get_noise_schedule(name).log_snr(torch.zeros(1, dtype=torch.float64)))
    if steps > 1:
        assert sigmas[-2].item() == pytest.approx(floor.item(), rel=1e-4)


@given(st.integers(2, 40), st.floats(0.01, 5.0), st.floats(0.3, 5.0))
def test_sech_sigmas_sit_at_even_quantiles_of_a_sech_density_in_log_sigma(steps, center, width):
    sigmas = sech_sigmas(steps, 0.002, 80.0, sigma_center=center, width=width)[:-1].double()
    # the CDF of sech(u) / pi is (2 / pi) atan(e^u), u = (log sigma - log c) / w: evenly spaced
    cdf = 2 / math.pi * torch.atan(torch.exp((sigmas.log() - math.log(center)) / width))
    gaps = cdf[:-1] - cdf[1:]
    assert torch.allclose(gaps, gaps.mean().expand_as(gaps), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("steps", [2, 7, 20])
def test_sech_sigmas_are_the_cosine_schedule_at_centre_1_width_1_and_exponential_when_wide(steps):
    cosine = schedule_sigmas("cosine", steps, sigma_min=0.05, sigma_max=50.0)  # inside the cosine's range
    assert torch.allclose(sech_sigmas(steps, 0.05, 50.0, sigma_center=1.0, width=1.0), cosine, rtol=1e-5)
    wide = sech_sigmas(steps, 0.002, 80.0, sigma_center=0.5, width=1e4)
    assert torch.allclose(wide, exponential_sigmas(steps, 0.002, 80.0), rtol=1e-3)


def test_sech_sigmas_bad_shape_parameters_raise():
    with pytest.raises(ValueError, match=r"sigma_center must be > 0, got 0"):
        sech_sigmas(10, sigma_center=0)
    with pytest.raises(ValueError, match=r"width must be > 0, got -1"):
        sech_sigmas(10, width=-1)


def test_timesteps_spacings():
    assert torch.allclose(timesteps(5), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    assert torch.allclose(timesteps(3, spacing="quadratic"), torch.tensor([1.0, 0.25, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("bad", ["sigmoid", "Cosine", ""])
def test_unknown_schedule_raises_naming_it(bad):
    with pytest.raises(ValueError, match=repr(bad)):
        get_noise_schedule(bad)


@pytest.mark.parametrize("make", [karras_sigmas, exponential_sigmas, uniform_sigmas, sech_sigmas, timesteps])
def test_steps_below_one_raise(make):
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        make(0)
    with pytest.raises(ValueError, match="got 0"):
        schedule_sigmas("cosine", 0)


def test_bad_sigma_range_raises():
    with pytest.raises(ValueError, match=r"sigma_min must be > 0, got -0\.1"):
        karras_sigmas(10, -0.1, 80)
