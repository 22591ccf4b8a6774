import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from imagen.diffusion import (
    OBJECTIVES,
    alpha_sigma_from_log_snr,
    diffusion_loss,
    min_snr_loss_weight,
    noise_from_prediction,
    posterior_mean_variance,
    prediction_from_x0,
    prediction_target,
    q_sample,
    sample_training_times,
    v_from_prediction,
    x0_from_prediction,
)

log_snrs = st.floats(-12, 12)


@given(log_snrs, log_snrs, st.floats(-3, 3))
def test_q_sample_then_posterior_has_the_marginal_mean_and_variance(a, b, x0_value):
    """If z_t ~ q(z_t | x0) and z_s ~ q(z_s | z_t, x0), then z_s ~ q(z_s | x0) = N(alpha_s x0, sigma_s^2).

    By the laws of total mean and variance, with the posterior mean linear in z_t."""
    l_t, l_s = torch.tensor([min(a, b)], dtype=torch.float64), torch.tensor([max(a, b)], dtype=torch.float64)
    x0 = torch.full((1, 1), x0_value, dtype=torch.float64)
    _, sigma_t = alpha_sigma_from_log_snr(l_t)
    alpha_s, sigma_s = alpha_sigma_from_log_snr(l_s)
    mean0, variance = posterior_mean_variance(q_sample(x0, l_t, torch.zeros_like(x0)), x0, l_t, l_s)
    mean1, _ = posterior_mean_variance(q_sample(x0, l_t, torch.ones_like(x0)), x0, l_t, l_s)
    slope = (mean1 - mean0) / sigma_t  # d mean / d z_t
    assert mean0.item() == pytest.approx((alpha_s * x0).item(), abs=1e-9)  # eps = 0 gives E[z_t]
    total_variance = slope**2 * sigma_t**2 + variance
    assert total_variance.item() == pytest.approx((sigma_s**2).item(), abs=1e-9)


def test_q_sample_then_posterior_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    l_t, l_s = torch.full((n,), -1.0, dtype=torch.float64), torch.full((n,), 1.5, dtype=torch.float64)
    z_t = q_sample(x0, l_t, torch.randn(n, 1, generator=gen, dtype=torch.float64))
    mean, variance = posterior_mean_variance(z_t, x0, l_t, l_s)
    z_s = mean + variance.sqrt() * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    alpha_s, sigma_s = alpha_sigma_from_log_snr(l_s[:1])
    assert z_s.mean().item() == pytest.approx(0.7 * alpha_s.item(), abs=4 * sigma_s.item() / n**0.5)
    assert z_s.var().item() == pytest.approx(sigma_s.item() ** 2, rel=0.02)


@given(st.sampled_from(OBJECTIVES), st.floats(-8, 8), st.integers(0, 2**31))
def test_objective_conversions_round_trip(objective, log_snr, seed):
    gen = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(2, 2, 3, 3, generator=gen, dtype=torch.float64).unbind(0)
    x0, eps = x0[None], eps[None]
    l = torch.tensor([log_snr], dtype=torch.float64)
    z = q_sample(x0, l, eps)
    target = prediction_target(objective, x0, eps, l)
    alpha, sigma = alpha_sigma_from_log_snr(l)
    tol = dict(atol=1e-6 * (1 + 1 / alpha.item() + 1 / sigma.item()), rtol=1e-6)
    torch.testing.assert_close(x0_from_prediction(objective, target, z, l), x0, **tol)
    torch.testing.assert_close(noise_from_prediction(objective, target, z, l), eps, **tol)
    torch.testing.assert_close(v_from_prediction(objective, target, z, l), alpha * eps - sigma * x0, **tol)
    torch.testing.assert_close(prediction_from_x0(objective, x0, z, l), target, **tol)


def test_loss_types_and_weights():
    p = torch.tensor([[0.0, 3.0], [1.0, 1.0]])
    y = torch.tensor([[0.5, 0.0], [1.0, 1.0]])
    assert diffusion_loss(p, y, "l1").item() == pytest.approx((0.5 + 3.0) / 4)
    assert diffusion_loss(p, y, "l2").item() == pytest.approx((0.25 + 9.0) / 4)
    assert diffusion_loss(p, y, "huber").item() == pytest.approx((0.125 + 2.5) / 4)
    w = torch.tensor([2.0, 5.0])
    assert diffusion_loss(p, y, "l1", w).item() == pytest.approx((2.0 * 1.75 + 0.0) / 2)
    with pytest.raises(ValueError, match="'l3'"):
        diffusion_loss(p, y, "l3")


@given(st.floats(-10, 10), st.floats(0.5, 20))
def test_min_snr_weights_equal_the_x0_space_weight_over_each_objectives_own(log_snr, gamma):
    l = torch.tensor([log_snr], dtype=torch.float64)
    snr = l.exp()
    x0_weight = torch.minimum(snr, torch.tensor(gamma, dtype=torch.float64))
    # an eps-loss equals snr * x0-loss; a v-loss equals (snr + 1) * x0-loss
    torch.testing.assert_close(min_snr_loss_weight(l, gamma, "x_start"), x0_weight)
    torch.testing.assert_close(min_snr_loss_weight(l, gamma, "noise") * snr, x0_weight)
    torch.testing.assert_close(min_snr_loss_weight(l, gamma, "v") * (snr + 1), x0_weight)


def test_training_times_are_uniform_and_per_sample_seeded():
    t = sample_training_times(10_000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 1 and abs(t.mean().item() - 0.5) < 0.02
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    three = sample_training_times(3, generator=gens)
    assert sample_training_times(1, generator=[torch.Generator().manual_seed(2)]).item() == three[1].item()


def test_unknown_objective_raises():
    x = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="'eps'"):
        prediction_target("eps", x, x, torch.zeros(1))
