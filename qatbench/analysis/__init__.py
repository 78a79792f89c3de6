"""Sharpness of (quantized) models: Hessian spectrum and trace, and loss landscapes.

The functions are `qatbench.hessian(...)` and `qatbench.landscape(...)` (`analysis.measure`);
`analysis.hessian` is the module of the Hessian algorithms, so the package does not rebind it.
"""

from qatbench.analysis.landscape import Surface
from qatbench.analysis.measure import HessianResult, landscape
from qatbench.analysis.operator import HessianOperator, curvature_parameters

__all__ = ["HessianOperator", "HessianResult", "Surface", "curvature_parameters", "landscape"]
