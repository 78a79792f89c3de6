"""Sharpness-aware minimisation, plain (`sam`), scale-invariant (`asam`), and on LSQ (`lsq_sam`).

- sam: Foret, Kleiner, Mobahi, Neyshabur, "Sharpness-Aware Minimization for Efficiently
  Improving Generalization", ICLR 2021 (arXiv:2010.01412); update as in davda54/sam.
- asam: Kwon, Kim, Park, Choi, "ASAM: Adaptive Sharpness-Aware Minimization for
  Scale-Invariant Learning of Deep Neural Networks", ICML 2021 (arXiv:2102.11600); the
  perturbation is scaled by T_w = |w| + eta on weights and 1 on biases (SamsungLabs/ASAM; rho 2.0
  as davda54/sam's example).
- lsq_sam: SAM's objective on an LSQ-quantized model with LSQ's optimiser recipe, the
  "flatness + QAT directly" baseline.

1. g = grad L(w) on the pooled minibatch
2. e = rho g / ||g||                      (ASAM: e = rho T^2 g / ||T g||)
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
from qatbench.methods.erm import ERM, ErmHParams, LsqHParams, LsqRecipe
from qatbench.methods.registry import METHODS
from qatbench.methods.sharpness import (
    EPS,
    Perturb,
    bn_statistics_frozen,
    loss_and_grads,
    moved,
    norm,
    perturbed_parameters,
    scaled,
    trainable,
)


@dataclass(frozen=True)
class SamHParams(ErmHParams):
    rho: float = 0.05  # Foret et al. 2021; davda54/sam default

    def __post_init__(self):
        require(self, "rho", low=0.0)


@dataclass(frozen=True)
class AsamHParams(ErmHParams):
    rho: float = 2.0  # davda54/sam example for ASAM, "as suggested by its authors"
    eta: float = 0.01  # Kwon et al. 2021, T_w = |w| + eta (SamsungLabs/ASAM)

    def __post_init__(self):
        require(self, "rho", low=0.0)
        require(self, "eta", low=0.0)


@dataclass(frozen=True)
class LsqSamHParams(LsqHParams):
    rho: float = 0.05  # Foret et al. 2021
    perturb: Perturb = "weights"  # qatbench: latent weights only; "weights_and_steps" moves step sizes too

    def __post_init__(self):
        require(self, "rho", low=0.0)


class SharpnessAware(ERM):
    """Two passes per step: the gradient at w, then at w + e; subclasses say what e is and how
    the two gradients combine."""

    @property
    def perturb(self) -> Perturb:
        return getattr(self.hparams, "perturb", "weights")

    def ascent(self, weights: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
        return scaled(grads, self.hparams.rho / (norm(grads) + EPS))

    def combine(self, params: list, g: list[torch.Tensor], g_p: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """The update direction from the gradients at w and at w + e (SAM: the latter)."""
        return g_p

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        x, y = concat(minibatches)
        params = trainable(self.model)
        moving = perturbed_parameters(self.model, self.perturb)
        index = {id(p): i for i, p in enumerate(params)}
        loss, g = loss_and_grads(self.model, x, y, params)
        with torch.no_grad():
            e = self.ascent(moving, [g[index[id(p)]] for p in moving])
        with moved(moving, e), bn_statistics_frozen(self.model):
            perturbed_loss, g_p = loss_and_grads(self.model, x, y, params)
        self.descend(params, self.combine(params, g, g_p))
        return {"loss": loss.item(), "perturbed_loss": perturbed_loss.item()}

    def effective_hparams(self) -> dict[str, Any]:
        if self.quant is None:  # a float model has nothing but weights to perturb
            return super().effective_hparams()
        return {**super().effective_hparams(), "perturb": self.perturb}


@METHODS.register("sam", summary="sharpness-aware minimisation (FP)", paper="Foret et al., ICLR 2021, arXiv:2010.01412")
class SAM(SharpnessAware):
    HParams = SamHParams


@METHODS.register(
    "asam", summary="adaptive (scale-invariant) SAM (FP)", paper="Kwon et al., ICML 2021, arXiv:2102.11600"
)
class ASAM(SharpnessAware):
    HParams = AsamHParams

    def ascent(self, weights: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
        # SamsungLabs/ASAM normalises parameters named `weight` only; biases and BN shifts keep T = 1
        if not hasattr(self, "_is_weight"):
            self._is_weight = {id(p): name.endswith("weight") for name, p in self.model.named_parameters()}
        t = [w.abs() + self.hparams.eta if self._is_weight[id(w)] else torch.ones_like(w) for w in weights]
        scale = self.hparams.rho / (norm([ti * g for ti, g in zip(t, grads, strict=True)]) + EPS)
        return [ti * ti * g * scale for ti, g in zip(t, grads, strict=True)]


@METHODS.register(
    "lsq_sam",
    summary="SAM on an LSQ-quantized model (flatness + QAT directly)",
    paper="Foret et al. 2021 + Esser et al. 2020",
)
class LsqSAM(LsqRecipe, SharpnessAware):
    HParams = LsqSamHParams
