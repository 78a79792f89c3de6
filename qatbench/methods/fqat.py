"""FQAT: QAT loss + flatness objective, freezing at each step the layers whose gradient is in
disorder (`fqat`).

Jiang, Meng, Tang, Yu, Li, Wang, Zhu, "Quantization Meets OOD: Generalizable Quantization-aware
Training from a Flatness Perspective", ACM MM 2025, arXiv:2509.00859. Only the abstract could be
read (shared/papers.md 2): "dual optimization objectives: vanilla QAT loss and flatness", "a
layer-wise freezing mechanism to mitigate the gradient conflict", "a disorder-guided adaptive
freezing algorithm [that] dynamically determines which layers to freeze at each training step",
"a gradient disorder metric [that] identifies unstable layers". Everything below the structure is
a RECONSTRUCTION, every choice an hparam:

1. g_task = grad L(w), g_flat = grad L(w') - g_task at SAGM's perturbed point w' (sagm.py; w'
   moves the step sizes too, as SAGM's optimizer does); d = g_task + 1/2 g_flat per parameter
2. per quantized layer l (its weight, bias and step sizes), one value per step into a window of
   n steps (`disorder`): "flips", the fraction of the layer's coordinates whose sign of d
   reversed since the previous step; or "conflict", 1 when <g_task_l, g_flat_l> < 0 else 0
3. D_l = the window's mean; once the window is full, at every step the layers with
   D_l > mean(D) + margin std(D) are unstable and frozen for this step, the most disordered
   first and at most `max_frozen` of the layers
4. a frozen layer (`freeze`): "layer", no update at all this step (the optimiser skips it);
   "flat", task gradient only; "task", flatness gradient only
5. base optimiser step (LSQ's recipe); BN and other unquantized parameters are never frozen
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from qatbench.methods.base import Minibatches, concat, require
from qatbench.methods.disorder import Disorder, SignHistory
from qatbench.methods.erm import ERM, Optimizer, Schedule
from qatbench.methods.hparams import hparam
from qatbench.methods.optim import descend
from qatbench.methods.registry import METHODS
from qatbench.methods.sharpness import (
    Perturb,
    flatness_gradient,
    gradient_at,
    loss_and_grads,
    of,
    perturbed_parameters,
    sagm_perturbation,
    trainable,
)
from qatbench.quant import QuantConv2d, QuantLinear


@dataclass(frozen=True)
class FqatHParams:
    optimizer: Optimizer = hparam("sgd", "LSQ Sec. 3 (FQAT fine-tunes LSQ models)")
    lr: float | None = hparam(None, "LSQ Sec. 3 by weight bits (None: 0.01 at 2-4 bits, 0.001 at 8 bits)")
    weight_decay: float | None = hparam(None, "LSQ Table 2 by weight bits (None: 1e-4 / 0.5e-4 / 0.25e-4)")
    momentum: float = hparam(0.9, "LSQ Sec. 3")
    schedule: Schedule = hparam("cosine", "LSQ Sec. 3, no restarts")
    rho: float = hparam(0.05, "SAGM code")
    alpha: float = hparam(0.001, "SAGM README, PACS")
    smooth_weight: float = hparam(0.5, "SAGM code")
    perturb: Perturb = hparam(
        "weights_and_steps", "SAGM code: perturb_weights moves every parameter it updates, step sizes included"
    )
    window: int = hparam(20, "RECONSTRUCTION: n, as GAQAT's (same authors); the value was not found")
    disorder: Disorder = hparam("flips", "RECONSTRUCTION: the abstract names a gradient disorder metric, no formula")
    # measured (pacs64_lite0, W4A4, from erm): the layers' windowed flip rates crowd under 0.5 (random
    # signs) above a low tail of 3 layers near 0.1, so hardly one sits a std above the mean: 0 to 0.05
    # layers frozen per step, none on art_painting seed 0, whose run equals lsq_sagm's bit for bit
    margin: float = hparam(1.0, "RECONSTRUCTION: unstable = more than one std above the layers' mean")
    max_frozen: float = hparam(0.25, "RECONSTRUCTION: at most a quarter of the layers frozen in one step")
    freeze: Literal["layer", "flat", "task"] = hparam("layer", "RECONSTRUCTION: the abstract freezes layers")

    def __post_init__(self):
        require(self, "rho", low=0.0)
        require(self, "window", low=2)
        require(self, "max_frozen", low=0.0, high=1.0)


def unstable_layers(disorder: torch.Tensor, margin: float, max_frozen: float) -> list[int]:
    """Indices of the layers to freeze: disorder more than `margin` stds above the mean, the
    most disordered first, at most `max_frozen` of them (a fraction of all layers)."""
    limit = int(max_frozen * disorder.numel())
    if limit == 0 or disorder.numel() < 2:
        return []
    threshold = float(disorder.mean() + margin * disorder.std())
    values = disorder.tolist()  # one transfer; the decision is made on the host
    order = sorted(range(len(values)), key=lambda i: -values[i])[:limit]
    return [i for i in order if values[i] > threshold]


@METHODS.register(
    "fqat",
    summary="QAT + flatness with disorder-guided layer freezing at every step (reconstruction)",
    paper="Jiang et al., ACM MM 2025, arXiv:2509.00859",
)
class FQAT(ERM):
    kind = "qat"
    HParams = FqatHParams

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.layer_names = [n for n, m in self.model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]
        if not self.layer_names:
            raise ValueError("fqat needs a quantized model (a method of kind qat with a QuantSpec)")
        self.layer_params = [
            [p for p in self.model.get_submodule(n).parameters() if p.requires_grad] for n in self.layer_names
        ]
        device = self.layer_params[0][0].device
        self.history = SignHistory(self.hparams.window, len(self.layer_names), device)
        self.previous_signs: torch.Tensor | None = None
        self.frozen_now: list[int] = []
        self.frozen_counts = [0] * len(self.layer_names)
        self.steps_taken = 0

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        hp = self.hparams
        x, y = concat(minibatches)
        params, moving = trainable(self.model), perturbed_parameters(self.model, hp.perturb)
        loss, g_task = loss_and_grads(self.model, x, y, params)  # 1.
        e = sagm_perturbation(of(g_task, params, moving), hp.rho, hp.alpha)
        perturbed_loss, g_p = gradient_at(self.model, x, y, params, moving, e)
        d = self.combine(params, g_task, g_p)  # 1.-4.
        descend(self.optimizer, self.schedule, params, d)  # 5.
        return {"loss": loss.item(), "perturbed_loss": perturbed_loss.item()}

    def combine(self, params: list, g_task: list[torch.Tensor], g_p: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Steps 1-4: d, with the unstable layers' part dropped as `freeze` says."""
        if not hasattr(self, "_index"):
            self._layout(params)
        w = self.hparams.smooth_weight
        g_flat = flatness_gradient(g_task, g_p)  # 1.
        d: list[torch.Tensor | None] = [a + w * f for a, f in zip(g_task, g_flat, strict=True)]
        self.history.record(self.layer_disorder(g_task, g_flat, d))  # 2.
        self.steps_taken += 1
        self.frozen_now = []
        if self.history.full:  # 3.
            self.frozen_now = unstable_layers(
                self.history.rows.mean(dim=0), self.hparams.margin, self.hparams.max_frozen
            )
        for layer in self.frozen_now:  # 4.
            self.frozen_counts[layer] += 1
            for i in self._index[layer]:
                d[i] = {"layer": None, "flat": g_task[i], "task": w * g_flat[i]}[self.hparams.freeze]
        return d

    def _layout(self, params: list) -> None:
        """Where each layer's parameters sit in `params`, and which layer each element of their
        concatenation belongs to (so per-layer sums are one index_add, not a loop of kernels)."""
        position = {id(p): i for i, p in enumerate(params)}
        self._index = [[position[id(p)] for p in layer] for layer in self.layer_params]
        self._order = [i for idx in self._index for i in idx]
        device = params[self._order[0]].device
        sizes = torch.tensor([sum(params[i].numel() for i in idx) for idx in self._index], device=device)
        self._layer_of = torch.repeat_interleave(torch.arange(len(self._index), device=device), sizes)
        self._sizes = sizes.to(params[self._order[0]].dtype)

    def _per_layer_sum(self, values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(self._index), dtype=values.dtype, device=values.device).index_add_(
            0, self._layer_of, values
        )

    def _concat(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([tensors[i].reshape(-1) for i in self._order])

    def layer_disorder(
        self, g_task: list[torch.Tensor], g_flat: list[torch.Tensor], d: list[torch.Tensor]
    ) -> torch.Tensor:
        """Step 2: this step's value of the disorder metric for every layer."""
        if self.hparams.disorder == "conflict":
            return (self._per_layer_sum(self._concat(g_task) * self._concat(g_flat)) < 0).float()
        signs = self._concat(d).sign()
        if self.previous_signs is None:
            values = torch.zeros(len(self._index), device=signs.device)
        else:
            values = self._per_layer_sum((signs != self.previous_signs).to(self._sizes.dtype)) / self._sizes
        self.previous_signs = signs
        return values

    def summary(self) -> dict[str, Any]:
        steps = max(self.steps_taken, 1)
        return {
            "n_layers": len(self.layer_names),
            "mean_frozen_per_step": round(sum(self.frozen_counts) / steps, 4),
            "frozen_fraction": {
                n: round(c / steps, 4) for n, c in zip(self.layer_names, self.frozen_counts, strict=True)
            },
        }
