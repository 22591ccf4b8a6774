"""Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models", EDM).

Preconditioning (Table 1), the log-normal training noise and the loss weighting.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_positive_sigma
from .draws import GeneratorArg, randn_like

__all__ = ["edm_loss_weight", "edm_preconditioning", "edm_training_sigmas"]


def edm_preconditioning(
    sigma: Tensor, sigma_data: float = 0.5, *, check: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) for noise levels ``sigma`` (any shape, > 0), EDM Table 1.

    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = log(sigma) / 4, with sd = sigma_data.
    ``check=False`` skips the sigma >= 0 check (a device-to-host read): for hot paths whose
    caller has validated the levels once (the samplers do).
    """
    if check:
        check_positive_sigma(sigma)
    if not sigma_data > 0:
        raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = total.rsqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def edm_training_sigmas(
    batch: int, P_mean: float = -1.2, P_std: float = 1.2, *, generator: GeneratorArg = None, device=None
) -> Tensor:
    """Training noise levels ln(sigma) ~ N(P_mean, P_std^2) (EDM Table 1), shape (batch,)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not P_std >= 0:
        raise ValueError(f"P_std must be >= 0, got {P_std}")
    normal = randn_like(torch.empty(batch, device=device), generator)
    return (P_mean + P_std * normal).exp()


def edm_loss_weight(sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2 (EDM Table 1); equals 1 / c_out^2."""
    check_positive_sigma(sigma)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
