import itertools
import math

import pytest
import torch

from imagen.diffusion import (
    SAMPLERS,
    exponential_sigmas,
    get_sampler,
    karras_sigmas,
    randn_like,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_3m,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_unipc,
)
from imagen.diffusion.testing import CountingDenoiser, GaussianMixture

DETERMINISTIC = {
    "euler": sample_euler,
    "ddim": sample_ddim,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_3m": sample_dpmpp_3m,
    "unipc": sample_unipc,
    "dpmpp_2m_sde(eta=0)": lambda *a, **k: sample_dpmpp_2m_sde(*a, eta=0.0, **k),
}


# UniPC's parts, for the order test only
VARIANTS = {
    **DETERMINISTIC,
    "unipc(order=1)": lambda *a, **k: sample_unipc(*a, order=1, **k),
    "unipc(no corrector)": lambda *a, **k: sample_unipc(*a, corrector=False, **k),
}


def _start(gaussian, n, sigma_max, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *gaussian.event_shape, generator=gen, dtype=torch.float64) * sigma_max


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_map_noise_to_the_closed_form_ode_solution(name, gaussian):
    first_order = name in ("euler", "ddim")
    sigmas = karras_sigmas(400 if first_order else 100, 1e-3, 20.0).double()
    x = _start(gaussian, 16, 20.0)
    out = DETERMINISTIC[name](gaussian.denoiser, x, sigmas)
    expected = gaussian.flow(x, 20.0, 0.0)
    torch.testing.assert_close(out, expected, atol=0.02 if first_order else 3e-3, rtol=0)


def _error(sampler, gaussian, steps):
    sigmas = exponential_sigmas(steps, 0.05, 10.0).double()[:-1]  # stop at 0.05: no final jump to 0
    x = _start(gaussian, 8, 10.0)
    out = sampler(gaussian.denoiser, x, sigmas)
    return (out - gaussian.flow(x, sigmas[0].item(), sigmas[-1].item())).abs().max().item()


@pytest.mark.parametrize(
    ("name", "order"),
    [("euler", 1), ("heun", 2), ("dpmpp_2m", 2), ("dpmpp_3m", 2), ("unipc(order=1)", 2), ("unipc(no corrector)", 2),
     ("unipc", 3)],
)
def test_error_shrinks_at_the_algorithms_order(name, order, gaussian):
    sampler = VARIANTS[name]
    errors = [_error(sampler, gaussian, n) for n in (16, 32, 64)]
    observed = [math.log2(a / b) for a, b in itertools.pairwise(errors)]
    # dpmpp_3m: third-order steps, but its lower-order warm-up steps leave a global O(h^2) term;
    # UniPC: the corrector adds one order to its predictor (UniP-1 + UniC: 2, UniP-2 + UniC: 3)
    assert observed[-1] == pytest.approx(order, abs=0.3), (errors, observed)
    if name == "dpmpp_3m":
        assert errors[-1] < _error(sample_dpmpp_2m, gaussian, 64) / 5


def _moments(samples):
    flat = samples.flatten(1)
    return flat.mean(0), torch.cov(flat.T)


STOCHASTIC = {
    "ddpm": sample_ddpm,
    "ddim(eta=1)": lambda *a, **k: sample_ddim(*a, eta=1.0, **k),
    "euler_ancestral": sample_euler_ancestral,
    "heun(S_churn=40)": lambda *a, **k: sample_heun(*a, S_churn=40.0, **k),
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
}


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_reproduce_the_mixtures_mean_and_covariance(name, mixture):
    # first-order ancestral samplers need more steps than the second-order ones for a 6% match
    n, steps = 4000, {"heun(S_churn=40)": 30, "dpmpp_2m_sde": 60}.get(name, 250)
    sigmas = karras_sigmas(steps, 0.002, 40.0).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, 2, generator=gen, dtype=torch.float64) * 40.0
    out = STOCHASTIC[name](mixture.denoiser, x, sigmas, generator=gen)
    mean, cov = _moments(out)
    standard_error = (torch.diagonal(mixture.cov) / n).sqrt()
    assert ((mean - mixture.mean).abs() < 5 * standard_error).all(), (mean, mixture.mean)
    torch.testing.assert_close(cov, mixture.cov, atol=0.06 * mixture.cov.diagonal().max().item(), rtol=0)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_nfe_counts_equal_the_algorithms(name, mixture):
    sigmas = karras_sigmas(7, 0.01, 10.0)
    counter = CountingDenoiser(mixture.denoiser)
    get_sampler(name)(counter, torch.randn(3, 2) * 10, sigmas, generator=torch.Generator().manual_seed(0))
    expected = 2 * 7 - 1 if name == "heun" else 7  # Heun with N nonzero sigmas: 2N - 1
    assert counter.nfe == expected and counter.evaluations == 3 * expected


def test_ddpm_ddim_eta_one_and_euler_ancestral_are_the_same_chain(mixture):
    sigmas = karras_sigmas(12, 0.01, 10.0).double()
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 10
    runs = [
        s(mixture.denoiser, x, sigmas, generator=torch.Generator().manual_seed(4))
        for s in (sample_ddpm, STOCHASTIC["ddim(eta=1)"], sample_euler_ancestral)
    ]
    torch.testing.assert_close(runs[0], runs[1])
    torch.testing.assert_close(runs[0], runs[2])


@pytest.mark.parametrize("name", ["ddpm", "euler_ancestral", "dpmpp_2m_sde"])
def test_per_sample_generators_give_the_same_sample_whatever_the_batch(name, mixture, device):
    """On the test device, with generators there (a CUDA generator draws on CUDA only)."""
    sigmas = karras_sigmas(6, 0.01, 10.0, device=device)
    seeds = [11, 12, 13]
    zeros = torch.zeros(2, device=device)
    x = torch.stack([randn_like(zeros, torch.Generator(device).manual_seed(s)) for s in seeds]) * 10
    gens = [torch.Generator(device).manual_seed(s) for s in seeds]
    denoiser = GaussianMixture(mixture.means.to(device), mixture.stds.to(device), mixture.weights.to(device)).denoiser
    batch = get_sampler(name)(denoiser, x, sigmas, generator=gens)
    alone = get_sampler(name)(denoiser, x[1:2], sigmas, generator=[torch.Generator(device).manual_seed(12)])
    assert batch.device.type == device.type
    torch.testing.assert_close(batch[1:2], alone)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_take_videos_and_report_every_step(name):
    x = torch.randn(2, 3, 4, 5, 5)
    seen = []
    out = get_sampler(name)(lambda x, sigma: x / (1 + sigma[:, None, None, None, None] ** 2), x * 5,
                            karras_sigmas(4, 0.01, 5.0), callback=seen.append)
    assert out.shape == x.shape and [c["i"] for c in seen] == [0, 1, 2, 3]


def test_names_from_other_libraries_map_to_ours():
    assert get_sampler("k_euler_a") is sample_euler_ancestral
    assert get_sampler("Euler a") is sample_euler_ancestral
    assert get_sampler("DPM++ 2M") is sample_dpmpp_2m
    assert get_sampler("dpmpp_2m_sde") is sample_dpmpp_2m_sde
    assert get_sampler("DPMSolverMultistepScheduler") is sample_dpmpp_2m
    assert get_sampler("DDIMScheduler") is sample_ddim
    assert get_sampler("k_heun") is sample_heun
    with pytest.raises(ValueError, match="'plms'"):
        get_sampler("plms")


@pytest.mark.parametrize(
    "sigmas", [torch.tensor([1.0, -0.5, 0.0]), torch.tensor([1.0, 2.0, 0.0]), torch.tensor([1.0]),
               torch.tensor([1.0, 0.0, 0.0])]
)
def test_bad_sigmas_raise(sigmas):
    with pytest.raises(ValueError, match="sigmas"):
        sample_euler(lambda x, s: x, torch.zeros(1, 2), sigmas)


def test_negative_sigma_is_named_in_the_error():
    with pytest.raises(ValueError, match=r"-0\.5"):
        sample_heun(lambda x, s: x, torch.zeros(1, 2), torch.tensor([1.0, -0.5, 0.0]))
