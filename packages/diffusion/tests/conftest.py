"""Shared fixtures for imagen.diffusion tests."""

import pytest
import torch

from imagen.diffusion.testing import GaussianMixture


@pytest.fixture
def gaussian() -> GaussianMixture:
    """A single diagonal Gaussian in D = 4 (shape (1, 2, 2)), for closed-form flows."""
    means = torch.tensor([[0.3, -0.2, 0.1, 0.5]], dtype=torch.float64)
    stds = torch.tensor([[0.5, 0.8, 0.3, 1.0]], dtype=torch.float64)
    return GaussianMixture(means, stds, event_shape=(1, 2, 2))


@pytest.fixture
def mixture() -> GaussianMixture:
    """Three well-separated components in D = 2 with unequal weights."""
    means = torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]], dtype=torch.float64)
    return GaussianMixture(means, torch.tensor([0.2, 0.3, 0.15]), torch.tensor([0.5, 0.3, 0.2]))
