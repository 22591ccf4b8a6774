import pytest
import torch

from imagen.diffusion import randn_like
from imagen.diffusion.testing import GaussianMixture, random_mixture, sliced_wasserstein


def test_single_gaussian_denoiser_is_the_closed_form_posterior_mean(gaussian):
    x, sigma = torch.randn(5, 1, 2, 2, dtype=torch.float64), torch.tensor([0.0, 0.1, 1.0, 3.0, 50.0]).double()
    m, s2 = gaussian.means[0].reshape(1, 1, 2, 2), (gaussian.stds[0] ** 2).reshape(1, 1, 2, 2)
    expected = m + s2 / (s2 + sigma[:, None, None, None] ** 2) * (x - m)
    torch.testing.assert_close(gaussian.denoiser(x, sigma), expected)


def test_mixture_denoiser_matches_bayes_rule_by_monte_carlo(mixture):
    gen = torch.Generator().manual_seed(0)
    x0 = mixture.sample(400_000, gen)
    x = x0 + 0.5 * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    near = ((x - torch.tensor([0.5, 0.0], dtype=torch.float64)) ** 2).sum(1) < 0.05**2  # E[x0 | x ~ point]
    oracle = mixture.denoiser(torch.tensor([[0.5, 0.0]], dtype=torch.float64), torch.tensor([0.5]))
    torch.testing.assert_close(x0[near].mean(0, keepdim=True), oracle, atol=0.03, rtol=0)


def test_mixture_moments(mixture):
    samples = mixture.sample(200_000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(samples.mean(0), mixture.mean, atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), mixture.cov, atol=0.01, rtol=0)


def test_sliced_wasserstein_is_zero_for_equal_sets_and_the_shift_for_a_translation():
    a = random_mixture(3, 4, generator=torch.Generator().manual_seed(0)).sample(1000)
    directions = torch.eye(4, dtype=torch.float64)
    assert sliced_wasserstein(a, a, directions) == 0.0
    assert sliced_wasserstein(a, a + 0.3, directions) == pytest.approx(0.3)


def test_randn_like_per_sample_generators_do_not_depend_on_the_batch():
    x = torch.zeros(3, 2, 5)
    batch = randn_like(x, [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    alone = randn_like(x[:1], [torch.Generator().manual_seed(2)])
    assert torch.equal(batch[1:2], alone)
    with pytest.raises(ValueError, match=r"one torch\.Generator per batch element"):
        randn_like(x, [torch.Generator()])


def test_bad_mixture_arguments_raise():
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture(torch.zeros(2, 3), torch.tensor([1.0, -1.0]))


class _GeneralPath(GaussianMixture):
    isotropic = False  # forces the (B, K, D) computation


def test_isotropic_fast_path_equals_the_general_posterior_mean():
    data = random_mixture(5, 6, generator=torch.Generator().manual_seed(3))
    assert data.isotropic
    general = _GeneralPath(data.means, data.stds, data.weights)
    x, sigma = torch.randn(7, 6, dtype=torch.float64), torch.tensor([0.0, 0.01, 0.1, 0.5, 1.0, 5.0, 80.0]).double()
    torch.testing.assert_close(data.denoiser(x, sigma), general.denoiser(x, sigma))
