"""Gaussian noise with per-sample generators."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


def randn_like(x: Tensor, generator: GeneratorArg = None) -> Tensor:
    """Standard normal noise shaped like ``x`` (same dtype and device).

    ``generator`` is ``None`` (the global RNG), one ``torch.Generator``, or a list of generators, one
    per batch element: element ``b`` of the result is then drawn from ``generator[b]`` alone, so a
    given seed yields the same noise whatever the batch it sits in.
    """
    if generator is None:
        return torch.randn_like(x)
    if isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)
    if isinstance(generator, Sequence) and not isinstance(generator, str):
        if len(generator) != x.shape[0]:
            raise ValueError(
                f"generator: a list must hold one torch.Generator per batch element ({x.shape[0]}), "
                f"got {len(generator)}"
            )
        return torch.stack(
            [torch.randn(x.shape[1:], generator=g, device=g.device, dtype=x.dtype).to(x.device) for g in generator]
        )
    raise TypeError(f"generator must be None, a torch.Generator or a list of them, got {type(generator).__name__}")
