"""Training methods by name: one class per method, one `update` per step."""

from qatbench.methods import (  # noqa: F401  (register the methods)
    checkpoint,
    cr,
    ensemble,
    erm,
    flat_ptq,
    fpq,
    fqat,
    gam,
    gaqat,
    kd,
    mec,
    ptq,
    qtdog,
    quantizer_qat,
    sagm,
    sam,
)
from qatbench.methods.base import Method, concat
from qatbench.methods.registry import METHODS

__all__ = ["METHODS", "Method", "concat"]
