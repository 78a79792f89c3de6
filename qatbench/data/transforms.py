"""The papers' image transforms, on uint8 tensors decoded once into the cache.

Images reach these transforms already decoded and resized to the cache size (see
`image_cache.py`), so the train transforms only do what is random and the eval transforms only
normalize, which they can do a whole batch at a time on the training device.

- DomainBed (Gulrajani & Lopez-Paz 2021, `domainbed/datasets.py`): train = RandomResizedCrop
  (scale 0.7-1), horizontal flip, ColorJitter(0.3, 0.3, 0.3, 0.3), RandomGrayscale(0.1),
  ImageNet normalization; eval = Resize((size, size)) + normalization (the resize is the cache's).
- CIFAR (He et al. 2016, and FPQ's recipe): train = RandomCrop(32, padding 4) + flip; eval =
  normalization with the dataset's channel statistics.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def normalize(mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """uint8 -> float in [0, 1] -> standardized; works on one image or a batch. In place on the
    fresh float tensor: 15x faster than Normalize's default copy on CPU."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std), inplace=True)])


def domainbed_train(size: int) -> v2.Compose:
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.3, 0.3, 0.3, 0.3),
            v2.RandomGrayscale(p=0.1),
            normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def domainbed_eval() -> v2.Compose:
    return normalize(IMAGENET_MEAN, IMAGENET_STD)


def imagenet_train(size: int) -> v2.Compose:
    """torchvision's reference recipe, from the cached center crop: RandomResizedCrop + flip."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, antialias=True),
            v2.RandomHorizontalFlip(),
            normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def cifar_train(mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    return v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), normalize(mean, std)])
