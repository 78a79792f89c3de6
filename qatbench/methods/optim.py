"""Optimisers and learning-rate schedules shared by the methods, built from their hparams."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from qatbench.quant import step_parameters


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weights decay; LSQ step sizes do not (decay would pull the quantization range to zero)."""
    steps = {id(p) for p in step_parameters(model)}
    decayed = [p for p in model.parameters() if p.requires_grad and id(p) not in steps]
    undecayed = [p for p in model.parameters() if p.requires_grad and id(p) in steps]
    groups = [{"params": decayed, "weight_decay": weight_decay}]
    if undecayed:
        groups.append({"params": undecayed, "weight_decay": 0.0})
    return groups


def make_optimizer(groups: Iterable[dict], name: str, lr: float, momentum: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")


def make_schedule(
    optimizer: torch.optim.Optimizer, name: str, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    if name == "cosine":  # cosine decay to zero over the run, no restarts (LSQ, FPQ)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
        )
    raise ValueError(f"schedule must be 'constant' or 'cosine', got {name!r}")
