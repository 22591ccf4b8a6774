"""Classifier-free guidance and thresholding as denoiser wrappers (every sampler gets them for free)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ._checks import expand_to
from .denoisers import Denoiser, as_sigma

__all__ = ["classifier_free_guidance", "dynamic_thresholding", "quantile", "split_parallel", "static_clipping"]


def _pair_with_null(key: str, value: Any, null: Any, batch: int) -> Any:
    """cond value (B, ...) stacked on its null version -> (2B, ...); a tuple of tensors (a NamedTuple,
    None fields allowed) is paired field by field with a null tuple of the same type."""
    if isinstance(value, tuple):
        if type(null) is not type(value):
            raise TypeError(f"null_cond[{key!r}] must be a {type(value).__name__} like cond[{key!r}], got "
                            f"{type(null).__name__}")
        return type(value)(*(None if v is None else _pair_with_null(f"{key}[{i}]", v, n, batch)
                             for i, (v, n) in enumerate(zip(value, null))))
    if not isinstance(value, Tensor):
        raise TypeError(f"cond[{key!r}] has a null value but is a {type(value).__name__}, not a tensor")
    null = torch.as_tensor(null, device=value.device, dtype=value.dtype)
    try:
        null = null.expand_as(value)
    except RuntimeError as error:
        raise ValueError(
            f"null_cond[{key!r}] of shape {tuple(null.shape)} does not broadcast to cond[{key!r}] of shape "
            f"{tuple(value.shape)}"
        ) from error
    return torch.cat([value, null])


def split_parallel(update: Tensor, direction: Tensor) -> tuple[Tensor, Tensor]:
    """(parallel, orthogonal) parts of ``update`` relative to ``direction``, per sample (both (B, ...)),
    computed in float64 on the flattened samples (Sadat et al. 2024, "Eliminating Oversaturation and
    Artifacts of High Guidance Scales", APG's projection)."""
    flat_update, flat_direction = update.flatten(1).double(), direction.flatten(1).double()
    unit = torch.nn.functional.normalize(flat_direction, dim=-1)
    parallel = (flat_update * unit).sum(dim=-1, keepdim=True) * unit
    orthogonal = flat_update - parallel
    return parallel.view_as(update).to(update.dtype), orthogonal.view_as(update).to(update.dtype)


def classifier_free_guidance(
    denoiser: Denoiser, cond_scale: float, null_cond: Mapping[str, Any], *,
    remove_parallel_component: bool = False, keep_parallel_frac: float = 0.0,
) -> Denoiser:
    """Guided output cond + (cond_scale - 1) (cond - uncond) (Ho & Salimans 2022, eq. 6); wraps a
    denoiser (guidance on x0) or a raw network ``model(x, noise_cond, **cond)`` (guidance on its
    output, as the reference does).

    With ``remove_parallel_component`` the update (cond - uncond) keeps only its part orthogonal to
    the conditional output plus ``keep_parallel_frac`` of the parallel part (the reference's
    default when sampling; Sadat et al. 2024).

    One batched forward over [conditional; null] inputs: x, sigma and every batched tensor in cond
    (first dim B) are concatenated with their null versions; ``null_cond`` maps a keyword to its
    null value (broadcast to the conditional value's shape; a NamedTuple of tensors pairs field by
    field with a null NamedTuple of its type); batched tensors whose keyword is not in
    it are repeated unchanged, anything else is passed as is. Keys of ``null_cond`` absent from a
    call's cond are ignored. ``cond_scale == 1`` returns the conditional output exactly, with no null
    half; ``cond_scale < 0`` raises ValueError.
    """
    if not cond_scale >= 0:
        raise ValueError(f"cond_scale must be >= 0, got {cond_scale}")

    def guided(x: Tensor, sigma: Tensor, **cond) -> Tensor:
        if cond_scale == 1:
            return denoiser(x, sigma, **cond)
        batch = x.shape[0]
        sigma = as_sigma(sigma, x)
        both = {}
        for key, value in cond.items():
            if key in null_cond and value is not None:
                both[key] = _pair_with_null(key, value, null_cond[key], batch)
            elif isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == batch:
                both[key] = torch.cat([value, value])
            else:
                both[key] = value
        out = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), **both)
        conditional, unconditional = out[:batch], out[batch:]
        update = conditional - unconditional
        if remove_parallel_component:
            parallel, orthogonal = split_parallel(update, conditional)
            update = orthogonal + parallel * keep_parallel_frac
        return conditional + update * (cond_scale - 1)

    guided.cond_scale = cond_scale
    return guided


def quantile(x: Tensor, q: float) -> Tensor:
    """Per-sample linear-interpolation quantile of x (B, ...) -> (B,); equals torch.quantile on
    the flattened sample, without its input-size limit."""
    flat = x.flatten(1)
    n = flat.shape[1]
    position = q * (n - 1)
    low, frac = int(position), position - int(position)
    v_low = flat.kthvalue(low + 1, dim=1).values
    if frac == 0:
        return v_low
    v_high = flat.kthvalue(min(low + 2, n), dim=1).values
    return v_low + frac * (v_high - v_low)


def dynamic_thresholding(denoiser: Denoiser, percentile: float = 0.95) -> Denoiser:
    """Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3) on the denoiser's x0 estimate.

    s = max(1, percentile-th quantile of |x0_hat|) per sample; x0_hat <- clamp(x0_hat, -s, s) / s.
    """
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must be in (0, 1], got {percentile}")

    def thresholded(x: Tensor, sigma: Tensor, **cond) -> Tensor:
        x0 = denoiser(x, sigma, **cond)
        s = expand_to(quantile(x0.abs(), percentile).clamp(min=1.0), x0)
        return torch.maximum(torch.minimum(x0, s), -s) / s

    return thresholded


def static_clipping(denoiser: Denoiser, limit: float = 1.0) -> Denoiser:
    """Clamp the denoiser's x0 estimate to [-limit, limit] (Ho et al. 2020 static clipping)."""
    if not limit > 0:
        raise ValueError(f"limit must be > 0, got {limit}")

    def clipped(x: Tensor, sigma: Tensor, **cond) -> Tensor:
        return denoiser(x, sigma, **cond).clamp(-limit, limit)

    return clipped
