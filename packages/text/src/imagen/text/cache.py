"""A precomputed caption -> (embeds, mask) store: safetensors shards plus a JSON index.

Each caption's embedding is stored trimmed to its own real length: a shard holds ``embeds``, all of
its captions' real tokens one after the other (T, D), and ``lengths`` (N,). The index maps every
caption to (shard, offset, length) and records each shard's size and SHA-256, so a truncated or
altered shard is refused with a clear error instead of being read. Lookups only read tensors: the
encoder runs once, at build time, never inside a data loader.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .encoder import TextEncoder
from .masks import check_texts, lengths_to_mask

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"
FORMAT = "imagen-text-embedding-cache"
VERSION = 1


class CorruptCacheError(ValueError):
    """A cache shard or index is missing, truncated or altered; rebuild the cache (or restore the file)."""


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unique(captions: Iterable[str]) -> list[str]:
    """The captions once each, in first-seen order, after checking they are non-blank strings."""
    return list(dict.fromkeys(check_texts(list(captions))))


def write_atomic(path: Path, write) -> None:
    """Calls ``write(tmp_path)`` then renames the temporary file onto ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


class TextEmbeddingCache:
    """Opens a cache folder written by :meth:`build`; :meth:`lookup` returns (embeds, mask) by caption.

    Args:
        folder: the folder holding ``index.json`` and the shards.
        verify: check each shard's SHA-256 before its first use (sizes are always checked on opening).
        max_shards_in_memory: loaded shards kept in memory (least recently used ones are dropped).
    """

    def __init__(self, folder: str | os.PathLike, *, verify: bool = True, max_shards_in_memory: int = 4):
        self.folder = Path(folder)
        self.verify_hashes = verify
        self.max_shards_in_memory = max(1, int(max_shards_in_memory))
        index_path = self.folder / INDEX_NAME
        if not index_path.is_file():
            raise FileNotFoundError(f"no text embedding cache in {self.folder}: {INDEX_NAME} is missing "
                                    "(build one with TextEmbeddingCache.build)")
        try:
            index = json.loads(index_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CorruptCacheError(f"{index_path} is not valid JSON ({error}); rebuild the cache") from error
        if index.get("format") != FORMAT or index.get("version") != VERSION:
            raise CorruptCacheError(f"{index_path} is not a version-{VERSION} {FORMAT} index")
        self.index = index
        self.dim: int = index["dim"]
        """Embedding width D."""
        self.dtype: torch.dtype = getattr(torch, index["dtype"])
        self.encoder_name: str | None = index.get("encoder")
        self._entries: dict[str, list[int]] = index["captions"]
        self._shards: OrderedDict[int, tuple[torch.Tensor, list[int]]] = OrderedDict()
        self._checked: set[int] = set()
        for number, shard in enumerate(index["shards"]):
            self._check_size(number, shard)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, caption: object) -> bool:
        return caption in self._entries

    def __repr__(self) -> str:
        return f"TextEmbeddingCache({str(self.folder)!r}, captions={len(self)}, dim={self.dim}, dtype={self.dtype})"

    @property
    def captions(self) -> list[str]:
        """Every cached caption, in build order."""
        return list(self._entries)

    @classmethod
    def build(cls, folder: str | os.PathLike, captions: Iterable[str], encoder: TextEncoder, *,
              shard_size: int = 4096, batch_size: int = 64, progress: bool = False,
              overwrite: bool = False) -> TextEmbeddingCache:
        """Encodes each distinct caption once with ``encoder`` and writes the cache into ``folder``.

        Args:
            folder: where ``index.json`` and the ``shard-NNNNN.safetensors`` files go.
            captions: the captions (any iterable, e.g. a dataset's captions; duplicates are stored once).
            encoder: any :class:`TextEncoder` (e.g. a :class:`~imagen.text.T5Encoder`).
            shard_size: captions per shard file.
            batch_size: captions per ``encoder.encode`` call.
            progress: show a tqdm bar over captions.
            overwrite: replace a cache already in ``folder`` (otherwise that is an error).
        """
        for name, value in (("shard_size", shard_size), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} is not accepted; it must be an int >= 1")
        folder = Path(folder)
        if (folder / INDEX_NAME).exists():
            if not overwrite:
                raise ValueError(f"folder={str(folder)!r} already holds a text embedding cache; "
                                 "pass overwrite=True to replace it")
            cls._remove(folder)
        folder.mkdir(parents=True, exist_ok=True)
        texts = unique(captions)
        entries: dict[str, list[int]] = {}
        shards, dtype = [], None
        bar = tqdm(total=len(texts), desc="caching text embeddings", unit="caption", disable=not progress)
        for number, start in enumerate(range(0, len(texts), shard_size)):
            chunk = texts[start:start + shard_size]
            pieces, lengths = [], []
            for at in range(0, len(chunk), batch_size):
                batch = chunk[at:at + batch_size]
                embeds, mask = encoder.encode(batch)
                lengths_b = cls._check_encoded(embeds, mask, len(batch), encoder.dim)
                dtype = embeds.dtype
                pieces.extend(embeds[b, :n].detach().cpu() for b, n in enumerate(lengths_b))
                lengths.extend(lengths_b)
                bar.update(len(batch))
            offsets = torch.tensor([0, *lengths]).cumsum(0).tolist()
            for text, offset, length in zip(chunk, offsets, lengths):
                entries[text] = [number, offset, length]
            shards.append(cls._write_shard(folder, number, torch.cat(pieces), torch.tensor(lengths)))
        bar.close()
        index = {"format": FORMAT, "version": VERSION, "encoder": getattr(encoder, "name_or_path", None),
                 "dim": encoder.dim, "dtype": str(dtype).removeprefix("torch."), "shards": shards,
                 "captions": entries}
        write_atomic(folder / INDEX_NAME, lambda path: path.write_text(json.dumps(index)))
        logger.info("cached %d captions in %d shards in %s", len(entries), len(shards), folder)
        return cls(folder)

    @staticmethod
    def _check_encoded(embeds: torch.Tensor, mask: torch.Tensor, count: int, dim: int) -> list[int]:
        """Checks an encoder's output against the TextEncoder contract; returns the real lengths."""
        if embeds.ndim != 3 or embeds.shape[0] != count or embeds.shape[2] != dim or mask.shape != embeds.shape[:2]:
            raise ValueError(f"the encoder returned embeds {tuple(embeds.shape)} and mask {tuple(mask.shape)} for "
                             f"{count} captions; expected ({count}, L, {dim}) and ({count}, L)")
        lengths = mask.sum(1)
        if not torch.equal(mask.cpu(), lengths_to_mask(lengths.cpu(), mask.shape[1])):
            raise ValueError("the encoder's mask is not a prefix of True per row (right padding is expected)")
        return lengths.tolist()

    @staticmethod
    def _write_shard(folder: Path, number: int, embeds: torch.Tensor, lengths: torch.Tensor) -> dict:
        """Writes one shard: embeds (T, D) and lengths (N,); returns its index entry."""
        path = folder / f"shard-{number:05d}.safetensors"
        tensors = {"embeds": embeds.contiguous(), "lengths": lengths.to(torch.int64)}
        write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT}))
        return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_of(path),
                "tokens": int(embeds.shape[0]), "captions": int(lengths.numel())}

    @staticmethod
    def _remove(folder: Path) -> None:
        """Deletes the index and shards of the cache in ``folder`` (nothing else)."""
        for path in folder.glob("shard-*.safetensors"):
            path.unlink()
        (folder / INDEX_NAME).unlink()

    def _check_size(self, number: int, shard: dict) -> Path:
        path = self.folder / shard["file"]
        if not path.is_file():
            raise CorruptCacheError(f"cache shard {path} is missing; rebuild the cache in {self.folder}")
        size = path.stat().st_size
        if size != shard["bytes"]:
            raise CorruptCacheError(f"cache shard {path} has {size} bytes, the index says {shard['bytes']}: it is "
                                    f"truncated or altered; rebuild the cache in {self.folder}")
        return path

    def _shard(self, number: int) -> tuple[torch.Tensor, list[int]]:
        """Loads (and checks, once) shard ``number``: embeds (T, D) and its lengths."""
        if number in self._shards:
            self._shards.move_to_end(number)
            return self._shards[number]
        shard = self.index["shards"][number]
        path = self._check_size(number, shard)
        if self.verify_hashes and number not in self._checked:
            if sha256_of(path) != shard["sha256"]:
                raise CorruptCacheError(f"cache shard {path} does not match its SHA-256 in the index: it is "
                                        f"corrupted; rebuild the cache in {self.folder}")
            self._checked.add(number)
        try:
            tensors = load_file(str(path))
            embeds, lengths = tensors["embeds"], tensors["lengths"]
        except Exception as error:  # safetensors raises its own error types for damaged files
            raise CorruptCacheError(f"cache shard {path} cannot be read ({error}); rebuild the cache") from error
        if embeds.shape != (shard["tokens"], self.dim) or lengths.shape != (shard["captions"],):
            raise CorruptCacheError(f"cache shard {path} holds embeds {tuple(embeds.shape)} and lengths "
                                    f"{tuple(lengths.shape)}, which do not match the index; rebuild the cache")
        self._shards[number] = (embeds, lengths.tolist())
        while len(self._shards) > self.max_shards_in_memory:
            self._shards.popitem(last=False)
        return self._shards[number]

    def verify(self) -> None:
        """Checks every shard's size and SHA-256 now; raises :class:`CorruptCacheError` on the first bad one."""
        for number, shard in enumerate(self.index["shards"]):
            path = self._check_size(number, shard)
            if sha256_of(path) != shard["sha256"]:
                raise CorruptCacheError(f"cache shard {path} does not match its SHA-256 in the index: it is "
                                        f"corrupted; rebuild the cache in {self.folder}")
            self._checked.add(number)

    def lookup(self, captions: Sequence[str], *, device: str | torch.device | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeds (B, L, D), zero on padding, and mask (B, L) for ``captions``, L their longest real length.

        Raises ``KeyError`` naming the captions that are not cached. Never runs an encoder.
        """
        captions = check_texts(captions)
        missing = [text for text in captions if text not in self._entries]
        if missing:
            raise KeyError(f"{len(missing)} of {len(captions)} captions are not in the cache {self.folder}, "
                           f"e.g. {missing[0][:80]!r}; rebuild it with these captions included")
        entries = [self._entries[text] for text in captions]
        lengths = torch.tensor([length for _, _, length in entries])
        embeds = torch.zeros(len(captions), int(lengths.max()), self.dim, dtype=self.dtype)
        for b, (number, offset, length) in enumerate(entries):
            shard_embeds, _ = self._shard(number)
            embeds[b, :length] = shard_embeds[offset:offset + length]
        mask = lengths_to_mask(lengths)
        return embeds.to(device), mask.to(device)
