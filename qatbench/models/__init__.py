"""Architectures by name. Every factory takes (input_shape, num_classes, **options)."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from qatbench.models import (  # noqa: F401  (registers)
    cifar_torchvision,
    efficientnet_lite,
    resnet_cifar,
    small_cnn,
    torchvision_models,
)
from qatbench.models.batchnorm import freeze_batchnorm
from qatbench.models.registry import MODELS

__all__ = ["MODELS", "build_model", "option_parameters"]

# options every model takes, on top of its factory's own
COMMON_OPTIONS = [
    # BN statistics frozen at their (pretrained) values, DomainBed's ResNet (models/batchnorm.py)
    inspect.Parameter("freeze_bn", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool),
]


def option_parameters(name: str) -> list[inspect.Parameter]:
    """The options a suite may give model `name`: its factory's and the common ones."""
    return [*MODELS.parameters(name, 2), *COMMON_OPTIONS]


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, options: dict[str, Any] | None = None
) -> nn.Module:
    own = dict(options or {})
    freeze_bn = own.pop("freeze_bn", False)
    model = MODELS.build(name, tuple(input_shape), num_classes, **own)
    return freeze_batchnorm(model) if freeze_bn else model
