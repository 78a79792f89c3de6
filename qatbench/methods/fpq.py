"""FPQ: LSQ with stochastic feature perturbation and channel-wise standardized distillation (`fpq`).

Pang & Cai, "Stabilizing Quantization-Aware Training by Implicit-Regularization on Hessian Matrix",
arXiv:2503.11159 (2025), Algorithm 1 (shared/papers.md 4). One step:

1. SFP: for every quantized conv l of the student, with probability p, x^l <- x^l + delta,
   delta ~ U[-s_l/2, s_l/2] elementwise, s_l = the step size of l's input quantizer    (Eqs. 9, 14)
2. z_s^l = conv outputs (before BN) of the perturbed student; z_t^l = those of the frozen FP
   teacher (eval mode, no gradient) on the clean batch                                  (Eq. 21)
3. L_CSD = sum over convs of the squared differences (Norm(z_t^l) - Norm(z_s^l))^2 over channels
   and elements, Norm = per-channel standardization over (N, H, W), biased variance    (Eqs. 15-17)
4. loss = CE(student logits, y) + csd_weight * L_CSD                                    (Eq. 22)
5. one optimiser step (weights and LSQ step sizes), one schedule step

The paper's: steps 1-4 and the defaults marked FPQ below. Choices it leaves open, each an hparam or
said here: one Bernoulli draw per layer per step (the reading its "p^N" implies); s_l detached (no
gradient reaches the step size through the noise); where the noise goes relative to the input's
fake quantizer (`noise_at`); eps; each layer's squared differences averaged, not summed
(`csd_reduction`: the printed sum diverged); CSD covers every conv, also one a suite leaves in
float. The paper's suite settings, not hparams here (Sec. 4): batch 256, 200 epochs, asymmetric
per-channel weights and asymmetric activations (quant `w_symmetric`, `a_symmetric`: false), first and
last layers 8-bit, 100 calibration images.

The hooks are installed once, at construction, and do nothing outside `update`: the runner
torch.compiles long runs after building the method, and compiled code neither sees hooks registered
later nor stops calling removed ones (torch._dynamo.config.skip_nnmodule_hook_guards).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from qatbench.methods.base import Minibatches, concat, require
from qatbench.methods.erm import ERM, Optimizer, Schedule
from qatbench.methods.hparams import hparam
from qatbench.methods.optim import minimise
from qatbench.methods.registry import METHODS
from qatbench.quant.layers import QuantConv2d


@dataclass(frozen=True)
class FpqHParams:
    optimizer: Optimizer = hparam("sgd", "FPQ Sec. 4")
    lr: float | None = hparam(0.01, "FPQ Sec. 4")
    weight_decay: float | None = hparam(5e-4, "FPQ Sec. 4")
    momentum: float = hparam(0.9, "FPQ Sec. 4")
    schedule: Schedule = hparam("cosine", "FPQ Sec. 4 (cosine annealing)")
    p: float = hparam(0.1, "FPQ Table 3 (best of 0 to 1)")
    # "input": Eq. 9 adds delta to the layer input x_s^l, before its fake quantizer (the literal
    # reading; within the clip range this is stochastic rounding, unbiased as Condition 2 asks);
    # "quantized": after it, the conv sees off-grid values
    noise_at: Literal["input", "quantized"] = hparam("input", "RECONSTRUCTION: the paper does not say; Eq. 9 literally")
    layers: Literal["conv"] = hparam("conv", "FPQ Sec. 3.2: convolutional layers")
    sfp: bool = hparam(True, "FPQ Table 2 ablation switch")
    csd: bool = hparam(True, "FPQ Table 2 ablation switch")
    csd_weight: float = hparam(1.0, "FPQ Eq. 22 (no weight given)")
    # "sum": Eq. 17 as printed. At weight 1 and lr 0.01 its gradient swamps CE's (the sum runs over
    # every feature of the batch) and sent small_cnn on RotatedMNIST W4A4 to chance accuracy, CSD at
    # ~2 per element: features uncorrelated with the teacher's; "batch_mean" (the RepnikovPavel/QAT
    # port's) did the same. "mean" (each layer's mean, F.mse_loss's, summed over layers) trained.
    csd_reduction: Literal["sum", "batch_mean", "mean"] = hparam(
        "mean", "RECONSTRUCTION: Eq. 17's sum diverged at Eq. 22's weight 1"
    )
    eps: float = hparam(1e-5, "BatchNorm's; not given by the paper")

    def __post_init__(self):
        require(self, "p", low=0.0, high=1.0)
        require(self, "csd_weight", low=0.0)
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps!r}")


def standardize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. 15: per channel, over the batch and spatial dimensions, with the biased variance."""
    dims = [0, *range(2, z.dim())]
    return (z - z.mean(dims, keepdim=True)) / torch.sqrt(z.var(dims, unbiased=False, keepdim=True) + eps)


def csd_loss(
    student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], reduction: str = "sum", eps: float = 1e-5
) -> torch.Tensor:
    """Eq. 17 over paired conv outputs: squared differences of the standardized features, summed
    ("sum"), summed and divided by the batch size ("batch_mean"), or averaged per layer ("mean")."""
    if reduction not in ("sum", "batch_mean", "mean"):
        raise ValueError(f"csd_reduction must be 'sum', 'batch_mean' or 'mean', got {reduction!r}")
    total = student[0].new_zeros(())
    for z_s, z_t in zip(student, teacher, strict=True):
        squared = (standardize(z_t, eps) - standardize(z_s, eps)).square()
        total = total + (squared.mean() if reduction == "mean" else squared.sum())
    return total / len(student[0]) if reduction == "batch_mean" else total


class _Switch:
    """What the hooks read; on only inside `update`, so evaluation, analysis and copies of the
    model see it unperturbed and capture nothing."""

    def __init__(self, n_layers: int, like: torch.Tensor):
        self.on = False
        self.draw = torch.zeros(n_layers, dtype=like.dtype, device=like.device)  # this step's Bernoulli(p)s
        self.features: dict[str, dict[str, torch.Tensor]] = {"student": {}, "teacher": {}}


class _Perturb:
    """SFP of one layer: a forward pre-hook on the conv (noise on its input) or a forward hook on
    its `a_quant` (noise on the quantized input). A tensor draw, not a Python branch, keeps one
    compiled graph for every draw (at the cost of drawing noise for every layer every step)."""

    def __init__(self, switch: _Switch, index: int):
        self.switch, self.index = switch, index

    def _noisy(self, x: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return x + self.switch.draw[self.index] * (torch.rand_like(x) - 0.5) * step.detach()

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor | None = None) -> Any:
        if not (self.switch.on and module.training):
            return None
        if output is None:
            return (self._noisy(inputs[0], module.a_quant.step), *inputs[1:])
        return self._noisy(output, module.step)


class _Capture:
    """A forward hook keeping a conv's output for CSD while the switch is on."""

    def __init__(self, switch: _Switch, side: str, name: str):
        self.switch, self.side, self.name = switch, side, name

    def __call__(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if self.switch.on:
            self.switch.features[self.side][self.name] = output


@METHODS.register(
    "fpq",
    summary="LSQ + stochastic feature perturbation + channel-wise standardized distillation from FP",
    paper="Pang & Cai 2025, arXiv:2503.11159",
)
class FPQ(ERM):
    kind = "qat"
    HParams = FpqHParams
    needs_teacher = True
    quantizers_allowed = ("lsq", "lsq_plus")  # SFP sizes its noise by a learnable activation step

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.teacher is None:
            raise ValueError("fpq needs the full-precision parent as its CSD teacher")
        self.teacher.eval().requires_grad_(False)
        self.sfp_names = [name for name, m in self.model.named_modules() if isinstance(m, QuantConv2d)]
        self.csd_names = [name for name, m in self.model.named_modules() if isinstance(m, nn.Conv2d)]
        if not self.sfp_names:
            raise ValueError("fpq perturbs and distils conv layers, and this model has no quantized conv")
        for name in self.sfp_names:
            a_quant = self.model.get_submodule(name).a_quant
            if not isinstance(getattr(a_quant, "step", None), nn.Parameter):
                raise ValueError(
                    f"fpq sizes its noise by the input step size, and layer {name}'s input quantizer "
                    f"{type(a_quant).__name__} has none (use quantizer lsq or lsq_plus)"
                )
        teacher_modules = dict(self.teacher.named_modules())
        if missing := [n for n in self.csd_names if not isinstance(teacher_modules.get(n), nn.Conv2d)]:
            raise ValueError(f"fpq's teacher has no conv at {missing}: it must be the student's FP parent")
        first = self.model.get_submodule(self.sfp_names[0]).a_quant.step
        self.switch = _Switch(len(self.sfp_names), first)
        self.perturbed = torch.zeros(len(self.sfp_names), device=first.device)  # draws, summed over steps
        self.steps_taken = 0
        for index, name in enumerate(self.sfp_names if self.hparams.sfp else []):
            layer = self.model.get_submodule(name)
            if self.hparams.noise_at == "input":
                layer.register_forward_pre_hook(_Perturb(self.switch, index))
            else:
                layer.a_quant.register_forward_hook(_Perturb(self.switch, index))
        for name in self.csd_names if self.hparams.csd else []:
            self.model.get_submodule(name).register_forward_hook(_Capture(self.switch, "student", name))
            self.teacher.get_submodule(name).register_forward_hook(_Capture(self.switch, "teacher", name))

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        x, y = concat(minibatches)
        hp = self.hparams
        draw = torch.rand(len(self.sfp_names), device=self.perturbed.device) < hp.p  # 1. per layer, per step
        self.switch.draw.copy_(draw if hp.sfp else torch.zeros_like(draw))
        self.perturbed += self.switch.draw.to(self.perturbed.dtype)
        self.steps_taken += 1
        self.switch.on = True
        try:
            logits = self.model(x)  # 1-2. the perturbed student, its conv outputs kept
            csd = logits.new_zeros(())
            if hp.csd:
                with torch.no_grad():
                    self.teacher(x)  # 2. the clean batch
                features = self.switch.features
                z_s, z_t = ([features[side][n] for n in self.csd_names] for side in ("student", "teacher"))
                csd = csd_loss(z_s, z_t, hp.csd_reduction, hp.eps)  # 3.
        finally:
            self.switch.on = False
            for kept in self.switch.features.values():
                kept.clear()  # in place: compiled code guards on the dicts it writes to
        ce = F.cross_entropy(logits, y)
        loss = ce + hp.csd_weight * csd  # 4.
        minimise(self.optimizer, self.schedule, loss)  # 5.
        return {"loss": loss.item(), "ce": ce.item(), "csd": csd.item()}

    def train(self) -> None:
        super().train()
        self.teacher.eval()

    def summary(self) -> dict[str, Any]:
        rates = [count / max(self.steps_taken, 1) for count in self.perturbed.tolist()]
        return {
            "sfp_layers": len(self.sfp_names),
            "csd_layers": len(self.csd_names),
            "sfp_rate": sum(rates) / len(rates),  # the fraction of layer-steps perturbed, p in expectation
            "sfp_rate_per_layer": {name: round(rate, 4) for name, rate in zip(self.sfp_names, rates)},
        }
