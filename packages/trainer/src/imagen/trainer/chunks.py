"""Splitting a batch into chunks of at most ``max_batch_size`` items for gradient accumulation."""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["split_batch"]


def split_batch(
    images: torch.Tensor, kwargs: dict, max_batch_size: int | None
) -> Iterator[tuple[float, torch.Tensor, dict]]:
    """Yields ``(fraction, images, kwargs)`` chunks of at most ``max_batch_size`` items of ``images``
    (B, ...), where ``fraction`` is the chunk's share of the batch (the weights of a mean loss).
    Keyword values with the batch as first dimension (tensors, lists or tuples of texts) are split
    alongside; others are passed to every chunk unchanged."""
    batch = images.shape[0]
    if max_batch_size is not None and (
        isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1
    ):
        raise ValueError(f"max_batch_size must be None or an int >= 1, got {max_batch_size!r}")
    if max_batch_size is None or max_batch_size >= batch:
        yield 1.0, images, kwargs
        return
    for start in range(0, batch, max_batch_size):
        stop = min(start + max_batch_size, batch)
        chunk = {key: _slice(value, batch, start, stop) for key, value in kwargs.items()}
        yield (stop - start) / batch, images[start:stop], chunk


def _slice(value, batch: int, start: int, stop: int):
    splittable = isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch
    splittable = splittable or (isinstance(value, (list, tuple)) and len(value) == batch)
    return value[start:stop] if splittable else value
