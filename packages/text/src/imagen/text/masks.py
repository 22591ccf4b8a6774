"""Caption checks, masks from lengths, and padding of ragged embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def check_texts(texts: Sequence[str]) -> list[str]:
    """Returns ``texts`` as a list after checking it holds only non-blank strings.

    Raises ``TypeError`` for a bare string or a non-string item, ``ValueError`` for an empty list or an
    empty/blank caption (naming its index).
    """
    if isinstance(texts, str | bytes):
        raise TypeError(f"texts must be a sequence of strings, got a single {type(texts).__name__} "
                        f"{texts[:40]!r}; wrap it in a list: [text]")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty; give at least one caption")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is a {type(text).__name__} ({text!r}); every caption must be a str")
        if not text.strip():
            raise ValueError(f"texts[{index}] is {'empty' if not text else 'blank'} ({text!r}); every caption needs "
                             "at least one visible character (drop it, or use the model's null conditioning)")
    return texts


def lengths_to_mask(lengths: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """Mask (B, L) bool, True on the first ``lengths[b]`` positions of row b; lengths: (B,) int.

    ``length`` defaults to ``lengths.max()``.
    """
    length = int(lengths.max()) if length is None else length
    return torch.arange(length, device=lengths.device) < lengths[:, None]


def pad_stack(embeds: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenates batches of embeds (b_i, l_i, D) and masks (b_i, l_i) along B, zero-padding L to max l_i.

    Returns embeds (sum b_i, max l_i, D) and mask (sum b_i, max l_i).
    """
    length = max(e.shape[1] for e in embeds)
    embeds = [F.pad(e, (0, 0, 0, length - e.shape[1])) for e in embeds]
    masks = [F.pad(m, (0, length - m.shape[1]), value=False) for m in masks]
    return torch.cat(embeds), torch.cat(masks)
