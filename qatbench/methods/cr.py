"""CR: consistency regularisation of QAT between two augmented views, teacher to student (`cr`).

Pang, Cai, Zhang, Wu, "In-Distribution Consistency Regularization Improves the Generalization of
Quantization-Aware Training", arXiv:2402.13497 (v1 2024: "Push Quantization-Aware Training Toward
Full Precision Performances via Consistency Regularization"). Only the abstracts and a third-party
summary could be read (shared/papers.md 5). From the paper: two augmented views of each input
should give consistent outputs; a teacher-student framework with EMA updates; a KL consistency
loss; a scheduled CR strength. Everything else is a RECONSTRUCTION and an hparam:

1. v1, v2 = two augmentations of the batch x (already augmented once by the dataset's train
   transform): per-sample random crop of the reflect-padded image and horizontal flip
2. z_s = student(v1) (quantized); z_t = teacher(v2), no gradient: the EMA of the student
   (quantized like it, in train mode by default, as mean teacher runs it) or the frozen
   full-precision parent (eval mode)
3. loss = CE(z_s, y) + w(t) T^2 KL(softmax(z_t / T) || softmax(z_s / T)),
   w(t) = consistency_weight * ramp(t / (ramp_fraction * total_steps)), t = steps done so far
4. one step of LSQ's optimiser recipe on the student
5. teacher <- ema_decay * teacher + (1 - ema_decay) * student (parameters and float buffers)

The paper adds in-distribution unlabeled data; qatbench has no unlabeled source, so the labelled
training set is the in-distribution data and every sample carries CE. The consistency is on
logits (v2's "KL"), not on latent features (v1's wording). The EMA teacher starts as a copy of
the student (fine-tuned from FP, so mean teacher's decay warm-up min(decay, 1 - 1/(t+1)) is left
out), and lives outside `self.model`: it is neither optimised nor saved; `predict` uses the student.
No symmetric variant (CE on v2 as well). `pad` 4 is sized for 32-pixel images.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.nn import functional as F

from qatbench.methods.base import Minibatches, concat, require
from qatbench.methods.erm import ERM, Optimizer, Schedule
from qatbench.methods.hparams import hparam
from qatbench.methods.kd import distillation_loss, teacher_forward
from qatbench.methods.optim import minimise
from qatbench.methods.registry import METHODS

Augment = Literal["crop_flip", "none"]


@dataclass(frozen=True)
class CrHParams:
    optimizer: Optimizer = hparam("sgd", "LSQ Sec. 3 (CR fine-tunes LSQ models)")
    lr: float | None = hparam(None, "LSQ Sec. 3 by weight bits (None: 0.01 at 2-4 bits, 0.001 at 8 bits)")
    weight_decay: float | None = hparam(None, "LSQ Table 2 by weight bits (None: 1e-4 / 0.5e-4 / 0.25e-4)")
    momentum: float = hparam(0.9, "LSQ Sec. 3")
    schedule: Schedule = hparam("cosine", "LSQ Sec. 3, no restarts")
    teacher: Literal["ema", "fp"] = hparam("ema", '[AI-SUM] "teacher-student framework with EMA updates"')
    ema_decay: float = hparam(0.999, "RECONSTRUCTION: mean teacher's (Tarvainen & Valpola 2017) value after ramp-up")
    # mean teacher's code runs the EMA model in train mode (batch BN statistics), so identical views
    # and weights give exactly zero consistency
    teacher_mode: Literal["train", "eval"] = hparam("train", "RECONSTRUCTION: mean teacher's code")
    augment: Augment = hparam("crop_flip", "RECONSTRUCTION: the standard CIFAR augmentation")
    pad: int = hparam(4, "RECONSTRUCTION: mean teacher's CIFAR translation by up to 4 px, reflect-padded")
    temperature: float = hparam(1.0, "RECONSTRUCTION: mean teacher and UDA compare unsharpened softmaxes")
    consistency_weight: float = hparam(1.0, "RECONSTRUCTION: KL and CE are both nats per sample (UDA's weight 1)")
    ramp: Literal["sigmoid", "linear", "none"] = hparam("sigmoid", "RECONSTRUCTION: Laine & Aila 2017's ramp-up")
    ramp_fraction: float = hparam(0.3, "RECONSTRUCTION: Laine & Aila ramp over 80 of 300 epochs")

    def __post_init__(self):
        require(self, "ema_decay", low=0.0, high=1.0)
        require(self, "pad", low=0)
        require(self, "temperature", low=0.01)
        require(self, "consistency_weight", low=0.0)
        require(self, "ramp_fraction", low=0.0, high=1.0)


def crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Each image of the batch cropped at its own random offset from its reflect-padded copy (same
    size) and flipped left-right with probability 1/2. One gather for the batch: torchvision's v2
    functional ops take one set of parameters per call, so per-sample draws would cost a call per image.
    """
    n, _, h, w = x.shape
    if pad >= min(h, w):
        raise ValueError(f"reflect padding needs pad < image height and width, got pad {pad} for {h}x{w}")
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).to(x.device)
    flips = torch.randint(0, 2, (n,), generator=generator).bool().to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad else x
    rows = offsets[:, :1] + torch.arange(h, device=x.device)
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (n, h, w, c) -> (n, c, h, w)


class TwoViews:
    """Two augmentations of a batch, drawn from a generator seeded once from torch's global RNG
    (which the runner seeds), so that the views are the run's and nothing else consumes them."""

    def __init__(self, augment: Augment, pad: int):
        self.augment, self.pad = augment, pad
        self.generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.augment == "none":
            return x, x
        if x.dim() != 4:
            raise ValueError(f"augment crop_flip needs image batches (n, c, h, w), got shape {tuple(x.shape)}")
        return crop_flip(x, self.pad, self.generator), crop_flip(x, self.pad, self.generator)


def ramp(t: float, length: float, kind: str) -> float:
    """From ~0 to 1 over `length` steps: sigmoid exp(-5 (1 - t/length)^2) (Laine & Aila 2017), linear, or none."""
    if kind == "none" or length <= 0:
        return 1.0
    phase = min(t / length, 1.0)
    return math.exp(-5.0 * (1.0 - phase) ** 2) if kind == "sigmoid" else phase


@METHODS.register(
    "cr",
    summary="LSQ + KL consistency of two augmented views to an EMA teacher (reconstruction)",
    paper="Pang et al. 2024, arXiv:2402.13497",
)
class CR(ERM):
    kind = "qat"
    HParams = CrHParams
    needs_teacher = True  # the FP parent, used only with teacher "fp"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.views = TwoViews(self.hparams.augment, self.hparams.pad)
        if self.hparams.teacher == "ema":  # made after the optimiser: its parameters are in no param group
            self.ema_teacher = copy.deepcopy(self.model).requires_grad_(False)
        elif self.teacher is None:
            raise ValueError("cr with teacher 'fp' needs the full-precision parent as its teacher")
        else:
            self.teacher.eval().requires_grad_(False)
        self.steps_taken = 0

    def consistency_weight(self) -> float:
        length = self.hparams.ramp_fraction * self.total_steps
        return self.hparams.consistency_weight * ramp(self.steps_taken, length, self.hparams.ramp)

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        x, y = concat(minibatches)
        v1, v2 = self.views(x)  # 1.
        z_s = self.model(v1)  # 2.
        z_t = self.teacher_logits(v2)
        ce = F.cross_entropy(z_s, y)  # 3.
        consistency = distillation_loss(z_s, z_t, y, self.hparams.temperature, alpha=1.0)  # T^2 KL(t || s)
        weight = self.consistency_weight()
        loss = ce + weight * consistency
        minimise(self.optimizer, self.schedule, loss)  # 4.
        if self.hparams.teacher == "ema":
            self.ema_step()  # 5.
        self.steps_taken += 1
        return {"loss": loss.item(), "ce": ce.item(), "consistency": consistency.item(), "weight": float(weight)}

    def teacher_logits(self, v2: torch.Tensor) -> torch.Tensor:
        if self.hparams.teacher == "fp":
            return teacher_forward(self.teacher, v2)
        self.ema_teacher.train(self.hparams.teacher_mode == "train")
        return teacher_forward(self.ema_teacher, v2)

    @torch.no_grad()
    def ema_step(self) -> None:
        keep = self.hparams.ema_decay
        for t, s in zip(self.ema_teacher.parameters(), self.model.parameters(), strict=True):
            t.lerp_(s, 1.0 - keep)
        for t, s in zip(self.ema_teacher.buffers(), self.model.buffers(), strict=True):
            t.lerp_(s, 1.0 - keep) if t.is_floating_point() else t.copy_(s)  # BN's batch counter is copied
