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
from qatbench.methods.erm import ERM, ErmHParams
from qatbench.methods.registry import METHODS
from qatbench.methods.sharpness import EPS, bn_statistics_frozen, dot, loss_and_grads, moved, norm, scaled, trainable


@dataclass(frozen=True)
class GamHParams(ErmHParams):
    grad_norm_rho: float = 0.2  # rho_t, xxgege/GAM CIFAR-10 ResNet
    grad_rho: float = 0.03  # rho', xxgege/GAM CIFAR-10 ResNet
    grad_beta_0: float = 0.1  # xxgege/GAM CIFAR-10 ResNet
    grad_beta_1: float = 0.1  # xxgege/GAM CIFAR-10 ResNet
    grad_gamma: float = 0.05  # xxgege/GAM CIFAR-10 ResNet

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
        loss, g0 = loss_and_grads(self.model, x, y, params)
        with bn_statistics_frozen(self.model):
            with moved(params, scaled(g0, hp.grad_rho / (norm(g0) + EPS))):
                _, g1 = loss_and_grads(self.model, x, y, params)
            h = [a - b for a, b in zip(g1, g0, strict=True)]
            to_w2 = scaled(h, hp.grad_norm_rho / (norm(h) + EPS))
            with moved(params, to_w2):
                _, g2 = loss_and_grads(self.model, x, y, params)
                with moved(params, scaled(g2, hp.grad_rho / (norm(g2) + EPS))):
                    _, g3 = loss_and_grads(self.model, x, y, params)
        beta2, beta3 = 1 - hp.grad_beta_0, 1 - hp.grad_beta_1
        m = [a + abs(beta2) * b for a, b in zip(g0, g2, strict=True)]
        d = [hp.grad_beta_1 * a + beta3 * b for a, b in zip(g1, g3, strict=True)]
        d_norm, m_norm = norm(d), norm(m)
        cosine = dot(m, d) / (m_norm * d_norm + EPS)
        d = [di - hp.grad_gamma * (mi - cosine * m_norm * di / (d_norm + EPS)) for mi, di in zip(m, d, strict=True)]
        self.descend(params, d)
        return {"loss": loss.item()}
