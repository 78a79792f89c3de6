"""Decoded images as one uint8 array (often memory-mapped) with labels, indexed a batch at a time.

Subsets keep an index into the shared array instead of copying it, so a split of a dataset
larger than memory (DomainNet, ImageNet at 224 px) costs only its index. Batches are gathered
with one fancy-indexing call (`take`), and only a random train transform forces per-image work.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset


class ImageTensors(Dataset):
    """`images` is (N, C, H, W) uint8 (an in-memory array or a read-only memmap), `labels` (N,) int64."""

    def __init__(
        self,
        images: np.ndarray,
        labels: torch.Tensor,
        indices: np.ndarray | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images for {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.indices = np.arange(len(labels)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = int(self.indices[i])
        image = torch.from_numpy(np.array(self.images[j]))
        return (self.transform(image) if self.transform else image), self.labels[j]

    def take(self, index: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of untransformed images and their labels, in `index` order (reads only those rows)."""
        rows = self.indices[np.asarray(index)]
        return torch.from_numpy(self.images[rows]), self.labels[torch.from_numpy(rows)]

    def subset(self, indices: np.ndarray) -> ImageTensors:
        return ImageTensors(self.images, self.labels, self.indices[np.asarray(indices)], self.transform)

    def with_transform(self, transform: Callable[[torch.Tensor], torch.Tensor] | None) -> ImageTensors:
        return ImageTensors(self.images, self.labels, self.indices, transform)
