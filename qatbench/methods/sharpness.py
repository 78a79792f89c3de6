"""The shared moves of the sharpness-aware methods, named as their papers name them: the task
gradient at w, the SAM / ASAM / SAGM perturbation e, the gradient at w + e (the weights restored to
exactly w after it, BN statistics left alone), the flatness gradient g_flat = g(w + e) - g_task and
SAGM's combination g_task + 1/2 g_flat. The optimiser step is optim.py's `descend`.

Every SAM-family method (sam.py, sagm.py, gam.py, gaqat.py, fqat.py) is a few of these moves in
its paper's order, written out in its own `update`. On a quantized model the perturbation moves the
latent float weights and the quantizers' step sizes (`perturb="weights_and_steps"`, the default of
the LSQ methods: SAGM's official optimizer perturbs every parameter it updates, Wang-pengfei/SAGM
domainbed/sagm/sagm.py `perturb_weights`, commit 69d4d9d) or the weights only (`"weights"`);
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


def of(grads: Sequence[torch.Tensor], params: Sequence[nn.Parameter], subset: Sequence[nn.Parameter]) -> list[torch.Tensor]:
    """The entries of `grads` (one per parameter of `params`) that belong to `subset`."""
    index = {id(p): i for i, p in enumerate(params)}
    return [grads[index[id(p)]] for p in subset]


@torch.no_grad()
def sam_perturbation(g: Sequence[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """SAM: e = rho g / ||g|| (Foret et al. 2021, Eq. 2)."""
    return scaled(g, rho / (norm(g) + EPS))


@torch.no_grad()
def sagm_perturbation(g: Sequence[torch.Tensor], rho: float, alpha: float) -> list[torch.Tensor]:
    """SAGM: e = (rho / ||g|| - alpha) g (SAGM code, `perturb_weights`)."""
    return scaled(g, rho / (norm(g) + EPS) - alpha)


@torch.no_grad()
def asam_perturbation(
    weights: Sequence[torch.Tensor], g: Sequence[torch.Tensor], rho: float, eta: float, is_weight: Sequence[bool]
) -> list[torch.Tensor]:
    """ASAM: e = rho T^2 g / ||T g||, T = |w| + eta on weights and 1 elsewhere (SamsungLabs/ASAM
    normalises parameters named `weight` only)."""
    t = [w.abs() + eta if weight else torch.ones_like(w) for w, weight in zip(weights, is_weight, strict=True)]
    scale = rho / (norm([ti * gi for ti, gi in zip(t, g, strict=True)]) + EPS)
    return [ti * ti * gi * scale for ti, gi in zip(t, g, strict=True)]


def gradient_at(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    params: Sequence[nn.Parameter],
    moving: Sequence[nn.Parameter],
    e: Sequence[torch.Tensor],
):
    """The loss and gradient at w + e (e moves `moving`), BN statistics left alone; back at exactly w after."""
    with moved(moving, e), bn_statistics_frozen(model):
        return loss_and_grads(model, x, y, params)


def flatness_gradient(g_task: Sequence[torch.Tensor], g_perturbed: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """g_flat = grad L(w + e) - grad L(w): the gradient of the smoothness term L_p - L."""
    return list(torch._foreach_sub(list(g_perturbed), list(g_task)))  # one kernel per list, not per parameter


def sagm_direction(
    g_task: Sequence[torch.Tensor], g_flat: Sequence[torch.Tensor], smooth_weight: float
) -> list[torch.Tensor | None]:
    """SAGM's update direction g_task + smooth_weight g_flat (`gradient_decompose`: weight 1/2)."""
    return list(torch._foreach_add(list(g_task), list(g_flat), alpha=smooth_weight))
