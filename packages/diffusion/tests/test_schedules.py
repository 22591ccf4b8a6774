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
    end = -math.log(math.expm1(10.0001)) if name == "linear" else 2 * math.log(math.tan(1e-4))
    assert log_snr[-1].item() == pytest.approx(end, rel=1e-6)  # (nearly) pure noise at t = 1


@given(names, st.floats(0.0, 1.0))
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
        karras_sigmas(steps, sigma_min, sigma_max, rho),
        exponential_sigmas(steps, sigma_min, sigma_max),
        uniform_sigmas(steps, sigma_min, sigma_max),
    ):
        assert sigmas.shape == (steps + 1,)
        assert sigmas[-1] == 0 and (sigmas[1:] < sigmas[:-1]).all()
        assert sigmas[0].item() == pytest.approx(sigma_max, rel=1e-5)
        if steps > 1:
            assert sigmas[-2].item() == pytest.approx(sigma_min, rel=1e-5)


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


def test_timesteps_spacings():
    assert torch.allclose(timesteps(5), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    assert torch.allclose(timesteps(3, spacing="quadratic"), torch.tensor([1.0, 0.25, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("bad", ["sigmoid", "Cosine", ""])
def test_unknown_schedule_raises_naming_it(bad):
    with pytest.raises(ValueError, match=repr(bad)):
        get_noise_schedule(bad)


@pytest.mark.parametrize("make", [karras_sigmas, exponential_sigmas, uniform_sigmas, timesteps])
def test_steps_below_one_raise(make):
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        make(0)
    with pytest.raises(ValueError, match="got 0"):
        schedule_sigmas("cosine", 0)


def test_bad_sigma_range_raises():
    with pytest.raises(ValueError, match=r"sigma_min must be > 0, got -0\.1"):
        karras_sigmas(10, -0.1, 80)
