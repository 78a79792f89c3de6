"""Fake quantization: LSQ, LSQ+, PACT and DoReFa quantizers, min-max and percentile observers for
post-training quantization, quantized layers and model conversion."""

from qatbench.config.spec import QuantSpec
from qatbench.quant.base import FakeQuantizer
from qatbench.quant.convert import (
    calibrate,
    layer_bits,
    make_quantizers,
    quantize_model,
    quantizers,
    step_parameters,
)
from qatbench.quant.dorefa import DorefaQuantizer
from qatbench.quant.layers import QuantConv2d, QuantLinear
from qatbench.quant.lsq import LsqQuantizer, grad_scale, levels, lsq_quantize, round_ste
from qatbench.quant.lsq_plus import LsqPlusQuantizer
from qatbench.quant.observer import ObserverQuantizer, range_step
from qatbench.quant.pact import PactQuantizer

__all__ = [
    "DorefaQuantizer",
    "FakeQuantizer",
    "LsqPlusQuantizer",
    "LsqQuantizer",
    "ObserverQuantizer",
    "PactQuantizer",
    "QuantConv2d",
    "QuantLinear",
    "QuantSpec",
    "calibrate",
    "grad_scale",
    "layer_bits",
    "levels",
    "lsq_quantize",
    "make_quantizers",
    "quantize_model",
    "quantizers",
    "range_step",
    "round_ste",
    "step_parameters",
]
