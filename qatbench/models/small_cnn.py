"""A small CNN for 28x28 digits that a 2-core CPU trains in seconds.

Shaped like DomainBed's MNIST_CNN (3x3 convolutions, one stride-2 downsampling per stage,
global average pooling, one linear classifier) but narrower and with BatchNorm, which
quantized networks fold and train with; DomainBed's 64-128-128-128 GroupNorm version costs
about 8x more per step.
"""

from __future__ import annotations

from torch import nn

from qatbench.models.registry import MODELS


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


@MODELS.register("small_cnn", summary="4-conv BN CNN for 28x28 inputs (DomainBed MNIST_CNN, narrower)")
def small_cnn(input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> nn.Module:
    channels = [width, 2 * width, 4 * width, 4 * width]
    strides = [1, 2, 2, 1]
    layers: list[nn.Module] = []
    c_in = input_shape[0]
    for c_out, stride in zip(channels, strides):
        layers += _conv_bn_relu(c_in, c_out, stride)
        c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))
