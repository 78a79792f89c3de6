"""Fake quantization: LSQ quantizers, quantized layers and model conversion."""

from qatbench.config.spec import QuantSpec
from qatbench.quant.convert import calibrate, quantize_model, quantizers, step_parameters
from qatbench.quant.layers import QuantConv2d, QuantLinear
from qatbench.quant.lsq import LsqQuantizer, grad_scale, levels, lsq_quantize, round_ste

__all__ = [
    "LsqQuantizer",
    "QuantConv2d",
    "QuantLinear",
    "QuantSpec",
    "calibrate",
    "grad_scale",
    "levels",
    "lsq_quantize",
    "quantize_model",
    "quantizers",
    "round_ste",
    "step_parameters",
]
