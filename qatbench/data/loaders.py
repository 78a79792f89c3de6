"""Minibatches for training and evaluation.

In-memory tensor environments are indexed a whole batch at a time (no per-sample Python
calls, no worker processes), which is what makes the embedded default train in seconds.
Other datasets go through a DataLoader.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset


def infinite_batches(dataset: Dataset, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled minibatches: a fresh permutation per epoch, drawn from `seed` only."""
    generator = torch.Generator().manual_seed(seed)
    size = len(dataset)
    batch_size = min(batch_size, size)
    tensors = getattr(dataset, "tensors", None)
    while True:
        order = torch.randperm(size, generator=generator)
        for start in range(0, size - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            if tensors is not None:
                yield tuple(t[index] for t in tensors)
            else:
                yield _collate([dataset[i] for i in index.tolist()])


def eval_batches(dataset: Dataset, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every example once, in order."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        for start in range(0, len(dataset), batch_size):
            yield tuple(t[start : start + batch_size] for t in tensors)
        return
    yield from DataLoader(dataset, batch_size=batch_size, shuffle=False)


def _collate(samples):
    return tuple(torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in range(len(samples[0])))
