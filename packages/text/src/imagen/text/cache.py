"""A precomputed caption -> (embeds, mask) store: safetensors shards, a caption table and a JSON index.

Each caption's embedding is stored trimmed to its own real length: a shard holds ``embeds``, its
captions' real tokens one after the other (T, D), in the stored dtype (the encoder's, or bfloat16 /
float16 to halve the size). ``captions.safetensors`` is the table: every caption's 64-bit key
(BLAKE2b of its UTF-8 bytes), sorted, with its (shard, offset, length) and its text; a lookup is a
binary search plus a read of just its rows from the shard (memory-mapped). No per-caption Python
dict, so a cache of millions of captions costs each process and data-loader worker a few arrays.
``index.json`` records each file's size and SHA-256, so a truncated or altered file is refused
with a clear error instead of being read. Lookups never run the encoder.

Large caption sets are encoded in parts (one per process, e.g. under ``accelerate launch``:
``build(..., part=(rank, world))``) and then joined with :meth:`TextEmbeddingCache.merge`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .encoder import TextEncoder
from .masks import check_texts, lengths_to_mask

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"
TABLE_NAME = "captions.safetensors"
FORMAT = "imagen-text-embedding-cache"
VERSION = 2
STORE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


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


def caption_key(text: str) -> int:
    """The caption's 64-bit key: its UTF-8 bytes' BLAKE2b digest as a signed int64."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


def write_atomic(path: Path, write) -> None:
    """Calls ``write(tmp_path)`` on a hidden temporary name beside ``path``, fsyncs it, renames it
    onto ``path`` and fsyncs the folder: a crash leaves the old file or the new one, never half of
    one. (The cascade's ``atomic_write`` is the same; this leaf package cannot import it.)"""
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        with open(tmp, "rb") as file:
            os.fsync(file.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)  # the rename itself reaches the disk
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        tmp.unlink(missing_ok=True)


def part_folder(folder: str | os.PathLike, index: int, count: int) -> Path:
    """Where part ``index`` of ``count`` of the cache in ``folder`` is built."""
    return Path(folder) / f"part-{index:05d}-of-{count:05d}"


class TextEmbeddingCache:
    """Opens a cache folder written by :meth:`build` (or :meth:`merge`); :meth:`lookup` returns
    (embeds, mask) by caption.

    Args:
        folder: the folder holding ``index.json``, the caption table and the shards.
        verify: check each file's SHA-256 before its first use (sizes are always checked on opening).
        max_shards_in_memory: open shard files kept (least recently used ones are closed).
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
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
            raise CorruptCacheError(f"{index_path} is not valid JSON ({error}); rebuild the cache") from error
        if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
            raise CorruptCacheError(f"{index_path} is not a version-{VERSION} {FORMAT} index; rebuild the cache")
        self.index = index
        self.dim: int = index["dim"]
        """Embedding width D."""
        self.dtype: torch.dtype = getattr(torch, index["dtype"])
        """The stored dtype of the embeddings."""
        self.encoder_name: str | None = index.get("encoder")
        self._shards: OrderedDict[int, object] = OrderedDict()
        self._checked: set[int] = set()
        for shard in index["shards"]:
            self._check_size(shard)
        self._keys, self._entries, self._text_bytes, self._text_offsets = self._read_table(index["table"])

    def __len__(self) -> int:
        return int(self._keys.numel())

    def __contains__(self, caption: object) -> bool:
        return isinstance(caption, str) and self._row(caption) is not None

    def __repr__(self) -> str:
        return f"TextEmbeddingCache({str(self.folder)!r}, captions={len(self)}, dim={self.dim}, dtype={self.dtype})"

    @property
    def captions(self) -> list[str]:
        """Every cached caption, in build order."""
        data, offsets = self._text_bytes.numpy().tobytes(), self._text_offsets.tolist()
        return [data[a:b].decode() for a, b in itertools.pairwise(offsets)]

    # ------------------------------------------------------------------------------ building

    @classmethod
    def build(cls, folder: str | os.PathLike, captions: Iterable[str], encoder: TextEncoder, *,
              shard_size: int = 4096, batch_size: int = 64, progress: bool = False, overwrite: bool = False,
              store_dtype: torch.dtype | None = None, part: tuple[int, int] | None = None) -> TextEmbeddingCache:
        """Encodes each distinct caption once with ``encoder`` and writes the cache into ``folder``.

        Args:
            folder: where ``index.json``, the caption table and the ``shard-NNNNN.safetensors`` files go.
            captions: the captions (any iterable, e.g. a dataset's captions; duplicates are stored once).
            encoder: any :class:`TextEncoder` (e.g. a :class:`~imagen.text.T5Encoder`).
            shard_size: captions per shard file.
            batch_size: captions per ``encoder.encode`` call.
            progress: show a tqdm bar over captions.
            overwrite: replace a cache already in ``folder`` (otherwise that is an error).
            store_dtype: the embeddings' stored dtype (None: the encoder's; float32, bfloat16, float16).
            part: ``(index, count)``: encode only every ``count``-th distinct caption from ``index`` into
                ``part_folder(folder, index, count)`` (one part per process; :meth:`merge` joins them).
        """
        for name, value in (("shard_size", shard_size), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} is not accepted; it must be an int >= 1")
        if store_dtype is not None and store_dtype not in STORE_DTYPES:
            raise ValueError(f"store_dtype={store_dtype!r} is not accepted; use one of {list(STORE_DTYPES)} or None")
        texts = unique(captions)
        if part is not None:
            index, count = _checked_part(part)
            folder, texts = part_folder(folder, index, count), texts[index::count]
        folder = cls._fresh_folder(Path(folder), overwrite)
        locations: list[tuple[int, int, int]] = []
        shards, dtype = [], store_dtype
        bar = tqdm(total=len(texts), desc="caching text embeddings", unit="caption", disable=not progress)
        for number, start in enumerate(range(0, len(texts), shard_size)):
            chunk = texts[start:start + shard_size]
            pieces, offset = [], 0
            for at in range(0, len(chunk), batch_size):
                batch = chunk[at:at + batch_size]
                embeds, mask = encoder.encode(batch)
                lengths = cls._check_encoded(embeds, mask, len(batch), encoder.dim)
                dtype = dtype or embeds.dtype
                for b, n in enumerate(lengths):
                    pieces.append(embeds[b, :n].detach().to("cpu", dtype))
                    locations.append((number, offset, n))
                    offset += n
                bar.update(len(batch))
            shards.append(cls._write_shard(folder / f"shard-{number:05d}.safetensors", torch.cat(pieces)))
        bar.close()
        dtype = dtype or torch.float32
        return cls._finish(folder, texts, locations, shards, dim=encoder.dim, dtype=dtype,
                           encoder=getattr(encoder, "name_or_path", None))

    @classmethod
    def merge(cls, folder: str | os.PathLike, sources: Sequence[str | os.PathLike] | None = None, *,
              overwrite: bool = False, remove_sources: bool = False) -> TextEmbeddingCache:
        """Joins caches (built in parts, or separately) into one in ``folder``; a caption in several
        keeps its first source's embedding. ``sources`` defaults to the ``part-*`` folders inside
        ``folder`` (all parts of one count must be there). Shards are hard-linked where the file
        system allows (copied otherwise) and checked as they are read; ``remove_sources`` deletes the
        sources afterwards. The sources must agree on dim, dtype and encoder."""
        folder = Path(folder)
        if sources is None:
            sources = _complete_parts(folder)
        opened = [cls(source) for source in sources]
        if not opened:
            raise ValueError(f"sources: nothing to merge into {folder}")
        for other in opened[1:]:
            for field in ("dim", "dtype", "encoder_name"):
                if getattr(other, field) != getattr(opened[0], field):
                    raise ValueError(f"cannot merge {other.folder} into {folder}: its {field} is "
                                     f"{getattr(other, field)}, {opened[0].folder}'s is {getattr(opened[0], field)}")
        folder = cls._fresh_folder(folder, overwrite)
        texts, locations, shards, seen = [], [], [], set()
        for source in opened:
            source.verify()
            first = len(shards)
            for number, shard in enumerate(source.index["shards"]):
                target = folder / f"shard-{first + number:05d}.safetensors"
                _link_or_copy(source.folder / shard["file"], target)
                shards.append(dict(shard, file=target.name))
            by_position = source._entries[torch.argsort(source._entries[:, 3])].tolist()
            for text, (number, offset, length, _) in zip(source.captions, by_position):
                if text not in seen:
                    seen.add(text)
                    texts.append(text)
                    locations.append((first + number, offset, length))
        merged = cls._finish(folder, texts, locations, shards, dim=opened[0].dim, dtype=opened[0].dtype,
                             encoder=opened[0].encoder_name)
        if remove_sources:
            for source in opened:
                shutil.rmtree(source.folder)
        return merged

    @classmethod
    def _fresh_folder(cls, folder: Path, overwrite: bool) -> Path:
        if (folder / INDEX_NAME).exists():
            if not overwrite:
                raise ValueError(f"folder={str(folder)!r} already holds a text embedding cache; "
                                 "pass overwrite=True to replace it")
            cls._remove(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @classmethod
    def _finish(cls, folder: Path, texts: list[str], locations: list[tuple[int, int, int]], shards: list[dict], *,
                dim: int, dtype: torch.dtype, encoder: str | None) -> TextEmbeddingCache:
        """Writes the caption table and then the index (last: a cache without it does not exist)."""
        table = _caption_table(texts, locations)
        path = folder / TABLE_NAME
        write_atomic(path, lambda tmp: save_file(table, str(tmp), metadata={"format": FORMAT}))
        index = {"format": FORMAT, "version": VERSION, "encoder": encoder, "dim": dim,
                 "dtype": str(dtype).removeprefix("torch."), "shards": shards,
                 "table": {"file": TABLE_NAME, "bytes": path.stat().st_size, "sha256": sha256_of(path),
                           "captions": len(texts)}}
        write_atomic(folder / INDEX_NAME, lambda tmp: tmp.write_text(json.dumps(index)))
        logger.info("cached %d captions in %d shards in %s", len(texts), len(shards), folder)
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
    def _write_shard(path: Path, embeds: torch.Tensor) -> dict:
        """Writes one shard of embeds (T, D); returns its index entry."""
        tensors = {"embeds": embeds.contiguous()}
        write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT}))
        return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_of(path),
                "tokens": int(embeds.shape[0])}

    @staticmethod
    def _remove(folder: Path) -> None:
        """Deletes the index, table and shards of the cache in ``folder`` (nothing else)."""
        (folder / INDEX_NAME).unlink()
        for path in [folder / TABLE_NAME, *folder.glob("shard-*.safetensors")]:
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------- reading

    def _check_size(self, entry: dict) -> Path:
        path = self.folder / entry["file"]
        if not path.is_file():
            raise CorruptCacheError(f"cache file {path} is missing; rebuild the cache in {self.folder}")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CorruptCacheError(f"cache file {path} has {size} bytes, the index says {entry['bytes']}: it is "
                                    f"truncated or altered; rebuild the cache in {self.folder}")
        return path

    def _check_hash(self, entry: dict) -> Path:
        path = self._check_size(entry)
        if sha256_of(path) != entry["sha256"]:
            raise CorruptCacheError(f"cache file {path} does not match its SHA-256 in the index: it is "
                                    f"corrupted; rebuild the cache in {self.folder}")
        return path

    def _read_table(self, entry: dict):
        path = self._check_hash(entry) if self.verify_hashes else self._check_size(entry)
        try:
            table = load_file(str(path))
            keys, entries = table["keys"], table["entries"]
            text_bytes, text_offsets = table["text_bytes"], table["text_offsets"]
        except Exception as error:  # safetensors raises its own error types for damaged files
            raise CorruptCacheError(f"cache file {path} cannot be read ({error}); rebuild the cache") from error
        count = entry["captions"]
        if keys.shape != (count,) or entries.shape != (count, 4) or text_offsets.shape != (count + 1,):
            raise CorruptCacheError(f"cache file {path} does not hold the {count} captions of the index; rebuild it")
        return keys, entries, text_bytes, text_offsets

    def _row(self, caption: str) -> int | None:
        """The table row of ``caption``, or None: a binary search on its key, then its text compared."""
        key = caption_key(caption)
        row = int(torch.searchsorted(self._keys, torch.tensor(key)))
        if row >= len(self) or int(self._keys[row]) != key:
            return None
        position = int(self._entries[row, 3])
        start, stop = self._text_offsets[position : position + 2].tolist()
        return row if self._text_bytes[start:stop].numpy().tobytes() == caption.encode() else None

    def _shard(self, number: int):
        """The open (and checked, once) shard ``number``: a memory-mapped safetensors handle."""
        if number in self._shards:
            self._shards.move_to_end(number)
            return self._shards[number]
        shard = self.index["shards"][number]
        if self.verify_hashes and number not in self._checked:
            path = self._check_hash(shard)
            self._checked.add(number)
        else:
            path = self._check_size(shard)
        try:
            handle = safe_open(str(path), framework="pt")
            shape = tuple(handle.get_slice("embeds").get_shape())
        except Exception as error:  # safetensors raises its own error types for damaged files
            raise CorruptCacheError(f"cache shard {path} cannot be read ({error}); rebuild the cache") from error
        if shape != (shard["tokens"], self.dim):
            raise CorruptCacheError(f"cache shard {path} holds embeds {shape}, the index says "
                                    f"({shard['tokens']}, {self.dim}); rebuild the cache")
        self._shards[number] = handle
        while len(self._shards) > self.max_shards_in_memory:
            self._shards.popitem(last=False)
        return handle

    def verify(self) -> None:
        """Checks every file's size and SHA-256 now; raises :class:`CorruptCacheError` on the first bad one."""
        self._check_hash(self.index["table"])
        for number, shard in enumerate(self.index["shards"]):
            self._check_hash(shard)
            self._checked.add(number)

    def lookup(self, captions: Sequence[str], *, device: str | torch.device | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeds (B, L, D), zero on padding, and mask (B, L) for ``captions``, L their longest real length.

        Reads only those captions' rows from their shards. Raises ``KeyError`` naming the captions
        that are not cached. Never runs an encoder.
        """
        captions = check_texts(captions)
        rows = [self._row(text) for text in captions]
        missing = [text for text, row in zip(captions, rows) if row is None]
        if missing:
            raise KeyError(f"{len(missing)} of {len(captions)} captions are not in the cache {self.folder}, "
                           f"e.g. {missing[0][:80]!r}; rebuild it with these captions included")
        entries = self._entries[rows, :3].tolist()
        lengths = torch.tensor([length for _, _, length in entries])
        embeds = torch.zeros(len(captions), int(lengths.max()), self.dim, dtype=self.dtype)
        for b, (number, offset, length) in enumerate(entries):
            embeds[b, :length] = self._shard(number).get_slice("embeds")[offset : offset + length]
        return embeds.to(device), lengths_to_mask(lengths).to(device)


def _caption_table(texts: list[str], locations: list[tuple[int, int, int]]) -> dict[str, torch.Tensor]:
    """keys (N,) sorted; entries (N, 4) = shard, offset, length, build position; the texts' UTF-8
    bytes in build order with their offsets (N + 1,)."""
    keys = torch.tensor([caption_key(text) for text in texts], dtype=torch.int64)
    order = torch.argsort(keys)
    keys = keys[order]
    if keys.numel() > 1 and bool((keys[1:] == keys[:-1]).any()):
        raise ValueError("two captions share a 64-bit key (a BLAKE2b collision); rename one of them")
    located = torch.tensor(locations, dtype=torch.int64).view(-1, 3)
    entries = torch.cat([located[order], order[:, None]], dim=1)
    encoded = [text.encode() for text in texts]
    offsets = torch.tensor([0, *map(len, encoded)], dtype=torch.int64).cumsum(0)
    text_bytes = torch.frombuffer(bytearray(b"".join(encoded)) or bytearray(1), dtype=torch.uint8)
    return {"keys": keys, "entries": entries.contiguous(), "text_bytes": text_bytes.clone(), "text_offsets": offsets}


def _checked_part(part) -> tuple[int, int]:
    if (not isinstance(part, tuple | list) or len(part) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in part) or not 0 <= part[0] < part[1]):
        raise ValueError(f"part={part!r} is not accepted; it must be (index, count) with 0 <= index < count")
    return int(part[0]), int(part[1])


def _complete_parts(folder: Path) -> list[Path]:
    """The part folders in ``folder``, checked complete (every index of one count)."""
    parts = sorted(folder.glob("part-*-of-*"))
    if not parts:
        raise ValueError(f"no part-*-of-* folders in {folder} to merge (build with part=(index, count))")
    counts = {p.name.rsplit("-", 1)[1] for p in parts}
    expected = [part_folder(folder, i, int(next(iter(counts)))) for i in range(int(next(iter(counts))))]
    if len(counts) != 1 or parts != expected:
        raise ValueError(f"the parts in {folder} are incomplete or of different counts: {[p.name for p in parts]}")
    return parts


def _link_or_copy(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
