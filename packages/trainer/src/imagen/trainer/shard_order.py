"""Which samples of a sharded dataset each process and loader worker reads, batch by batch.

A pure function of ``(shard counts, seed, epoch, world size, workers, batch size)``, so that every
process computes the same plan on its own, reads only the shards of its share, and a resume from a
saved ``(epoch, batch)`` position continues exactly.

The plan of one epoch:

Permutations use Python's ``random.Random`` (its shuffle is stable across versions and platforms)
seeded by splitmix64 mixes of the integers named.

1. The shards are permuted with a generator seeded from ``(seed, epoch)``; their samples, in tar
   order, make the epoch's sequence ``Q`` of ``N`` samples (positions ``0 .. N - 1``).
2. Every process takes ``B = ceil(N / G)`` batches of ``L = G / world`` samples (``G`` the global
   batch); the last global batch wraps around to the start of ``Q`` (at most ``G - 1`` repeats), so
   every process takes the same number of steps. Process ``r`` owns positions
   ``[r B L, (r + 1) B L)``.
3. A process's batches, counted over epochs (``K = epoch * B + batch``), come from loader worker
   ``K % W`` (the DataLoader's round-robin order). The positions of process ``r`` are cut into ``W``
   contiguous runs, one per worker, in worker order, each as long as that worker's batches
   times ``L``: a worker streams through a few whole shards, never skipping another's samples.
4. A worker's run is shuffled within windows of ``window`` samples (seeded per epoch, process,
   worker and window) and cut into its batches in order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from .data import _mix_seed

__all__ = ["WorkerRun", "shard_permutation", "window_order", "worker_batches", "worker_run"]


def shard_permutation(num_shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The order in which an epoch visits the shards."""
    if not shuffle:
        return list(range(num_shards))
    order = list(range(num_shards))
    random.Random(_mix_seed(seed, epoch, 0x5A4D)).shuffle(order)
    return order


def worker_batches(batches_per_epoch: int, epoch: int, worker: int, num_workers: int) -> range:
    """The batches ``k`` of ``epoch`` (in ``[0, B)``) that ``worker`` makes: ``(epoch * B + k) % W == worker``."""
    first = (worker - epoch * batches_per_epoch) % num_workers
    return range(first, batches_per_epoch, num_workers)


class WorkerRun:
    """One worker's share of one epoch on one process: positions ``[start, start + length)`` of the
    epoch's sequence (mod ``N``), cut into the batches ``batches`` (epoch-local numbers)."""

    def __init__(self, start: int, length: int, batches: range):
        self.start, self.length, self.batches = start, length, batches

    def __repr__(self) -> str:
        return f"WorkerRun(start={self.start}, length={self.length}, batches={self.batches})"

    def batches_before(self, batch: int) -> int:
        """How many of this run's batches come before epoch batch ``batch``."""
        return len(range(self.batches.start, min(batch, self.batches.stop), self.batches.step))


def worker_run(
    total: int, global_batch: int, *, world: int, rank: int, num_workers: int, worker: int, epoch: int
) -> WorkerRun:
    """The run of ``worker`` of process ``rank`` in ``epoch`` (steps 2 and 3 of the plan)."""
    local = global_batch // world
    batches_per_epoch = math.ceil(total / global_batch)
    start = rank * batches_per_epoch * local
    for earlier in range(worker):
        start += local * len(worker_batches(batches_per_epoch, epoch, earlier, num_workers))
    batches = worker_batches(batches_per_epoch, epoch, worker, num_workers)
    return WorkerRun(start, local * len(batches), batches)


def window_order(begin: int, size: int, window: int, seed: int, salt: Sequence[int], shuffle: bool) -> list[int]:
    """The run's offsets ``begin .. begin + size - 1`` (one window: ``begin`` a multiple of
    ``window``) in the order the window is read: permuted on its own, seeded from its number."""
    offsets = list(range(begin, begin + size))
    if shuffle and window > 1:
        random.Random(_mix_seed(seed, *salt, begin // window)).shuffle(offsets)
    return offsets
