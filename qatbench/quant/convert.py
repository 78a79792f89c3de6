"""Turn a float model into a fake-quantized one, and initialise its step sizes from data."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from qatbench.config.spec import FLOAT_BITS, QuantSpec
from qatbench.quant.base import FakeQuantizer
from qatbench.quant.dorefa import DorefaQuantizer
from qatbench.quant.layers import QuantConv2d, QuantLinear, is_depthwise
from qatbench.quant.lsq import LsqQuantizer
from qatbench.quant.lsq_plus import LsqPlusQuantizer
from qatbench.quant.observer import ObserverQuantizer
from qatbench.quant.pact import PactQuantizer

FIRST_LAST_8BIT = 8


def quantize_model(model: nn.Module, spec: QuantSpec) -> nn.Module:
    """A copy of `model` whose Conv2d and Linear layers fake-quantize weights and inputs.

    The first and the last of those layers (in registration order: the stem and the
    classifier of every torchvision-style network and of EfficientNet) follow `spec.first_last`:
    8 bits (LSQ), float ("fp"), or the spec's bits ("same"); every layer between them, an
    EfficientNet's 1x1 `conv_head` included, takes the spec's bits. Depthwise convolutions get
    one weight step per channel when `spec.depthwise_per_channel` says so. `spec.layers == "conv"`
    quantizes Conv2d layers only (Linear layers stay float, as QT-DoG's); `spec.weight_only`
    (a_bits 32) leaves every input float. The float model is left untouched.
    """
    quantized = copy.deepcopy(model)
    for name, (w_bits, a_bits) in layer_bits(quantized, spec).items():
        layer = quantized.get_submodule(name)
        cls = QuantConv2d if isinstance(layer, nn.Conv2d) else QuantLinear
        per_channel = spec.w_per_channel or (spec.depthwise_per_channel and is_depthwise(layer))
        w_quant, a_quant = make_quantizers(
            spec, w_bits, a_bits, channels=layer.weight.shape[0], per_channel=per_channel
        )
        _replace(quantized, name, cls.from_float(layer, w_quant, a_quant))
    return quantized


def layer_bits(model: nn.Module, spec: QuantSpec) -> dict[str, tuple[int, int]]:
    """(weight bits, input bits) of every layer `quantize_model` quantizes, by module name."""
    modules = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and not isinstance(m, QuantConv2d | QuantLinear)
    }
    names = list(modules)
    edges = {names[0], names[-1]} if names else set()  # stem and classifier, whichever layers are quantized
    edge_a_bits = spec.a_bits if spec.weight_only else FIRST_LAST_8BIT
    bits = {}
    for name in names:
        if (name in edges and spec.first_last == "fp") or (spec.layers == "conv" and isinstance(modules[name], nn.Linear)):
            continue
        edge_8bit = name in edges and spec.first_last == "8bit"
        bits[name] = (FIRST_LAST_8BIT, edge_a_bits) if edge_8bit else (spec.w_bits, spec.a_bits)
    return bits


def make_quantizers(
    spec: QuantSpec, w_bits: int, a_bits: int, channels: int, per_channel: bool | None = None
) -> tuple[FakeQuantizer, FakeQuantizer | nn.Identity]:
    """The weight and input quantizers of one layer, as `spec.quantizer` pairs them (`per_channel`:
    None takes `spec.w_per_channel`); a weight-only spec's input "quantizer" is the identity
    (QT-DoG's QuanConv2d passes its input through, saqibjaved1/QT-DoG domainbed/quan/func.py l. 22-26)."""
    per_channel = spec.w_per_channel if per_channel is None else per_channel
    w_quant, a_quant = _quantizer_pair(
        spec, w_bits, FIRST_LAST_8BIT if a_bits == FLOAT_BITS else a_bits, channels, per_channel
    )
    return w_quant, (nn.Identity() if a_bits == FLOAT_BITS else a_quant)


def _quantizer_pair(
    spec: QuantSpec, w_bits: int, a_bits: int, channels: int, per_channel: bool
) -> tuple[FakeQuantizer, FakeQuantizer]:
    if spec.observed:
        w_quant = ObserverQuantizer(
            w_bits, "weight", per_channel=per_channel, channels=channels, symmetric=spec.w_symmetric
        )
        return w_quant, ObserverQuantizer(a_bits, "activation", observe=spec.quantizer, percentile=spec.percentile)
    if spec.quantizer == "lsq":
        w_quant = LsqQuantizer(
            w_bits, "weight", per_channel=per_channel, channels=channels,
            grad_count=spec.grad_scale, init=spec.step_init, symmetric=spec.w_symmetric,
        )  # fmt: skip
        a_init = spec.step_init if spec.a_init == "batch" else "one"
        a_quant = LsqQuantizer(
            a_bits, "activation", grad_count=spec.grad_scale, init=a_init, symmetric=spec.a_symmetric
        )
        return w_quant, a_quant
    if spec.quantizer == "lsq_plus":
        w_quant = LsqPlusQuantizer(w_bits, "weight", per_channel=per_channel, channels=channels)
        return w_quant, LsqPlusQuantizer(a_bits, "activation")
    w_quant = DorefaQuantizer(w_bits, "weight", per_channel=per_channel, channels=channels)
    if spec.quantizer == "pact":  # PACT's weights are DoReFa's
        return w_quant, PactQuantizer(a_bits)
    return w_quant, DorefaQuantizer(a_bits, "activation")


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def quantizers(model: nn.Module) -> list[FakeQuantizer]:
    return [m for m in model.modules() if isinstance(m, FakeQuantizer)]


def step_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable step sizes and offsets (never weight-decayed, and the parameters whose
    gradients GAQAT watches)."""
    return [p for q in quantizers(model) for p in q.range_parameters()]


@torch.no_grad()
def calibrate(model: nn.Module, x: torch.Tensor | Iterable[torch.Tensor]) -> nn.Module:
    """Initialise every quantizer's range from calibration data: one batch, or several.

    Learned-step quantizers initialise from the first batch (LSQ: 2 mean|v| / sqrt(Q_P)) in
    forward order, so each activation step sees the already-quantized upstream activations it
    will see in training. Observers (PTQ) see every batch in float and fix their ranges at the end.
    Runs in eval mode so BN running statistics do not move, then restores every module's mode
    (a BN frozen in eval mode inside a training model stays frozen).
    """
    batches = [x] if isinstance(x, torch.Tensor) else list(x)
    if not batches:
        raise ValueError("calibrate needs at least one batch")
    for quantizer in quantizers(model):
        quantizer.reset()
    modes = {module: module.training for module in model.modules()}
    model.eval()
    for batch in batches:
        model(batch)
    for name, module in model.named_modules():
        if isinstance(module, ObserverQuantizer):
            try:
                module.finish()
            except ValueError as exc:
                raise ValueError(f"calibration: quantizer {name}: {exc}") from None
    for module, training in modes.items():
        module.train(training)
    return model
