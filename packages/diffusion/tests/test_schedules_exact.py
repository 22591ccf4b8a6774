"""Schedules to the last bit: documented defaults, correctly rounded levels, clamping outside [0, 1],
dtypes and devices, the edge step counts and every refusal (the gaps mutation testing found)."""

import math

import pytest
import torch

from imagen.diffusion import (
    SIGMA_SPACINGS,
    exponential_sigmas,
    get_noise_schedule,
    karras_sigmas,
    log_snr_from_edm_sigma,
    schedule_sigmas,
    sech_sigmas,
    spaced_sigmas,
    timesteps,
    uniform_sigmas,
)

SIGMA_SEQUENCES = [karras_sigmas, exponential_sigmas, sech_sigmas, uniform_sigmas]


def _float32_ulps(got: torch.Tensor, exact: list[float]) -> float:
    """The largest error of float32 ``got`` against float64 ``exact``, in float32 ulps of ``exact``."""
    exact = torch.tensor(exact, dtype=torch.float64)
    ulp = torch.finfo(torch.float32).eps * exact.abs().clamp(min=torch.finfo(torch.float32).tiny)
    return ((got.double() - exact).abs() / ulp).max().item()


@pytest.mark.parametrize("make", [*SIGMA_SEQUENCES, lambda steps, **kw: schedule_sigmas("cosine", steps, **kw)])
def test_defaults_are_edms_range(make):
    """sigma_max = 80 and sigma_min = 0.002 (EDM's range) when not given."""
    assert torch.equal(make(6), make(6, sigma_min=0.002, sigma_max=80.0))


def test_karras_default_rho_is_7_and_sech_defaults_are_centre_half_width_2():
    assert torch.equal(karras_sigmas(6), karras_sigmas(6, 0.002, 80.0, rho=7.0))
    assert torch.equal(sech_sigmas(6), sech_sigmas(6, 0.002, 80.0, sigma_center=0.5, width=2.0))


@pytest.mark.parametrize("make", SIGMA_SEQUENCES)
def test_one_step_is_exactly_sigma_max_and_two_steps_are_exactly_the_ends(make):
    assert make(1, 0.01, 3.0).tolist() == [torch.tensor(3.0).item(), 0.0]
    two = make(2, 0.01, 3.0)
    assert two[0].item() == torch.tensor(3.0).item() and two[2].item() == 0.0
    assert two[1].item() == pytest.approx(0.01, rel=1e-5)


def test_sigma_sequences_are_correctly_rounded_float32_of_their_closed_forms():
    """Computed in float64 and rounded once: within one float32 ulp of the exact levels."""
    steps, lo, hi = 13, 0.002, 80.0
    ramp = [i / (steps - 1) for i in range(steps)]
    exponential = [hi * (lo / hi) ** r for r in ramp]
    uniform = [hi + r * (lo - hi) for r in ramp]
    c, w = 0.5, 2.0
    a, b = (math.atan((s / c) ** (1 / w)) for s in (hi, lo))
    sech = [c * math.tan(a + r * (b - a)) ** w for r in ramp]
    for got, exact in ((exponential_sigmas(steps, lo, hi), exponential), (uniform_sigmas(steps, lo, hi), uniform),
                       (sech_sigmas(steps, lo, hi), sech)):
        assert got.dtype == torch.float32 and got[-1] == 0
        assert _float32_ulps(got[:-1], exact) <= 1.0


@pytest.mark.parametrize("make", [*SIGMA_SEQUENCES, lambda steps, **kw: schedule_sigmas("linear", steps, **kw),
                                  lambda steps, **kw: timesteps(steps, **kw)])
def test_the_device_argument_is_honoured(make):
    assert make(4, device="meta").device.type == "meta"


def test_spaced_sigmas_dispatch_by_name_and_refuse_others():
    for name, make in zip(SIGMA_SPACINGS, (karras_sigmas, exponential_sigmas, sech_sigmas), strict=True):
        assert torch.equal(spaced_sigmas(name, 7, 0.01, 20.0), make(7, 0.01, 20.0))
        assert torch.equal(spaced_sigmas(name, 7), make(7))
        assert spaced_sigmas(name, 3, device="meta").device.type == "meta"
    with pytest.raises(ValueError, match=r"schedule must be one of \['karras', 'exponential', 'sech'\], got 'Karras'"):
        spaced_sigmas("Karras", 7)


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_log_snr_clamps_times_outside_0_1_and_accepts_integer_times(name):
    schedule = get_noise_schedule(name)
    ends = schedule.log_snr(torch.tensor([0.0, 1.0]))
    assert torch.equal(schedule.log_snr(torch.tensor([-0.5, 1.5])), ends)
    assert torch.equal(schedule.log_snr(torch.tensor([0, 1])), ends)  # integer times: the default float dtype


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_time_clamps_to_0_1_and_keeps_the_floating_dtype(name):
    schedule = get_noise_schedule(name)
    assert schedule.time(torch.tensor([1e4, -1e4])).tolist() == [0.0, 1.0]  # cleaner / noisier than the range
    assert schedule.time(torch.tensor([0.0])).dtype == torch.float32
    assert schedule.time(torch.tensor([0.0], dtype=torch.float64)).dtype == torch.float64
    integer = schedule.time(torch.tensor([0]))  # log-SNR 0 as an integer: a float time, not truncated to 0
    assert integer.dtype == torch.float32 and torch.equal(integer, schedule.time(torch.tensor([0.0])))
    assert 0.0 < integer.item() < 1.0


def test_schedule_sigmas_quadratic_spacing_puts_the_times_on_a_squared_ramp():
    schedule = get_noise_schedule("cosine")
    steps, lo, hi = 6, 0.05, 50.0
    sigmas = schedule_sigmas(schedule, steps, sigma_min=lo, sigma_max=hi, spacing="quadratic")
    t_start, t_end = schedule.time(log_snr_from_edm_sigma(torch.tensor([hi, lo], dtype=torch.float64))).tolist()
    t = schedule.time(log_snr_from_edm_sigma(sigmas[:-1].double()))
    expected = [t_end + (t_start - t_end) * (1 - i / (steps - 1)) ** 2 for i in range(steps)]
    assert t.tolist() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_schedule_sigmas_reach_sigma_max_to_float32_precision(name):
    assert schedule_sigmas(name, 5)[0].item() == pytest.approx(80.0, rel=1.5e-7)


def test_schedule_sigmas_refuse_a_range_wholly_beyond_the_schedule():
    with pytest.raises(ValueError, match=r"sigma_min=1000000\.0 and sigma_max=10000000\.0 fall outside the linear"):
        schedule_sigmas("linear", 5, sigma_min=1e6, sigma_max=1e7)  # both clamp to t = 1


def test_unknown_noise_schedule_names_the_parameter():
    with pytest.raises(ValueError, match=r"noise_schedule must be one of \['cosine', 'linear'\], got 'sigmoid'"):
        get_noise_schedule("sigmoid")


@pytest.mark.parametrize("make", [*SIGMA_SEQUENCES, lambda steps, lo, hi: schedule_sigmas("cosine", steps, lo, hi)])
def test_sigma_ranges_are_refused_at_the_boundary(make):
    with pytest.raises(ValueError, match=r"sigma_min must be > 0, got 0"):
        make(5, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"sigma_max must be > sigma_min \(0\.5\), got 0\.5"):
        make(5, 0.5, 0.5)


def test_shape_parameters_are_refused_at_zero():
    with pytest.raises(ValueError, match=r"rho must be > 0, got 0"):
        karras_sigmas(5, rho=0.0)
    with pytest.raises(ValueError, match=r"width must be > 0, got 0"):
        sech_sigmas(5, width=0.0)
    with pytest.raises(ValueError, match=r"sigma_center must be > 0, got 0"):
        sech_sigmas(5, sigma_center=0.0)


def test_timesteps_edges():
    assert timesteps(1, 0.7, 0.2).tolist() == [0.7] and timesteps(1).dtype == torch.float64
    assert timesteps(2, 1.0, 0.0).tolist() == [1.0, 0.0]
    assert timesteps(3, 0.9, 0.1, spacing="quadratic").tolist() == pytest.approx([0.9, 0.3, 0.1], abs=1e-15)
    with pytest.raises(ValueError, match=r"spacing must be one of \['uniform', 'quadratic'\], got 'cubic'"):
        timesteps(3, spacing="cubic")
    for start, end in ((0.5, 0.5), (1.5, 0.0), (0.5, -0.1)):
        with pytest.raises(ValueError, match=rf"need 0 <= t_end < t_start <= 1, got t_start={start}, t_end={end}"):
            timesteps(3, start, end)
