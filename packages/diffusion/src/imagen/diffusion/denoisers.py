"""Wrappers between raw networks and the denoiser contract ``denoiser(x, sigma, **cond) -> x0_hat``.

x is the variance-exploding sample x0 + sigma eps, (B, C, H, W) or (B, C, F, H, W); sigma is (B,).
Networks are called as ``model(x_in, noise_cond, **cond)``. A VP network's noise condition is the
log-SNR of its input (what the reference's Gaussian stages feed their U-Nets) or, with
``noise_cond="time"``, the schedule's time t.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ._checks import check_choice, expand_to
from .edm import edm_preconditioning
from .gaussian import OBJECTIVES, prediction_from_x0, x0_from_prediction
from .schedules import NoiseSchedule, alpha_sigma_from_log_snr, edm_sigma_from_log_snr, log_snr_from_edm_sigma

__all__ = ["Denoiser", "EDMDenoiser", "VPDenoiser", "VPModelFromDenoiser", "as_sigma"]

Denoiser = Callable[..., Tensor]


def as_sigma(sigma: Tensor | float, x: Tensor) -> Tensor:
    """Noise level(s) as a (B,) tensor on x's device and dtype (a float or a 0-d tensor is repeated)."""
    if not isinstance(sigma, Tensor):
        return x.new_full((x.shape[0],), float(sigma))
    sigma = sigma.to(device=x.device, dtype=x.dtype)
    if sigma.ndim == 0:
        return sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a float or have shape ({x.shape[0]},), got {tuple(sigma.shape)}")
    return sigma


NOISE_CONDS = ("log_snr", "time")


class VPDenoiser(nn.Module):
    """A network trained on the VP process (``objective`` noise, x_start or v) as a denoiser.

    For a VE input x at level sigma: log_snr = -2 log sigma, the network sees exactly what training
    fed it, z_t = alpha x (= q_sample at time t) and its noise condition: log_snr (``noise_cond``
    "log_snr", the default) or the time t = schedule.time(log_snr) ("time").
    """

    def __init__(
        self, model: Callable[..., Tensor], schedule: NoiseSchedule, objective: str = "noise",
        noise_cond: str = "log_snr",
    ):
        super().__init__()
        check_choice(objective, "objective", OBJECTIVES)
        check_choice(noise_cond, "noise_cond", NOISE_CONDS)
        self.model, self.schedule, self.objective, self.noise_cond = model, schedule, objective, noise_cond

    def condition(self, log_snr: Tensor) -> Tensor:
        """What the network is given as its noise level for ``log_snr`` (B,)."""
        return log_snr if self.noise_cond == "log_snr" else self.schedule.time(log_snr)

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        sigma = as_sigma(sigma, x)
        log_snr = log_snr_from_edm_sigma(sigma)
        alpha, _ = alpha_sigma_from_log_snr(log_snr)
        z_t = expand_to(alpha, x) * x
        prediction = self.model(z_t, self.condition(log_snr), **cond)
        return x0_from_prediction(self.objective, prediction, z_t, log_snr)


class VPModelFromDenoiser(nn.Module):
    """The way back: a denoiser seen as a VP network ``model(z_t, noise_level, **cond)`` predicting
    ``objective`` (``noise_level`` is log_snr or t, as ``noise_cond`` says).

    ``VPDenoiser(VPModelFromDenoiser(d, schedule, obj), schedule, obj)`` equals ``d`` up to rounding.
    """

    def __init__(
        self, denoiser: Denoiser, schedule: NoiseSchedule, objective: str = "noise", noise_cond: str = "log_snr"
    ):
        super().__init__()
        check_choice(objective, "objective", OBJECTIVES)
        check_choice(noise_cond, "noise_cond", NOISE_CONDS)
        self.denoiser, self.schedule, self.objective, self.noise_cond = denoiser, schedule, objective, noise_cond

    def forward(self, z_t: Tensor, noise_level: Tensor, **cond) -> Tensor:
        noise_level = as_sigma(noise_level, z_t)
        log_snr = noise_level if self.noise_cond == "log_snr" else self.schedule.log_snr(noise_level)
        alpha, _ = alpha_sigma_from_log_snr(log_snr)
        x0 = self.denoiser(z_t / expand_to(alpha, z_t), edm_sigma_from_log_snr(log_snr), **cond)
        return prediction_from_x0(self.objective, x0, z_t, log_snr)


class EDMDenoiser(nn.Module):
    """EDM-preconditioned network as a denoiser (Karras et al. 2022, eq. 7):
    D(x, sigma) = c_skip x + c_out F(c_in x, c_noise). No check of sigma's values per call (the
    samplers validate their levels once), so a call reads nothing back from the device."""

    def __init__(self, model: Callable[..., Tensor], sigma_data: float = 0.5):
        super().__init__()
        self.model, self.sigma_data = model, sigma_data

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        sigma = as_sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, self.sigma_data, check=False)
        network_out = self.model(expand_to(c_in, x) * x, c_noise, **cond)
        return expand_to(c_skip, x) * x + expand_to(c_out, x) * network_out
