"""Optimisers, learning-rate schedules and the optimiser step shared by the methods: the base
optimiser is built from a method's hparams (LSQ's recipe fills in an lr or weight decay left None),
and a step is either `minimise(loss)` or `descend` along a direction the method computed."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from qatbench.quant import step_parameters

LSQ_WEIGHT_DECAY_BELOW_4_BITS = {2: 0.25e-4, 3: 0.5e-4}  # LSQ Table 2; 1e-4 at 4 bits and above
LSQ_LR_8_BITS, LSQ_LR = 1e-3, 1e-2  # LSQ Sec. 3


def lr_or_lsq(lr: float | None, w_bits: int) -> float:
    """The lr as given; None: LSQ's by weight bits (Sec. 3: 0.01 at 2-4 bits, 0.001 at 8)."""
    if lr is not None:
        return lr
    return LSQ_LR_8_BITS if w_bits >= 8 else LSQ_LR


def weight_decay_or_lsq(weight_decay: float | None, w_bits: int) -> float:
    """The weight decay as given; None: LSQ's by weight bits (Table 2: 1e-4 / 0.5e-4 / 0.25e-4)."""
    if weight_decay is not None:
        return weight_decay
    return LSQ_WEIGHT_DECAY_BELOW_4_BITS.get(w_bits, 1e-4)


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


def minimise(optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler, loss: torch.Tensor) -> None:
    """One base-optimiser step down the gradient of `loss`, one schedule step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()


def descend(
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    params: Sequence[nn.Parameter],
    direction: Sequence[torch.Tensor | None],
) -> None:
    """One base-optimiser step along `direction` (a None entry leaves its parameter alone)."""
    set_grads(params, direction)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    schedule.step()


def set_grads(params: Sequence[nn.Parameter], grads: Sequence[torch.Tensor | None]) -> None:
    """Hand the update direction to the base optimiser (None: the parameter is not stepped)."""
    for p, g in zip(params, grads, strict=True):
        p.grad = g
