"""Checks and preparation of what conditions a cascade: texts, embeddings, masks, generators."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def batch_size_of(name: str, value, expected: int | None) -> int:
    """The batch size of ``value`` (a tensor or a list), checked against ``expected`` when known."""
    size = len(value)
    if expected is not None and size != expected:
        raise ValueError(f"{name} has batch size {size}, but the batch has {expected} samples")
    return size


def check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(f"texts must be a list of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"texts[{i}] must be a non-empty string, got {text!r}")
    return list(texts)


def mask_from_embeddings(text_embeds: torch.Tensor) -> torch.Tensor:
    """The mask of real tokens when none is given: positions whose embedding is not all zero."""
    return (text_embeds != 0).any(dim=-1)


def check_text_embeds(text_embeds: torch.Tensor, text_masks: torch.Tensor | None, dim: int | None):
    """The (B, L) bool mask of ``text_embeds`` (B, L, D) (given, or from the non-zero positions),
    after checking shapes; finiteness is checked once per call by ``checks.check_keywords``."""
    for name, value in (("text_embeds", text_embeds), ("text_masks", text_masks)):
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    if not text_embeds.is_floating_point():
        raise TypeError(f"text_embeds must be a floating-point tensor (B, L, D), got dtype {text_embeds.dtype}")
    if text_embeds.ndim != 3:
        raise ValueError(f"text_embeds must have shape (B, L, D), got {tuple(text_embeds.shape)}")
    if dim is not None and text_embeds.shape[-1] != dim:
        raise ValueError(
            f"text_embeds have width {text_embeds.shape[-1]}, but the cascade's unets take text_embed_dim={dim}"
        )
    if text_masks is None:
        return mask_from_embeddings(text_embeds)
    if text_masks.shape != text_embeds.shape[:2]:
        raise ValueError(
            f"text_masks must have shape {tuple(text_embeds.shape[:2])} (B, L) to match text_embeds, "
            f"got {tuple(text_masks.shape)}"
        )
    return text_masks.bool()


def make_generators(generator, batch: int, device) -> list[torch.Generator] | torch.Generator | None:
    """Per-sample generators for a seed (sample i uses seed + i, so a seed gives the same sample
    whatever the batch), or the given generator(s) unchanged."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return [torch.Generator(device=device).manual_seed(generator + i) for i in range(batch)]
    if isinstance(generator, Sequence) and all(isinstance(g, torch.Generator) for g in generator):
        batch_size_of("generator", generator, batch)
        return list(generator)
    raise ValueError(
        f"generator must be None, an int seed, a torch.Generator or one generator per sample, got {generator!r}"
    )

