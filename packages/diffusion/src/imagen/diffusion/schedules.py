"""Noise schedules: continuous-time log-SNR schedules and sigma sequences for samplers.

Conventions: ``log_snr = log(alpha^2 / sigma^2)`` of the variance-preserving (VP) process
``z_t = alpha_t x0 + sigma_t eps`` with ``alpha^2 + sigma^2 = 1``; the equivalent
variance-exploding (VE/EDM) noise level is ``sigma_edm = sigma / alpha = exp(-log_snr / 2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ._checks import check_choice, check_steps

__all__ = [
    "SCHEDULES",
    "SIGMA_SPACINGS",
    "NoiseSchedule",
    "alpha_sigma_from_log_snr",
    "edm_sigma_from_log_snr",
    "exponential_sigmas",
    "get_noise_schedule",
    "karras_sigmas",
    "log_snr_from_edm_sigma",
    "schedule_sigmas",
    "sech_sigmas",
    "spaced_sigmas",
    "timesteps",
    "uniform_sigmas",
]

@dataclass(frozen=True)
class NoiseSchedule:
    """A continuous-time log-SNR schedule, t in [0, 1] (0 clean, 1 noisiest).

    ``log_snr(t)`` evaluates the reference's (imagen-pytorch's) formula in ``t``'s own floating dtype,
    so that float32 times give the reference's float32 numbers bit for bit in its precision (at
    t = 1 the cosine schedule's float32 value is about -33.9, a finite "pure noise"). It is strictly
    decreasing; ``time(log_snr)`` is its exact inverse in exact arithmetic (values beyond the range
    clamp to t = 0 or t = 1).
    """

    name: str

    def log_snr(self, t: Tensor) -> Tensor:
        """log(alpha_t^2 / sigma_t^2) for times ``t`` (any shape, clamped to [0, 1])."""
        t = t.to(_float_dtype(t)).clamp(0.0, 1.0)
        if self.name == "linear":
            # log_snr = -log(expm1(1e-4 + 10 t^2))  (Kingma et al. 2021, the reference's 'linear')
            return -torch.log(torch.expm1(1e-4 + 10 * (t**2)).clamp(min=1e-12))
        # log_snr = -log(cos(u)^-2 - 1) = -2 log tan(u), u = (t + s) / (1 + s) * pi / 2
        # (Nichol & Dhariwal 2021 cosine), written as the reference writes it, floor 1e-5 included
        u = (t + _COSINE_S) / (1 + _COSINE_S) * math.pi * 0.5
        return -torch.log((torch.cos(u) ** -2 - 1).clamp(min=1e-5))

    def time(self, log_snr: Tensor) -> Tensor:
        """The time t in [0, 1] at which the schedule reaches ``log_snr`` (inverse of ``log_snr``)."""
        l64 = log_snr.double()
        if self.name == "linear":
            # 1e-4 + 10 t^2 = log(1 + exp(-log_snr)) = softplus(-log_snr)
            t = torch.sqrt(((torch.nn.functional.softplus(-l64) - 1e-4) / 10.0).clamp(min=0.0))
        else:
            u = torch.atan(torch.exp(-l64 / 2))
            t = u * 2 / math.pi * (1 + _COSINE_S) - _COSINE_S
        return t.clamp(0.0, 1.0).to(_float_dtype(log_snr))


_COSINE_S = 0.008
SCHEDULES = ("cosine", "linear")


def _float_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.get_default_dtype()


def get_noise_schedule(name: str) -> NoiseSchedule:
    """The log-SNR schedule called ``name``: ``"cosine"`` or ``"linear"`` (as in the reference)."""
    check_choice(name, "noise_schedule", SCHEDULES)
    return NoiseSchedule(name)


def alpha_sigma_from_log_snr(log_snr: Tensor) -> tuple[Tensor, Tensor]:
    """VP scales: ``alpha = sqrt(sigmoid(log_snr))``, ``sigma = sqrt(sigmoid(-log_snr))``."""
    return torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr).sqrt()


def edm_sigma_from_log_snr(log_snr: Tensor) -> Tensor:
    """VE/EDM noise level ``sigma_edm = sigma / alpha = exp(-log_snr / 2)``."""
    return torch.exp(-log_snr / 2)


def log_snr_from_edm_sigma(sigma: Tensor) -> Tensor:
    """Inverse of :func:`edm_sigma_from_log_snr`: ``log_snr = -2 log sigma_edm``."""
    return -2.0 * torch.log(sigma)


def _check_range(sigma_min: float, sigma_max: float) -> None:
    if not (sigma_min > 0):
        raise ValueError(f"sigma_min must be > 0, got {sigma_min}")
    if not (sigma_max > sigma_min):
        raise ValueError(f"sigma_max must be > sigma_min ({sigma_min}), got {sigma_max}")


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras_sigmas(
    steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, device=None
) -> Tensor:
    """Karras et al. 2022 (EDM) eq. 5: ``steps`` levels from sigma_max to sigma_min, then 0.

    sigma_i = (sigma_max^(1/rho) + i/(steps-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.
    Returns shape (steps + 1,), float32, decreasing, last entry 0.
    """
    check_steps(steps)
    _check_range(sigma_min, sigma_max)
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    # in float32 from i / (steps - 1), as the reference computes it (same numbers, bit for bit)
    ramp = torch.arange(steps, dtype=torch.float32) / max(steps - 1, 1)
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
    if steps == 1:
        sigmas = torch.tensor([sigma_max], dtype=torch.float64)
    return _append_zero(sigmas).float().to(device)


def exponential_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, device=None) -> Tensor:
    """Sigmas evenly spaced in log sigma (uniform in log-SNR), then 0. Shape (steps + 1,)."""
    check_steps(steps)
    _check_range(sigma_min, sigma_max)
    if steps == 1:
        sigmas = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps, dtype=torch.float64).exp()
    return _append_zero(sigmas).float().to(device)


def sech_sigmas(
    steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    sigma_center: float = 0.5,
    width: float = 2.0,
    device=None,
) -> Tensor:
    """Sigmas at evenly spaced quantiles of a hyperbolic-secant density over log sigma, then 0.

    sigma_i = c tan(theta_i)^w with theta_i evenly spaced from atan((sigma_max/c)^(1/w)) down to
    atan((sigma_min/c)^(1/w)), c = ``sigma_center``, w = ``width``. Since d theta = sech(u) du / 2 with
    u = log tan(theta), the steps have density proportional to sech((log sigma - log c) / w) in
    log sigma: dense where sigma is near the data's scale c, sparse at both ends, where the
    probability-flow ODE is nearly linear and exponential integrators are almost exact.

    This is the cosine schedule seen as a density over log-SNR (Kingma & Gao 2023, "Understanding
    diffusion objectives", Sec. 3 and Table 1: the cosine schedule has p(lambda) proportional to
    sech(lambda / 2)), shifted to centre c as in the shifted cosine schedule (Hoogeboom et al. 2023,
    "simple diffusion", Sec. 3.1) and widened by w: width = 1, centre = 1 gives the cosine schedule's
    own levels (without its offset s); width -> infinity tends to :func:`exponential_sigmas`.
    The defaults (c = EDM's sigma_data = 0.5, w = 2) were chosen on the Gaussian-mixture benchmark
    (bench/diffusion.md), where they halve DPM-Solver++(2M)'s error at NFE 10-20 against
    exponential sigmas. Shape (steps + 1,), float32, decreasing from sigma_max to sigma_min, last entry 0.
    """
    check_steps(steps)
    _check_range(sigma_min, sigma_max)
    if not sigma_center > 0:
        raise ValueError(f"sigma_center must be > 0, got {sigma_center}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    if steps == 1:
        sigmas = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        theta_max, theta_min = (math.atan((s / sigma_center) ** (1 / width)) for s in (sigma_max, sigma_min))
        theta = torch.linspace(theta_max, theta_min, steps, dtype=torch.float64)
        sigmas = sigma_center * torch.tan(theta) ** width
        sigmas[0], sigmas[-1] = sigma_max, sigma_min  # exact end points despite rounding in atan / tan
    return _append_zero(sigmas).float().to(device)


def uniform_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, device=None) -> Tensor:
    """Sigmas evenly spaced in sigma from sigma_max to sigma_min, then 0. Shape (steps + 1,)."""
    check_steps(steps)
    _check_range(sigma_min, sigma_max)
    if steps == 1:
        sigmas = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        sigmas = torch.linspace(sigma_max, sigma_min, steps, dtype=torch.float64)
    return _append_zero(sigmas).float().to(device)


SPACINGS = ("uniform", "quadratic")


def timesteps(steps: int, t_start: float = 1.0, t_end: float = 0.0, spacing: str = "uniform", device=None) -> Tensor:
    """``steps`` times from ``t_start`` down to ``t_end`` for few-step DDPM/DDIM on a VP schedule.

    ``"uniform"`` spaces them evenly; ``"quadratic"`` puts more near ``t_end`` (Song et al. 2021,
    DDIM, Appendix D.2). Shape (steps,), float64, decreasing.
    """
    check_steps(steps)
    check_choice(spacing, "spacing", SPACINGS)
    if not 0.0 <= t_end < t_start <= 1.0:
        raise ValueError(f"need 0 <= t_end < t_start <= 1, got t_start={t_start}, t_end={t_end}")
    ramp = torch.linspace(1.0, 0.0, steps, dtype=torch.float64) if steps > 1 else torch.ones(1, dtype=torch.float64)
    if spacing == "quadratic":
        ramp = ramp**2
    return (t_end + (t_start - t_end) * ramp).to(device)


def schedule_sigmas(
    schedule: NoiseSchedule | str,
    steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    spacing: str = "uniform",
    device=None,
) -> Tensor:
    """EDM sigmas of a VP schedule sampled at ``steps`` times, then 0. Shape (steps + 1,).

    The times run from where the schedule reaches ``sigma_max`` to where it reaches ``sigma_min``,
    each clamped to the schedule's own range [t=0, t=1]. Capping sigma_max (as EDM does) avoids the
    cosine schedule's ~1e4 first level, on which second-order samplers diverge.
    """
    if isinstance(schedule, str):
        schedule = get_noise_schedule(schedule)
    check_steps(steps)
    _check_range(sigma_min, sigma_max)
    bounds = log_snr_from_edm_sigma(torch.tensor([sigma_max, sigma_min], dtype=torch.float64))
    t_start, t_end = schedule.time(bounds).tolist()
    if not t_start > t_end:
        raise ValueError(
            f"sigma_min={sigma_min} and sigma_max={sigma_max} fall outside the {schedule.name} schedule's range"
        )
    t = timesteps(steps, t_start, t_end, spacing)
    sigmas = edm_sigma_from_log_snr(schedule.log_snr(t))
    return _append_zero(sigmas).float().to(device)


SIGMA_SPACINGS = ("karras", "exponential", "sech")


def spaced_sigmas(spacing: str, steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, device=None) -> Tensor:
    """``steps`` sigmas from sigma_max to sigma_min, then 0, by name: ``"karras"`` (rho 7),
    ``"exponential"`` or ``"sech"`` (its default centre and width). Shape (steps + 1,)."""
    check_choice(spacing, "schedule", SIGMA_SPACINGS)
    if spacing == "karras":
        return karras_sigmas(steps, sigma_min, sigma_max, device=device)
    if spacing == "exponential":
        return exponential_sigmas(steps, sigma_min, sigma_max, device=device)
    return sech_sigmas(steps, sigma_min, sigma_max, device=device)
