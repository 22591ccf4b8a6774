"""Reading webdataset shards: members grouped into samples, decoded into training items, and
the endless per-worker batches of :mod:`imagen.trainer.shard_order`'s plan.

A position a shard cannot fill (a truncated or corrupt shard, fewer samples than its index says)
comes out as a :class:`_Bad` so that every later position keeps its place: bad samples are
counted, never shift the order, and a resume stays exact.
"""

from __future__ import annotations

import bisect
import io
import json
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import fsspec
import numpy as np
import torch
from PIL import Image
from safetensors.torch import load as load_safetensors
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_iterator

from .data import _mix_seed, collate, square_image
from .shard_order import shard_permutation, window_order, worker_run

if TYPE_CHECKING:
    from .shards import ShardDataset

__all__ = ["IMAGE_EXTS", "SKIPPED", "ShardEpochs", "decode_image"]

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
SKIPPED = "__skipped__"
"""The batch key that carries ``(shard, key, reason)`` of the samples a batch left out."""


class _Bad:
    """A sample position that yields no sample: ``(key, reason)``."""

    def __init__(self, key: str, reason: str):
        self.key, self.reason = key, reason


def decode_image(data: bytes, image_size: int, mode: str | None = "RGB", flip: bool = False) -> torch.Tensor:
    """An encoded image as a uint8 tensor ``(C, image_size, image_size)`` by the folder datasets' rule
    (:func:`~imagen.trainer.data.square_image`). JPEGs are decoded at the smallest DCT scale that is
    still at least ``image_size``."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft(mode, (image_size, image_size))
        image.load()
        return square_image(image, image_size, mode, flip)


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
        try:
            tensors = load_safetensors(sample["safetensors"])
        except Exception as error:  # safetensors' own error type is a bare Exception
            raise ValueError(f"the .safetensors member is unreadable ({type(error).__name__}: {error})") from None
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
    except Exception as error:  # a missing, truncated or corrupt shard (tarfile, gzip, fsspec, webdataset errors)
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
        skip_batches = run.batches_before(first)
        window = ds.shuffle_window
        shards = shard_permutation(len(ds.urls), self.seed, epoch, self.shuffle)
        ends = np.cumsum([ds.counts[s] for s in shards]).tolist()
        begin = skip_batches * local // window * window  # the first window holding an unread sample
        raw = _read_run(ds, shards, ends, run.start + begin, run.length - begin)
        items, skipped = [], []
        for w_begin in range(begin, run.length, window):
            size = min(window, run.length - w_begin)
            buffered = [next(raw) for _ in range(size)]
            order = window_order(w_begin, size, window, self.seed, (epoch, self.rank, worker), self.shuffle)
            for i in range(max(w_begin, skip_batches * local), w_begin + size):  # i: place in the run's order
                offset = order[i - w_begin]
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
        except ValueError as error:  # what decode names as wrong with the sample
            skipped.append((url, key, str(error)))
        except Exception as error:  # anything else an image plugin or decoder raises on bad bytes
            skipped.append((url, key, f"cannot be decoded ({type(error).__name__}: {error})"))

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
        for sample in ds.shard_samples(shard, skip + take, skip):
            if isinstance(sample, _Bad):
                sample.url = ds.urls[shard]
            yield sample
        position += take
