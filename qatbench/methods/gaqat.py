"""GAQAT: SAGM on a quantized model, with the task gradient of stable step sizes frozen (`gaqat`).

Jiang, Meng, Tang, Yu, Li, Wang, Zhu, "GAQAT: gradient-adaptive quantization-aware training for
domain generalization", arXiv:2412.05551 (2024). Only the abstract and the public ICLR 2025 reviews
could be read (shared/papers.md 3): the structure below is theirs, the formulas marked
RECONSTRUCTION are qatbench's, and each is an hparam.

1. g = grad L(w) (task), g_p = grad L(w') at SAGM's perturbed point w' (sagm.py)
2. per step size s_l: g_task = g_s, g_smooth = g_p,s - g_s (the gradient of the smoothness term
   L_p - L; SAGM's update is g + 1/2 g_smooth)                                  RECONSTRUCTION
3. keep the signs of g_task and g_smooth of every s_l over the last n steps (reviews: "number of
   direction flips ... over n training steps"; a per-channel s records the sign of its sum)
4. every K steps: disorder D_l (`disorder`: "flips" of g_task, or "conflict" between the two
   signs); freeze the task gradient of every s_l with D_l < tau, permanently (reviews: "freezing
   only the task-loss gradients", "continuously freezing the g_task without unfreezing")
5. update: SAGM's direction, except that a frozen s_l moves along 1/2 g_smooth only; the
   weights are never frozen
A "layer" here is one quantizer: a conv's weight and input step sizes are judged apart.
Defaults n = 20, K = 20, tau = 0.3 are reconstructions (the values were not found); random
signs flip at a rate near 0.5, steady ones near 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qatbench.methods.base import require
from qatbench.methods.disorder import Disorder, SignHistory, conflict_rate, flip_rate
from qatbench.methods.erm import LsqRecipe
from qatbench.methods.registry import METHODS
from qatbench.methods.sagm import LsqSagmHParams, SagmUpdate
from qatbench.quant import FakeQuantizer


@dataclass(frozen=True)
class GaqatHParams(LsqSagmHParams):
    window: int = 20  # n, RECONSTRUCTION (symbol from the reviews, value not found)
    every: int = 20  # K, RECONSTRUCTION
    tau: float = 0.3  # tau, RECONSTRUCTION
    disorder: Disorder = "flips"  # RECONSTRUCTION: flips of sign(g_task); "conflict": sign(g_task) != sign(g_smooth)

    def __post_init__(self):
        super().__post_init__()
        require(self, "window", low=2)
        require(self, "every", low=1)
        require(self, "tau", low=0.0)  # above 1: every step size freezes at the first review


@METHODS.register(
    "gaqat",
    summary="SAGM + QAT, freezing the task gradient of low-disorder step sizes (reconstruction)",
    paper="Jiang et al. 2024, arXiv:2412.05551",
)
class GAQAT(LsqRecipe, SagmUpdate):
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

    def disorder(self) -> torch.Tensor:
        if self.hparams.disorder == "conflict":
            return conflict_rate(self.task_signs.ordered(), self.smooth_signs.ordered())
        return flip_rate(self.task_signs.ordered())

    def combine(self, params: list, g: list[torch.Tensor], g_p: list[torch.Tensor]) -> list[torch.Tensor | None]:
        d = super().combine(params, g, g_p)
        position = {id(p): i for i, p in enumerate(params)}
        where = [position[id(s)] for s in self.scales]
        self.task_signs.record(torch.stack([g[i].sum() for i in where]).sign())
        self.smooth_signs.record(torch.stack([(g_p[i] - g[i]).sum() for i in where]).sign())
        self.steps_taken += 1
        if self.task_signs.full and self.steps_taken % self.hparams.every == 0:
            self._freeze_stable(self.disorder().tolist())
        for k, i in enumerate(where):
            if self.frozen[k]:
                d[i] = self.hparams.smooth_weight * (g_p[i] - g[i])  # the task gradient of s_l, frozen
        return d

    def _freeze_stable(self, disorder: list[float]) -> None:
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
