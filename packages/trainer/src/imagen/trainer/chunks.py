"""Splitting a batch into chunks of at most ``max_batch_size`` items: for gradient accumulation, and
for sampling a large batch in parts (``trainer.sample(max_batch_size=)``)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["concatenate_outputs", "split_batch", "split_sample_kwargs"]


def _check_max_batch_size(max_batch_size) -> None:
    if max_batch_size is not None and (
        isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int) or max_batch_size < 1
    ):
        raise ValueError(f"max_batch_size must be None or an int >= 1, got {max_batch_size!r}")


def split_batch(
    images: torch.Tensor, kwargs: dict, max_batch_size: int | None
) -> Iterator[tuple[float, torch.Tensor, dict]]:
    """Yields ``(fraction, images, kwargs)`` chunks of at most ``max_batch_size`` items of ``images``
    (B, ...), where ``fraction`` is the chunk's share of the batch (the weights of a mean loss).
    Keyword values with the batch as first dimension (tensors, lists or tuples of texts) are split
    alongside; others are passed to every chunk unchanged."""
    batch = images.shape[0]
    _check_max_batch_size(max_batch_size)
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



def _per_sample(value, batch: int | None) -> bool:
    """Whether a sampling keyword holds one entry per sample: a tensor (B, ...), or a list / tuple
    of B strings or generators (per-unet tuples of numbers or images are not)."""
    if isinstance(value, torch.Tensor):
        return value.ndim > 0 and (batch is None or value.shape[0] == batch)
    if isinstance(value, (list, tuple)) and value:
        return all(isinstance(v, (str, torch.Generator)) for v in value) and (batch is None or len(value) == batch)
    return False


def _sample_slice(value, batch: int, start: int, stop: int):
    """One chunk of a sampling keyword: per-sample values sliced, per-unet tuples of per-sample
    tensors (``init_images=(None, images)``) sliced item by item, anything else unchanged."""
    if _per_sample(value, batch):
        return value[start:stop]
    if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value) and all(
        v is None or (isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == batch) for v in value
    ):
        return type(value)(None if v is None else v[start:stop] for v in value)
    return value


def split_sample_kwargs(kwargs: dict, max_batch_size: int) -> list[dict]:
    """``kwargs`` of a ``sample`` call cut into calls of at most ``max_batch_size`` samples each: the
    per-sample values (``texts``, ``text_embeds``, ``text_masks``, ``cond_images``, per-sample
    generators...) are sliced; without any, ``batch_size`` is split; other values are repeated."""
    _check_max_batch_size(max_batch_size)
    first = next((v for v in kwargs.values() if _per_sample(v, None)), None)
    if first is None:
        batch = kwargs.get("batch_size", 1)
    else:
        batch = first.shape[0] if isinstance(first, torch.Tensor) else len(first)
    chunks = []
    for start in range(0, batch, max_batch_size):
        stop = min(start + max_batch_size, batch)
        chunk = {k: _sample_slice(v, batch, start, stop) for k, v in kwargs.items()}
        if "batch_size" in kwargs or first is None:
            chunk["batch_size"] = stop - start
        chunks.append(chunk)
    return chunks


def concatenate_outputs(outputs: list):
    """Chunked sampling outputs joined along the batch: tensors, or lists (one per unet, with
    ``return_all_unet_outputs``) of tensors, or lists of PIL images."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs, dim=0)
    if isinstance(first, (list, tuple)) and first and all(isinstance(t, torch.Tensor) for t in first):
        return [torch.cat(parts, dim=0) for parts in zip(*outputs)]
    return [item for output in outputs for item in output]
