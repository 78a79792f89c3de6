"""Architectures by name. Every factory takes (input_shape, num_classes, **options)."""

from __future__ import annotations

from typing import Any

from torch import nn

from qatbench.models import cifar_torchvision, resnet_cifar, small_cnn, torchvision_models  # noqa: F401  (registers)
from qatbench.models.registry import MODELS

__all__ = ["MODELS", "build_model"]


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, options: dict[str, Any] | None = None
) -> nn.Module:
    return MODELS.build(name, tuple(input_shape), num_classes, **(options or {}))
