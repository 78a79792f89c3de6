"""The interface every training method implements, DomainBed-style: one `update` per step.

    method = METHODS.get(name)(model, num_classes, hparams, teacher=..., quant=..., total_steps=...)
    losses = method.update(minibatches)   # one optimisation step; minibatches: [(x, y), ...] per env
    logits = method.predict(x)

The runner builds, quantizes and hands over the model (and, for methods that need one, the
frozen full-precision teacher); methods never read files. Each method declares one flat, frozen
`HParams` dataclass next to its code whose defaults are its paper's values, each field declared
with `hparam(default, source)` (hparams.py) saying where it comes from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from qatbench.config.protocol import FROM_FP_RUN, PROTOCOLS
from qatbench.config.spec import QuantSpec

Minibatches = Sequence[tuple[torch.Tensor, torch.Tensor]]


class Method:
    # "fp": trains float models; "qat": trains quantized ones from an FP parent; "ptq": trains (or
    # not) a float model from the FP parent, which the runner then quantizes and calibrates
    kind: ClassVar[str] = "fp"
    trains: ClassVar[bool] = True  # False: no optimisation step at all (the run's steps are 0)
    # False: the runner never torch.compiles the model (a method that adds hooks per step: compiled
    # code neither sees hooks registered after compilation nor stops calling removed ones)
    compilable: ClassVar[bool] = True
    HParams: ClassVar[type]
    quant_fixed: ClassVar[Mapping[str, Any]] = {}  # QuantSpec fields the method needs ({"quantizer": "pact"})
    quantizers_allowed: ClassVar[tuple[str, ...] | None] = None  # None: any quantizer
    needs_teacher: ClassVar[bool] = False  # the runner hands over the frozen FP parent as `teacher`
    # a method that always trains under `switch_at: N` names the hparam holding N (QT-DoG: q_steps)
    switch_hparam: ClassVar[str | None] = None

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        hparams: Mapping[str, Any],
        *,
        teacher: nn.Module | None = None,
        quant: QuantSpec | None = None,
        total_steps: int = 1,
    ):
        self.model = model
        self.num_classes = num_classes
        self.hparams = self.HParams(**dict(hparams))
        self.teacher = teacher
        self.quant = quant
        self.total_steps = max(int(total_steps), 1)

    @classmethod
    def protocols(cls) -> tuple[str, ...]:
        """The protocols (config/protocol.py) the method can train under. A QAT method starts from
        an FP run, the pretrained model or a switch; one that distils from the FP parent
        (`needs_teacher`) has its teacher only from an FP run; a PTQ method quantizes its FP parent
        after training; FP and checkpoint methods quantize nothing while training."""
        if cls.kind == "qat" and cls.trains and not cls.needs_teacher:
            return PROTOCOLS
        return (FROM_FP_RUN,) if cls.kind in ("qat", "ptq") else ()

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def effective_hparams(self) -> dict[str, Any]:
        """The hparams as used, with any default that depends on the run filled in."""
        return dataclasses.asdict(self.hparams)

    def summary(self) -> dict[str, Any]:
        """What the method decided during training (frozen layers, say), for the record."""
        return {}

    def train(self) -> None:
        self.model.train()

    def eval(self) -> None:
        self.model.eval()


def require(hparams: Any, name: str, low: float | None = None, high: float | None = None) -> None:
    """A range check for an hparams dataclass's `__post_init__`: suites are validated against the
    dataclass, so a value out of range is the user's one-line error at load, not a failed run."""
    value = getattr(hparams, name)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = " and ".join(
            x for x in (f">= {low}" if low is not None else "", f"<= {high}" if high is not None else "") if x
        )
        raise ValueError(f"{name} must be {bounds}, got {value!r}")


def concat(minibatches: Minibatches) -> tuple[torch.Tensor, torch.Tensor]:
    """All environments' minibatches as one batch (methods that ignore domain labels)."""
    return torch.cat([x for x, _ in minibatches]), torch.cat([y for _, y in minibatches])
