"""Training data from webdataset tar shards: an index, a resumable split by process and worker,
bad samples skipped and counted, and a writer that turns a folder (or pairs) into shards.

A shard is a tar file whose members are grouped into samples by their key (the name up to the
first dot): ``<key>.png`` / ``.jpg`` / ``.jpeg`` / ``.webp`` (the image), ``<key>.txt`` or
``<key>.json`` (``{"text": ...}`` or ``{"caption": ...}``; the caption) and optionally
``<key>.safetensors`` (a tensor ``text_embeds`` ``(L, D)``, any float dtype, trimmed to its tokens)
or ``<key>.npy`` (the same as a numpy array). This is the layout img2dataset writes (with
``--output_format webdataset``), plus the embedding.

The shard list with each shard's sample count is the only thing read at start-up: from the index
``shards.json`` that :func:`write_shards` (or :func:`index_shards`) writes, or, for a pattern or
list without an index, by reading each tar's member headers once (never the images). Which
process and loader worker reads which samples is :mod:`imagen.trainer.shard_order`.
"""

from __future__ import annotations

import bisect
import glob
import io
import json
import logging
import math
import os
import tarfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import fsspec
import numpy as np
import torch
from braceexpand import braceexpand
from PIL import Image
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset import ShardWriter
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator

from imagen.cascade import atomic_write

from .data import _UNREADABLE, Dataset, _mix_seed, collate
from .shard_order import shard_permutation, window_order, worker_run

__all__ = ["ShardDataset", "ShardStream", "decode_image", "index_shards", "loader_settings", "write_shards"]

logger = logging.getLogger(__name__)

INDEX_NAME = "shards.json"
INDEX_FORMAT = "imagen-shards"
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
SKIPPED = "__skipped__"
"""The batch key that carries ``(shard, key, reason)`` of the samples a batch left out."""


class _Bad:
    """A sample position that yields no sample: ``(key, reason)``."""

    def __init__(self, key: str, reason: str):
        self.key, self.reason = key, reason


# ---------------------------------------------------------------------------------------- decoding


def decode_image(data: bytes, image_size: int, mode: str | None = "RGB", flip: bool = False) -> torch.Tensor:
    """An encoded image as a uint8 tensor ``(C, image_size, image_size)``: the shorter side resized
    to ``image_size`` (bilinear) and a centre square cropped, as ``imagen.trainer.Dataset`` does.
    JPEGs are decoded at the smallest DCT scale that is still at least ``image_size``."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft(mode, (image_size, image_size))
        image.load()
        if mode is not None and image.mode != mode:
            image = image.convert(mode)
        width, height = image.size
        scale = image_size / min(width, height)
        size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
        left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)  # (C, H, W) uint8


def _caption(sample: dict) -> str | None:
    """The sample's caption from ``.txt`` or ``.json``; raises ValueError when it is unreadable."""
    if "txt" in sample:
        try:
            text = sample["txt"].decode("utf-8-sig").strip()
        except UnicodeDecodeError as error:
            raise ValueError(f"caption .txt is not UTF-8 ({error.reason} at byte {error.start})") from None
    elif "json" in sample:
        try:
            row = json.loads(sample["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"caption .json is not UTF-8 JSON ({type(error).__name__})") from None
        text = row.get("text", row.get("caption")) if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise ValueError("caption .json has no string 'text' or 'caption'")
        text = text.strip()
    else:
        return None
    if not text:
        raise ValueError("the caption is empty")
    return text


def _embedding(sample: dict) -> torch.Tensor | None:
    """The sample's text embedding ``(L, D)`` as float32, or None when it has none."""
    if "safetensors" in sample:
        tensors = load_safetensors(sample["safetensors"])
        if "text_embeds" not in tensors:
            raise ValueError(f"the .safetensors member holds {sorted(tensors)}, not 'text_embeds'")
        embeds = tensors["text_embeds"]
    elif "npy" in sample:
        embeds = torch.from_numpy(np.load(io.BytesIO(sample["npy"]), allow_pickle=False))
    else:
        return None
    if embeds.ndim != 2 or not embeds.is_floating_point():
        raise ValueError(f"the text embedding must be a float (L, D) tensor, got {tuple(embeds.shape)} {embeds.dtype}")
    return embeds.float()


# ------------------------------------------------------------------------------------ shard lists


def _expand(source) -> list[str]:
    """Shard URLs from a brace pattern / glob (a string) or a list of them."""
    patterns = [str(source)] if isinstance(source, (str, os.PathLike)) else [str(s) for s in source]
    urls = []
    for pattern in patterns:
        for expanded in braceexpand(pattern):
            if "://" not in expanded and glob.has_magic(expanded):
                urls.extend(sorted(glob.glob(expanded)))
            else:
                urls.append(expanded)
    return urls


def count_samples(url: str) -> int:
    """The number of samples (member keys) in one shard, from its tar headers only."""
    keys, last = 0, None
    with fsspec.open(url, "rb") as handle, tarfile.open(fileobj=handle, mode="r:*") as tar:
        for member in tar:
            key, _ = base_plus_ext(member.name)
            if member.isreg() and key is not None and not Path(member.name).name.startswith("__"):
                keys, last = keys + (key != last), key
    return keys


def index_shards(source, out: str | os.PathLike | None = None, *, text_embed_dim: int | None = None) -> Path:
    """Writes the index ``shards.json`` (each shard's URL and sample count) for shards that have
    none (e.g. written by img2dataset), reading their tar headers once. ``out`` defaults to the
    first shard's folder; URLs are stored relative to it where they lie below it."""
    urls = _expand(source)
    if not urls:
        raise ValueError(f"no shard matches {source!r}")
    out = Path(out) if out is not None else Path(urls[0]).parent / INDEX_NAME
    if out.is_dir():
        out = out / INDEX_NAME
    entries = [{"url": _relative(url, out.parent), "samples": count_samples(url)} for url in urls]
    _write_index(out, entries, text_embed_dim)
    return out


def _relative(url: str, folder: Path) -> str:
    if "://" in url:
        return url
    try:
        return Path(url).resolve().relative_to(folder.resolve()).as_posix()
    except ValueError:
        return str(Path(url).resolve())


def _write_index(path: Path, entries: list[dict], text_embed_dim: int | None) -> None:
    index = {"format": INDEX_FORMAT, "format_version": 1, "text_embed_dim": text_embed_dim, "shards": entries}
    atomic_write(path, json.dumps(index).encode("utf-8"))


def _read_index(path: Path) -> tuple[list[str], list[int], int | None]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        if index.get("format") != INDEX_FORMAT:
            raise ValueError(f"format is {index.get('format')!r}, not {INDEX_FORMAT!r}")
        urls = [e["url"] if "://" in e["url"] else str(path.parent / e["url"]) for e in index["shards"]]
        counts = [int(e["samples"]) for e in index["shards"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:  # JSON and UTF-8 errors included
        raise ValueError(f"{path} is not a readable shard index ({type(error).__name__}: {error})") from None
    return urls, counts, index.get("text_embed_dim")


# ------------------------------------------------------------------------------------- the dataset


class ShardDataset:
    """Samples from webdataset tar shards, for ``ImagenTrainer.add_train_dataset`` (which streams
    them in batches split by process and loader worker: see :class:`ShardStream`).

    Args:
        source: a shard index (``shards.json``, or the folder holding it), a shard pattern (braces
            ``shard-{000000..000099}.tar`` and globs ``*.tar``; fsspec URLs), or a list of them.
            Without an index each shard's tar headers are read once to count its samples.
        image_size: side of the decoded square images (the trained stage's size).
        augment_horizontal_flip: flip each image left-right with probability 1/2.
        convert_image_to: PIL mode of the images (None keeps each file's own).
        captions: items carry ``texts`` (False: images only).
        text_embeds: ``"auto"`` (use the shards' embeddings when the index or the first sample has
            one), True (required) or False; with them items carry ``text_embeds`` ``(L, D)`` and
            ``text_masks`` instead of ``texts``.
        text_embed_dim: the width ``D`` every embedding must have (default: the index's, else the
            first sample's); an embedding of another width is a bad sample.
        shuffle_window: samples shuffled together within a worker's run (1: tar order).

    Items are dicts ``{"images": uint8 (C, H, W), "texts": str}`` (or with ``text_embeds``), kept
    uint8 until the trainer moves them to its device. Bad samples (unreadable image, a sample with
    no image, a caption that is not UTF-8, an embedding of the wrong width, a truncated or corrupt
    shard) are left out of their batch and counted, naming the shard and key. A source with no
    shard, a listed shard that does not exist or a shard list without a single sample raises
    ``ValueError`` here, before training starts. The dataset pickles (for spawned workers).
    """

    def __init__(
        self,
        source,
        image_size: int,
        *,
        augment_horizontal_flip: bool = True,
        convert_image_to: str | None = "RGB",
        captions: bool = True,
        text_embeds: bool | str = "auto",
        text_embed_dim: int | None = None,
        shuffle_window: int = 1000,
    ):
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        if text_embeds not in ("auto", True, False):
            raise ValueError(f"text_embeds must be 'auto', True or False, got {text_embeds!r}")
        if isinstance(shuffle_window, bool) or not isinstance(shuffle_window, int) or shuffle_window < 1:
            raise ValueError(f"shuffle_window must be an int >= 1, got {shuffle_window!r}")
        self.image_size, self.augment_horizontal_flip = image_size, augment_horizontal_flip
        self.convert_image_to, self.captions, self.shuffle_window = convert_image_to, captions, shuffle_window
        self.urls, self.counts, indexed_dim = self._shard_list(source)
        self.total = sum(self.counts)
        if self.total == 0:
            raise ValueError(f"the shards of {source!r} hold no sample ({len(self.urls)} shard(s))")
        self.text_embed_dim = text_embed_dim if text_embed_dim is not None else indexed_dim
        if text_embeds == "auto":
            text_embeds = self.text_embed_dim is not None or self._first_embedding_dim() is not None
        if text_embeds and self.text_embed_dim is None:
            self.text_embed_dim = self._first_embedding_dim()
            if self.text_embed_dim is None:
                raise ValueError(f"text_embeds=True but the first sample of {self.urls[0]} has no embedding")
        self.text_embeds = bool(text_embeds)

    @staticmethod
    def _shard_list(source) -> tuple[list[str], list[int], int | None]:
        text = str(source) if isinstance(source, (str, os.PathLike)) else None
        if text is not None and "://" not in text and Path(text).is_dir():
            if not (Path(text) / INDEX_NAME).is_file():
                raise ValueError(f"folder {text!r} holds no shard index {INDEX_NAME} (write one with index_shards)")
            text = str(Path(text) / INDEX_NAME)
        if text is not None and text.endswith(".json"):
            if not Path(text).is_file():
                raise ValueError(f"shard index {text!r} does not exist")
            urls, counts, dim = _read_index(Path(text))
        else:
            urls, counts, dim = _expand(source), None, None
        if not urls:
            raise ValueError(f"no shard matches {source!r}")
        missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
        if missing:
            raise ValueError(f"{len(missing)} of {len(urls)} shards do not exist, e.g. {missing[:3]}")
        if counts is None:
            logger.info("counting the samples of %d shards (no %s index)", len(urls), INDEX_NAME)
            counts = []
            for url in urls:
                try:
                    counts.append(count_samples(url))
                except (OSError, tarfile.TarError, EOFError) as error:
                    warnings.warn(f"shard {url} cannot be read ({type(error).__name__}: {error}); it is left out",
                                  stacklevel=4)
                    counts.append(0)
        return urls, counts, dim

    def _first_embedding_dim(self) -> int | None:
        for raw in _shard_samples(self.urls[self.counts.index(max(self.counts))], 1):
            try:
                embeds = None if isinstance(raw, _Bad) else _embedding(raw)
            except ValueError:
                embeds = None
            return None if embeds is None else int(embeds.shape[-1])
        return None

    def __len__(self) -> int:
        return self.total

    def __repr__(self) -> str:
        return (f"ShardDataset({len(self.urls)} shards, {self.total} samples, image_size={self.image_size}, "
                f"text_embeds={self.text_embeds})")

    def decode(self, raw: dict, flip: bool) -> dict:
        """One sample's members as a training item; raises ValueError naming what is wrong."""
        image_key = next((ext for ext in IMAGE_EXTS if ext in raw), None)
        if image_key is None:
            members = sorted(k for k in raw if k[0] != "_")
            raise ValueError(f"no image member ({'/'.join(IMAGE_EXTS)}); members: {members}")
        try:
            item = {"images": decode_image(raw[image_key], self.image_size, self.convert_image_to, flip)}
        except _UNREADABLE as error:
            raise ValueError(f"unreadable image ({type(error).__name__}: {error})") from None
        if self.text_embeds:
            embeds = _embedding(raw)
            if embeds is None:
                raise ValueError("no text embedding (.safetensors or .npy)")
            if embeds.shape[-1] != self.text_embed_dim:
                raise ValueError(f"text embedding of width {embeds.shape[-1]}, expected {self.text_embed_dim}")
            item["text_embeds"] = embeds
            item["text_masks"] = torch.ones(embeds.shape[0], dtype=torch.bool)
        elif self.captions:
            text = _caption(raw)
            if text is None:
                raise ValueError("no caption (.txt or .json)")
            item["texts"] = text
        return item


def _shard_samples(url: str, expected: int, skip: int = 0) -> Iterator[dict | _Bad]:
    """Exactly ``expected - skip`` items of shard ``url`` after its first ``skip``: each sample's
    members ``{ext: bytes, "__key__", "__url__"}``, or a :class:`_Bad` for every position a
    truncated, corrupt or missing shard cannot fill. Members beyond ``expected`` are ignored."""
    position = 0
    try:
        with fsspec.open(url, "rb") as handle:
            members = ({**member, "__url__": url} for member in tar_file_iterator(handle))
            for sample in group_by_keys(members):
                if position >= expected:
                    break
                if position >= skip:
                    yield sample
                position += 1
    except (OSError, tarfile.TarError, EOFError, ValueError) as error:
        reason = f"shard unreadable after {position} samples ({type(error).__name__}: {error})"
        for lost in range(max(position, skip), expected):
            yield _Bad(f"#{lost}", reason)
        return
    for lost in range(max(position, skip), expected):
        yield _Bad(f"#{lost}", f"the shard holds {position} samples, its index says {expected}")


class ShardEpochs(IterableDataset):
    """The endless batches of one process, epoch after epoch, from rank batch ``start`` on (a
    position ``epoch * batches_per_epoch + batch``); each loader worker makes its own share (see
    :mod:`imagen.trainer.shard_order`). Yields collated batches with a ``__skipped__`` list."""

    def __init__(self, dataset: ShardDataset, global_batch: int, *, world: int, rank: int, num_workers: int,
                 seed: int, shuffle: bool, start: int = 0):
        self.dataset, self.global_batch, self.world, self.rank = dataset, global_batch, world, rank
        self.num_workers, self.seed, self.shuffle, self.start = max(1, num_workers), seed, shuffle, start
        self.local_batch = global_batch // world
        self.batches_per_epoch = math.ceil(dataset.total / global_batch)

    def __iter__(self):
        info = get_worker_info()
        if info is not None and info.num_workers != self.num_workers:
            raise RuntimeError(f"ShardEpochs was planned for {self.num_workers} workers, runs with {info.num_workers}")
        # the loader asks its workers in turn from worker 0, which makes batch ``start``: the plan's
        # worker for batch K is K % W, so loader worker i plays the plan's worker (start + i) % W
        worker = (self.start + (0 if info is None else info.id)) % self.num_workers
        epoch = self.start // self.batches_per_epoch
        first = self.start % self.batches_per_epoch
        while True:
            yield from self._epoch(epoch, worker, first)
            epoch, first = epoch + 1, 0

    def _epoch(self, epoch: int, worker: int, first: int) -> Iterator[dict]:
        ds, local = self.dataset, self.local_batch
        run = worker_run(ds.total, self.global_batch, world=self.world, rank=self.rank,
                         num_workers=self.num_workers, worker=worker, epoch=epoch)
        skip_batches = sum(k < first for k in run.batches)
        order = window_order(run.length, ds.shuffle_window, self.seed, (epoch, self.rank, worker), self.shuffle)
        window = ds.shuffle_window
        shards = shard_permutation(len(ds.urls), self.seed, epoch, self.shuffle)
        ends = np.cumsum([ds.counts[s] for s in shards]).tolist()
        begin = skip_batches * local // window * window  # the first window holding an unread sample
        raw = _read_run(ds, shards, ends, run.start + begin, run.length - begin)
        items, skipped = [], []
        for w_begin in range(begin, run.length, window):
            size = min(window, run.length - w_begin)
            buffered = [next(raw) for _ in range(size)]
            for i in range(max(w_begin, skip_batches * local), w_begin + size):  # i: place in the run's order
                offset = order[i]
                position, sample = run.start + offset, buffered[offset - w_begin]
                self._decode_into(sample, position, epoch, items, skipped)
                if len(items) + len(skipped) == local:
                    yield self._batch(items, skipped)
                    items, skipped = [], []

    def _decode_into(self, sample, position: int, epoch: int, items: list, skipped: list) -> None:
        url, key = self._where(sample)
        if isinstance(sample, _Bad):
            skipped.append((url, key, sample.reason))
            return
        flip = self.dataset.augment_horizontal_flip and bool(_mix_seed(self.seed, epoch, position) & 1)
        try:
            items.append(self.dataset.decode(sample, flip))
        except (ValueError, TypeError, RuntimeError, OSError) as error:
            skipped.append((url, key, str(error)))

    @staticmethod
    def _where(sample) -> tuple[str, str]:
        if isinstance(sample, _Bad):
            return getattr(sample, "url", "?"), sample.key
        return sample.get("__url__", "?"), sample.get("__key__", "?")

    @staticmethod
    def _batch(items: list, skipped: list) -> dict:
        batch = collate(items) if items else {}
        batch[SKIPPED] = skipped
        return batch


def _read_run(ds: ShardDataset, shards: list[int], ends: list[int], start: int, length: int) -> Iterator:
    """The raw samples at epoch positions ``start .. start + length - 1`` (mod N), shard by shard."""
    position, stop = start, start + length
    while position < stop:
        within = position % ds.total
        slot = bisect.bisect_right(ends, within)
        shard_begin = ends[slot - 1] if slot else 0
        shard = shards[slot]
        take = min(ends[slot] - within, stop - position)
        skip = within - shard_begin
        for sample in _shard_samples(ds.urls[shard], skip + take, skip):
            if isinstance(sample, _Bad):
                sample.url = ds.urls[shard]
            yield sample
        position += take


# ------------------------------------------------------------------------------------- the stream


def loader_settings(num_workers=0, pin_memory=False, persistent_workers=False, prefetch_factor=None) -> dict:
    """The DataLoader settings as keywords, checked now rather than at the first batch:
    ``num_workers`` an int >= 0; ``persistent_workers`` and ``prefetch_factor`` need workers."""
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    if prefetch_factor is not None and (isinstance(prefetch_factor, bool) or not isinstance(prefetch_factor, int)
                                        or prefetch_factor < 1):
        raise ValueError(f"prefetch_factor must be None or an int >= 1, got {prefetch_factor!r}")
    if num_workers == 0 and (persistent_workers or prefetch_factor is not None):
        raise ValueError(
            f"persistent_workers={persistent_workers!r} and prefetch_factor={prefetch_factor!r} need num_workers >= 1"
        )
    settings = {"num_workers": num_workers, "pin_memory": bool(pin_memory)}
    if num_workers:
        settings["persistent_workers"] = bool(persistent_workers)
    if prefetch_factor is not None:
        settings["prefetch_factor"] = prefetch_factor
    return settings



class ShardStream:
    """The trainer's endless, resumable batch stream of a :class:`ShardDataset` for one process:
    ``global_batch`` samples per step over ``world`` processes, made by ``num_workers`` loader
    workers (other keywords go to the ``DataLoader``: ``pin_memory``, ``prefetch_factor``,
    ``persistent_workers``, ``multiprocessing_context``...). Its position is ``(epoch, batch)`` per
    process; :meth:`state_dict` gathers every process's (call it on all of them). Bad samples are
    left out of their batch, logged with shard and key, counted in :attr:`skipped` and warned about
    with the count; a batch with no good sample is passed over (it still counts as a position)."""

    source = "the shard dataset"

    def __init__(self, dataset: ShardDataset, global_batch: int, *, world: int, rank: int, seed: int,
                 shuffle: bool = True, num_workers: int = 0, **loader_kwargs):
        if not isinstance(dataset, ShardDataset):
            raise TypeError(f"dataset must be a ShardDataset, got {type(dataset).__name__}")
        if global_batch % world:
            raise ValueError(f"batch_size ({global_batch}) must be divisible by the number of processes ({world})")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        for refused in ("batch_size", "sampler", "batch_sampler", "collate_fn", "shuffle"):
            if refused in loader_kwargs:
                raise ValueError(f"{refused} is not a loader setting for a ShardDataset (its stream batches itself)")
        self.dataset, self.global_batch, self.world, self.rank = dataset, global_batch, world, rank
        self.seed, self.shuffle, self.num_workers, self.loader_kwargs = seed, shuffle, num_workers, loader_kwargs
        self.batches_per_epoch = math.ceil(dataset.total / global_batch)
        self.epoch, self.batch = 0, 0
        self.skipped: list[tuple[str, str, str]] = []
        """``(shard, key, reason)`` of every sample left out so far."""
        self._warned_at = 0
        self._iterator = None

    def _start(self) -> None:
        view = ShardEpochs(self.dataset, self.global_batch, world=self.world, rank=self.rank,
                           num_workers=self.num_workers, seed=self.seed, shuffle=self.shuffle,
                           start=self.epoch * self.batches_per_epoch + self.batch)
        loader = DataLoader(view, batch_size=None, num_workers=self.num_workers, **self.loader_kwargs)
        self._iterator = iter(loader)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        for _ in range(self.batches_per_epoch):
            if self._iterator is None:
                self._start()
            batch = next(self._iterator)
            self.batch += 1
            if self.batch == self.batches_per_epoch:
                self.epoch, self.batch = self.epoch + 1, 0
            self._record(batch.pop(SKIPPED, []))
            if "images" in batch:
                return batch
        raise RuntimeError(f"{self.source} yielded no usable sample in a whole epoch ({len(self.skipped)} skipped)")

    def _record(self, skipped: list) -> None:
        for url, key, reason in skipped:
            logger.warning("skipping sample %s of shard %s: %s", key, url, reason)
        self.skipped.extend(tuple(s) for s in skipped)
        if skipped and len(self.skipped) >= 2 * self._warned_at:
            self._warned_at = len(self.skipped)
            url, key, reason = self.skipped[-1]
            warnings.warn(f"{len(self.skipped)} bad sample(s) skipped so far on process {self.rank} (latest: "
                          f"{key} of {url}: {reason})", stacklevel=3)

    def state_dict(self) -> dict:
        """``{"epoch", "batch"}`` of this process and ``"ranks"``: ``[epoch, batch]`` of every
        process (gathered: a collective when several processes run; None when several are planned
        but none is started), with the world size and the number of workers the order was planned for."""
        own = [self.epoch, self.batch]
        ranks = [own] if self.world == 1 else None  # None: this process's position only
        if self.world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * self.world
            torch.distributed.all_gather_object(ranks, own)
        return {"epoch": self.epoch, "batch": self.batch, "ranks": ranks, "world": self.world,
                "num_workers": max(1, self.num_workers)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position: this process's own when the world size is the same."""
        ranks = state.get("ranks")
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if ranks and len(ranks) == self.world:
            epoch, batch = (int(v) for v in ranks[self.rank])
        elif ranks is not None:
            warnings.warn(f"the data position was saved by {len(ranks)} processes and is resumed by {self.world}: "
                          "the shard order does not continue exactly", stacklevel=2)
        if state.get("num_workers", max(1, self.num_workers)) != max(1, self.num_workers):
            warnings.warn(f"the data position was saved with {state['num_workers']} loader workers and is resumed "
                          f"with {max(1, self.num_workers)}: the shard order does not continue exactly", stacklevel=2)
        self.epoch, self.batch, self._iterator = epoch, batch, None


# ------------------------------------------------------------------------------------- the writer


def _image_bytes(image) -> tuple[bytes, str]:
    """``(encoded bytes, extension)`` of an image given as a path, bytes, PIL image, uint8 array
    ``(H, W, C)`` or tensor ``(C, H, W)`` (uint8, or float in [0, 1])."""
    if isinstance(image, (str, os.PathLike)):
        ext = Path(image).suffix.lower().lstrip(".")
        ext = "jpg" if ext == "jpeg" else ext
        if ext in IMAGE_EXTS:
            return Path(image).read_bytes(), ext
        with Image.open(image) as opened:
            return _image_bytes(opened.convert("RGB"))
    if isinstance(image, (bytes, bytearray)):
        with Image.open(io.BytesIO(image)) as opened:
            ext = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}.get(opened.format)
            if ext is None:
                return _image_bytes(opened.convert("RGB"))
        return bytes(image), ext
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        array = (array.clamp(0, 1) * 255).round().to(torch.uint8) if array.is_floating_point() else array
        image = array.permute(1, 2, 0).squeeze(-1).numpy() if array.ndim == 3 else array.numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"an image array must be uint8 (H, W[, C]), got {image.dtype}")
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue(), "png"
    raise TypeError(
        f"an image must be a path, bytes, a PIL image, a uint8 array or a tensor, got {type(image).__name__}"
    )


def _embedding_bytes(embeds, dtype: torch.dtype) -> bytes:
    embeds = torch.as_tensor(embeds)
    if embeds.ndim != 2:
        raise ValueError(f"a text embedding must be (L, D), got shape {tuple(embeds.shape)}")
    return save_safetensors({"text_embeds": embeds.detach().to("cpu", dtype).contiguous()})


def _folder_pairs(folder: Path, captions, text_embedding_cache, batch: int = 64) -> Iterator[tuple]:
    """``(path, caption or None, embedding or None)`` of a folder's usable images, as
    ``imagen.trainer.Dataset`` finds them (its caption rules and bad-file skips)."""
    listing = Dataset(folder, 1, captions=captions)
    texts = listing.captions if listing.has_captions else [None] * len(listing.paths)
    for begin in range(0, len(listing.paths), batch):
        paths, caps = listing.paths[begin:begin + batch], texts[begin:begin + batch]
        embeds = [None] * len(paths)
        if text_embedding_cache is not None:
            if not listing.has_captions:
                raise ValueError("text_embedding_cache was given but the folder has no captions")
            values, masks = text_embedding_cache.lookup(list(caps))
            embeds = [v[: int(m.sum())] for v, m in zip(values, masks)]  # trimmed to the caption's tokens
        yield from zip(paths, caps, embeds)


def _as_triple(item) -> tuple:
    if isinstance(item, dict):
        return item.get("image"), item.get("text", item.get("caption")), item.get("text_embeds")
    if isinstance(item, (tuple, list)) and len(item) in (1, 2, 3):
        return tuple(item) + (None,) * (3 - len(item))
    return item, None, None


def write_shards(
    source,
    out: str | os.PathLike,
    samples_per_shard: int = 1000,
    *,
    prefix: str = "shard",
    captions: bool | str = "auto",
    text_embedding_cache=None,
    embed_dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: float = 3e9,
) -> Path:
    """Writes webdataset tar shards ``<out>/<prefix>-000000.tar, ...`` and their index
    ``<out>/shards.json``; returns the index's path (what :class:`ShardDataset` takes).

    ``source`` is a folder (its images and captions found as ``imagen.trainer.Dataset`` finds them,
    with ``captions``; with ``text_embedding_cache`` each caption's embedding is stored too) or an
    iterable of images, ``(image, caption)`` / ``(image, caption, text_embeds (L, D))`` tuples or
    ``{"image", "text", "text_embeds"}`` dicts; an image is a path, bytes, a PIL image, a uint8
    array or a tensor. Files keep their encoding; other images are stored as PNG. Embeddings are
    stored as ``embed_dtype`` in ``<key>.safetensors``. Each shard is written under a partial name
    and renamed when complete; the index is written last, atomically.
    """
    if isinstance(samples_per_shard, bool) or not isinstance(samples_per_shard, int) or samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be an int >= 1, got {samples_per_shard!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(source, (str, os.PathLike)):
        items: Iterable = _folder_pairs(Path(source), captions, text_embedding_cache)
    elif isinstance(source, Iterable):
        items = (_as_triple(item) for item in source)
    else:
        raise TypeError(f"source must be a folder or an iterable of images / pairs, got {type(source).__name__}")
    written: list[str] = []
    counts: list[int] = []
    dims: set[int] = set()

    def finished(partial: str) -> None:
        final = partial[: -len(".partial")]
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, final)
        written.append(Path(final).name)

    pattern = str(out / f"{prefix}-%06d.tar.partial")
    total = 0
    with ShardWriter(pattern, maxcount=samples_per_shard, maxsize=max_shard_bytes, post=finished, verbose=0) as sink:
        for image, caption, embeds in items:
            data, ext = _image_bytes(image)
            sample = {"__key__": f"{total:09d}", ext: data}
            if caption is not None:
                sample["txt"] = str(caption).encode("utf-8")
            if embeds is not None:
                sample["safetensors"] = _embedding_bytes(embeds, embed_dtype)
                dims.add(int(torch.as_tensor(embeds).shape[-1]))
            sink.write(sample)
            total += 1
            if sink.count == 1:
                counts.append(0)
            counts[-1] += 1
    if total == 0:
        for name in written:
            (out / name).unlink(missing_ok=True)
        raise ValueError(f"source {source!r} holds no sample to write")
    if len(dims) > 1:
        raise ValueError(f"the text embeddings have different widths {sorted(dims)}")
    _write_index(out / INDEX_NAME, [{"url": n, "samples": c} for n, c in zip(written, counts)],
                 dims.pop() if dims else None)
    return out / INDEX_NAME
