"""The one home of random draws with a generator (checked by ``tools/layout.py``).

Every draw takes ``generator``: ``None`` (the global RNG), one ``torch.Generator``, or a list of
generators, one per batch element (element ``b`` of the result is drawn from ``generator[b]``
alone, so a seed gives the same noise whatever the batch it sits in). Numbers are drawn on the
generator's device (PyTorch refuses a CUDA generator for a CPU draw and vice versa) and then moved
to ``device``; with no generator they are drawn on ``device`` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["GeneratorArg", "first_generator", "rand", "randint", "randn", "randn_like"]

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


def _is_list(generator) -> bool:
    return isinstance(generator, Sequence) and not isinstance(generator, str)


def _check(generator, shape: tuple[int, ...]) -> None:
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not _is_list(generator) or not all(isinstance(g, torch.Generator) for g in generator):
        raise TypeError(f"generator must be None, a torch.Generator or a list of them, got {generator!r}")
    if len(shape) == 0 or len(generator) != shape[0]:
        batch = shape[0] if shape else "a batch dimension"
        raise ValueError(
            f"generator: a list must hold one torch.Generator per batch element ({batch}), got {len(generator)}"
        )


def _draw(fill: Callable[..., Tensor], shape, generator: GeneratorArg, device, dtype) -> Tensor:
    """``fill(shape, generator=, device=, dtype=)`` honouring the generator contract above."""
    shape = tuple(shape)
    _check(generator, shape)
    if generator is None:
        return fill(shape, generator=None, device=device, dtype=dtype)
    if isinstance(generator, torch.Generator):
        return fill(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
    return torch.stack(
        [fill(shape[1:], generator=g, device=g.device, dtype=dtype).to(device) for g in generator]
    )


def randn(shape, generator: GeneratorArg = None, *, device=None, dtype=None) -> Tensor:
    """Standard normal numbers of ``shape`` on ``device``."""
    return _draw(torch.randn, shape, generator, device, dtype)


def rand(shape, generator: GeneratorArg = None, *, device=None, dtype=None) -> Tensor:
    """Uniform numbers in [0, 1) of ``shape`` on ``device``."""
    return _draw(torch.rand, shape, generator, device, dtype)


def randint(low: int, high: int, shape, generator: GeneratorArg = None, *, device=None) -> Tensor:
    """Integers uniform in [low, high) of ``shape`` (int64) on ``device``."""

    def fill(size, *, generator, device, dtype):
        return torch.randint(low, high, size, generator=generator, device=device, dtype=dtype)

    return _draw(fill, shape, generator, device, torch.int64)


def randn_like(x: Tensor, generator: GeneratorArg = None) -> Tensor:
    """Standard normal noise shaped like ``x`` (same dtype and device)."""
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)


def first_generator(generator: GeneratorArg) -> torch.Generator | None:
    """The generator for a draw shared by the whole batch: the first of a per-sample list."""
    return generator[0] if _is_list(generator) else generator
