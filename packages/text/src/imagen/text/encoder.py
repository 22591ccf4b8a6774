"""The text-encoder interface and its T5 implementation on transformers."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm

from .locate import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_T5_NAME,
    TextEncoderNotFoundError,
    get_encoded_dim,
    hf_hub_cache,
    locate,
    not_found_error,
)
from .masks import check_texts, pad_stack

logger = logging.getLogger(__name__)

ACCEPTED_DTYPES = (torch.float32, torch.bfloat16)


class TextEncoderLoadError(OSError, ValueError):
    """A text encoder's folder is there but cannot be loaded: a damaged, truncated or foreign file.

    The message names the folder, the part that failed (tokenizer or model), the files it holds and
    the underlying error. Both an ``OSError`` and a ``ValueError``, so either ``except`` clause catches it.
    """


@runtime_checkable
class TextEncoder(Protocol):
    """Anything that turns captions into token embeddings and a mask.

    ``encode(texts)`` returns ``embeds`` of shape (B, L, dim), floating point, zero on padding, and
    ``mask`` of shape (B, L), bool, True on real tokens (a prefix of each row), for B = len(texts).
    """

    dim: int

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeds (B, L, dim) and mask (B, L) for ``texts``."""
        ...


def check_dtype(dtype: torch.dtype) -> torch.dtype:
    """Returns ``dtype`` if T5 can run in it (float32, bfloat16); float16 is refused because T5 overflows."""
    if dtype == torch.float16:
        raise ValueError("dtype=torch.float16 is refused: T5's activations overflow to inf/NaN in float16. "
                         "Use dtype=torch.float32 or dtype=torch.bfloat16 (same range as float32).")
    if dtype not in ACCEPTED_DTYPES:
        raise ValueError(f"dtype={dtype!r} is not accepted; use torch.float32 or torch.bfloat16")
    return dtype


@contextlib.contextmanager
def _transformers_progress(enabled: bool):
    """transformers' own loading bars follow ``progress`` while loading (its switch is global, so
    the previous setting is put back afterwards)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was_enabled else hf_logging.disable_progress_bar)()


class T5Encoder:
    """A frozen T5 encoder (``T5EncoderModel`` and its tokenizer) that loads once, lazily.

    Args:
        name_or_path: a hub name (``"t5-base"``, ``"google/t5-v1_1-xl"``, ...) or a folder written by
            ``save_pretrained``. A folder is used as is; a name is looked up in the Hugging Face cache,
            and downloaded only if the hub is allowed (no ``HF_HUB_OFFLINE``) and reachable.
        max_length: tokens per caption, end-of-sequence included; longer captions are truncated.
        device: where the model runs and the outputs live (None: CPU).
        dtype: torch.float32 or torch.bfloat16. float16 is refused (T5 overflows in it).
        progress: show a tqdm bar over batches when encoding more than one batch.
        batch_size: captions per forward pass.
        cache_dir: the hub cache to use instead of the one the environment names.
        local_files_only: never reach the hub, even when it is allowed and reachable.

    ``encode`` returns embeds (B, L, dim) with L the longest real token count in the call
    (at most ``max_length``), zero on padding, and mask (B, L), True on real tokens.
    """

    def __init__(self, name_or_path: str | os.PathLike = DEFAULT_T5_NAME, *, max_length: int = DEFAULT_MAX_LENGTH,
                 device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
                 progress: bool = False, batch_size: int = 32, cache_dir: str | os.PathLike | None = None,
                 local_files_only: bool = False):
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
            raise ValueError(f"max_length={max_length!r} is not accepted; it must be an int >= 2 "
                             "(one token for the text and one for the end of sequence)")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is not accepted; it must be an int >= 1")
        self.name_or_path = os.fspath(name_or_path)
        self.max_length = max_length
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = check_dtype(dtype)
        self.progress = progress
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.local_files_only = local_files_only
        self._model = None
        self._tokenizer = None
        self._dim: int | None = None

    def __repr__(self) -> str:
        return (f"T5Encoder({self.name_or_path!r}, max_length={self.max_length}, device={str(self.device)!r}, "
                f"dtype={self.dtype}, loaded={self.loaded})")

    @property
    def dim(self) -> int:
        """Embedding width D, from the config (or the table of known names) without loading weights."""
        if self._dim is None:
            self._dim = get_encoded_dim(self.name_or_path)
        return self._dim

    @property
    def loaded(self) -> bool:
        """True while the model and tokenizer are in memory."""
        return self._model is not None

    def load(self) -> T5Encoder:
        """Loads the tokenizer and the model now (``encode`` does it on first use); returns self."""
        if self._model is not None:
            return self
        from transformers import AutoTokenizer, T5EncoderModel

        where = locate(self.name_or_path, cache_dir=self.cache_dir, local_files_only=self.local_files_only)
        options = {"local_files_only": where.local}
        if not where.local and self.cache_dir is not None:
            options["cache_dir"] = os.fspath(self.cache_dir)
        part = "tokenizer"
        try:
            with _transformers_progress(self.progress):
                tokenizer = AutoTokenizer.from_pretrained(where.source, **options)
                part = "model"
                model = T5EncoderModel.from_pretrained(where.source, dtype=self.dtype, **options)
        except Exception as error:
            if not isinstance(error, OSError | ValueError | ImportError):
                # a damaged file fails deep inside transformers, torch.load or safetensors with
                # whatever error its parser raises (UnpicklingError, EOFError, SafetensorError, KeyError...)
                raise self._load_error(where.source, part, error) from error
            if not where.local:  # the one guarded download attempt failed
                cache = Path(self.cache_dir) if self.cache_dir is not None else hf_hub_cache()
                raise not_found_error(self.name_or_path, None, cache, f"the download failed ({error})") from error
            folder = Path(where.source)
            if (folder / "spiece.model").is_file() and not (folder / "tokenizer.json").is_file():
                raise TextEncoderNotFoundError(
                    f"cannot load the tokenizer of {self.name_or_path!r} from {folder}: it ships only spiece.model, "
                    f"and converting that needs the sentencepiece package ({error}). Install sentencepiece, or save "
                    "the fast tokenizer (tokenizer.json) with save_pretrained on a machine that has it."
                ) from error
            if isinstance(error, TextEncoderNotFoundError):
                raise
            raise self._load_error(where.source, part, error) from error
        tokenizer.padding_side = "right"
        self._tokenizer = tokenizer
        self._model = model.to(self.device).eval().requires_grad_(False)
        self._dim = int(model.config.d_model)
        logger.info("loaded text encoder %s (dim %d) on %s in %s", self.name_or_path, self._dim, self.device,
                    self.dtype)
        return self

    def _load_error(self, source: str, part: str, error: Exception) -> TextEncoderLoadError:
        folder = Path(source)
        files = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        detail = " ".join(str(error).split())[:300] or type(error).__name__
        held = f" (it holds {', '.join(files)})" if files else ""
        return TextEncoderLoadError(
            f"cannot load the {part} of text encoder {self.name_or_path!r} from {source}{held}: "
            f"{type(error).__name__}: {detail}. A file there is damaged, truncated or not what its name says: "
            "save the encoder again with save_pretrained"
        )

    def release(self) -> None:
        """Drops the model and tokenizer to free memory; the next ``encode`` loads them again."""
        self._model = None
        self._tokenizer = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def tokenize(self, texts: Sequence[str], *, max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, L) and mask (B, L) for ``texts``, padded to the longest and truncated to max_length."""
        texts = check_texts(texts)
        self.load()
        tokens = self._tokenizer(list(texts), padding="longest", truncation=True,
                                 max_length=max_length or self.max_length, return_tensors="pt")
        return tokens["input_ids"], tokens["attention_mask"].bool()

    @torch.no_grad()
    def encode(self, texts: Sequence[str], *, max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeds (B, L, dim), zero on padding, and mask (B, L), True on real tokens, for B = len(texts).

        L is the longest real token count among ``texts`` (at most ``max_length``). Empty or blank
        captions raise ``ValueError`` naming their index.
        """
        texts = check_texts(texts)
        self.load()
        limit = max_length or self.max_length
        starts = range(0, len(texts), self.batch_size)
        bar = tqdm(starts, desc="T5 encoding", unit="batch", disable=not self.progress or len(starts) < 2)
        parts, truncated = [], 0
        for start in bar:
            ids, mask = self.tokenize(texts[start:start + self.batch_size], max_length=limit)
            truncated += int(mask[:, -1].sum()) if mask.shape[1] == limit else 0
            ids, mask = ids.to(self.device), mask.to(self.device)
            hidden = self._model(input_ids=ids, attention_mask=mask.long()).last_hidden_state  # (b, l, D)
            parts.append((hidden.masked_fill(~mask[..., None], 0.0), mask))
        if truncated:
            logger.warning("%d of %d captions reached max_length=%d tokens (longer ones are truncated)", truncated,
                           len(texts), limit)
        return pad_stack([e for e, _ in parts], [m for _, m in parts])


_ENCODERS: dict[tuple[str, str, torch.dtype], T5Encoder] = {}


def t5_encode_text(texts: Sequence[str], name: str | os.PathLike = DEFAULT_T5_NAME, return_attn_mask: bool = False,
                   *, max_length: int = DEFAULT_MAX_LENGTH, device: str | torch.device | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Encodes ``texts`` with the T5 ``name``: embeds (B, L, D), zero on padding; with
    ``return_attn_mask`` also the mask (B, L) bool, True on real tokens (the reference's signature).

    Loaded encoders are kept per (name, device, dtype) and reused; :func:`release_text_encoders` frees them.
    """
    key = (os.fspath(name), str(torch.device(device) if device is not None else torch.device("cpu")),
           check_dtype(dtype))
    if key not in _ENCODERS:
        _ENCODERS[key] = T5Encoder(name, max_length=max_length, device=device, dtype=dtype)
    embeds, mask = _ENCODERS[key].encode(texts, max_length=max_length)
    return (embeds, mask) if return_attn_mask else embeds


def release_text_encoders() -> None:
    """Releases every encoder that :func:`t5_encode_text` keeps loaded."""
    for encoder in _ENCODERS.values():
        encoder.release()
    _ENCODERS.clear()
