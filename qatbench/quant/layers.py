"""Convolution and linear layers that fake-quantize their input and their weight.

Quantizing the input (not the output) of every conv/linear is LSQ's placement: the integer
matmul sees integer activations and integer weights; BN and ReLU stay in float.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from qatbench.quant.base import FakeQuantizer


# Conv2d subclasses whose forward pads its input before the convolution (timm's TF-"same"
# `Conv2dSame`, which EfficientNet-Lite's ported weights need): class -> (conv -> pad(x)). The
# model files that use them register them, so quant imports no model library; any other Conv2d
# subclass is refused rather than quantized with the wrong padding.
INPUT_PADDING: dict[type, Callable[[nn.Conv2d], Callable[[torch.Tensor], torch.Tensor]]] = {}


def register_input_padding(cls: type, make_pad: Callable[[nn.Conv2d], Callable[[torch.Tensor], torch.Tensor]]) -> None:
    INPUT_PADDING[cls] = make_pad


def is_depthwise(conv: nn.Module) -> bool:
    """One filter per input channel (MobileNet's and EfficientNet's depthwise convolutions)."""
    return isinstance(conv, nn.Conv2d) and conv.groups > 1 and conv.groups == conv.in_channels


def _attach_quantizers(layer: nn.Module, w_quant: FakeQuantizer, a_quant: FakeQuantizer | nn.Identity) -> None:
    """`a_quant` is nn.Identity in weight-only quantization (inputs stay float)."""
    dtype = layer.weight.dtype  # step sizes follow the layer (float64 Hessians, bf16 training)
    layer.w_quant = w_quant.to(dtype)
    layer.a_quant = a_quant.to(dtype)


@torch.no_grad()
def _copy_parameters(source: nn.Module, target: nn.Module) -> nn.Module:
    target.weight.copy_(source.weight)
    target.weight.requires_grad_(source.weight.requires_grad)
    if source.bias is not None:
        target.bias.copy_(source.bias)
        target.bias.requires_grad_(source.bias.requires_grad)
    return target.to(source.weight.device)


class QuantConv2d(nn.Conv2d):
    """nn.Conv2d with fake quantization of its input and weight."""

    def __init__(self, *args, w_quant: FakeQuantizer, a_quant: FakeQuantizer, **kwargs):
        super().__init__(*args, **kwargs)
        _attach_quantizers(self, w_quant, a_quant)
        self.pad_input: Callable[[torch.Tensor], torch.Tensor] | None = None  # the float layer's own padding

    @classmethod
    def from_float(cls, conv: nn.Conv2d, w_quant: FakeQuantizer, a_quant: FakeQuantizer) -> QuantConv2d:
        if type(conv) is not nn.Conv2d and type(conv) not in INPUT_PADDING:
            raise TypeError(
                f"cannot quantize {type(conv).__name__}: a Conv2d subclass whose forward qatbench does not "
                f"know (register its padding with qatbench.quant.layers.register_input_padding)"
            )
        quantized = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            dtype=conv.weight.dtype,
            w_quant=w_quant,
            a_quant=a_quant,
        )
        if type(conv) in INPUT_PADDING:
            quantized.pad_input = INPUT_PADDING[type(conv)](conv)
        return _copy_parameters(conv, quantized)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a_quant(x)
        if self.pad_input is not None:  # after quantizing: the integer kernel sees zero padding
            x = self.pad_input(x)
        return self._conv_forward(x, self.w_quant(self.weight), self.bias)


class QuantLinear(nn.Linear):
    """nn.Linear with fake quantization of its input and weight."""

    def __init__(self, *args, w_quant: FakeQuantizer, a_quant: FakeQuantizer, **kwargs):
        super().__init__(*args, **kwargs)
        _attach_quantizers(self, w_quant, a_quant)

    @classmethod
    def from_float(cls, linear: nn.Linear, w_quant: FakeQuantizer, a_quant: FakeQuantizer) -> QuantLinear:
        quantized = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            dtype=linear.weight.dtype,
            w_quant=w_quant,
            a_quant=a_quant,
        )
        return _copy_parameters(linear, quantized)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.a_quant(x), self.w_quant(self.weight), self.bias)
