"""Knowledge distillation from the full-precision parent into the quantized student (`kd`).

Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", NeurIPS DL Workshop 2014
(arXiv:1503.02531); the KD baseline of FPQ's Tables 4-5:

1. z_s = student(x) (quantized), z_t = teacher(x) (frozen FP parent, eval mode, no gradient)
2. loss = alpha T^2 KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) CE(z_s, y)
   (the T^2 keeps the soft term's gradient scale independent of T, Hinton Sec. 2)
3. one step of LSQ's optimiser recipe

T and alpha are not given by the paper (it used T from 2 to 20) nor, in what could be read, by
FPQ; T = 4 and alpha = 0.9 are common choices, labelled as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from qatbench.methods.base import Minibatches, concat, require
from qatbench.methods.erm import ERM, Optimizer, Schedule
from qatbench.methods.hparams import hparam
from qatbench.methods.optim import minimise
from qatbench.methods.registry import METHODS


@dataclass(frozen=True)
class KdHParams:
    optimizer: Optimizer = hparam("sgd", "LSQ Sec. 3 (FPQ's KD baseline fine-tunes like LSQ)")
    lr: float | None = hparam(None, "LSQ Sec. 3 by weight bits (None: 0.01 at 2-4 bits, 0.001 at 8 bits)")
    weight_decay: float | None = hparam(None, "LSQ Table 2 by weight bits (None: 1e-4 / 0.5e-4 / 0.25e-4)")
    momentum: float = hparam(0.9, "LSQ Sec. 3")
    schedule: Schedule = hparam("cosine", "LSQ Sec. 3, no restarts")
    temperature: float = hparam(4.0, "RECONSTRUCTION: a common choice; Hinton et al. used 2-20")
    alpha: float = hparam(0.9, "RECONSTRUCTION: a common weight of the soft term; not given by Hinton et al. or FPQ")

    def __post_init__(self):
        require(self, "temperature", low=0.01)
        require(self, "alpha", low=0.0, high=1.0)


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, temperature: float, alpha: float
) -> torch.Tensor:
    soft = F.kl_div(
        F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
        reduction="batchmean", log_target=True,
    )  # fmt: skip
    return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(student, y)


@torch.no_grad()
def teacher_forward(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The frozen teacher's forward pass: no gradient, no graph kept."""
    return teacher(x)


@METHODS.register("kd", summary="LSQ + distillation from the FP parent", paper="Hinton et al. 2015, arXiv:1503.02531")
class KD(ERM):
    kind = "qat"
    HParams = KdHParams
    needs_teacher = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.teacher is None:
            raise ValueError("kd needs the full-precision parent as its teacher")
        self.teacher.eval().requires_grad_(False)

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        x, y = concat(minibatches)
        z_t = teacher_forward(self.teacher, x)  # 1.
        z_s = self.model(x)
        loss = distillation_loss(z_s, z_t, y, self.hparams.temperature, self.hparams.alpha)  # 2.
        minimise(self.optimizer, self.schedule, loss)  # 3.
        return {"loss": loss.item()}

    def train(self) -> None:
        super().train()
        self.teacher.eval()
