"""Sharpness-aware gradient matching, in full precision (`sagm`) and on LSQ (`lsq_sagm`).

Wang, Zhang, Lei, Zhang, "Sharpness-Aware Gradient Matching for Domain Generalization", CVPR 2023
(arXiv:2303.10353); update as in the official code (Wang-pengfei/SAGM, `domainbed/sagm/sagm.py`),
shared/papers.md 8.8. It minimises the loss L, the perturbed loss L_p and the gap L_p - L:

1. g = grad L(w)
2. w' = w + (rho / ||g||  - alpha) g
3. g_p = grad L(w'), BN running statistics left alone
4. d = g + 1/2 (g_p - g) = 1/2 (g + g_p)      (`gradient_decompose`)
5. base optimiser step along d

Read as task gradient g plus half the gradient of the smoothness term L_p - L, which is how
GAQAT splits it (gaqat.py). Defaults: the official code's PACS row (Adam, lr 3e-5, weight decay
1e-4, alpha 0.001, rho 0.05); for DomainNet its README uses alpha 0.0005, weight decay 1e-6.
`lsq_sagm` is GAQAT's "directly integrating DG and QAT" baseline: SAGM's objective with LSQ's recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qatbench.methods.base import require
from qatbench.methods.erm import ErmHParams, LsqHParams, LsqRecipe
from qatbench.methods.registry import METHODS
from qatbench.methods.sam import SharpnessAware
from qatbench.methods.sharpness import EPS, Perturb, norm, scaled


@dataclass(frozen=True)
class SagmHParams(ErmHParams):
    lr: float = 3e-5  # SAGM README, PACS
    weight_decay: float = 1e-4  # SAGM README, PACS
    rho: float = 0.05  # SAGM code (constant LinearScheduler at 0.05)
    alpha: float = 0.001  # SAGM README, PACS
    smooth_weight: float = 0.5  # SAGM code: d = g + 0.5 (g_p - g)

    def __post_init__(self):
        require(self, "rho", low=0.0)


@dataclass(frozen=True)
class LsqSagmHParams(LsqHParams):
    rho: float = 0.05  # SAGM code
    alpha: float = 0.001  # SAGM README, PACS
    smooth_weight: float = 0.5  # SAGM code
    perturb: Perturb = "weights"  # qatbench: latent weights only; "weights_and_steps" moves step sizes too

    def __post_init__(self):
        require(self, "rho", low=0.0)


class SagmUpdate(SharpnessAware):
    def ascent(self, weights: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
        return scaled(grads, self.hparams.rho / (norm(grads) + EPS) - self.hparams.alpha)

    def combine(self, params: list, g: list[torch.Tensor], g_p: list[torch.Tensor]) -> list[torch.Tensor | None]:
        smooth = torch._foreach_sub(g_p, g)  # one kernel per list, not per parameter
        return list(torch._foreach_add(g, smooth, alpha=self.hparams.smooth_weight))


@METHODS.register(
    "sagm", summary="sharpness-aware gradient matching (FP, DG)", paper="Wang et al., CVPR 2023, arXiv:2303.10353"
)
class SAGM(SagmUpdate):
    HParams = SagmHParams


@METHODS.register(
    "lsq_sagm",
    summary="SAGM on an LSQ-quantized model (GAQAT's DG + QAT baseline)",
    paper="Wang et al. 2023 + Esser et al. 2020",
)
class LsqSAGM(LsqRecipe, SagmUpdate):
    HParams = LsqSagmHParams
