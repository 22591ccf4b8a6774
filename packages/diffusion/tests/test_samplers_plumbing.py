"""What every sampler owes its caller beyond accuracy: cond reaches the denoiser, callbacks report the
step's x and denoised, no progress bar unless asked, and the identities between samplers that pin
their coefficients (the gaps mutation testing found)."""

import math

import pytest
import torch

from imagen.diffusion import (
    SAMPLERS,
    get_sampler,
    karras_sigmas,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_3m,
    sample_euler,
)
from imagen.diffusion.samplers import _phi


def _shifted(x, sigma, *, shift):
    """A denoiser that reads its conditioning: x / (1 + sigma^2) + shift."""
    return x / (1 + sigma.view(-1, *([1] * (x.ndim - 1))) ** 2) + shift


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_cond_reaches_the_denoiser_and_callbacks_report_the_steps_x_and_denoised(name):
    sigmas = karras_sigmas(4, 0.05, 5.0)
    shift = torch.tensor([[0.3, -0.2]])
    inputs, outputs, seen = [], [], []

    def recording(x, sigma, **cond):
        inputs.append(x.clone())
        outputs.append(_shifted(x, sigma, **cond))
        return outputs[-1]

    x = torch.randn(1, 2, generator=torch.Generator().manual_seed(0)) * 5.0
    out = get_sampler(name)(recording, x, sigmas, cond={"shift": shift}, callback=seen.append,
                            generator=torch.Generator().manual_seed(1))
    closure = get_sampler(name)(lambda x, sigma: _shifted(x, sigma, shift=shift), x, sigmas,
                                generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, closure)
    assert [c["i"] for c in seen] == [0, 1, 2, 3]
    assert [(c["sigma"], c["sigma_next"]) for c in seen] == list(zip(sigmas.tolist()[:-1], sigmas.tolist()[1:]))
    assert torch.equal(seen[-1]["x"], out)
    for step in seen:
        assert any(torch.equal(step["denoised"], o) for o in outputs)  # a denoised value of this run
    starts = [inputs[0], *[c["x"] for c in seen[:-1]]]  # each step starts by denoising the last step's x
    assert all(any(torch.equal(s, i) for i in inputs) for s in starts)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_a_progress_bar_only_when_asked(name, capsys):
    sampler, sigmas, x = get_sampler(name), karras_sigmas(3, 0.1, 5.0), torch.randn(1, 2)
    sampler(lambda x, sigma: x * 0.5, x, sigmas, generator=torch.Generator().manual_seed(0))
    assert capsys.readouterr().err == ""
    sampler(lambda x, sigma: x * 0.5, x, sigmas, generator=torch.Generator().manual_seed(0), progress=True)
    assert "sampling" in capsys.readouterr().err


def _gaussian_denoiser(x, sigma):
    """The exact denoiser of N(0.3, 0.5^2) data: closed form, so sampler identities hold to rounding."""
    s2 = sigma.double().view(-1, *([1] * (x.ndim - 1))) ** 2
    return (0.3 * s2 + 0.25 * x) / (0.25 + s2)


def test_sde_2m_at_eta_0_is_dpm_solver_2m_on_uneven_steps():
    sigmas = karras_sigmas(6, 0.02, 10.0).double()  # uneven log steps: the 2M ratio r != 1
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 10.0
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    sde = sample_dpmpp_2m_sde(_gaussian_denoiser, x, sigmas, eta=0.0, generator=g)
    torch.testing.assert_close(sde, sample_dpmpp_2m(_gaussian_denoiser, x, sigmas), rtol=1e-12, atol=1e-12)
    assert torch.equal(g.get_state(), state)  # eta = 0 draws nothing


def test_sde_2m_on_a_point_mass_keeps_the_marginal_and_correlates_steps_by_exp_minus_eta_h():
    """Data at m (D = m): x - m ~ N(0, sigma^2) at every level, and successive x - m correlate by
    exp(-eta h), h = log(sigma / sigma_next) (the SDE's Ornstein-Uhlenbeck part); s_noise scales
    the fresh noise."""
    m, n = 0.7, 100_000
    sigmas = torch.tensor([4.0, 2.0, 0.0], dtype=torch.float64)
    h = math.log(2.0)
    x = m + 4.0 * torch.randn(n, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for eta, s_noise in ((None, 1.0), (0.5, 1.0), (1.0, 0.5)):
        seen = []
        options = {} if eta is None else {"eta": eta}
        sample_dpmpp_2m_sde(lambda x, sigma: torch.full_like(x, m), x, sigmas, s_noise=s_noise, callback=seen.append,
                            generator=torch.Generator().manual_seed(5), **options)
        first = seen[0]["x"] - m
        eta = 1.0 if eta is None else eta  # the default is eta = 1
        decay = math.exp(-eta * h)
        variance = 4.0 * (decay**2 + s_noise**2 * (1 - decay**2))
        assert first.var().item() == pytest.approx(variance, rel=0.02)
        correlation = torch.corrcoef(torch.stack([first.flatten(), (x - m).flatten()]))[0, 1].item()
        assert correlation == pytest.approx(decay * 2.0 / math.sqrt(variance), abs=0.01)


def test_multistep_order_1_is_euler_and_orders_outside_1_to_4_are_refused():
    sigmas = karras_sigmas(8, 0.02, 10.0).double()
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 10.0
    torch.testing.assert_close(sample_dpmpp_3m(_gaussian_denoiser, x, sigmas, order=1),
                               sample_euler(_gaussian_denoiser, x, sigmas), rtol=1e-12, atol=1e-12)
    first = sample_dpmpp_3m(_gaussian_denoiser, x, sigmas[:-1], order=1)
    for order in (2, 3, 4):
        assert not torch.allclose(sample_dpmpp_3m(_gaussian_denoiser, x, sigmas[:-1], order=order), first)
    for order in (0, 5):
        with pytest.raises(ValueError, match=rf"order must be 1, 2, 3 or 4, got {order}"):
            sample_dpmpp_3m(_gaussian_denoiser, x, sigmas, order=order)


def _phi_by_quadrature(k: int, h: float) -> float:
    """int_0^h u^k e^{u - h} du by composite Simpson on 4000 intervals (error far below 1e-12)."""
    n = 4000
    step = h / n
    total = 0.0
    for i in range(n + 1):
        u = i * step
        weight = 1 if i in (0, n) else (4 if i % 2 else 2)
        total += weight * u**k * math.exp(u - h)
    return total * step / 3


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("h", [0.05, 0.3, 0.49, 0.5, 0.51, 1.0, 2.5])
def test_phi_is_the_exponential_integral_on_both_sides_of_the_series_switch(k, h):
    assert _phi(k, h) == pytest.approx(_phi_by_quadrature(k, h), rel=1e-10, abs=1e-14)
