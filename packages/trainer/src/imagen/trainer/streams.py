"""Endless, resumable streams of batches for the trainer (one per train / valid split)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from .data import EpochSampler, collate

__all__ = ["DatasetStream", "IndexSubset", "LoaderStream"]


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


class DatasetStream:
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
        raise RuntimeError("the dataset yielded no batch in a whole epoch")

    def state_dict(self) -> dict:
        """The stream's position: ``{"epoch", "batch"}``."""
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position."""
        self.epoch, self.batch, self._iterator = int(state["epoch"]), int(state["batch"]), None


class LoaderStream:
    """Batches of a user's DataLoader, epoch after epoch. Its position is saved and a resume skips
    that many batches of the epoch; the order of a shuffled user loader is only reproduced if the
    loader's own randomness is."""

    def __init__(self, loader, accelerator):
        self.accelerator = accelerator
        self.loader = accelerator.prepare(loader) if accelerator.num_processes > 1 else loader
        self.epoch, self.batch = 0, 0
        self._iterator = None

    def __next__(self):
        for _ in range(2):
            if self._iterator is None:
                loader = self.loader
                if self.batch:
                    from accelerate import skip_first_batches

                    loader = skip_first_batches(loader, self.batch)
                self._iterator = iter(loader)
            try:
                item = next(self._iterator)
            except StopIteration:
                self.epoch, self.batch, self._iterator = self.epoch + 1, 0, None
                continue
            self.batch += 1
            return item
        raise RuntimeError("the dataloader yielded no batch in a whole epoch")

    def state_dict(self) -> dict:
        """The stream's position: ``{"epoch", "batch"}``."""
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position."""
        self.epoch, self.batch, self._iterator = int(state["epoch"]), int(state["batch"]), None
