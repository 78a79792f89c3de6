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
3. L_e = log det(I + C_e), C_e = Z1_e Z2_e^T / (m eps_sq), eps_sq = eps^2 / d (MEC's `eps_d`:
   its `--eps 64` over `--dim 2048`), by the series Tr(sum_{k <= K} (-1)^{k+1} C^k / k) while
   ||C_e|| < 1 (where it converges) and otherwise exactly (torch.logdet; `logdet` forces either)
4. loss = CE(z, y) + beta L_MEC, L_MEC = -eps_sq sum_e pi_e L_e: MEC's own loss (`-mec_loss *
   lamda_inv`, i.e. the coding length mu log det(I + C) per sample, times 1/(lambda mu)), so that
   its gradient is of the order of CE's at beta 1 (minimising it maximises the entropy)
5. one step of LSQ's optimiser recipe

The coding length mu log det(I + C), mu = (m + d) / 2, is recorded as `coding_length`.
Convergence: rows of norm <= 1 bound the spectral norm of C by 1 / eps_sq, reached when the batch
collapses to one direction; MEC's eps_sq (0.01-0.12) relies on spread features (m < d,
near-orthogonal rows), which post-ReLU penultimate features are not (ResNet-18 and -50 at
initialisation: the top eigenvalue of Z Z^T holds 71-93% of its trace, ||C|| of 12-16 at 0.06).
MEC warms lambda up over 10 epochs for its series; the exact fallback makes that unnecessary here.
An earlier default (eps_sq 2, the series only, mu log det scaled by beta 0.01) left only the small
higher-order terms acting: with one view the first-order term Tr(C) = 1 / eps_sq is constant.
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

from qatbench.methods.base import Minibatches, concat, require
from qatbench.methods.cr import TwoViews
from qatbench.methods.erm import ERM, Optimizer, Schedule
from qatbench.methods.hparams import hparam
from qatbench.methods.optim import minimise
from qatbench.methods.registry import METHODS


LogDet = Literal["auto", "series", "exact"]
MEC_EPS_SQ = 64 / 2048  # MEC code (xinliu20/MEC main_pretrain.py): eps_d = args.eps / d, --eps 64, --dim 2048


@dataclass(frozen=True)
class MecHParams:
    optimizer: Optimizer = hparam("sgd", "LSQ Sec. 3 (MEC-Quant compares with LSQ)")
    lr: float | None = hparam(None, "LSQ Sec. 3 by weight bits (None: 0.01 at 2-4 bits, 0.001 at 8 bits)")
    weight_decay: float | None = hparam(None, "LSQ Table 2 by weight bits (None: 1e-4 / 0.5e-4 / 0.25e-4)")
    momentum: float = hparam(0.9, "LSQ Sec. 3")
    schedule: Schedule = hparam("cosine", "LSQ Sec. 3, no restarts")
    # beta |grad L_MEC| / |grad CE| at 1: 0.37 (small_cnn W4A4, m 160, d 64), 0.06 (ResNet-18 at 64 px,
    # m 64, d 512), random init and inputs (tests/test_cr_mec.py checks the order of magnitude)
    beta: float = hparam(1.0, "MEC code: its loss at weight 1; next to CE a RECONSTRUCTION")
    eps_sq: float = hparam(MEC_EPS_SQ, "MEC code: eps_d = eps / d, --eps 64, --dim 2048 (paper: 0.01-0.12)")
    taylor_order: int = hparam(4, "MEC code: loss_func(order=4)")
    logdet: LogDet = hparam("auto", "RECONSTRUCTION: the series where it converges (||C|| < 1), else torch.logdet")
    views: Literal["single", "fp_pair", "two_views"] = hparam("single", "RECONSTRUCTION: MEC-Quant's pairing unknown")
    pad: int = hparam(4, "two_views only: cr.py's crop_flip (mean teacher's CIFAR translation)")
    experts: int = hparam(1, "RECONSTRUCTION: 1, plain MEC; the paper's MoE gating is not known")
    target: Literal["features"] = hparam("features", "RECONSTRUCTION: weights left out (module docstring)")

    def __post_init__(self):
        require(self, "beta", low=0.0)
        require(self, "eps_sq", low=1e-6)
        require(self, "taylor_order", low=1)
        require(self, "pad", low=0)
        require(self, "experts", low=1)


def log_det(z1: torch.Tensor, z2: torch.Tensor, eps_sq: float, order: int, how: LogDet) -> torch.Tensor:
    """log det(I + C), C = Z1 Z2^T / (m eps_sq): by its order-K series Tr(sum (-1)^{k+1} C^k / k), exactly
    (torch.logdet; NaN for a pair whose det(I + C) <= 0, which stops the run as diverged), or ("auto")
    by the series only where it converges, a spectral norm of C below 1."""
    m = len(z1)
    c = z1 @ z2.T / (m * eps_sq)
    if how == "auto":
        how = "series" if torch.linalg.matrix_norm(c.detach(), ord=2) < 1 else "exact"
    if how == "exact":
        return torch.logdet(torch.eye(m, dtype=c.dtype, device=c.device) + c)
    power, series = c, c.trace()
    for k in range(2, order + 1):
        power = power @ c
        series = series + (-1) ** (k + 1) / k * power.trace()
    return series


def coding_length(z1: torch.Tensor, z2: torch.Tensor, eps_sq: float, order: int, how: LogDet) -> torch.Tensor:
    """MEC's coding length mu log det(I + C), mu = (m + d) / 2 (Liu et al. 2022, Eq. 2)."""
    m, d = z1.shape
    return (m + d) / 2 * log_det(z1, z2, eps_sq, order, how)


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
class MEC(ERM):
    kind = "qat"
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

    def gated_log_det(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """sum_e pi_e L_e of steps 2-3 on normalised rows (E = 1: L of the whole batch)."""
        hp = self.hparams
        if hp.experts == 1:
            return log_det(z1, z2, hp.eps_sq, hp.taylor_order, hp.logdet)
        experts = value_experts(z1, z2, hp.experts)
        return sum(gate * log_det(a, b, hp.eps_sq, hp.taylor_order, hp.logdet) for gate, a, b in experts)

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        hp = self.hparams
        x, y = concat(minibatches)
        logits, z1, z2 = self.representations(x)  # 1.
        wide = torch.promote_types(z1.dtype, torch.float32)  # a log det in bf16 is noise
        single = z2 is z1
        z1 = F.normalize(z1.to(wide), dim=1)
        z2 = z1 if single else F.normalize(z2.to(wide), dim=1)
        log_det_i_c = self.gated_log_det(z1, z2)  # 2.-3.
        l_mec = -hp.eps_sq * log_det_i_c
        ce = F.cross_entropy(logits, y)
        loss = ce + hp.beta * l_mec  # 4.
        minimise(self.optimizer, self.schedule, loss)  # 5.
        mu = (z1.shape[0] + z1.shape[1]) / 2
        coding_length = (mu * log_det_i_c.detach()).item()  # MEC's mu log det(I + C), for the record
        return {"loss": loss.item(), "ce": ce.item(), "l_mec": l_mec.item(), "coding_length": coding_length}
