"""How one stage of a cascade is trained and sampled: the Gaussian (VP) process or EDM.

A stage sees its U-Net only as ``model(x_in, noise_cond, **kwargs) -> raw output``; it knows the
noise process, the loss and the denoiser wrapper that turns the raw output into ``x0_hat``, the
contract every sampler of ``imagen.diffusion`` works with.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import attrs
import torch

from imagen.diffusion import (
    EDMDenoiser,
    VPDenoiser,
    alpha_sigma_from_log_snr,
    diffusion_loss,
    edm_loss_weight,
    edm_training_sigmas,
    get_noise_schedule,
    karras_sigmas,
    min_snr_loss_weight,
    prediction_target,
    q_sample,
    randn_like,
    sample_training_times,
    schedule_sigmas,
)

Model = Callable[..., torch.Tensor]


def _with_self_condition(model: Model, make_denoiser, x: torch.Tensor, sigma: torch.Tensor) -> Model:
    """Self-conditioning (Chen et al. 2022, Analog Bits): a first, gradient-free estimate of x0 is fed
    back to the network as an extra input."""
    with torch.no_grad():
        x0_estimate = make_denoiser(model)(x, sigma)
    return functools.partial(model, self_cond=x0_estimate.detach())


@attrs.frozen(kw_only=True)
class GaussianStage:
    """A variance-preserving stage: continuous time t in [0, 1], log-SNR from ``noise_schedule``, the
    network predicts ``objective`` and is conditioned on t."""

    noise_schedule: str
    objective: str
    loss_type: str
    min_snr_gamma: float | None
    sample_steps: int
    default_sampler: str = "ddpm"

    @property
    def schedule(self):
        return get_noise_schedule(self.noise_schedule)

    def denoiser(self, model: Model):
        return VPDenoiser(model, self.schedule, self.objective)

    def sigmas(self, steps: int, device) -> torch.Tensor:
        return schedule_sigmas(self.schedule, steps).to(device)

    def sampler_options(self) -> dict:
        return {}

    def training_loss(self, model: Model, x0: torch.Tensor, *, generator=None, self_condition=False):
        """The stage's loss for clean data ``x0`` (B, C, ...) in [-1, 1]."""
        t = sample_training_times(x0.shape[0], generator=generator, device=x0.device)
        log_snr = self.schedule.log_snr(t)
        noise = randn_like(x0, generator)
        x_t = q_sample(x0, log_snr, noise)
        if self_condition:
            alpha, sigma = alpha_sigma_from_log_snr(log_snr)
            alpha = alpha.view(-1, *[1] * (x0.ndim - 1))
            model = _with_self_condition(model, self.denoiser, x_t / alpha, sigma / alpha.flatten())
        prediction = model(x_t, t)
        target = prediction_target(self.objective, x0, noise, log_snr)
        weight = None
        if self.min_snr_gamma is not None:
            weight = min_snr_loss_weight(log_snr, self.min_snr_gamma, self.objective)
        return diffusion_loss(prediction, target, self.loss_type, weight)


@attrs.frozen(kw_only=True)
class ElucidatedStage:
    """An EDM stage (Karras et al. 2022): preconditioned network, log-normal training noise, Karras
    sigmas and the stochastic Heun sampler by default."""

    sample_steps: int
    sigma_min: float
    sigma_max: float
    sigma_data: float
    rho: float
    P_mean: float
    P_std: float
    S_churn: float
    S_tmin: float
    S_tmax: float
    S_noise: float
    default_sampler: str = "heun"

    def denoiser(self, model: Model):
        return EDMDenoiser(model, self.sigma_data)

    def sigmas(self, steps: int, device) -> torch.Tensor:
        return karras_sigmas(steps, self.sigma_min, self.sigma_max, rho=self.rho, device=device)

    def sampler_options(self) -> dict:
        """Keywords for the stochastic Heun sampler (EDM Algorithm 2)."""
        return dict(S_churn=self.S_churn, S_tmin=self.S_tmin, S_tmax=self.S_tmax, S_noise=self.S_noise)

    def training_loss(self, model: Model, x0: torch.Tensor, *, generator=None, self_condition=False):
        """EDM's loss: lambda(sigma) * |D(x0 + sigma n, sigma) - x0|^2 with log-normal sigma."""
        sigma = edm_training_sigmas(x0.shape[0], self.P_mean, self.P_std, generator=generator, device=x0.device)
        x = x0 + sigma.view(-1, *[1] * (x0.ndim - 1)) * randn_like(x0, generator)
        if self_condition:
            model = _with_self_condition(model, self.denoiser, x, sigma)
        denoised = self.denoiser(model)(x, sigma)
        return diffusion_loss(denoised, x0, "l2", edm_loss_weight(sigma, self.sigma_data))
