"""The shared moves of the sharpness-aware methods: gradients as vectors, a global norm, stepping
the weights to a nearby point and back, and extra passes that leave BN statistics alone.

Every SAM-family method (sam.py, sagm.py, gam.py, gaqat.py, fqat.py) is a few of these moves in
its paper's order. On a quantized model the perturbation moves the latent float weights only
(`perturb="weights"`, the default) or the quantizers' step sizes too (`"weights_and_steps"`);
either way the gradient of the perturbed pass reaches every parameter, step sizes included,
which is what GAQAT and FQAT reason about. The choice is an hparam, so it is in every record.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from qatbench.quant import quantizers

Perturb = Literal["weights", "weights_and_steps"]
EPS = 1e-12  # the norm guard of davda54/sam and SAGM


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def perturbed_parameters(model: nn.Module, perturb: Perturb) -> list[nn.Parameter]:
    """The parameters the perturbation moves: every trainable one but the quantizers' ranges,
    unless `perturb` says the ranges move too."""
    if perturb == "weights_and_steps":
        return trainable(model)
    ranges = {id(p) for q in quantizers(model) for p in q.parameters()}
    return [p for p in trainable(model) if id(p) not in ranges]


def loss_and_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: Sequence[nn.Parameter]):
    """Cross-entropy at the current weights and its gradient for every parameter in `params`
    (zeros for a parameter the loss does not reach)."""
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def norm(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of a list of tensors, as one vector (SAM: over all parameters)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(vectors))))


def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


def scaled(vectors: Sequence[torch.Tensor], scale: torch.Tensor | float) -> list[torch.Tensor]:
    return list(torch._foreach_mul(list(vectors), scale))


@contextlib.contextmanager
def moved(params: Sequence[nn.Parameter], offsets: Sequence[torch.Tensor]) -> Iterator[None]:
    """The weights at w + offset inside the block, back at exactly w after it."""
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        torch._foreach_add_(list(params), list(offsets))
    try:
        yield
    finally:
        with torch.no_grad():
            for p, w in zip(params, saved, strict=True):
                p.copy_(w)


@contextlib.contextmanager
def bn_statistics_frozen(model: nn.Module) -> Iterator[None]:
    """Extra forward passes normalise with their batch but do not move BN's running statistics
    (davda54/sam's `disable_running_stats`, as SAM, SAGM and GAM's code do)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved, strict=True):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def set_grads(params: Sequence[nn.Parameter], grads: Sequence[torch.Tensor | None]) -> None:
    """Hand the update direction to the base optimiser (None: the parameter is not stepped)."""
    for p, g in zip(params, grads, strict=True):
        p.grad = g
