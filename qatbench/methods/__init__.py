"""Training methods by name: one class per method, one `update` per step."""

from qatbench.methods import erm  # noqa: F401  (registers erm, lsq)
from qatbench.methods.base import Method, concat
from qatbench.methods.registry import METHODS

__all__ = ["METHODS", "Method", "concat"]
