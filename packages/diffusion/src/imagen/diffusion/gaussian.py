"""The Gaussian variance-preserving process: forward noising, posterior, objectives, losses.

``z_t = alpha_t x0 + sigma_t eps`` with ``alpha_t^2 = sigmoid(log_snr_t)``, ``sigma_t^2 =
sigmoid(-log_snr_t)`` (Kingma et al. 2021, "Variational Diffusion Models", eq. 1-4). ``log_snr``
arguments are per-sample, shape (B,), and broadcast over the other dimensions of x (B, C, H, W) or
(B, C, F, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_choice, expand_to
from .draws import GeneratorArg, rand
from .schedules import alpha_sigma_from_log_snr

__all__ = [
    "LOSS_TYPES",
    "OBJECTIVES",
    "diffusion_loss",
    "min_snr_loss_weight",
    "noise_from_prediction",
    "posterior_mean_variance",
    "prediction_from_x0",
    "prediction_target",
    "q_sample",
    "q_sample_from_to",
    "sample_training_times",
    "v_from_prediction",
    "x0_from_prediction",
]

OBJECTIVES = ("noise", "x_start", "v")
LOSS_TYPES = ("l1", "l2", "huber")


def _alpha_sigma(log_snr: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    alpha, sigma = alpha_sigma_from_log_snr(log_snr)
    return expand_to(alpha, x), expand_to(sigma, x)


def q_sample(x0: Tensor, log_snr: Tensor, noise: Tensor) -> Tensor:
    """Forward noising z_t = alpha_t x0 + sigma_t noise. x0, noise: (B, ...); log_snr: (B,)."""
    alpha, sigma = _alpha_sigma(log_snr, x0)
    return alpha * x0 + sigma * noise


def q_sample_from_to(x_from: Tensor, log_snr_from: Tensor, log_snr_to: Tensor, noise: Tensor) -> Tensor:
    """Re-noising z_from (at log_snr_from) to the noisier log_snr_to as the reference's inpainting
    resampling does: z_to = (alpha_to / alpha) z_from + ((sigma_to alpha - sigma alpha_to) / alpha) noise.
    All of x_from, noise: (B, ...); log_snrs: (B,)."""
    alpha, sigma = _alpha_sigma(log_snr_from, x_from)
    alpha_to, sigma_to = _alpha_sigma(log_snr_to, x_from)
    return x_from * (alpha_to / alpha) + noise * (sigma_to * alpha - sigma * alpha_to) / alpha


def posterior_mean_variance(
    x_t: Tensor, x0: Tensor, log_snr_t: Tensor, log_snr_s: Tensor, *, check: bool = True
) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(z_s | z_t, x0) for s earlier (less noisy) than t.

    With c = 1 - SNR_t / SNR_s (Kingma et al. 2021, eq. 33 rewritten):
    mean = (alpha_s / alpha_t)(1 - c) z_t + alpha_s c x0, variance = c sigma_s^2.
    x_t, x0: (B, ...); log_snr_t, log_snr_s: (B,) with log_snr_s >= log_snr_t. Returns
    mean (B, ...) and variance (B, 1, ..., 1). ``check=False`` skips the order check (a
    device-to-host read), for a sampler that validated its time grid once.
    """
    if check and (log_snr_s < log_snr_t).any():
        raise ValueError("log_snr_s must be >= log_snr_t (s is the less noisy time)")
    alpha_t, _ = _alpha_sigma(log_snr_t, x_t)
    alpha_s, sigma_s = _alpha_sigma(log_snr_s, x_t)
    c = -torch.expm1(expand_to(log_snr_t - log_snr_s, x_t))
    mean = alpha_s * (x_t * (1 - c) / alpha_t + c * x0)
    return mean, sigma_s**2 * c


def prediction_target(objective: str, x0: Tensor, noise: Tensor, log_snr: Tensor) -> Tensor:
    """What a network trained with ``objective`` should output for z_t = q_sample(x0, log_snr, noise).

    ``"noise"``: eps; ``"x_start"``: x0; ``"v"``: alpha eps - sigma x0 (Salimans & Ho 2022, eq. 10).
    """
    check_choice(objective, "objective", OBJECTIVES)
    if objective == "noise":
        return noise
    if objective == "x_start":
        return x0
    alpha, sigma = _alpha_sigma(log_snr, x0)
    return alpha * noise - sigma * x0


def x0_from_prediction(objective: str, prediction: Tensor, x_t: Tensor, log_snr: Tensor) -> Tensor:
    """The clean-data estimate implied by a network output. x_t: the VP sample z_t, (B, ...)."""
    check_choice(objective, "objective", OBJECTIVES)
    if objective == "x_start":
        return prediction
    alpha, sigma = _alpha_sigma(log_snr, x_t)
    if objective == "noise":
        return (x_t - sigma * prediction) / alpha.clamp(min=1e-8)  # the floor of the reference
    return alpha * x_t - sigma * prediction


def noise_from_prediction(objective: str, prediction: Tensor, x_t: Tensor, log_snr: Tensor) -> Tensor:
    """The noise estimate implied by a network output (the eps of z_t = alpha x0 + sigma eps)."""
    check_choice(objective, "objective", OBJECTIVES)
    if objective == "noise":
        return prediction
    alpha, sigma = _alpha_sigma(log_snr, x_t)
    if objective == "x_start":
        return (x_t - alpha * prediction) / sigma
    return sigma * x_t + alpha * prediction


def v_from_prediction(objective: str, prediction: Tensor, x_t: Tensor, log_snr: Tensor) -> Tensor:
    """The v estimate (alpha eps - sigma x0) implied by a network output."""
    check_choice(objective, "objective", OBJECTIVES)
    if objective == "v":
        return prediction
    alpha, sigma = _alpha_sigma(log_snr, x_t)
    x0 = x0_from_prediction(objective, prediction, x_t, log_snr)
    eps = noise_from_prediction(objective, prediction, x_t, log_snr)
    return alpha * eps - sigma * x0


def prediction_from_x0(objective: str, x0: Tensor, x_t: Tensor, log_snr: Tensor) -> Tensor:
    """The network output under ``objective`` that corresponds to the clean estimate ``x0``."""
    check_choice(objective, "objective", OBJECTIVES)
    if objective == "x_start":
        return x0
    if objective == "noise":
        return noise_from_prediction("x_start", x0, x_t, log_snr)
    return v_from_prediction("x_start", x0, x_t, log_snr)


def diffusion_loss(prediction: Tensor, target: Tensor, loss_type: str = "l2", weight: Tensor | None = None) -> Tensor:
    """Mean regression loss; ``weight`` (B,) scales each sample's mean loss before averaging.

    ``"l1"``: |p - y|; ``"l2"``: (p - y)^2; ``"huber"``: smooth L1 with beta 1.
    """
    check_choice(loss_type, "loss_type", LOSS_TYPES)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
    if loss_type == "l1":
        loss = (prediction - target).abs()
    elif loss_type == "l2":
        loss = (prediction - target) ** 2
    else:
        loss = F.smooth_l1_loss(prediction, target, reduction="none")
    per_sample = loss.flatten(1).mean(dim=1)
    if weight is not None:
        if weight.shape != per_sample.shape:
            raise ValueError(f"weight must have shape {tuple(per_sample.shape)}, got {tuple(weight.shape)}")
        per_sample = per_sample * weight
    return per_sample.mean()


def min_snr_loss_weight(log_snr: Tensor, gamma: float, objective: str) -> Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023, eq. 8-10), shape (B,).

    The x0-space weight min(SNR, gamma) divided by what the ``objective``'s loss already carries:
    ``"x_start"``: min(SNR, gamma); ``"noise"``: min(SNR, gamma) / SNR; ``"v"``: min(SNR, gamma) / (SNR + 1).
    """
    check_choice(objective, "objective", OBJECTIVES)
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    snr = log_snr.exp()
    clipped = snr.clamp(max=gamma)
    if objective == "x_start":
        return clipped
    if objective == "noise":
        return clipped / snr
    return clipped / (snr + 1)


def sample_training_times(batch: int, *, generator: GeneratorArg = None, device=None) -> Tensor:
    """Training times t ~ U[0, 1], shape (batch,). ``generator``: None, one, or one per sample."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    return rand((batch,), generator, device=device)
