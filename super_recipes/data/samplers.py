"""How the data is ordered and split between processes: a resumable training order, unpadded evaluation shards.

A training data order that a resumed run can continue exactly, mid-epoch included, with any num_workers.

* The order: :class:`ResumableSampler` is ``DistributedSampler`` (a permutation seeded by ``seed + epoch``,
  split across ranks, drawn from its own generator) that can start part-way into an epoch.
* The augmentations, without workers (``num_workers: 0``): they draw from the main process's global RNGs, whose
  states every checkpoint saves and a resumed run puts back right before its first step, so the remaining
  batches draw exactly what they drew before. Nothing is done per batch.
* The augmentations, with worker processes: a worker's RNG streams cannot be saved from the main process, so
  :class:`BatchSeededDataset` seeds python, numpy and torch from (seed, epoch, first index of the batch) inside
  the worker before it fetches a batch. That costs the worker a few microseconds and the training process
  nothing.

Evaluation under DDP uses :class:`EvalShardSampler`: each rank takes every ``world``-th sample with no padding,
so every validation sample is counted exactly once (``DistributedSampler`` repeats samples to even the shards).
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can skip the first samples of an epoch; with ``tag_epoch`` it yields
    ``(epoch, index)`` pairs for :class:`BatchSeededDataset`."""

    def __init__(self, dataset: Dataset, shuffle: bool, seed: int, num_replicas: int = 1, rank: int = 0,
                 drop_last: bool = False, tag_epoch: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.skip = 0
        self.tag_epoch = tag_epoch

    def start_at(self, samples_to_skip: int) -> None:
        """Begin the current epoch after its first ``samples_to_skip`` samples (reset by :meth:`set_epoch`)."""
        self.skip = samples_to_skip

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.skip = 0

    def __iter__(self) -> Iterator[Any]:
        indices = list(super().__iter__())[self.skip:]
        if self.tag_epoch:
            epoch = self.epoch
            return iter([(epoch, index) for index in indices])
        return iter(indices)

    def __len__(self) -> int:
        return super().__len__() - self.skip


class BatchSeededDataset(Dataset):
    """Wraps a map-style dataset so that, in a worker process, each batch's augmentations are seeded from
    (seed, epoch, first index of the batch)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[tuple[int, int]]) -> list[Any]:
        epoch, first = keys[0]
        seed = int(np.random.SeedSequence([self.seed, epoch, first]).generate_state(1)[0])
        if torch.utils.data.get_worker_info() is None:  # fetched in the training process: leave its RNGs as found
            with seeded_rngs(seed):
                return [self.dataset[index] for _, index in keys]
        # A worker owns its RNG streams: seed them (the generator's own manual_seed, not torch.manual_seed,
        # which also queues seeds for every accelerator).
        random.seed(seed)
        np.random.seed(seed)
        torch.default_generator.manual_seed(seed)
        return [self.dataset[index] for _, index in keys]

    def __getattr__(self, name: str) -> Any:
        # Attributes of the wrapped dataset (class_names, transforms...) stay reachable through the wrapper.
        if name in ("dataset", "seed") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch for the block, restoring their previous states afterwards."""
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    torch.default_generator.manual_seed(int(seed))
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)


def epoch_batches(loader: Any, epoch: int, start_batch: int, num_batches: int | None) -> Any:
    """``(batch_idx, batch)`` pairs of ``epoch`` from ``start_batch`` up to ``num_batches`` (a resumed epoch
    skips what it did; no batch past ``num_batches`` is fetched, so none draws random numbers needlessly)."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if isinstance(sampler, ResumableSampler):
        sampler.start_at(start_batch * loader.batch_size)
        batches = enumerate(loader, start=start_batch)
    else:
        # A loader we could not make resumable: replay its first batches to skip them (data loading only).
        batches = ((i, batch) for i, batch in enumerate(loader) if i >= start_batch)
    if num_batches is None:
        return batches
    return itertools.islice(batches, max(num_batches - start_batch, 0))


def make_resumable(loader: Any, seed: int, num_replicas: int = 1, rank: int = 0) -> Any:
    """The same DataLoader (batch size, workers, collate...) with a resumable order; other loaders unchanged.

    Only DataLoaders over map-style datasets with the default samplers (``shuffle`` true or false) can be
    rebuilt; a custom sampler or an IterableDataset is kept as given (a resumed run then replays the epoch's
    first batches to skip them).
    """
    if not _rebuildable(loader):
        return loader
    workers = loader.num_workers > 0
    sampler = ResumableSampler(loader.dataset, shuffle=isinstance(loader.sampler, RandomSampler), seed=seed,
                               num_replicas=num_replicas, rank=rank, tag_epoch=workers)
    dataset = BatchSeededDataset(loader.dataset, seed) if workers else loader.dataset
    return _rebuild(loader, dataset, sampler, seed)


class EvalShardSampler(Sampler):
    """Samples ``rank, rank + world, rank + 2 world, ...``: shards that cover the dataset exactly once."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        self.indices = list(range(rank, len(dataset), num_replicas))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def shard_for_evaluation(loader: Any, num_replicas: int, rank: int) -> Any:
    """This rank's shard of an evaluation loader (the loader itself in a single process or when not rebuildable)."""
    if num_replicas == 1 or not _rebuildable(loader):
        return loader
    return _rebuild(loader, loader.dataset, EvalShardSampler(loader.dataset, num_replicas, rank), seed=0)


def _rebuildable(loader: Any) -> bool:
    return (isinstance(loader, DataLoader) and loader.batch_size is not None
            and isinstance(loader.sampler, (RandomSampler, SequentialSampler)))


def _rebuild(loader: DataLoader, dataset: Dataset, sampler: Sampler, seed: int) -> DataLoader:
    workers = loader.num_workers
    return DataLoader(
        dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=workers, collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory, drop_last=loader.drop_last, timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context,
        # Its own generator: worker seeding must not draw from (and so shift) the global torch RNG.
        generator=torch.Generator().manual_seed(seed),
        prefetch_factor=loader.prefetch_factor if workers > 0 else None,
        persistent_workers=loader.persistent_workers and workers > 0, pin_memory_device=loader.pin_memory_device,
    )
