"""Exact oracles for tests: Gaussian-mixture data and its closed-form optimal denoiser.

Public so that every package's tests can use them (``from imagen.diffusion.testing import ...``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["CountingDenoiser", "GaussianMixture", "random_mixture", "sliced_wasserstein"]


class GaussianMixture:
    """Data x0 ~ sum_k w_k N(mean_k, diag(std_k^2)) in D dimensions.

    means: (K, D); stds: (K,) isotropic, (K, D) diagonal, or a float; weights: (K,) (normalised
    here), default equal. ``event_shape`` (prod = D) is the shape of one sample, e.g. (C, H, W);
    default (D,). A single Gaussian is the one-component case. Computations run in float64.
    """

    def __init__(self, means: Tensor, stds: Tensor | float, weights: Tensor | None = None,
                 event_shape: Sequence[int] | None = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(self.means.shape)}")
        k, d = self.means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.ndim == 0:
            stds = stds.expand(k)
        if stds.ndim == 1:
            stds = stds[:, None].expand(k, d)
        if stds.shape != (k, d) or (stds <= 0).any():
            raise ValueError(f"stds must be positive with shape (K,) or (K, D) = ({k}, {d}), got {tuple(stds.shape)}")
        self.stds = stds.clone()
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be (K,) = ({k},), non-negative, not all 0; got {w.tolist()}")
        self.weights = w / w.sum()
        self.event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if math.prod(self.event_shape) != d:
            raise ValueError(f"event_shape {self.event_shape} does not hold D = {d} values")

    @property
    def dim(self) -> int:
        """D, the number of values per sample."""
        return self.means.shape[1]

    @property
    def mean(self) -> Tensor:
        """Mixture mean, (D,)."""
        return self.weights @ self.means

    @property
    def cov(self) -> Tensor:
        """Mixture covariance, (D, D): sum_k w_k (diag(std_k^2) + m_k m_k^T) - m m^T."""
        second = torch.einsum("k,kd,ke->de", self.weights, self.means, self.means)
        second = second + torch.diag(self.weights @ self.stds**2)
        return second - torch.outer(self.mean, self.mean)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples, (n, *event_shape), float64."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[component] + self.stds[component] * noise
        return x.reshape(n, *self.event_shape)

    def denoiser(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        """E[x0 | x0 + sigma eps = x], exactly. x: (B, ...) with prod(...) = D; sigma: (B,) (0 allowed).

        Per component, x | k ~ N(m_k, s_k^2 + sigma^2) and E[x0 | x, k] = m_k + s_k^2 / (s_k^2 + sigma^2)
        (x - m_k); the posterior weights are softmax(log w_k + log N(x; m_k, s_k^2 + sigma^2)).
        ``cond`` is accepted and ignored. Returns x's shape and dtype.
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1, 1)
        if self.isotropic:
            return self._isotropic_denoiser(x, sigma.reshape(-1, 1))
        flat = x.reshape(x.shape[0], 1, self.dim).double()  # (B, 1, D)
        means, s2 = self.means.to(x.device)[None], (self.stds.to(x.device) ** 2)[None]  # (1, K, D)
        var = s2 + sigma**2  # (B, K, D)
        log_density = -0.5 * (((flat - means) ** 2) / var + var.log()).sum(-1)  # (B, K), up to a constant
        posterior = torch.softmax(self.weights.to(x.device).log() + log_density, dim=-1)
        per_component = means + s2 / var * (flat - means)  # (B, K, D)
        x0 = torch.einsum("bk,bkd->bd", posterior, per_component)
        return x0.reshape(x.shape).to(x.dtype)

    @property
    def isotropic(self) -> bool:
        """Whether every component's covariance is a multiple of the identity."""
        return bool((self.stds == self.stds[:, :1]).all())

    def _isotropic_denoiser(self, x: Tensor, sigma: Tensor) -> Tensor:
        """The same posterior mean through (B, K) matrix products: no (B, K, D) intermediate."""
        flat = x.reshape(x.shape[0], self.dim).double()  # (B, D)
        means = self.means.to(x.device)
        var = (self.stds[:, 0].to(x.device) ** 2)[None] + sigma**2  # (B, K)
        sq_dist = (flat**2).sum(1, keepdim=True) - 2 * flat @ means.T + (means**2).sum(1)[None]  # (B, K)
        log_density = -0.5 * (sq_dist / var + self.dim * var.log())
        posterior = torch.softmax(self.weights.to(x.device).log() + log_density, dim=-1)
        shrink = (self.stds[:, 0].to(x.device) ** 2)[None] / var  # (B, K): E[x0|x,k] = m_k + shrink (x - m_k)
        x0 = (posterior * shrink).sum(1, keepdim=True) * flat + (posterior * (1 - shrink)) @ means
        return x0.reshape(x.shape).to(x.dtype)

    def flow(self, x: Tensor, sigma_from: float, sigma_to: float) -> Tensor:
        """Exact probability-flow ODE map from level sigma_from to sigma_to, one component only:
        x -> m + (x - m) sqrt(s^2 + sigma_to^2) / sqrt(s^2 + sigma_from^2). x: (B, ...)."""
        if self.means.shape[0] != 1:
            raise ValueError("flow is closed-form only for a single Gaussian (K = 1)")
        m, s2 = self.means[0], self.stds[0] ** 2
        flat = x.reshape(x.shape[0], self.dim).double()
        out = m + (flat - m) * torch.sqrt((s2 + sigma_to**2) / (s2 + sigma_from**2))
        return out.reshape(x.shape).to(x.dtype)


def random_mixture(components: int, dim: int, *, mean_std: float = 0.5, std_range=(0.05, 0.2),
                   generator: torch.Generator | None = None) -> GaussianMixture:
    """A random isotropic mixture: means ~ N(0, mean_std^2 I), stds ~ U(std_range), weights ~ U(0.5, 1.5)
    normalised (unequal)."""
    means = mean_std * torch.randn(components, dim, generator=generator, dtype=torch.float64)
    low, high = std_range
    stds = low + (high - low) * torch.rand(components, generator=generator, dtype=torch.float64)
    weights = 0.5 + torch.rand(components, generator=generator, dtype=torch.float64)
    return GaussianMixture(means, stds, weights)


def sliced_wasserstein(a: Tensor, b: Tensor, directions: Tensor) -> float:
    """Sliced Wasserstein-2 distance between equal-size sample sets a, b (N, D) along unit
    ``directions`` (P, D): sqrt(mean over directions of W2^2 of the 1-D projections)."""
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    pa = (a.double() @ directions.double().T).sort(dim=0).values
    pb = (b.double() @ directions.double().T).sort(dim=0).values
    return ((pa - pb) ** 2).mean().sqrt().item()


class CountingDenoiser:
    """Wraps a denoiser and counts its calls (``nfe``) and the samples it evaluated (``evaluations``)."""

    def __init__(self, denoiser):
        self.denoiser, self.nfe, self.evaluations = denoiser, 0, 0

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        self.nfe += 1
        self.evaluations += x.shape[0]
        return self.denoiser(x, sigma, **cond)
