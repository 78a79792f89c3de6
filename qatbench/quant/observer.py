"""Post-training quantizers: ranges observed on calibration images, then fixed.

The plain PTQ pipeline the flat-pre-training paper compares with (Xia, Pang et al., arXiv:2511.01462;
the observers are PyTorch's and MQBench's standard ones, Nagel et al., "A White Paper on Neural
Network Quantization", arXiv:2106.08295, Sec. 3):

1. observe: while `observing`, every tensor passes through unchanged (float, as PyTorch's
   observers see it) and updates the range: the running min and max (`minmax`, per output
   channel for weights), or for activations the [100 - p, p] percentiles of each batch,
   averaged over batches weighted by their size (`percentile`; clipping the long tail)
2. fix: s = (max - min) / (2^b - 1) and z = round(-min / s) on levels {0..2^b-1} (affine), the
   range first widened to hold 0 so that zero is exact; weights may be symmetric instead,
   s = max(|min|, |max|) / (2^(b-1) - 1) on signed levels
3. quantize: x_hat = (clip(round(x / s) + z, 0, 2^b - 1) - z) s, straight through in gradients

Weights always use min-max: a weight tensor is known whole, and its outliers are real weights.
A quantizer used before any calibration fixes its range from the first tensor it sees.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from qatbench.quant.base import FakeQuantizer, Kind
from qatbench.quant.lsq import levels, lsq_quantize

Observe = Literal["minmax", "percentile"]


def range_step(low: torch.Tensor, high: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """The step of a b-bit grid over [low, high] widened to hold 0: max(|low|, |high|) over
    2^(b-1) - 1 signed levels, or (high - low) over 2^b - 1 affine ones."""
    low, high = low.clamp_max(0), high.clamp_min(0)
    if symmetric:
        return torch.maximum(-low, high) / levels(bits, True)[1]
    return (high - low) / (2**bits - 1)


class ObserverQuantizer(FakeQuantizer):
    def __init__(
        self,
        bits: int,
        kind: Kind,
        *,
        observe: Observe = "minmax",
        percentile: float = 99.99,
        per_channel: bool = False,
        channels: int = 1,
        symmetric: bool = False,
    ):
        super().__init__(bits, kind, signed=kind == "weight" and symmetric)
        if per_channel and kind != "weight":
            raise ValueError("per-channel ranges are supported for weights only")
        if symmetric and kind != "weight":
            raise ValueError("symmetric ranges are supported for weights only")
        self.observe_mode: Observe = "minmax" if kind == "weight" else observe
        self.percentile = percentile
        self.per_channel = per_channel
        self.symmetric = symmetric
        self.observing = False
        shape = (channels,) if per_channel else ()
        for name in ("low", "high", "step", "zero_point"):  # buffers: saved with the model, never trained
            self.register_buffer(name, torch.zeros(shape))
        self.seen = 0  # samples observed so far (the percentile average's weights)

    def reset(self) -> None:
        super().reset()
        self.observing = True
        self.low.fill_(math.inf)
        self.high.fill_(-math.inf)
        self.seen = 0

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        flat = x.detach().flatten(1) if self.per_channel else x.detach().reshape(1, -1)
        flat = flat.to(self.low.dtype)
        if self.observe_mode == "minmax":
            self.low.copy_(torch.minimum(self.low, flat.amin(dim=1).reshape(self.low.shape)))
            self.high.copy_(torch.maximum(self.high, flat.amax(dim=1).reshape(self.high.shape)))
            self.seen += x.shape[0]
            return
        values = flat.reshape(-1)
        n = values.numel()
        k_high = min(n, max(1, math.ceil(self.percentile / 100 * n)))
        k_low = max(1, n + 1 - k_high)
        low, high = values.kthvalue(k_low).values, values.kthvalue(k_high).values
        weight = x.shape[0]
        if self.seen == 0:
            self.low.fill_(low)
            self.high.fill_(high)
        else:
            self.low.mul_(self.seen / (self.seen + weight)).add_(low * weight / (self.seen + weight))
            self.high.mul_(self.seen / (self.seen + weight)).add_(high * weight / (self.seen + weight))
        self.seen += weight

    @torch.no_grad()
    def finish(self) -> None:
        """Fix step and zero point from the observed range; quantize from now on."""
        if self.seen == 0:
            raise ValueError("no calibration data reached this quantizer (its layer never ran)")
        self.observing = False
        step = range_step(self.low, self.high, self.bits, self.symmetric)
        self.step.copy_(step.clamp_min(torch.finfo(step.dtype).tiny))
        if self.symmetric:
            self.zero_point.zero_()
        else:
            top = float(2**self.bits - 1)
            self.zero_point.copy_(torch.round(-self.low.clamp_max(0) / self.step).clamp(0, top))
        self.initialized = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x)
            return x
        if not self.initialized:
            self.reset()
            self.observe(x)
            self.finish()
        return self.quantize(x)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        shape = (-1, *[1] * (x.dim() - 1))
        step = self.step.view(shape) if self.per_channel else self.step
        zero = self.zero_point.view(shape) if self.per_channel else self.zero_point
        if self.symmetric:
            q_n, q_p = levels(self.bits, True)
            return lsq_quantize(x, step, q_n, q_p, 1.0)
        return lsq_quantize(x, step, zero, float(2**self.bits - 1) - zero, 1.0)

    def get_extra_state(self) -> dict:
        return {**super().get_extra_state(), "observing": self.observing, "seen": self.seen}

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        self.observing = state.get("observing", False)
        self.seen = state.get("seen", 0)

    def extra_repr(self) -> str:
        scheme = "symmetric" if self.symmetric else "affine"
        return f"{super().extra_repr()}, {self.observe_mode}, {scheme}, per_channel={self.per_channel}"
