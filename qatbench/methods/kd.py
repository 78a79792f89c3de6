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
from torch.nn import functional as F

from qatbench.methods.base import require
from qatbench.methods.erm import ERM, LsqHParams, LsqRecipe
from qatbench.methods.registry import METHODS


@dataclass(frozen=True)
class KdHParams(LsqHParams):
    temperature: float = 4.0  # common choice; Hinton et al. used 2-20
    alpha: float = 0.9  # weight of the soft term; common choice

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


@METHODS.register("kd", summary="LSQ + distillation from the FP parent", paper="Hinton et al. 2015, arXiv:1503.02531")
class KD(LsqRecipe, ERM):
    HParams = KdHParams
    needs_teacher = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.teacher is None:
            raise ValueError("kd needs the full-precision parent as its teacher")
        self.teacher.eval().requires_grad_(False)

    def objective(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        return distillation_loss(self.model(x), teacher_logits, y, self.hparams.temperature, self.hparams.alpha)

    def train(self) -> None:
        super().train()
        self.teacher.eval()
