"""Minibatches for training and evaluation.

Tensor environments (the embedded MNIST domains, and the decoded-image cache) are indexed a
whole batch at a time: no per-sample Python calls, no worker processes. Only a random,
per-image train transform needs per-image work; that goes through a DataLoader, with worker
processes and pinned memory when a GPU is training.

Augmentation runs on one intra-op thread, in each worker process and in the training process
alike: per-image transforms on small images gain nothing from torch's thread pool and lose much
when the cores are shared, where a pool of 2 threads ran DomainBed's augmentation at 167 img/s
against 744 img/s on one (issue 22; benchmarks/bench_loader.py measures it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

Batch = tuple[torch.Tensor, torch.Tensor]
AUGMENT_THREADS: int | None = 1  # intra-op threads of augmentation; None: torch's default (for benchmarks)


def one_thread_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: each worker process augments on one intra-op thread (torch's worker
    loop sets one thread too; this keeps it so should that default change)."""
    if AUGMENT_THREADS:
        torch.set_num_threads(AUGMENT_THREADS)


@contextlib.contextmanager
def augmentation_threads() -> Iterator[None]:
    """The training process's thread count lowered while it augments a batch itself, then restored."""
    before = torch.get_num_threads()
    if not AUGMENT_THREADS or before == AUGMENT_THREADS:
        yield
        return
    torch.set_num_threads(AUGMENT_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class EpochPermutations:
    """Endless batches of indices: a fresh permutation per epoch, drawn from `seed` only."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed = size, min(batch_size, size), seed

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            order = torch.randperm(self.size, generator=generator)
            for start in range(0, self.size - self.batch_size + 1, self.batch_size):
                yield order[start : start + self.batch_size].tolist()


def infinite_batches(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    *,
    transform: Callable | None = None,
    workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[Batch]:
    """Shuffled minibatches forever; `transform` (random, per image) runs in the loader."""
    indices = EpochPermutations(len(dataset), batch_size, seed)
    if transform is None:
        for index in indices:
            yield take(dataset, index)
        return
    view = dataset.with_transform(transform) if hasattr(dataset, "with_transform") else _Mapped(dataset, transform)
    loader = DataLoader(
        view,
        batch_sampler=indices,
        num_workers=workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),  # seeds the workers' augmentation
        worker_init_fn=one_thread_worker if workers else None,
    )
    if workers:
        yield from loader
        return
    batches = iter(loader)
    while True:  # no workers: the training process augments, on one thread, then trains on all of them
        with augmentation_threads():
            batch = next(batches)
        yield batch


def eval_batches(dataset: Dataset, batch_size: int) -> Iterator[Batch]:
    """Every example once, in order."""
    for start in range(0, len(dataset), batch_size):
        yield take(dataset, list(range(start, min(start + batch_size, len(dataset)))))


def take(dataset: Dataset, index: list[int]) -> Batch:
    """One batch by index, gathered in one call where the dataset allows it."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        rows = torch.as_tensor(index, dtype=torch.long)
        return tuple(t[rows] for t in tensors)
    if hasattr(dataset, "take"):
        return dataset.take(np.asarray(index, dtype=np.int64))
    samples = [dataset[i] for i in index]
    return tuple(torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in range(len(samples[0])))


class _Mapped(Dataset):
    def __init__(self, dataset: Dataset, transform: Callable):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return self.transform(x), y
