"""Endless, resumable streams of batches for the trainer (one per train / valid split)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from .data import EpochSampler, collate
from .shards import ShardDataset, ShardStream

__all__ = ["DataStreams", "DatasetStream", "IndexSubset", "LoaderStream", "dataset_stream", "split_validation"]


class IndexSubset(torch.utils.data.Dataset):
    """Items ``indices`` of ``dataset``; forwards ``(index, augmentation_seed)`` pairs unchanged."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index):
        if isinstance(index, tuple):
            return self.dataset[(self.indices[index[0]], index[1])]
        return self.dataset[self.indices[index]]


class _EpochStream:
    """Batches epoch after epoch, with a saved position (epoch, batch); ``_start`` opens an
    iterator at that position."""

    epoch: int
    batch: int
    _iterator = None
    source = "the dataset"

    def _start(self) -> None:
        raise NotImplementedError

    def __next__(self):
        for _ in range(2):
            if self._iterator is None:
                self._start()
            try:
                item = next(self._iterator)
            except StopIteration:
                self.epoch, self.batch, self._iterator = self.epoch + 1, 0, None
                continue
            self.batch += 1
            return item
        raise RuntimeError(f"{self.source} yielded no batch in a whole epoch")

    def state_dict(self) -> dict:
        """The stream's position: ``{"epoch", "batch"}``."""
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position."""
        self.epoch, self.batch, self._iterator = int(state["epoch"]), int(state["batch"]), None


class DatasetStream(_EpochStream):
    """Batches of a dataset, epoch after epoch, in an order that is a pure function of ``(seed,
    epoch)``; its position (epoch, batch) is saved in checkpoints so a resume continues exactly."""

    def __init__(self, dataset, global_batch_size, *, num_replicas, rank, seed, shuffle=True, **loader_kwargs):
        self.dataset, self.global_batch_size = dataset, global_batch_size
        self.num_replicas, self.rank, self.seed, self.shuffle = num_replicas, rank, seed, shuffle
        loader_kwargs.setdefault("collate_fn", collate)
        self.loader_kwargs = loader_kwargs
        self.epoch, self.batch = 0, 0
        self._iterator = None
        EpochSampler(len(dataset), global_batch_size, num_replicas=num_replicas)  # validates now

    def _start(self):
        sampler = EpochSampler(
            len(self.dataset),
            self.global_batch_size,
            num_replicas=self.num_replicas,
            rank=self.rank,
            seed=self.seed,
            shuffle=self.shuffle,
            epoch=self.epoch,
            start_batch=self.batch,
        )
        loader = DataLoader(self.dataset, batch_size=sampler.local_batch_size, sampler=sampler, **self.loader_kwargs)
        self._iterator = iter(loader)


class LoaderStream(_EpochStream):
    """Batches of a user's DataLoader, epoch after epoch. Its position is saved and a resume skips
    that many batches of the epoch; the order of a shuffled user loader is only reproduced if the
    loader's own randomness is. With several processes the loader goes through
    ``accelerator.prepare`` unless ``prepare=False`` (a loader that shards by process itself)."""

    source = "the dataloader"

    def __init__(self, loader, accelerator, *, prepare: bool = True):
        self.accelerator = accelerator
        self.loader = accelerator.prepare(loader) if prepare and accelerator.num_processes > 1 else loader
        self.epoch, self.batch = 0, 0
        self._iterator = None

    def _start(self) -> None:
        loader = self.loader
        if self.batch:
            from accelerate import skip_first_batches

            loader = skip_first_batches(loader, self.batch)
        self._iterator = iter(loader)


def dataset_stream(dataset, batch_size, accelerator, *, split_batches: bool, seed: int, **dl_kwargs):
    """A :class:`DatasetStream` of ``dataset`` for this process (a :class:`ShardStream` for a
    :class:`ShardDataset`): ``batch_size`` is the global batch when ``split_batches``, else the
    batch of each process. ``shuffle`` (default True) and other DataLoader keywords are accepted;
    ``drop_last`` is ignored (every batch is whole)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    world = accelerator.num_processes
    shuffle = dl_kwargs.pop("shuffle", True)
    dl_kwargs.pop("drop_last", None)
    if isinstance(dataset, ShardDataset):
        return ShardStream(dataset, batch_size if split_batches else batch_size * world, world=world,
                           rank=accelerator.process_index, seed=seed, shuffle=shuffle, **dl_kwargs)
    return DatasetStream(
        dataset, batch_size if split_batches else batch_size * world, num_replicas=world,
        rank=accelerator.process_index, seed=seed, shuffle=shuffle, **dl_kwargs,
    )


def split_validation(dataset, fraction: float, seed: int) -> tuple[IndexSubset, IndexSubset]:
    """``(train, valid)``: a random ``fraction`` of ``dataset`` (at least one item), drawn with
    ``seed``, becomes the validation set and the rest the training set."""
    n = len(dataset)
    n_valid = max(1, int(n * fraction))
    if n_valid >= n:
        raise ValueError(f"a dataset of {n} items is too small to split {fraction} off (split_valid_fraction)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return IndexSubset(dataset, order[n_valid:]), IndexSubset(dataset, order[:n_valid])


class DataStreams:
    """The trainer's ``"train"`` and ``"valid"`` batch streams, their positions for checkpoints, and
    batches turned into the cascade's keywords (tuples are named by ``keyword_names``)."""

    def __init__(self, keyword_names=("images", "text_embeds", "text_masks", "cond_images")):
        self.keyword_names = tuple(keyword_names)
        self.streams: dict[str, DatasetStream | LoaderStream] = {}
        self.pending: dict[str, dict] = {}  # positions loaded before the stream was added

    def __contains__(self, split: str) -> bool:
        return split in self.streams

    def add(self, split: str, stream) -> None:
        """Use ``stream`` for ``split``, at the position of a checkpoint loaded earlier if any."""
        if split in self.pending:
            stream.load_state_dict(self.pending[split])
        self.streams[split] = stream

    def next_kwargs(self, split: str) -> dict:
        """The next batch of ``split`` as keywords of the cascade's forward (``images``, ...)."""
        if split not in self.streams:
            raise ValueError(f"no {split} data: call add_{split}_dataset or add_{split}_dataloader first")
        batch = next(self.streams[split])
        if isinstance(batch, torch.Tensor):
            return {"images": batch}
        if isinstance(batch, dict):
            return dict(batch)
        if isinstance(batch, (tuple, list)):
            if len(batch) > len(self.keyword_names):
                raise ValueError(
                    f"the dataloader yields {len(batch)} values, more than dl_tuple_output_keywords_names "
                    f"{self.keyword_names}"
                )
            return dict(zip(self.keyword_names, batch))
        raise TypeError(f"a batch must be a tensor, a tuple or a dict, got {type(batch).__name__}")

    def state_dict(self) -> dict:
        """Each stream's position."""
        return {split: stream.state_dict() for split, stream in self.streams.items()}

    def load_state_dict(self, state: dict) -> None:
        """Move the streams to saved positions; streams added later start there too."""
        self.pending = dict(state)
        for split, stream in self.streams.items():
            if split in self.pending:
                stream.load_state_dict(self.pending[split])
