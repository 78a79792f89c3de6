"""GAQAT: SAGM on a quantized model, with the task gradient of stable step sizes frozen (`gaqat`).

Jiang, Meng, Tang, Yu, Li, Wang, Zhu, "GAQAT: gradient-adaptive quantization-aware training for
domain generalization", arXiv:2412.05551 (2024). Only the abstract and the public ICLR 2025 reviews
could be read (shared/papers.md 3): the structure below is theirs, the formulas marked
RECONSTRUCTION are qatbench's, and each is an hparam.

1. g_task = grad L(w), g_p = grad L(w') at SAGM's perturbed point w' (sagm.py; w' moves the step
   sizes too, as SAGM's optimizer does)
2. per step size s_l: g_task = g_s, g_flat = g_p,s - g_s (the gradient of the smoothness term
   L_p - L; SAGM's update is g_task + 1/2 g_flat)                                RECONSTRUCTION
3. keep the signs of g_task and g_flat of every s_l over the last n steps (reviews: "number of
   direction flips ... over n training steps"; a per-channel s records the sign of its sum)
4. every K steps: disorder D_l (`disorder`: "conflict", the fraction of the n steps whose two
   signs differ, the reviews' two sequences; or "flips" of g_task alone); freeze the task
   gradient of every s_l with D_l < tau, permanently (reviews: "freezing only the task-loss
   gradients", "continuously freezing the g_task without unfreezing")
5. update: SAGM's direction, except that a frozen s_l moves along 1/2 g_flat only; the
   weights are never frozen
A "layer" here is one quantizer: a conv's weight and input step sizes are judged apart.
Defaults n = 20, K = 20, tau = 0.3 are reconstructions (the values were not found); random
signs flip (or disagree) at a rate near 0.5, steady ones near 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qatbench.methods.base import Minibatches, concat, require
from qatbench.methods.disorder import Disorder, SignHistory, conflict_rate, flip_rate
from qatbench.methods.erm import ERM, Optimizer, Schedule
from qatbench.methods.hparams import hparam
from qatbench.methods.optim import descend
from qatbench.methods.registry import METHODS
from qatbench.methods.sharpness import (
    Perturb,
    flatness_gradient,
    gradient_at,
    loss_and_grads,
    of,
    perturbed_parameters,
    sagm_direction,
    sagm_perturbation,
    trainable,
)
from qatbench.quant import FakeQuantizer


@dataclass(frozen=True)
class GaqatHParams:
    optimizer: Optimizer = hparam("sgd", "LSQ Sec. 3 (GAQAT fine-tunes LSQ models)")
    lr: float | None = hparam(None, "LSQ Sec. 3 by weight bits (None: 0.01 at 2-4 bits, 0.001 at 8 bits)")
    weight_decay: float | None = hparam(None, "LSQ Table 2 by weight bits (None: 1e-4 / 0.5e-4 / 0.25e-4)")
    momentum: float = hparam(0.9, "LSQ Sec. 3")
    schedule: Schedule = hparam("cosine", "LSQ Sec. 3, no restarts")
    rho: float = hparam(0.05, "SAGM code")
    alpha: float = hparam(0.001, "SAGM README, PACS")
    smooth_weight: float = hparam(0.5, "SAGM code")
    perturb: Perturb = hparam(
        "weights_and_steps", "SAGM code: perturb_weights moves every parameter it updates, step sizes included"
    )
    window: int = hparam(20, "RECONSTRUCTION: n, the reviews' symbol; its value was not found")
    every: int = hparam(20, "RECONSTRUCTION: K, the value was not found")
    tau: float = hparam(0.3, "RECONSTRUCTION: the value was not found")
    disorder: Disorder = hparam(
        "conflict", "ICLR 2025 reviews: two gradient sequences, task and smoothness; the formula is a RECONSTRUCTION"
    )

    def __post_init__(self):
        require(self, "rho", low=0.0)
        require(self, "window", low=2)
        require(self, "every", low=1)
        require(self, "tau", low=0.0)  # above 1: every step size freezes at the first review


@METHODS.register(
    "gaqat",
    summary="SAGM + QAT, freezing the task gradient of low-disorder step sizes (reconstruction)",
    paper="Jiang et al. 2024, arXiv:2412.05551",
)
class GAQAT(ERM):
    kind = "qat"
    HParams = GaqatHParams
    quantizers_allowed = ("lsq", "lsq_plus")  # the quantizers with learnable step sizes

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        named = [(name, m) for name, m in self.model.named_modules() if isinstance(m, FakeQuantizer)]
        self.scale_names = [name for name, q in named if isinstance(getattr(q, "step", None), torch.nn.Parameter)]
        self.scales = [self.model.get_submodule(name).step for name in self.scale_names]
        if not self.scales:
            raise ValueError("gaqat needs quantizers with learnable step sizes (quantizer lsq or lsq_plus)")
        device = self.scales[0].device
        self.task_signs = SignHistory(self.hparams.window, len(self.scales), device)
        self.smooth_signs = SignHistory(self.hparams.window, len(self.scales), device)
        self.frozen = [False] * len(self.scales)
        self.frozen_at: dict[str, int] = {}
        self.last_disorder: list[float] = []
        self.steps_taken = 0

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        hp = self.hparams
        x, y = concat(minibatches)
        params, moving = trainable(self.model), perturbed_parameters(self.model, hp.perturb)
        loss, g_task = loss_and_grads(self.model, x, y, params)  # 1.
        e = sagm_perturbation(of(g_task, params, moving), hp.rho, hp.alpha)
        perturbed_loss, g_p = gradient_at(self.model, x, y, params, moving, e)
        d = self.combine(params, g_task, g_p)  # 2.-5.
        descend(self.optimizer, self.schedule, params, d)
        return {"loss": loss.item(), "perturbed_loss": perturbed_loss.item()}

    def combine(self, params: list, g_task: list[torch.Tensor], g_p: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Steps 2-5: the update direction, with the task gradient of frozen step sizes dropped."""
        g_flat = flatness_gradient(g_task, g_p)  # 2.
        d = sagm_direction(g_task, g_flat, self.hparams.smooth_weight)
        position = {id(p): i for i, p in enumerate(params)}
        where = [position[id(s)] for s in self.scales]
        self.task_signs.record(torch.stack([g_task[i].sum() for i in where]).sign())  # 3.
        self.smooth_signs.record(torch.stack([g_flat[i].sum() for i in where]).sign())
        self.steps_taken += 1
        if self.task_signs.full and self.steps_taken % self.hparams.every == 0:
            self.freeze_stable(self.disorder().tolist())  # 4.
        for k, i in enumerate(where):
            if self.frozen[k]:
                d[i] = self.hparams.smooth_weight * g_flat[i]  # 5. the task gradient of s_l, frozen
        return d

    def disorder(self) -> torch.Tensor:
        """Step 4's D_l of every step size over the window."""
        if self.hparams.disorder == "conflict":
            return conflict_rate(self.task_signs.ordered(), self.smooth_signs.ordered())
        return flip_rate(self.task_signs.ordered())

    def freeze_stable(self, disorder: list[float]) -> None:
        self.last_disorder = disorder
        for k, value in enumerate(disorder):
            if value < self.hparams.tau and not self.frozen[k]:
                self.frozen[k] = True
                self.frozen_at[self.scale_names[k]] = self.steps_taken

    def summary(self) -> dict[str, Any]:
        return {
            "n_scales": len(self.scales),
            "n_frozen": sum(self.frozen),
            "frozen_at_step": dict(self.frozen_at),
            "last_disorder": dict(zip(self.scale_names, [round(v, 4) for v in self.last_disorder], strict=False)),
        }
