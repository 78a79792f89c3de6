"""What every fake quantizer shares: lazy initialisation from the first tensor it sees, and a
sign decided by that tensor for inputs that may or may not follow a ReLU.

A quantizer's learnable range parameters are of two kinds: `range_parameters()` are step sizes
and offsets (LSQ, LSQ+), which optimisers never weight-decay because decay would pull the range
to zero (`qatbench.methods.optim.param_groups`) and whose gradients GAQAT watches;
`decayed_parameters()` are clipping levels their paper regularises with L2 like the weights
(PACT's alpha), which is what `param_groups` does with every other parameter.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

Kind = Literal["weight", "activation"]


class FakeQuantizer(nn.Module):
    """Base of the quantizers: subclasses implement `init_from(x)` and `quantize(x)`."""

    def __init__(self, bits: int, kind: Kind, *, signed: bool | None = None):
        super().__init__()
        if kind == "weight" and signed is None:
            signed = True
        self.bits = bits
        self.kind = kind
        self.signed = signed
        self.auto_sign = signed is None
        self.initialized = False

    def range_parameters(self) -> list[nn.Parameter]:
        return []

    def decayed_parameters(self) -> list[nn.Parameter]:
        return []

    def reset(self) -> None:
        """Forget the range so that the next tensor quantized initialises it again."""
        self.initialized = False
        if self.auto_sign:
            self.signed = None

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        self.initialized = True

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            if self.signed is None:
                self.signed = bool((x < 0).any())
            self.init_from(x)
            self.initialized = True
        return self.quantize(x)

    def get_extra_state(self) -> dict[str, Any]:
        return {"bits": self.bits, "signed": self.signed, "auto_sign": self.auto_sign, "initialized": self.initialized}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.bits = state["bits"]
        self.signed = state["signed"]
        self.auto_sign = state["auto_sign"]
        self.initialized = state["initialized"]

    def extra_repr(self) -> str:
        sign = {None: "auto", True: "signed", False: "unsigned"}[self.signed]
        return f"{self.kind}, bits={self.bits}, {sign}"
