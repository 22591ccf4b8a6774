"""Helpers shared by the equivalence tests: the same weights in both models, closeness checks."""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn

TOLERANCE = 1e-5


def randomize_(module: nn.Module, seed: int, scale: float = 0.2) -> nn.Module:
    """Overwrite every parameter and floating buffer with seeded noise (no zero-initialised output).

    Gains and scales (``g``, ``gamma``, ``*_scale`` and norm weights) get 1 + noise so activations
    keep their size; everything else gets ``scale`` * noise.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64).to(tensor.dtype)
            leaf = name.rsplit(".", 1)[-1]
            is_gain = leaf in ("g", "gamma") or leaf.endswith("_scale") or (".norm" in name and leaf == "weight")
            tensor.copy_(1 + 0.1 * noise if is_gain else scale * noise)
    return module


def load_same_weights(ours: nn.Module, reference: nn.Module) -> None:
    """Load the reference module's state dict into ours; fail on any missing or unexpected key."""
    result = ours.load_state_dict(reference.state_dict(), strict=False)
    assert not result.missing_keys and not result.unexpected_keys, (
        f"missing {result.missing_keys[:10]}, unexpected {result.unexpected_keys[:10]}"
    )


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def assert_close(ours: torch.Tensor, reference: torch.Tensor, tolerance: float = TOLERANCE) -> None:
    """Both tensors have the same shape and differ by at most ``tolerance`` (absolute) anywhere."""
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    error = (ours.double() - reference.double()).abs().max().item()
    assert error <= tolerance, f"max |ours - reference| = {error:.3g} > {tolerance}"


@st.composite
def per_stage(draw, values, stages: int):
    """One value for every stage, or a tuple with one per stage."""
    if draw(st.booleans()):
        return draw(values)
    return tuple(draw(values) for _ in range(stages))
