"""The Hessian of a model's loss on a fixed data subset, as an operator on flat vectors.

The curvature the papers reason about is that of the loss w.r.t. the weights, with the model in
eval mode (BN running statistics, no dropout) and, for a quantized model, its step sizes held
fixed: quantizer parameters are constants here, not directions. Each batch's first-order graph
is built once (`create_graph=True`) and reused by every product, so a product costs one double
backward and no forward; `cache_graph=False` rebuilds it per product when memory is short.

On a quantized model the product is that of the straight-through surrogate (tests/test_hvp.py):
the loss with every rounding offset frozen at its current value.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from qatbench.quant.base import FakeQuantizer

Batch = tuple[torch.Tensor, torch.Tensor]


def curvature_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every trainable parameter except the quantizers' own (step sizes, offsets, clip levels)."""
    quantizer_params = {id(p) for m in model.modules() if isinstance(m, FakeQuantizer) for p in m.parameters()}
    return {name: p for name, p in model.named_parameters() if p.requires_grad and id(p) not in quantizer_params}


@contextlib.contextmanager
def modes_kept(model: nn.Module):
    """Restore every submodule's train/eval flag afterwards (a frozen BN inside a training model stays frozen)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def layer_of(parameter_name: str) -> str:
    """'layer1.0.conv1.weight' -> 'layer1.0.conv1': parameters are grouped by the module owning them."""
    return parameter_name.rpartition(".")[0] or parameter_name


@dataclass(frozen=True)
class FlatLayout:
    """Where each parameter sits in the flat vector, and which layer every coordinate belongs to."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    sizes: tuple[int, ...]
    layers: tuple[str, ...]  # layer names in order of first appearance
    layer_index: torch.Tensor  # coordinate -> index into `layers`

    @classmethod
    def of(cls, params: dict[str, torch.Tensor]) -> FlatLayout:
        names = tuple(params)
        layers: list[str] = []
        index = []
        for name, p in params.items():
            layer = layer_of(name)
            if layer not in layers:
                layers.append(layer)
            index.append(torch.full((p.numel(),), layers.index(layer), dtype=torch.long))
        device = next(iter(params.values())).device
        return cls(
            names=names,
            shapes=tuple(p.shape for p in params.values()),
            sizes=tuple(p.numel() for p in params.values()),
            layers=tuple(layers),
            layer_index=torch.cat(index).to(device),
        )

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [piece.view(shape) for piece, shape in zip(torch.split(flat, self.sizes), self.shapes)]

    def join(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def per_layer(self, flat: torch.Tensor) -> torch.Tensor:
        """Sums of `flat`'s coordinates within each layer, along its last axis (one index_add, no host sync)."""
        out = torch.zeros(*flat.shape[:-1], len(self.layers), dtype=flat.dtype, device=flat.device)
        return out.index_add_(flat.dim() - 1, self.layer_index, flat)


class HessianOperator:
    """v -> H v for the mean loss over `batches` (weighted by batch size, as one big batch)."""

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[Batch],
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
        *,
        cache_graph: bool = True,
    ):
        self.model = model.eval()
        self.params = curvature_parameters(model)
        if not self.params:
            raise ValueError("the model has no trainable weights to take a Hessian over")
        self.layout = FlatLayout.of(self.params)
        self.batches = list(batches)
        self.loss_fn = loss_fn
        self.n = sum(len(y) for _, y in self.batches)
        self.products = 0  # Hessian-vector products so far: the unit of cost
        self.cache_graph = cache_graph
        self._grads = [self._first_order(batch) for batch in self.batches] if cache_graph else None
        sample = next(iter(self.params.values()))
        self.dtype, self.device = sample.dtype, sample.device

    @property
    def dim(self) -> int:
        return self.layout.dim

    def _first_order(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        x, y = batch
        loss = self.loss_fn(self.model(x), y) * (len(y) / self.n)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss on the curvature subset is not finite ({loss.item()})")
        params = list(self.params.values())
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        # a weight the loss does not reach (an unused head) has a zero row in the Hessian
        return tuple(g if g is not None else torch.zeros_like(p, requires_grad=True) for g, p in zip(grads, params))

    def loss(self) -> float:
        with torch.no_grad():
            return sum(float(self.loss_fn(self.model(x), y)) * len(y) for x, y in self.batches) / self.n

    def gradient(self) -> torch.Tensor:
        grads = self._grads or [self._first_order(batch) for batch in self.batches]
        return sum(self.layout.join([g.detach() for g in gs]) for gs in grads)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        pieces = self.layout.split(v)
        params = list(self.params.values())
        total = None
        for i, batch in enumerate(self.batches):
            grads = self._grads[i] if self._grads is not None else self._first_order(batch)
            hv = torch.autograd.grad(
                grads, params, grad_outputs=pieces, retain_graph=self.cache_graph, allow_unused=True
            )
            flat = self.layout.join([h if h is not None else torch.zeros_like(p) for h, p in zip(hv, params)])
            total = flat if total is None else total + flat
        self.products += 1
        return total

    def many(self, vectors: torch.Tensor) -> torch.Tensor:
        """H V for the rows of V in one batched double backward (`is_grads_batched`, vmap inside
        autograd): one pass over the graph for several probes. Measure before choosing it: on 2
        CPU cores it was slower than a loop (shared/MEASURED.md); on a GPU it may pay."""
        if len(vectors) == 1:
            return self(vectors[0]).unsqueeze(0)
        params = list(self.params.values())
        pieces = [
            piece.reshape(len(vectors), *shape)
            for piece, shape in zip(torch.split(vectors, self.layout.sizes, dim=1), self.layout.shapes)
        ]
        total = None
        for i, batch in enumerate(self.batches):
            grads = self._grads[i] if self._grads is not None else self._first_order(batch)
            hv = torch.autograd.grad(
                grads, params, grad_outputs=pieces, retain_graph=self.cache_graph, allow_unused=True,
                is_grads_batched=True,
            )  # fmt: skip
            flat = torch.cat(
                [
                    (h if h is not None else vectors.new_zeros(len(vectors), p.numel())).reshape(len(vectors), -1)
                    for h, p in zip(hv, params)
                ],
                dim=1,
            )
            total = flat if total is None else total + flat
        self.products += len(vectors)
        return total

    def release(self) -> None:
        """Free the cached graphs (they hold every activation of the subset, twice)."""
        self._grads = None
        self.cache_graph = False
