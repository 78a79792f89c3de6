"""Training methods by name: one class per method, one `update` per step."""

from qatbench.methods import erm, fqat, gam, gaqat, kd, quantizer_qat, sagm, sam  # noqa: F401  (registration)
from qatbench.methods.base import Method, concat
from qatbench.methods.registry import METHODS

__all__ = ["METHODS", "Method", "concat"]
