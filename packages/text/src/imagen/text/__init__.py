"""imagen.text: offline-first T5 text encoding, masks, and a safetensors embedding cache.

Encode captions with :class:`T5Encoder` (or :func:`t5_encode_text`); precompute them once with
:class:`TextEmbeddingCache`; build a tiny real T5 for tests with :mod:`imagen.text.testing`.
"""

from .cache import CorruptCacheError, TextEmbeddingCache
from .encoder import (
    T5Encoder,
    TextEncoder,
    TextEncoderLoadError,
    check_dtype,
    release_text_encoders,
    t5_encode_text,
)
from .locate import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_T5_NAME,
    KNOWN_DIMS,
    TextEncoderNotFoundError,
    get_encoded_dim,
    hf_hub_cache,
    hub_reachable,
)
from .masks import check_texts, lengths_to_mask, pad_stack

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_T5_NAME",
    "KNOWN_DIMS",
    "CorruptCacheError",
    "T5Encoder",
    "TextEmbeddingCache",
    "TextEncoder",
    "TextEncoderLoadError",
    "TextEncoderNotFoundError",
    "check_dtype",
    "check_texts",
    "get_encoded_dim",
    "hf_hub_cache",
    "hub_reachable",
    "lengths_to_mask",
    "pad_stack",
    "release_text_encoders",
    "t5_encode_text",
]
