"""Learned Step Size Quantization as composable tensor code.

Esser, McKinley, Bablani, Appuswamy, Modha, "Learned Step Size Quantization", ICLR 2020
(arXiv:1902.08153):

1. v_bar = round(clip(v / s, -Q_N, Q_P)), v_hat = v_bar * s                  (Eq. 1-2)
2. round passes gradients straight through; clip passes them inside the range  (STE)
3. dv_hat/ds = round(v/s) - v/s inside the range, -Q_N / Q_P outside it         (Eq. 3)
4. the loss gradient reaching s is scaled by g = 1 / sqrt(N * Q_P)              (Sec. 2.2)
5. s starts at 2 * mean(|v|) / sqrt(Q_P)                                         (Sec. 2.1)

The straight-through estimator is written as `x + (round(x) - x).detach()` and the gradient
scale as `(s - s*g).detach() + s*g`, never as a custom autograd.Function: that keeps double
backward and every torch.func transform working, which Hessians of quantized models need
(a Function without a jvp rule breaks forward-over-reverse; see shared/MEASURED.md).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

Kind = Literal["weight", "activation"]


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) in the forward pass, identity in every derivative."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x in the forward pass; gradients reaching x are multiplied by `scale`."""
    return (x - x * scale).detach() + x * scale


def lsq_quantize(v: torch.Tensor, step: torch.Tensor, q_n: float, q_p: float, g: float) -> torch.Tensor:
    """Fake-quantize `v` with step size `step` (broadcastable to v) onto {-q_n, ..., q_p} * step."""
    step = grad_scale(step, g)
    v_bar = round_ste(torch.clamp(v / step, -q_n, q_p))
    return v_bar * step


def levels(bits: int, signed: bool) -> tuple[float, float]:
    """(Q_N, Q_P) of LSQ: signed [-2^(b-1), 2^(b-1)-1], unsigned [0, 2^b-1]."""
    if signed:
        return float(2 ** (bits - 1)), float(2 ** (bits - 1) - 1)
    return 0.0, float(2**bits - 1)


class LsqQuantizer(nn.Module):
    """A fake quantizer with a learnable step size, for weights or activations.

    Weights are signed. Activations are unsigned when the first batch it sees has no negative
    value (inputs of layers after a ReLU) and signed otherwise (the image, linear bottlenecks);
    `signed=True/False` fixes it instead. The step size is initialised lazily from the first
    tensor quantized, which is the first batch of data for activations; `calibrate` in
    `qatbench.quant.convert` makes that batch an explicit training batch.
    """

    def __init__(
        self, bits: int, kind: Kind, *, per_channel: bool = False, channels: int = 1, signed: bool | None = None
    ):
        super().__init__()
        if kind == "weight":
            signed = True if signed is None else signed
        elif per_channel:
            raise ValueError("per-channel step sizes are supported for weights only")
        self.bits = bits
        self.kind = kind
        self.per_channel = per_channel
        self.signed = signed
        self.auto_sign = signed is None
        self.initialized = False
        self.step = nn.Parameter(torch.ones(channels if per_channel else ()))

    @property
    def q_n(self) -> float:
        return levels(self.bits, bool(self.signed))[0]

    @property
    def q_p(self) -> float:
        return levels(self.bits, bool(self.signed))[1]

    def grad_count(self, x: torch.Tensor) -> int:
        """N of LSQ's gradient scale: weights in the layer, or features per sample."""
        return x.numel() if self.kind == "weight" else x[0].numel()

    def reset(self) -> None:
        """Forget the step size so that the next tensor quantized initialises it again."""
        self.initialized = False
        if self.auto_sign:
            self.signed = None

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        if self.signed is None:
            self.signed = bool((x < 0).any())
        if self.per_channel:
            mean_abs = x.abs().flatten(1).mean(dim=1)
        else:
            mean_abs = x.abs().mean()
        step = 2 * mean_abs / math.sqrt(self.q_p)
        self.step.copy_(step.clamp_min(torch.finfo(step.dtype).tiny).to(self.step.dtype))
        self.initialized = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            self.init_from(x)
        step = self.step.view(-1, *[1] * (x.dim() - 1)) if self.per_channel else self.step
        g = 1.0 / math.sqrt(self.grad_count(x) * self.q_p)
        return lsq_quantize(x, step, self.q_n, self.q_p, g)

    def get_extra_state(self) -> dict[str, Any]:
        return {"bits": self.bits, "signed": self.signed, "auto_sign": self.auto_sign, "initialized": self.initialized}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.bits = state["bits"]
        self.signed = state["signed"]
        self.auto_sign = state["auto_sign"]
        self.initialized = state["initialized"]

    def extra_repr(self) -> str:
        sign = {None: "auto", True: "signed", False: "unsigned"}[self.signed]
        return f"{self.kind}, bits={self.bits}, {sign}, per_channel={self.per_channel}"
