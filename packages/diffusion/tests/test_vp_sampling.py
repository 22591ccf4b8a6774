"""The time-grid VP DDPM loop, guidance's parallel-component removal, Heun's churn-step count."""

import pytest
import torch

from imagen.diffusion import (
    VPX0Model,
    alpha_sigma_from_log_snr,
    classifier_free_guidance,
    edm_sigma_from_log_snr,
    get_noise_schedule,
    prediction_from_x0,
    q_sample,
    q_sample_from_to,
    sample_ddpm,
    sample_heun,
    sample_vp_ddpm,
    split_parallel,
    vp_time_grid,
)
from imagen.diffusion.testing import CountingDenoiser


def vp_x0_model(denoiser):
    """An x0 model (z_t, log_snr) -> x0 from a VE denoiser (x, sigma) -> x0, through a VP noise network."""

    def network(z, log_snr):
        alpha, _ = alpha_sigma_from_log_snr(log_snr)
        x0 = denoiser(z / alpha.view(-1, *[1] * (z.ndim - 1)), edm_sigma_from_log_snr(log_snr))
        return prediction_from_x0("noise", x0, z, log_snr)

    return VPX0Model(network, "noise")


def test_the_time_grid_runs_from_one_to_zero():
    assert vp_time_grid(4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert vp_time_grid(4).dtype == torch.float32


def test_vp_ddpm_is_the_ve_ddpm_posterior_in_other_variables(gaussian):
    """On the same grid with the same noise, z_s = alpha_s x_s: the two are one algorithm (stopped
    before t = 0, whose log-SNR is finite: the VE grid would end at sigma 0.01, not 0)."""
    schedule = get_noise_schedule("linear")
    times = vp_time_grid(6).double()[:-1]
    log_snr = schedule.log_snr(times)
    sigmas = edm_sigma_from_log_snr(log_snr)
    alpha0, _ = alpha_sigma_from_log_snr(log_snr[:1])
    z = torch.randn(5, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    vp = sample_vp_ddpm(vp_x0_model(gaussian.denoiser), z, times, schedule=schedule,
                        generator=torch.Generator().manual_seed(1))
    ve = sample_ddpm(gaussian.denoiser, z / alpha0, sigmas, generator=torch.Generator().manual_seed(1))
    alpha_end, _ = alpha_sigma_from_log_snr(log_snr[-1:])
    torch.testing.assert_close(vp, alpha_end * ve, atol=1e-9, rtol=1e-9)


def test_vp_ddpm_reproduces_the_mixtures_mean_and_covariance(mixture):
    schedule = get_noise_schedule("cosine")
    z = torch.randn(4000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = sample_vp_ddpm(vp_x0_model(mixture.denoiser), z, vp_time_grid(100).double(), schedule=schedule,
                         generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out.mean(0), mixture.mean, atol=0.03, rtol=0)
    torch.testing.assert_close(out.T.cov(), mixture.cov, atol=0.04, rtol=0)


def test_vp_ddpm_inpainting_keeps_the_known_region_and_counts_its_evaluations(gaussian):
    schedule = get_noise_schedule("cosine")
    counting = CountingDenoiser(gaussian.denoiser)
    known = torch.full((3, 1, 2, 2), 0.7, dtype=torch.float64)
    mask = torch.zeros(3, 1, 2, 2, dtype=torch.bool)
    mask[..., 0] = True
    z = torch.randn(3, 1, 2, 2, dtype=torch.float64)

    def run(value, resample_times):
        return sample_vp_ddpm(vp_x0_model(counting), z, vp_time_grid(5).double(), schedule=schedule,
                              known=known * value, mask=mask, resample_times=resample_times,
                              generator=torch.Generator().manual_seed(4))

    high = run(1.0, 3)
    assert counting.nfe == 5 * 3
    low = run(-1.0, 3)
    assert (high[mask] > low[mask]).all()  # the known region follows what is known
    assert not torch.equal(high, run(1.0, 1))  # resampling changes the result
    with pytest.raises(ValueError, match="known and mask go together"):
        sample_vp_ddpm(vp_x0_model(counting), z, vp_time_grid(2), schedule=schedule, known=known)


def test_q_sample_from_to_leaves_a_clean_input_at_its_own_level():
    log_snr = torch.tensor([2.0, -1.0])
    x = torch.randn(2, 3)
    torch.testing.assert_close(q_sample_from_to(x, log_snr, log_snr, torch.randn(2, 3)), x)
    noise = torch.randn(2, 3)
    from_zero = q_sample_from_to(x, torch.full((2,), 30.0), log_snr, noise)  # alpha ~ 1, sigma ~ 0
    torch.testing.assert_close(from_zero, q_sample(x, log_snr, noise), atol=1e-6, rtol=0)


def test_split_parallel_is_an_orthogonal_decomposition():
    update, direction = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    parallel, orthogonal = split_parallel(update, direction)
    torch.testing.assert_close(parallel + orthogonal, update)
    dots = (orthogonal.flatten(1).double() * direction.flatten(1).double()).sum(1)
    assert dots.abs().max() < 1e-5
    cos = torch.nn.functional.cosine_similarity(parallel.flatten(1), direction.flatten(1))
    assert (cos.abs() - 1).abs().max() < 1e-5


@pytest.mark.parametrize("keep", [0.0, 0.5, 1.0])
def test_guidance_without_the_parallel_part_equals_its_closed_form(keep):
    def model(x, sigma, text):
        return x * text.mean(dim=(1, 2)).view(-1, 1, 1, 1) + sigma.view(-1, 1, 1, 1)

    x, sigma, text = torch.randn(2, 3, 4, 4), torch.rand(2), torch.randn(2, 5, 6)
    null = {"text": torch.zeros(1, 5, 6)}
    guided = classifier_free_guidance(model, 4.0, null, remove_parallel_component=True, keep_parallel_frac=keep)
    cond, uncond = model(x, sigma, text), model(x, sigma, torch.zeros_like(text))
    parallel, orthogonal = split_parallel(cond - uncond, cond)
    expected = cond + (orthogonal + keep * parallel) * 3.0
    torch.testing.assert_close(guided(x, sigma, text=text), expected)
    if keep == 1.0:
        plain = classifier_free_guidance(model, 4.0, null)(x, sigma, text=text)
        torch.testing.assert_close(guided(x, sigma, text=text), plain)


def test_heun_churn_uses_churn_steps_and_draws_noise_every_step(gaussian):
    sigmas = torch.tensor([10.0, 1.0, 0.1, 0.0], dtype=torch.float64)
    x = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    draws = []

    def generator_list():
        g = torch.Generator().manual_seed(0)
        draws.append(g)
        return g

    options = dict(S_churn=2.0, S_tmin=0.0, S_tmax=float("inf"))
    few = sample_heun(gaussian.denoiser, x, sigmas, generator=generator_list(), churn_steps=3, **options)
    many = sample_heun(gaussian.denoiser, x, sigmas, generator=generator_list(), churn_steps=30, **options)
    default = sample_heun(gaussian.denoiser, x, sigmas, generator=generator_list(), **options)
    torch.testing.assert_close(few, default)
    assert not torch.allclose(few, many)
    # no churn at all still draws (and discards) one noise tensor per step: 3 draws of x's size
    g = torch.Generator().manual_seed(0)
    sample_heun(gaussian.denoiser, x, sigmas, generator=g)
    g_ref = torch.Generator().manual_seed(0)
    for _ in range(3):
        torch.randn(x.shape, generator=g_ref, dtype=x.dtype)
    assert torch.equal(torch.randn(1, generator=g), torch.randn(1, generator=g_ref))
