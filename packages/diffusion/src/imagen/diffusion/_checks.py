"""Small argument checks shared by the modules (private)."""

from __future__ import annotations

import torch
from torch import Tensor


def check_steps(steps: int, name: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"{name} must be an int >= 1, got {steps!r} of type {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"{name} must be >= 1, got {steps}")
    return steps


def check_sigmas(sigmas: Tensor) -> Tensor:
    """Validate a sampler's noise levels: 1-D, at least two entries, finite, >= 0, non-increasing."""
    if not isinstance(sigmas, Tensor):
        raise TypeError(f"sigmas must be a 1-D torch.Tensor, got {type(sigmas).__name__}")
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 entries, got shape {tuple(sigmas.shape)}")
    if not torch.isfinite(sigmas).all():
        raise ValueError(f"sigmas must be finite, got {sigmas.tolist()}")
    if (sigmas < 0).any():
        raise ValueError(f"sigmas must be >= 0, got negative values {sigmas[sigmas < 0].tolist()}")
    if (sigmas[1:] > sigmas[:-1]).any():
        raise ValueError(f"sigmas must be non-increasing (from noisy to clean), got {sigmas.tolist()}")
    if (sigmas[:-1] == 0).any():
        raise ValueError(f"only the last of the sigmas may be 0, got {sigmas.tolist()}")
    return sigmas


def check_positive_sigma(sigma: Tensor, name: str = "sigma") -> None:
    if (sigma < 0).any():
        raise ValueError(f"{name} must be >= 0, got {sigma.flatten()[:8].tolist()}")


def check_choice(value: str, name: str, accepted: tuple[str, ...]) -> str:
    if value not in accepted:
        raise ValueError(f"{name} must be one of {list(accepted)}, got {value!r}")
    return value


def expand_to(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample tensor (B,) to (B, 1, ..., 1) so it broadcasts against x."""
    return v.reshape(v.shape[0], *([1] * (x.ndim - 1)))
