"""LSQ+: LSQ with a learnable offset for activations and a statistics-based weight init.

Bhalgat, Lee, Nagel, Blankevoort, Kwak, "LSQ+: Improving low-bit quantization through learnable
offsets and better initialization", CVPR Workshops 2020 (arXiv:2004.09576):

1. activations: x_hat = round(clip((x - beta) / s, n, p)) * s + beta, on unsigned levels
   {0..2^b-1}; s and beta both learned through the straight-through estimator, both with LSQ's
   gradient scale g = 1 / sqrt(N * p)
2. activation init: min/max of the first batch, s = (max - min) / (p - n), beta = min - n * s
   (the paper's simple option; its MSE-optimal init is not reproduced)
3. weights: symmetric signed levels as LSQ, s = max(|mu - 3 sigma|, |mu + 3 sigma|) / 2^(b-1)
   (per tensor, or per output channel)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qatbench.quant.base import FakeQuantizer, Kind
from qatbench.quant.lsq import grad_scale, levels, lsq_quantize, on_grid, step_magnitude


class LsqPlusQuantizer(FakeQuantizer):
    def __init__(self, bits: int, kind: Kind, *, per_channel: bool = False, channels: int = 1):
        super().__init__(bits, kind, signed=True if kind == "weight" else False)
        if per_channel and kind != "weight":
            raise ValueError("per-channel step sizes are supported for weights only")
        self.per_channel = per_channel
        self.step = nn.Parameter(torch.ones((channels,) if per_channel else ()))
        self.offset = nn.Parameter(torch.zeros(())) if kind == "activation" else None

    def range_parameters(self) -> list[nn.Parameter]:
        return [self.step] + ([self.offset] if self.offset is not None else [])

    @property
    def q_n(self) -> float:
        return levels(self.bits, self.kind == "weight")[0]

    @property
    def q_p(self) -> float:
        return levels(self.bits, self.kind == "weight")[1]

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        tiny = torch.finfo(x.dtype).tiny
        if self.kind == "weight":
            flat = x.flatten(1) if self.per_channel else x.reshape(1, -1)
            mean, std = flat.mean(dim=1), flat.std(dim=1, unbiased=False)
            step = torch.maximum((mean - 3 * std).abs(), (mean + 3 * std).abs()) / 2 ** (self.bits - 1)
            self.step.copy_(step.clamp_min(tiny).reshape(self.step.shape))
            return
        low, high = x.min(), x.max()
        step = ((high - low) / (self.q_p + self.q_n)).clamp_min(tiny)
        self.step.fill_(step)
        self.offset.fill_(low + self.q_n * step)  # beta = min - n * s with n = -q_n

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "weight":
            step = self.step.view(-1, *[1] * (x.dim() - 1)) if self.per_channel else self.step
            return lsq_quantize(x, step, self.q_n, self.q_p, 1.0 / math.sqrt(x.numel() * self.q_p))
        g = 1.0 / math.sqrt(x[0].numel() * self.q_p)
        step, offset = step_magnitude(self.step, g, x.dtype), grad_scale(self.offset, g)
        return on_grid(x - offset, step, self.q_n, self.q_p) + offset

    def extra_repr(self) -> str:
        offset = ", offset" if self.offset is not None else ""
        return f"{super().extra_repr()}, per_channel={self.per_channel}{offset}"
