"""MEC-Quant: QAT with a maximum-entropy (minimal coding length) term on the representation (`mec`).

Pang, Cai, Zhang, "Maximum Entropy Coding for Extremely Low Bit Quantization-Aware Training",
arXiv:2509.15514 (2025). Only the abstract could be read (shared/papers.md 6). From the paper: an
objective that maximises the entropy of the quantized model's representation, measured by the
minimal coding length of lossy data coding, and a Mixture-of-Experts reformulation that handles
long-tailed weight or activation values. The coding length and its Taylor series are Liu et al.'s
Maximum Entropy Coding (NeurIPS 2022, arXiv:2210.11464). Everything else is a RECONSTRUCTION
(label results "MEC-style regulariser", not MEC-Quant's numbers), and an hparam:

1. z = student(x); Z1 = the input of its last linear layer (before that layer's input quantizer),
   rows L2-normalised (m x d); Z2 = Z1 (`views` "single"), the FP parent's on the same batch, no
   gradient ("fp_pair"), or the student's on a second crop_flip view (cr.py), z and Z1 being
   on the first ("two_views")
2. experts e = 1..E: ranges of |Z| holding equal shares of the batch's entries (quantile edges,
   detached); Z_e = Z masked to range e; gate pi_e = the share of entries in range e (detached)
3. L_e = mu log det(I + C_e), C_e = lambda Z1_e Z2_e^T, mu = (m + d) / 2, lambda = d / (m eps^2),
   by the series Tr(sum_{k <= K} (-1)^{k+1} C^k / k) (or `exact`: torch.logdet, NaN for a pair
   whose det(I + C) <= 0, which stops the run as diverged)
4. loss = CE(z, y) + beta L_MEC, L_MEC = -sum_e pi_e L_e (minimising it maximises the entropy)
5. one step of LSQ's optimiser recipe

Convergence: rows of norm <= 1 bound the spectral norm of C by lambda m = 1 / eps_sq (eps_sq =
eps^2 / d, the MEC code's `ed2`), reached when the batch collapses to one direction. The series
converges for every batch only when eps_sq > 1; its order-K error is then <= mu eps_sq^-(K+1) / (K+1)
(single view: the eigenvalues s_i of C sum to 1 / eps_sq). MEC's ed2 in [0.01, 0.12] relies on
spread features (m < d, near-orthogonal rows), which post-ReLU penultimate features are not, so
eps_sq <= 1 is refused unless `exact` (ResNet-18 and -50 at initialisation: the top eigenvalue of
Z Z^T holds 71-93% of its trace, so ed2 0.06 would give ||C|| of 12-16).
The experts are our reading of "MoE over value ranges"; the paper's gating is not known. Each
expert codes Z * mask_e as it is (re-normalising rows of small values would divide their gradient
by a vanishing norm). The paper also names weights: `target` is "features" only, since a coding
length of weights has no described form (which rows are the samples).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from qatbench.methods.base import require
from qatbench.methods.cr import TwoViews
from qatbench.methods.erm import ERM, LsqHParams, LsqRecipe
from qatbench.methods.registry import METHODS


@dataclass(frozen=True)
class MecHParams(LsqHParams):
    beta: float = 0.01  # reconstruction: beta |grad L_MEC| / |grad CE| = 0.09 (ResNet-50, m 96, d 2048), 0.03
    # (ResNet-18, m 256, d 512), random init and inputs, W4A4: a regulariser; L_MEC grows with mu = (m + d) / 2
    eps_sq: float = 2.0  # eps^2 / d; reconstruction: > 1 for a convergent series (MEC's ed2: 0.01-0.12)
    taylor_order: int = 4  # K, MEC code's default order
    exact: bool = False  # torch.logdet instead of the series
    views: Literal["single", "fp_pair", "two_views"] = "single"  # reconstruction
    pad: int = 4  # two_views only: cr.py's crop_flip
    experts: int = 1  # E value ranges; 1: plain MEC
    target: Literal["features"] = "features"  # weights left out (module docstring)

    def __post_init__(self):
        require(self, "beta", low=0.0)
        require(self, "eps_sq", low=1e-6)
        require(self, "taylor_order", low=1)
        require(self, "pad", low=0)
        require(self, "experts", low=1)
        if not self.exact and self.eps_sq <= 1.0:
            raise ValueError(
                f"eps_sq {self.eps_sq} lets the Taylor series of log det(I + C) diverge: ||C|| reaches "
                f"1 / eps_sq = {1 / self.eps_sq:.3g} >= 1 when features collapse; use eps_sq > 1, or exact: true"
            )


def coding_length(z1: torch.Tensor, z2: torch.Tensor, eps_sq: float, order: int, exact: bool) -> torch.Tensor:
    """mu log det(I + lambda Z1 Z2^T), mu = (m + d)/2, lambda = 1/(m eps_sq), by its order-K series or exactly."""
    m, d = z1.shape
    c = z1 @ z2.T / (m * eps_sq)
    if exact:
        return (m + d) / 2 * torch.logdet(torch.eye(m, dtype=c.dtype, device=c.device) + c)
    power, series = c, c.trace()
    for k in range(2, order + 1):
        power = power @ c
        series = series + (-1) ** (k + 1) / k * power.trace()
    return (m + d) / 2 * series


def value_experts(z1: torch.Tensor, z2: torch.Tensor, experts: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """(gate, Z1 masked, Z2 masked) per range of |Z|; the ranges hold equal shares of the batch's entries."""
    magnitude = (z1 if z2 is z1 else torch.cat([z1, z2])).detach().abs()
    shares = torch.linspace(0, 1, experts + 1, dtype=magnitude.dtype, device=magnitude.device)[1:-1]
    edges = torch.quantile(magnitude.flatten(), shares)
    range1, range2 = torch.bucketize(z1.detach().abs(), edges), torch.bucketize(z2.detach().abs(), edges)
    for e in range(experts):
        in1, in2 = range1 == e, range2 == e
        gate = (in1.sum() + in2.sum()).to(z1.dtype) / (in1.numel() + in2.numel())
        yield gate, z1 * in1, z2 * in2


class Penultimate:
    """The input of a model's last linear layer, kept from the forward passes run inside `capture()`.
    The pre-hook is set once, before the runner compiles the model, so the compiled forward runs it.
    A classifier behind dropout (torchvision's MobileNetV2) gives the features as dropout left them."""

    def __init__(self, model: nn.Module):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]  # QuantLinear included
        if not linears:
            raise ValueError("mec needs a model whose classifier is a linear layer")
        self.active, self.seen = False, []
        linears[-1].register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, args: tuple) -> None:
        if self.active:
            self.seen.append(args[0].flatten(1))

    @contextmanager
    def capture(self) -> Iterator[list[torch.Tensor]]:
        self.active, seen = True, self.seen
        try:
            yield seen
        finally:
            self.active, self.seen = False, []
        if not seen:
            raise RuntimeError("mec saw no features: the last linear layer's pre-hook did not run")


@METHODS.register(
    "mec",
    summary="LSQ + maximum-entropy coding length of the penultimate features (reconstruction)",
    paper="Pang et al. 2025, arXiv:2509.15514",
)
class MEC(LsqRecipe, ERM):
    HParams = MecHParams
    needs_teacher = True  # the FP parent, used only with views "fp_pair"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.features = Penultimate(self.model)
        self.views = TwoViews("crop_flip", self.hparams.pad) if self.hparams.views == "two_views" else None
        if self.hparams.views == "fp_pair":
            if self.teacher is None:
                raise ValueError("mec with views 'fp_pair' needs the full-precision parent as its teacher")
            self.teacher.eval().requires_grad_(False)
            self.teacher_features = Penultimate(self.teacher)
        self.parts: dict[str, torch.Tensor] = {}

    def representations(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits and the (Z1, Z2) pair of step 1, rows not yet normalised."""
        with self.features.capture() as seen:
            if self.views is None:
                logits = self.model(x)
            else:
                v1, v2 = self.views(x)
                logits, _ = self.model(v1), self.model(v2)
        if self.hparams.views != "fp_pair":
            return logits, seen[0], seen[-1]
        with torch.no_grad(), self.teacher_features.capture() as seen_fp:
            self.teacher(x)
        return logits, seen[0], seen_fp[0]

    def gated_coding_length(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """sum_e pi_e L_e of steps 2-3 on normalised rows (E = 1: L of the whole batch)."""
        hp = self.hparams
        if hp.experts == 1:
            return coding_length(z1, z2, hp.eps_sq, hp.taylor_order, hp.exact)
        experts = value_experts(z1, z2, hp.experts)
        return sum(gate * coding_length(a, b, hp.eps_sq, hp.taylor_order, hp.exact) for gate, a, b in experts)

    def objective(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, z1, z2 = self.representations(x)  # 1
        wide = torch.promote_types(z1.dtype, torch.float32)  # a log det in bf16 is noise
        single = z2 is z1
        z1 = F.normalize(z1.to(wide), dim=1)
        z2 = z1 if single else F.normalize(z2.to(wide), dim=1)
        code = self.gated_coding_length(z1, z2)  # 2-3
        ce = F.cross_entropy(logits, y)
        self.parts = {"ce": ce.detach(), "coding_length": code.detach()}
        return ce - self.hparams.beta * code  # 4

    def update(self, minibatches) -> dict[str, float]:
        losses = super().update(minibatches)  # 1-5
        return {**losses, **{name: float(value) for name, value in self.parts.items()}}
