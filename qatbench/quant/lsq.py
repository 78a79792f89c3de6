"""Learned Step Size Quantization as composable tensor code.

Esser, McKinley, Bablani, Appuswamy, Modha, "Learned Step Size Quantization", ICLR 2020
(arXiv:1902.08153):

1. v_bar = round(clip(v / s, -Q_N, Q_P)), v_hat = v_bar * s                  (Eq. 1-2)
2. round passes gradients straight through; clip passes them inside the range  (STE)
3. dv_hat/ds = round(v/s) - v/s inside the range, -Q_N / Q_P outside it         (Eq. 3)
4. the loss gradient reaching s is scaled by g = 1 / sqrt(N * Q_P)              (Sec. 2.2)
5. s starts at 2 * mean(|v|) / sqrt(Q_P)                                         (Sec. 2.1)
   (or, `init="minmax"`, at max|v| / Q_P: the range of v, nothing clipped; see QuantSpec.step_init)
6. the grid is |s|: the paper leaves s unconstrained, and an update that carries it across zero
   (SGD's momentum, or Adam's steps of about lr whatever the gradient, on a small s) puts every
   value at one end of the range and kills the layer. Seen here: the classifier's input step at
   -0.049 after 150 SGD steps of lsq from an erm run (PACS-64, EfficientNet-Lite0), whose logits
   no longer depended on the image; known to LSQ users (ZouJiu1/LSQplus#12, OpenPPL/ppq#518,
   whose fix is |s|). Where s stays positive, as in the paper, nothing changes.

The straight-through estimator is written as `x + (round(x) - x).detach()` and the gradient
scale as `(s - s*g).detach() + s*g`, never as a custom autograd.Function: that keeps double
backward and every torch.func transform working, which Hessians of quantized models need
(a Function without a jvp rule breaks forward-over-reverse; see shared/MEASURED.md).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from qatbench.quant.base import FakeQuantizer, Kind

GradCount = Literal["layer", "tensor"]
StepInit = Literal["lsq", "one", "minmax"]


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) in the forward pass, identity in every derivative."""
    return x + (torch.round(x) - x).detach()


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """x in the forward pass; gradients reaching x are multiplied by `scale`."""
    return (x - x * scale).detach() + x * scale


def step_magnitude(step: torch.Tensor, g: float, dtype: torch.dtype) -> torch.Tensor:
    """|s| with LSQ's gradient scale g, never 0: the grid a learned step size stands for (point 6)."""
    return grad_scale(step, g).abs().clamp_min(torch.finfo(dtype).tiny)


def lsq_quantize(
    v: torch.Tensor, step: torch.Tensor, q_n: float | torch.Tensor, q_p: float | torch.Tensor, g: float
) -> torch.Tensor:
    """Fake-quantize `v` with step size `step` (broadcastable to v) onto {-q_n, ..., q_p} * |step|."""
    return on_grid(v, step_magnitude(step, g, v.dtype), q_n, q_p)


def on_grid(
    v: torch.Tensor, step: torch.Tensor, q_n: float | torch.Tensor, q_p: float | torch.Tensor
) -> torch.Tensor:
    """round(clip(v / s, -q_n, q_p)) * s for a step magnitude s > 0, with LSQ's gradients (Eq. 3):
    an entry strictly inside the range passes its gradient to v and gives s round(v/s) - v/s; one on
    or beyond a bound gives v nothing and s its bound.

    A clipped entry divides by 1 rather than by s. Its gradient is 0 either way, but autograd forms
    it as 0 * (v / s) / s, which is 0 * inf = NaN once s falls below ~sqrt(|v| / 3.4e38), as the step
    of an ImageNet Lite0 depthwise channel whose weights are ~1e-7 does under SGD (fpq on PACS
    art_painting: NaN at update 563-565, both seeds that ran). An entry inside the range can still
    overflow, but only for s within a few units of float32's smallest normal and |v| <= q_p s.
    """
    with torch.no_grad():
        ratio = v / step
        inside = (ratio > -q_n) & (ratio < q_p)
    scaled = torch.where(inside, v / torch.where(inside, step, 1.0), ratio.clamp(-q_n, q_p))
    return round_ste(scaled) * step


def levels(bits: int, signed: bool) -> tuple[float, float]:
    """(Q_N, Q_P) of LSQ: signed [-2^(b-1), 2^(b-1)-1], unsigned [0, 2^b-1]."""
    if signed:
        return float(2 ** (bits - 1)), float(2 ** (bits - 1) - 1)
    return 0.0, float(2**bits - 1)


class LsqQuantizer(FakeQuantizer):
    """A fake quantizer with a learnable step size, for weights or activations.

    Weights are signed. Activations are unsigned when the first batch it sees has no negative
    value (inputs of layers after a ReLU) and signed otherwise (the image, linear bottlenecks);
    `signed=True/False` fixes it instead. The step size is initialised lazily from the first
    tensor quantized, which is the first batch of data for activations; `calibrate` in
    `qatbench.quant.convert` makes that batch an explicit training batch.

    The switches the papers disagree on (shared/papers.md 9.1), LSQ's choice first:
    - `grad_count`: N of the gradient scale is the layer's weights / features per sample
      ("layer", LSQ Sec. 2.2) or every element of the tensor, batch included ("tensor", the
      lsq-net fork the FQAT/GAQAT authors used);
    - `init`: the step starts at 2 mean|v| / sqrt(Q_P) ("lsq"), at 1.0 ("one", the fork's
      activations), or at max|v| / Q_P ("minmax": the range of the tensor, of each channel for
      per-channel weights, so that the start clips nothing; PTQ's min/max range setting);
    - `symmetric=False`: unsigned levels {0..2^b-1} around a zero point fixed at
      initialisation from the min/max (s = (max - min) / (2^b - 1), z = round(-min / s)), so
      the range need not be centred on zero (FPQ's asymmetric weights via MQBench, and its
      activations: "zero point, min/max start", Eqs. 3-6; per tensor for activations, from the
      first batch). Only s is learned; z stays where it was put.
    """

    def __init__(
        self,
        bits: int,
        kind: Kind,
        *,
        per_channel: bool = False,
        channels: int = 1,
        signed: bool | None = None,
        grad_count: GradCount = "layer",
        init: StepInit = "lsq",
        symmetric: bool = True,
    ):
        super().__init__(bits, kind, signed=signed)
        if per_channel and kind != "weight":
            raise ValueError("per-channel step sizes are supported for weights only")
        self.per_channel = per_channel
        self.grad_count_mode = grad_count
        self.init_mode = init
        self.symmetric = symmetric
        shape = (channels,) if per_channel else ()
        self.step = nn.Parameter(torch.ones(shape))
        if not symmetric:  # only then: state_dicts of symmetric quantizers keep their keys
            self.register_buffer("zero_point", torch.zeros(shape))

    def range_parameters(self) -> list[nn.Parameter]:
        return [self.step]

    @property
    def q_n(self) -> float:
        return levels(self.bits, bool(self.signed))[0]

    @property
    def q_p(self) -> float:
        return levels(self.bits, bool(self.signed))[1]

    def grad_count(self, x: torch.Tensor) -> int:
        """N of LSQ's gradient scale: weights in the layer, or features per sample."""
        if self.grad_count_mode == "tensor" or self.kind == "weight":
            return x.numel()
        return x[0].numel()

    def _per_channel(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.view(-1, *[1] * (like.dim() - 1)) if self.per_channel else values

    @torch.no_grad()
    def init_from(self, x: torch.Tensor) -> None:
        flat = x.flatten(1) if self.per_channel else x.reshape(1, -1)
        if not self.symmetric:
            top = float(2**self.bits - 1)
            low, high = flat.min(dim=1).values.clamp_max(0), flat.max(dim=1).values.clamp_min(0)
            step = (high - low) / top
            step = step.clamp_min(torch.finfo(step.dtype).tiny)
            self.zero_point.copy_(torch.round(-low / step).clamp(0, top).reshape(self.zero_point.shape))
        elif self.init_mode == "one":
            step = torch.ones_like(flat[:, 0])
        elif self.init_mode == "minmax":  # unsigned inputs have no negative value: max(x) / (2^b - 1)
            step = flat.abs().amax(dim=1) / self.q_p
        else:
            step = 2 * flat.abs().mean(dim=1) / math.sqrt(self.q_p)
        step = step.clamp_min(torch.finfo(step.dtype).tiny).reshape(self.step.shape)
        self.step.copy_(step.to(self.step.dtype))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        step = self._per_channel(self.step, x)
        if self.symmetric:
            g = 1.0 / math.sqrt(self.grad_count(x) * self.q_p)
            return lsq_quantize(x, step, self.q_n, self.q_p, g)
        top = float(2**self.bits - 1)
        zero = self._per_channel(self.zero_point, x)
        g = 1.0 / math.sqrt(self.grad_count(x) * top)
        return lsq_quantize(x, step, zero, top - zero, g)

    def extra_repr(self) -> str:
        scheme = "" if self.symmetric else ", asymmetric"
        return f"{super().extra_repr()}, per_channel={self.per_channel}{scheme}"
