"""Training methods by name: one class per method, one `update` per step."""

from qatbench.methods import checkpoint, erm, fqat, gam, gaqat, kd, quantizer_qat, sagm, sam  # noqa: F401
from qatbench.methods.base import Method, concat
from qatbench.methods.registry import METHODS

__all__ = ["METHODS", "Method", "concat"]
