"""Empirical risk minimisation, in full precision (`erm`) and with LSQ fake quantization (`lsq`).

- erm: Vapnik 1998; the DomainBed baseline (Gulrajani & Lopez-Paz, "In Search of Lost Domain
  Generalization", ICLR 2021): cross-entropy on the pooled minibatches of the training domains,
  Adam. Defaults are DomainBed's for ResNets (lr 5e-5, no weight decay).
- lsq: Esser et al., "Learned Step Size Quantization", ICLR 2020 (arXiv:1902.08153): the same
  loss on a quantized model fine-tuned from its full-precision parent, step sizes learned
  jointly with the weights; SGD with momentum 0.9, cosine decay, lr by bit width (Sec. 3: 0.01
  for 2-4 bits, 0.001 for 8 bits), weight decay by weight bit width (Table 2: 1e-4 at 4 bits,
  0.5e-4 at 3, 0.25e-4 at 2). Bit widths the paper did not train (5-7) take the 4-bit values.

1. x, y = all training domains' minibatches, concatenated
2. loss = cross_entropy(model(x), y)
3. one optimiser step on the weights (and, for lsq, the step sizes); one schedule step

`ERM` is also the base of every training method, as in DomainBed: it owns the base optimiser and
its schedule (built from the method's hparams `optimizer`, `lr`, `weight_decay`, `momentum`,
`schedule`; an lr or weight decay left None is LSQ's by weight bits), and each method writes its
own `update`. A method that only changes the loss may override `objective` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.nn import functional as F

from qatbench.methods.base import Method, Minibatches, concat
from qatbench.methods.hparams import hparam
from qatbench.methods.optim import lr_or_lsq, make_optimizer, make_schedule, minimise, param_groups, weight_decay_or_lsq
from qatbench.methods.registry import METHODS

Optimizer = Literal["adam", "sgd"]
Schedule = Literal["constant", "cosine"]


@dataclass(frozen=True)
class ErmHParams:
    optimizer: Optimizer = hparam("adam", "DomainBed")
    lr: float = hparam(5e-5, "DomainBed, ResNet backbones (1e-3 for its MNIST CNN)")
    weight_decay: float = hparam(0.0, "DomainBed")
    momentum: float = hparam(0.9, "used by sgd only; LSQ Sec. 3's value")
    schedule: Schedule = hparam("constant", "DomainBed")


@dataclass(frozen=True)
class LsqHParams:
    optimizer: Optimizer = hparam("sgd", "LSQ Sec. 3")
    lr: float | None = hparam(None, "LSQ Sec. 3 by weight bits (None: 0.01 at 2-4 bits, 0.001 at 8 bits)")
    weight_decay: float | None = hparam(None, "LSQ Table 2 by weight bits (None: 1e-4 / 0.5e-4 / 0.25e-4)")
    momentum: float = hparam(0.9, "LSQ Sec. 3")
    schedule: Schedule = hparam("cosine", "LSQ Sec. 3, no restarts")


@METHODS.register("erm", summary="full-precision ERM (DomainBed baseline)", paper="Gulrajani & Lopez-Paz, ICLR 2021")
class ERM(Method):
    kind = "fp"
    HParams = ErmHParams

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        hp, w_bits = self.hparams, self.quant.w_bits if self.quant else 4
        self.lr, self.weight_decay = lr_or_lsq(hp.lr, w_bits), weight_decay_or_lsq(hp.weight_decay, w_bits)
        self.optimizer = make_optimizer(param_groups(self.model, self.weight_decay), hp.optimizer, self.lr, hp.momentum)
        self.schedule = make_schedule(self.optimizer, hp.schedule, self.total_steps)

    def objective(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss one step minimises (a subclass that only changes the loss overrides this)."""
        return F.cross_entropy(self.model(x), y)

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        x, y = concat(minibatches)  # 1.
        loss = self.objective(x, y)  # 2.
        minimise(self.optimizer, self.schedule, loss)  # 3.
        return {"loss": loss.item()}

    def effective_hparams(self) -> dict[str, Any]:
        return {**super().effective_hparams(), "lr": self.lr, "weight_decay": self.weight_decay}


class LsqRecipe:
    """Marks a QAT method that fine-tunes like LSQ (kept for subclasses written as `(LsqRecipe, ERM)`:
    `ERM` itself fills in LSQ's lr and weight decay wherever the hparams leave them None)."""

    kind = "qat"


@METHODS.register(
    "lsq",
    summary="plain QAT with learned step sizes, fine-tuned from FP",
    paper="Esser et al., ICLR 2020, arXiv:1902.08153",
)
class LSQ(ERM):
    kind = "qat"
    HParams = LsqHParams
