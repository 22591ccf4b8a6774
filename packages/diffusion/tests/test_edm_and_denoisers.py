import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from imagen.diffusion import (
    OBJECTIVES,
    EDMDenoiser,
    VPDenoiser,
    VPModelFromDenoiser,
    alpha_sigma_from_log_snr,
    edm_loss_weight,
    edm_preconditioning,
    edm_training_sigmas,
    get_noise_schedule,
    log_snr_from_edm_sigma,
    q_sample,
)


@given(st.floats(1e-3, 1e3), st.floats(0.1, 2.0))
def test_edm_preconditioning_identities(sigma, sigma_data):
    s = torch.tensor([sigma], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = edm_preconditioning(s, sigma_data)
    one = torch.ones(1, dtype=torch.float64)
    torch.testing.assert_close(c_in**2 * (s**2 + sigma_data**2), one)  # unit-variance network input
    torch.testing.assert_close(c_skip + c_out**2 / sigma_data**2, one)
    torch.testing.assert_close(c_out**2, c_skip * s**2)
    torch.testing.assert_close(edm_loss_weight(s, sigma_data) * c_out**2, one)  # unit effective weight
    torch.testing.assert_close(c_noise, s.log() / 4)


def test_edm_training_sigmas_are_log_normal():
    sigmas = edm_training_sigmas(20_000, -1.2, 1.2, generator=torch.Generator().manual_seed(0))
    assert sigmas.log().mean().item() == pytest.approx(-1.2, abs=0.03)
    assert sigmas.log().std().item() == pytest.approx(1.2, abs=0.03)


def test_negative_sigma_raises():
    with pytest.raises(ValueError, match=r"-1\.0"):
        edm_preconditioning(torch.tensor([-1.0]))


def test_edm_denoiser_round_trips_an_ideal_network(mixture):
    def network(x_in, c_noise):  # F = (D - c_skip x) / c_out, written from the oracle
        sigma = (4 * c_noise).exp()
        c_skip, c_out, c_in, _ = edm_preconditioning(sigma, 0.5)
        x = x_in / c_in[:, None]
        return (mixture.denoiser(x, sigma) - c_skip[:, None] * x) / c_out[:, None]

    x, sigma = torch.randn(6, 2, dtype=torch.float64), torch.rand(6, dtype=torch.float64) * 5 + 0.01
    torch.testing.assert_close(EDMDenoiser(network, 0.5)(x, sigma), mixture.denoiser(x, sigma))


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_vp_wrappers_round_trip(objective, schedule, mixture):
    sched = get_noise_schedule(schedule)
    for noise_cond in ("log_snr", "time"):
        denoiser = VPDenoiser(VPModelFromDenoiser(mixture.denoiser, sched, objective, noise_cond), sched, objective,
                              noise_cond)
        x, sigma = torch.randn(6, 2, dtype=torch.float64), torch.tensor([0.05, 0.3, 1.0, 3.0, 10.0, 30.0]).double()
        torch.testing.assert_close(denoiser(x, sigma), mixture.denoiser(x, sigma), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("noise_cond", ["log_snr", "time"])
def test_vp_denoiser_feeds_the_network_what_training_fed_it(noise_cond):
    sched, seen = get_noise_schedule("cosine"), {}

    def network(z, level):
        seen.update(z=z, level=level)
        return torch.zeros_like(z)

    x0, eps = torch.randn(2, 3, 2, 2, dtype=torch.float64), torch.randn(2, 3, 2, 2, dtype=torch.float64)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    log_snr = sched.log_snr(t)
    alpha, sigma_vp = alpha_sigma_from_log_snr(log_snr)
    sigma = sigma_vp / alpha
    VPDenoiser(network, sched, "noise", noise_cond=noise_cond)(x0 + sigma[:, None, None, None] * eps, sigma)
    torch.testing.assert_close(seen["level"], log_snr if noise_cond == "log_snr" else t)
    torch.testing.assert_close(seen["z"], q_sample(x0, log_snr, eps))
    torch.testing.assert_close(log_snr_from_edm_sigma(sigma), log_snr)
