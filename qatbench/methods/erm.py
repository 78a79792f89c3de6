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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from qatbench.methods.base import Method, Minibatches, concat
from qatbench.methods.optim import make_optimizer, make_schedule, param_groups
from qatbench.methods.registry import METHODS
from qatbench.methods.sharpness import set_grads

LSQ_WEIGHT_DECAY_BELOW_4_BITS = {2: 0.25e-4, 3: 0.5e-4}  # LSQ Table 2; 1e-4 at 4 bits and above
LSQ_LR_8_BITS, LSQ_LR = 1e-3, 1e-2  # LSQ Sec. 3


@dataclass(frozen=True)
class ErmHParams:
    optimizer: Literal["adam", "sgd"] = "adam"  # DomainBed
    lr: float = 5e-5  # DomainBed, ResNet backbones (1e-3 for its MNIST CNN)
    weight_decay: float = 0.0  # DomainBed
    momentum: float = 0.9  # used by sgd only
    schedule: Literal["constant", "cosine"] = "constant"  # DomainBed


@dataclass(frozen=True)
class LsqHParams:
    optimizer: Literal["adam", "sgd"] = "sgd"  # LSQ Sec. 3
    lr: float | None = None  # None: LSQ Sec. 3 by weight bits (0.01 at 2-4 bits, 0.001 at 8 bits)
    weight_decay: float | None = None  # None: LSQ Table 2 by weight bits (1e-4 / 0.5e-4 / 0.25e-4)
    momentum: float = 0.9  # LSQ Sec. 3
    schedule: Literal["constant", "cosine"] = "cosine"  # LSQ Sec. 3, no restarts


@METHODS.register("erm", summary="full-precision ERM (DomainBed baseline)", paper="Gulrajani & Lopez-Paz, ICLR 2021")
class ERM(Method):
    kind = "fp"
    HParams = ErmHParams

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lr, self.weight_decay = self._lr(), self._weight_decay()
        self.optimizer = make_optimizer(
            param_groups(self.model, self.weight_decay), self.hparams.optimizer, self.lr, self.hparams.momentum
        )
        self.schedule = make_schedule(self.optimizer, self.hparams.schedule, self.total_steps)

    def _lr(self) -> float:
        return self.hparams.lr

    def _weight_decay(self) -> float:
        return self.hparams.weight_decay

    def objective(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss one step minimises (subclasses that only change the loss override this)."""
        return F.cross_entropy(self.model(x), y)

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        x, y = concat(minibatches)
        loss = self.objective(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        return {"loss": loss.item()}

    def descend(self, params: Sequence[nn.Parameter], direction: Sequence[torch.Tensor | None]) -> None:
        """One base-optimiser step along `direction` (a None entry leaves its parameter alone)."""
        set_grads(params, direction)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()

    def effective_hparams(self) -> dict[str, Any]:
        return {**super().effective_hparams(), "lr": self.lr, "weight_decay": self.weight_decay}


class LsqRecipe:
    """LSQ's optimiser recipe (lr and weight decay by bit width when left None), shared by every
    QAT method that fine-tunes like LSQ so that only its objective differs from `lsq`."""

    kind = "qat"

    @property
    def _w_bits(self) -> int:
        return self.quant.w_bits if self.quant else 4

    def _lr(self) -> float:
        if self.hparams.lr is not None:
            return self.hparams.lr
        return LSQ_LR_8_BITS if self._w_bits >= 8 else LSQ_LR

    def _weight_decay(self) -> float:
        if self.hparams.weight_decay is not None:
            return self.hparams.weight_decay
        return LSQ_WEIGHT_DECAY_BELOW_4_BITS.get(self._w_bits, 1e-4)


@METHODS.register(
    "lsq",
    summary="plain QAT with learned step sizes, fine-tuned from FP",
    paper="Esser et al., ICLR 2020, arXiv:1902.08153",
)
class LSQ(LsqRecipe, ERM):
    HParams = LsqHParams
