"""Gradient norm aware minimisation (`gam`, full precision).

Zhang, Xu, Yu, Zou, Cui, "Gradient Norm Aware Minimization Seeks First-Order Flatness and
Improves Generalization", CVPR 2023 (arXiv:2303.03108); the accelerated first-order update of the
official code (xxgege/GAM, `gam/gam.py`), shared/papers.md 8.9. Four passes per step:

1. g0 = grad L(w)
2. g1 = grad L(w1),  w1 = w + rho' g0 / ||g0||                      (rho' = grad_rho)
3. h = g1 - g0  (about rho' times the gradient of ||grad L||)
4. g2 = grad L(w2),  w2 = w + rho_t h / ||h||                        (rho_t = grad_norm_rho)
5. g3 = grad L(w3),  w3 = w2 + rho' g2 / ||g2||
6. m = g0 + |beta2| g2 (beta2 = 1 - beta0);  d = beta1 g1 + beta3 g3 (beta3 = 1 - beta1)
7. d <- d - gamma (m - cos(m, d) ||m|| d / ||d||)   (remove the part of m orthogonal to d)
8. base optimiser step along d; BN running statistics move in pass 1 only

Defaults: the repository's CIFAR-10 ResNet values (rho_t 0.2, rho' 0.03, beta0 0.1, beta1 0.1,
gamma 0.05); the base optimiser is DomainBed's ERM so that a DG suite changes only the objective.
"""

from __future__ import annotations

from dataclasses import dataclass

from qatbench.methods.base import Minibatches, concat, require
from qatbench.methods.erm import ERM, Optimizer, Schedule
from qatbench.methods.hparams import hparam
from qatbench.methods.optim import descend
from qatbench.methods.registry import METHODS
from qatbench.methods.sharpness import EPS, bn_statistics_frozen, dot, loss_and_grads, moved, norm, sam_perturbation, trainable


@dataclass(frozen=True)
class GamHParams:
    optimizer: Optimizer = hparam("adam", "DomainBed's ERM, so that only the objective differs from erm")
    lr: float = hparam(5e-5, "DomainBed, ResNet backbones")
    weight_decay: float = hparam(0.0, "DomainBed")
    momentum: float = hparam(0.9, "used by sgd only; LSQ Sec. 3's value")
    schedule: Schedule = hparam("constant", "DomainBed")
    grad_norm_rho: float = hparam(0.2, "rho_t, xxgege/GAM CIFAR-10 ResNet")
    grad_rho: float = hparam(0.03, "rho', xxgege/GAM CIFAR-10 ResNet")
    grad_beta_0: float = hparam(0.1, "xxgege/GAM CIFAR-10 ResNet")
    grad_beta_1: float = hparam(0.1, "xxgege/GAM CIFAR-10 ResNet")
    grad_gamma: float = hparam(0.05, "xxgege/GAM CIFAR-10 ResNet")

    def __post_init__(self):
        for name in ("grad_norm_rho", "grad_rho", "grad_gamma"):
            require(self, name, low=0.0)
        for name in ("grad_beta_0", "grad_beta_1"):
            require(self, name, low=0.0, high=1.0)


@METHODS.register(
    "gam", summary="gradient norm aware minimisation (FP)", paper="Zhang et al., CVPR 2023, arXiv:2303.03108"
)
class GAM(ERM):
    HParams = GamHParams

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        hp = self.hparams
        x, y = concat(minibatches)
        params = trainable(self.model)
        loss, g0 = loss_and_grads(self.model, x, y, params)  # 1.
        with bn_statistics_frozen(self.model):
            with moved(params, sam_perturbation(g0, hp.grad_rho)):
                _, g1 = loss_and_grads(self.model, x, y, params)  # 2.
            h = [a - b for a, b in zip(g1, g0, strict=True)]  # 3.
            with moved(params, sam_perturbation(h, hp.grad_norm_rho)):
                _, g2 = loss_and_grads(self.model, x, y, params)  # 4.
                with moved(params, sam_perturbation(g2, hp.grad_rho)):
                    _, g3 = loss_and_grads(self.model, x, y, params)  # 5.
        beta2, beta3 = 1 - hp.grad_beta_0, 1 - hp.grad_beta_1
        m = [a + abs(beta2) * b for a, b in zip(g0, g2, strict=True)]  # 6.
        d = [hp.grad_beta_1 * a + beta3 * b for a, b in zip(g1, g3, strict=True)]
        d_norm, m_norm = norm(d), norm(m)
        cosine = dot(m, d) / (m_norm * d_norm + EPS)
        d = [di - hp.grad_gamma * (mi - cosine * m_norm * di / (d_norm + EPS)) for mi, di in zip(m, d, strict=True)]  # 7.
        descend(self.optimizer, self.schedule, params, d)  # 8.
        return {"loss": loss.item()}
