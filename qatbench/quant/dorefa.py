"""DoReFa-Net quantizers: fixed-range quantization with no learnable range.

Zhou, Wu, Ni, Zhou, Wen, Zou, "DoReFa-Net: Training Low Bitwidth Convolutional Neural Networks
with Low Bitwidth Gradients", arXiv:1606.06160 (2016), Eq. 5, 9 and 11:

1. quantize_k(r) = round((2^k - 1) r) / (2^k - 1) for r in [0, 1], straight-through
2. weights: w_q = 2 quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1, so w_q lies in [-1, 1]
   (the max over the tensor, or over each output channel when per-channel)
3. activations: a_q = quantize_k(clip(a, 0, 1)); an input with negative values (the image)
   is quantized on [-1, 1] instead, as 2 quantize_k((clip(a, -1, 1) + 1) / 2) - 1 (an
   extension: DoReFa keeps the first layer in float)

Gradients of DoReFa (quantized gradients) are not reproduced: qatbench trains in float.
"""

from __future__ import annotations

import torch

from qatbench.quant.base import FakeQuantizer, Kind
from qatbench.quant.lsq import round_ste


def quantize_k(r: torch.Tensor, bits: int) -> torch.Tensor:
    levels = 2**bits - 1
    return round_ste(r * levels) / levels


class DorefaQuantizer(FakeQuantizer):
    def __init__(self, bits: int, kind: Kind, *, per_channel: bool = False, channels: int = 1):
        super().__init__(bits, kind)
        self.per_channel = per_channel

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "weight":
            t = torch.tanh(x)
            peak = t.abs().flatten(1).amax(dim=1).view(-1, *[1] * (x.dim() - 1)) if self.per_channel else t.abs().max()
            peak = peak.clamp_min(torch.finfo(t.dtype).tiny)  # an all-zero channel stays at 0, not 0/0
            return 2 * quantize_k(t / (2 * peak) + 0.5, self.bits) - 1
        if self.signed:
            return 2 * quantize_k((torch.clamp(x, -1, 1) + 1) / 2, self.bits) - 1
        return quantize_k(torch.clamp(x, 0, 1), self.bits)
