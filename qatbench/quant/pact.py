"""PACT: activations clipped at a learnable level alpha, then uniformly quantized.

Choi, Wang, Venkataramani, Chuang, Srinivasan, Gopalakrishnan, "PACT: Parameterized Clipping
Activation for Quantized Neural Networks", arXiv:1805.06085 (2018), Eq. 1-3:

1. y = clip(x, 0, alpha)
2. y_q = round(y (2^k - 1) / alpha) alpha / (2^k - 1)
3. straight-through on the rounding: dy_q/dx = 1 on [0, alpha); dy_q/dalpha = 1 where x >= alpha,
   0 elsewhere (Eq. 3)
4. alpha is L2-regularised like the weights (Sec. 2: the same lambda "works reasonably well"),
   so it is a decayed parameter; it starts large (10, the paper's CIFAR-10 illustration)
5. weights are quantized with DoReFa's scheme, as in the paper's experiments

An input with negative values (the image) is clipped to [-alpha, alpha] on signed levels, an
extension: PACT keeps the first layer in float.
"""

from __future__ import annotations

import torch
from torch import nn

from qatbench.quant.base import FakeQuantizer, Kind

PACT_ALPHA_INIT = 10.0  # PACT Fig. 2 (CIFAR-10 ResNet-20)


class PactQuantizer(FakeQuantizer):
    def __init__(self, bits: int, kind: Kind = "activation", *, alpha: float = PACT_ALPHA_INIT):
        if kind != "activation":
            raise ValueError("PACT quantizes activations; its weights use DoReFa")
        super().__init__(bits, kind)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    def decayed_parameters(self) -> list[nn.Parameter]:
        return [self.alpha]

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.to(x.dtype)
        # torch.where, not min/max: at x == alpha the whole gradient goes to alpha (Eq. 3), none is split
        if self.signed:
            levels = 2 ** (self.bits - 1) - 1
            y = torch.where(x >= alpha, alpha, torch.where(x <= -alpha, -alpha, x))
        else:
            levels = 2**self.bits - 1
            y = torch.where(x >= alpha, alpha, torch.where(x < 0, torch.zeros_like(x), x))
        scale = levels / alpha.detach()
        return y + (torch.round(y * scale) / scale - y).detach()
