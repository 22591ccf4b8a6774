"""Tiny, real text encoders for tests and offline demos (a public module other packages' tests use).

:func:`build_tiny_t5` writes a genuine ``T5EncoderModel`` checkpoint and a T5 tokenizer built from a
word list with ``save_pretrained``, so ``T5Encoder(folder)`` exercises the same loading path as a real
model. :func:`add_to_hf_cache` places such a folder in a Hugging Face cache under a hub name.
:class:`HashTextEncoder` is a model-free :class:`~imagen.text.TextEncoder` whose output for a caption
never depends on the rest of the batch, for exact checks of code built on top of encoders.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import string
from collections.abc import Sequence
from pathlib import Path

import torch

from .masks import check_texts, lengths_to_mask

DEFAULT_WORDS = tuple(
    "a an the of on in with and at by to from under over near behind next above below "
    "cat dog bird horse fish cow sheep fox owl bear person man woman child robot car boat train "
    "house tree flower mountain river sea sky sun moon star cloud road city forest field beach "
    "red green blue yellow black white orange purple pink brown grey golden small big tiny huge "
    "old young happy sleeping running flying sitting standing painting photo drawing picture "
    "bright dark sunny rainy snowy night morning evening watercolor oil cartoon realistic".split()
)
"""The word list the tiny tokenizer knows as whole words (any other ASCII text is spelt letter by letter)."""

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def tiny_vocab(words: Sequence[str]) -> list[tuple[str, float]]:
    """A Unigram vocabulary: T5's special tokens (ids 0, 1, 2), whole words, then single characters."""
    pieces = [(token, 0.0) for token in SPECIAL_TOKENS]
    seen = set(SPECIAL_TOKENS)
    for word in words:
        if not word or any(ch.isspace() for ch in word):
            raise ValueError(f"words holds {word!r}; every word must be a non-empty string without spaces")
        if "▁" + word not in seen:
            seen.add("▁" + word)
            pieces.append(("▁" + word, -1.0))
    for piece in ("▁", *string.ascii_letters, *string.digits, *string.punctuation):
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, -10.0))
    return pieces


def make_tiny_t5(*, words: Sequence[str] | None = None, d_model: int = 32, num_layers: int = 2, num_heads: int = 4,
                 d_kv: int = 8, d_ff: int = 64, seed: int = 0, feed_forward_proj: str = "gated-gelu"):
    """A tiny ``T5EncoderModel`` (eval mode) and its ``T5Tokenizer``, in memory; see :func:`build_tiny_t5`.

    The tokenizer is a Unigram vocabulary made from ``words`` (default :data:`DEFAULT_WORDS`) plus
    single ASCII characters; the weights are drawn from a ``torch.Generator`` seeded with ``seed`` (the
    global RNG is untouched), so the same arguments always give the same model.
    """
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    vocab = tiny_vocab(DEFAULT_WORDS if words is None else words)
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    config = T5Config(vocab_size=len(vocab), d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=num_layers,
                      num_heads=num_heads, feed_forward_proj=feed_forward_proj, dropout_rate=0.0,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=False)
    with torch.device("meta"):  # no initialisation here: it would draw from the global RNG
        model = T5EncoderModel(config)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layer_norm" in name:
                parameter.fill_(1.0)
            elif "shared" in name or "embed_tokens" in name or "relative_attention_bias" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
            else:  # a Linear weight (out, in): unit-variance outputs for unit-variance inputs
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * parameter.shape[1] ** -0.5)
    model.set_input_embeddings(model.shared)  # tie encoder.embed_tokens to shared, as T5 does
    return model.eval(), tokenizer


def build_tiny_t5(folder: str | os.PathLike, *, words: Sequence[str] | None = None, d_model: int = 32,
                  num_layers: int = 2, num_heads: int = 4, d_kv: int = 8, d_ff: int = 64, seed: int = 0,
                  feed_forward_proj: str = "gated-gelu") -> Path:
    """Writes a tiny T5 encoder and its tokenizer to ``folder`` with ``save_pretrained``; returns the folder.

    The model and tokenizer are :func:`make_tiny_t5`'s (same arguments); ``T5Encoder(folder)`` loads them
    through the same code path as a real checkpoint, and ``get_encoded_dim(folder) == d_model``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model, tokenizer = make_tiny_t5(words=words, d_model=d_model, num_layers=num_layers, num_heads=num_heads,
                                    d_kv=d_kv, d_ff=d_ff, seed=seed, feed_forward_proj=feed_forward_proj)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def add_to_hf_cache(folder: str | os.PathLike, repo_id: str, hub_cache: str | os.PathLike,
                    revision: str = "0" * 40) -> Path:
    """Copies a saved model folder into a Hugging Face hub cache as ``repo_id``; returns the snapshot folder.

    The layout is the hub cache's own (``models--org--name/refs/main`` and ``snapshots/<revision>/``),
    so a hub name resolves to it offline exactly as a downloaded model would.
    """
    repo = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


class HashTextEncoder:
    """A deterministic, model-free text encoder: one token per word, embeddings drawn from a hash of it.

    Each caption's embedding depends only on the caption (never on the batch), so results built on it
    can be compared exactly. Satisfies :class:`~imagen.text.TextEncoder`.

    Args:
        dim: embedding width D.
        max_length: tokens kept per caption (words past it are dropped).
        dtype: dtype of the embeddings.
    """

    def __init__(self, dim: int = 16, *, max_length: int = 256, dtype: torch.dtype = torch.float32):
        self.dim = dim
        self.max_length = max_length
        self.dtype = dtype
        self.name_or_path = f"hash-{dim}"
        self.calls = 0

    def embed_word(self, position: int, word: str) -> torch.Tensor:
        """The (dim,) embedding of ``word`` at ``position``."""
        digest = hashlib.sha256(f"{position}:{word}".encode()).digest()
        seed = int.from_bytes(digest[:8], "little")
        return torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)).to(self.dtype)

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeds (B, L, dim), zero on padding, and mask (B, L), L the most words in a caption."""
        texts = check_texts(texts)
        self.calls += 1
        rows = [text.split()[: self.max_length] for text in texts]
        lengths = torch.tensor([len(words) for words in rows])
        embeds = torch.zeros(len(rows), int(lengths.max()), self.dim, dtype=self.dtype)
        for b, words in enumerate(rows):
            for position, word in enumerate(words):
                embeds[b, position] = self.embed_word(position, word)
        return embeds, lengths_to_mask(lengths)
