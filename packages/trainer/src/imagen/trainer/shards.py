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

import logging
import math
import os
import tarfile
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .data import _UNREADABLE
from .shard_index import INDEX_NAME, count_samples, expand_shards, index_shards, read_index
from .shard_reading import IMAGE_EXTS, SKIPPED, ShardEpochs, _Bad, _caption, _embedding, _shard_samples, decode_image
from .shard_writer import write_shards

__all__ = ["ShardDataset", "ShardStream", "decode_image", "index_shards", "loader_settings", "write_shards"]

logger = logging.getLogger(__name__)


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
            urls, counts, dim = read_index(Path(text))
        else:
            urls, counts, dim = expand_shards(source), None, None
        if not urls:
            raise ValueError(f"no shard matches {source!r}")
        missing = [u for u in urls if "://" not in u and not os.path.isfile(u)]
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

    def shard_samples(self, shard: int, expected: int, skip: int = 0):
        """Exactly ``expected - skip`` raw samples of shard number ``shard`` after its first ``skip``
        (dicts of members, or placeholders for positions the shard cannot fill): what the reader
        streams and :meth:`decode` turns into items. A dataset whose "shards" are something else
        (blocks of table rows: :class:`imagen.trainer.HFDataset`) overrides this and ``decode``."""
        return _shard_samples(self.urls[shard], expected, skip)

    def split_validation(self, fraction: float, seed: int):
        """``(train, valid)`` for ``split_valid_from_train``; tar shards are not split by sample
        (an :class:`~imagen.trainer.HFDataset` is)."""
        raise ValueError("split_valid_from_train needs a map-style dataset (or an HFDataset); give a validation "
                         "ShardDataset to add_valid_dataset instead")

    @property
    def has_captions(self) -> bool:
        """Whether items carry text (captions, or their embeddings), as ``Dataset.has_captions``."""
        return bool(self.captions or self.text_embeds)

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
