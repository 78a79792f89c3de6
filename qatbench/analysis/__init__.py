"""Sharpness of (quantized) models: Hessian spectrum and trace, and loss landscapes."""

from qatbench.analysis.landscape import Surface
from qatbench.analysis.measure import HessianResult, hessian, landscape
from qatbench.analysis.operator import HessianOperator, curvature_parameters

__all__ = [
    "HessianOperator",
    "HessianResult",
    "Surface",
    "curvature_parameters",
    "hessian",
    "landscape",
    "load_surface",
]
