"""Sharpness-aware gradient matching, in full precision (`sagm`) and on LSQ (`lsq_sagm`).

Wang, Zhang, Lei, Zhang, "Sharpness-Aware Gradient Matching for Domain Generalization", CVPR 2023
(arXiv:2303.10353); update as in the official code (Wang-pengfei/SAGM, `domainbed/sagm/sagm.py`),
shared/papers.md 8.8. It minimises the loss L, the perturbed loss L_p and the gap L_p - L:

1. g_task = grad L(w)
2. w' = w + (rho / ||g_task|| - alpha) g_task
3. g_p = grad L(w'), BN running statistics left alone; g_flat = g_p - g_task
4. d = g_task + 1/2 g_flat = 1/2 (g_task + g_p)      (`gradient_decompose`)
5. base optimiser step along d

Read as the task gradient plus half the gradient of the smoothness term L_p - L, which is how
GAQAT splits it (gaqat.py). Defaults: the official code's PACS row (Adam, lr 3e-5, weight decay
1e-4, alpha 0.001, rho 0.05); for DomainNet its README uses alpha 0.0005, weight decay 1e-6.
`lsq_sagm` is GAQAT's "directly integrating DG and QAT" baseline: SAGM's objective with LSQ's
recipe; its perturbation moves the step sizes too, as SAGM's optimizer moves every parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qatbench.methods.base import Minibatches, concat, require
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
    sagm_direction,
    sagm_perturbation,
    trainable,
)


@dataclass(frozen=True)
class SagmHParams:
    optimizer: Optimizer = hparam("adam", "SAGM code (DomainBed's Adam)")
    lr: float = hparam(3e-5, "SAGM README, PACS")
    weight_decay: float = hparam(1e-4, "SAGM README, PACS")
    momentum: float = hparam(0.9, "used by sgd only; LSQ Sec. 3's value")
    schedule: Schedule = hparam("constant", "SAGM code (DomainBed)")
    rho: float = hparam(0.05, "SAGM code (constant LinearScheduler at 0.05)")
    alpha: float = hparam(0.001, "SAGM README, PACS")
    smooth_weight: float = hparam(0.5, "SAGM code: d = g + 0.5 (g_p - g)")

    def __post_init__(self):
        require(self, "rho", low=0.0)


@dataclass(frozen=True)
class LsqSagmHParams:
    optimizer: Optimizer = hparam("sgd", "LSQ Sec. 3")
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

    def __post_init__(self):
        require(self, "rho", low=0.0)


@METHODS.register(
    "sagm", summary="sharpness-aware gradient matching (FP, DG)", paper="Wang et al., CVPR 2023, arXiv:2303.10353"
)
class SAGM(ERM):
    HParams = SagmHParams

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.perturb: Perturb = getattr(self.hparams, "perturb", "weights")  # a float model has only weights

    def ascent(self, weights: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """Step 2: the perturbation e = w' - w."""
        return sagm_perturbation(grads, self.hparams.rho, self.hparams.alpha)

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        x, y = concat(minibatches)
        params, moving = trainable(self.model), perturbed_parameters(self.model, self.perturb)
        loss, g_task = loss_and_grads(self.model, x, y, params)  # 1.
        e = self.ascent(moving, of(g_task, params, moving))  # 2.
        perturbed_loss, g_p = gradient_at(self.model, x, y, params, moving, e)  # 3.
        g_flat = flatness_gradient(g_task, g_p)
        d = sagm_direction(g_task, g_flat, self.hparams.smooth_weight)  # 4.
        descend(self.optimizer, self.schedule, params, d)  # 5.
        return {"loss": loss.item(), "perturbed_loss": perturbed_loss.item()}

    def effective_hparams(self) -> dict[str, Any]:
        if self.quant is None:  # a float model has nothing but weights to perturb
            return super().effective_hparams()
        return {**super().effective_hparams(), "perturb": self.perturb}


@METHODS.register(
    "lsq_sagm",
    summary="SAGM on an LSQ-quantized model (GAQAT's DG + QAT baseline)",
    paper="Wang et al. 2023 + Esser et al. 2020",
)
class LsqSAGM(SAGM):
    kind = "qat"
    HParams = LsqSagmHParams
