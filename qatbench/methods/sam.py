"""Sharpness-aware minimisation, plain (`sam`), scale-invariant (`asam`), and on LSQ (`lsq_sam`).

- sam: Foret, Kleiner, Mobahi, Neyshabur, "Sharpness-Aware Minimization for Efficiently
  Improving Generalization", ICLR 2021 (arXiv:2010.01412); update as in davda54/sam.
- asam: Kwon, Kim, Park, Choi, "ASAM: Adaptive Sharpness-Aware Minimization for
  Scale-Invariant Learning of Deep Neural Networks", ICML 2021 (arXiv:2102.11600); the
  perturbation is scaled by T_w = |w| + eta on weights and 1 on biases (SamsungLabs/ASAM; rho 2.0
  as davda54/sam's example).
- lsq_sam: SAM's objective on an LSQ-quantized model with LSQ's optimiser recipe, the
  "flatness + QAT directly" baseline; the perturbation moves the step sizes too (SAGM's code does).

1. g_task = grad L(w) on the pooled minibatch
2. e = rho g_task / ||g_task||            (ASAM: e = rho T^2 g_task / ||T g_task||)
3. g_p = grad L(w + e), BN running statistics left alone
4. w <- base optimiser step along g_p (from w, not from w + e)

The base optimiser of the FP methods is DomainBed's ERM (Adam 5e-5), so that in a DG suite only
the objective differs from `erm` (SAM's paper used SGD from scratch; set `optimizer: sgd`).
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
    asam_perturbation,
    gradient_at,
    loss_and_grads,
    of,
    perturbed_parameters,
    sam_perturbation,
    trainable,
)


@dataclass(frozen=True)
class SamHParams:
    optimizer: Optimizer = hparam("adam", "DomainBed's ERM, so that only the objective differs from erm")
    lr: float = hparam(5e-5, "DomainBed, ResNet backbones")
    weight_decay: float = hparam(0.0, "DomainBed")
    momentum: float = hparam(0.9, "used by sgd only; LSQ Sec. 3's value")
    schedule: Schedule = hparam("constant", "DomainBed")
    rho: float = hparam(0.05, "Foret et al. 2021; davda54/sam default")

    def __post_init__(self):
        require(self, "rho", low=0.0)


@dataclass(frozen=True)
class AsamHParams:
    optimizer: Optimizer = hparam("adam", "DomainBed's ERM, so that only the objective differs from erm")
    lr: float = hparam(5e-5, "DomainBed, ResNet backbones")
    weight_decay: float = hparam(0.0, "DomainBed")
    momentum: float = hparam(0.9, "used by sgd only; LSQ Sec. 3's value")
    schedule: Schedule = hparam("constant", "DomainBed")
    rho: float = hparam(2.0, 'davda54/sam example for ASAM, "as suggested by its authors"')
    eta: float = hparam(0.01, "Kwon et al. 2021, T_w = |w| + eta (SamsungLabs/ASAM)")

    def __post_init__(self):
        require(self, "rho", low=0.0)
        require(self, "eta", low=0.0)


@dataclass(frozen=True)
class LsqSamHParams:
    optimizer: Optimizer = hparam("sgd", "LSQ Sec. 3")
    lr: float | None = hparam(None, "LSQ Sec. 3 by weight bits (None: 0.01 at 2-4 bits, 0.001 at 8 bits)")
    weight_decay: float | None = hparam(None, "LSQ Table 2 by weight bits (None: 1e-4 / 0.5e-4 / 0.25e-4)")
    momentum: float = hparam(0.9, "LSQ Sec. 3")
    schedule: Schedule = hparam("cosine", "LSQ Sec. 3, no restarts")
    rho: float = hparam(0.05, "Foret et al. 2021")
    perturb: Perturb = hparam(
        "weights_and_steps", "SAGM code: perturb_weights moves every parameter it updates, step sizes included"
    )

    def __post_init__(self):
        require(self, "rho", low=0.0)


@METHODS.register("sam", summary="sharpness-aware minimisation (FP)", paper="Foret et al., ICLR 2021, arXiv:2010.01412")
class SAM(ERM):
    HParams = SamHParams

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.perturb: Perturb = getattr(self.hparams, "perturb", "weights")  # a float model has only weights

    def ascent(self, weights: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """Step 2: the perturbation e."""
        return sam_perturbation(grads, self.hparams.rho)

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        x, y = concat(minibatches)
        params, moving = trainable(self.model), perturbed_parameters(self.model, self.perturb)
        loss, g_task = loss_and_grads(self.model, x, y, params)  # 1.
        e = self.ascent(moving, of(g_task, params, moving))  # 2.
        perturbed_loss, g_p = gradient_at(self.model, x, y, params, moving, e)  # 3.
        descend(self.optimizer, self.schedule, params, g_p)  # 4.
        return {"loss": loss.item(), "perturbed_loss": perturbed_loss.item()}

    def effective_hparams(self) -> dict[str, Any]:
        if self.quant is None:  # a float model has nothing but weights to perturb
            return super().effective_hparams()
        return {**super().effective_hparams(), "perturb": self.perturb}


@METHODS.register(
    "asam", summary="adaptive (scale-invariant) SAM (FP)", paper="Kwon et al., ICML 2021, arXiv:2102.11600"
)
class ASAM(SAM):
    HParams = AsamHParams

    def ascent(self, weights: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """Step 2, ASAM's: e = rho T^2 g / ||T g||."""
        if not hasattr(self, "_is_weight"):  # SamsungLabs/ASAM: parameters named `weight` only
            self._is_weight = {id(p): name.endswith("weight") for name, p in self.model.named_parameters()}
        is_weight = [self._is_weight[id(w)] for w in weights]
        return asam_perturbation(weights, grads, self.hparams.rho, self.hparams.eta, is_weight)


@METHODS.register(
    "lsq_sam",
    summary="SAM on an LSQ-quantized model (flatness + QAT directly)",
    paper="Foret et al. 2021 + Esser et al. 2020",
)
class LsqSAM(SAM):
    kind = "qat"
    HParams = LsqSamHParams
