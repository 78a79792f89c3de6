"""The model table, apart from the factories so that each architecture file can register."""

from qatbench.registry import Registry

MODELS: Registry = Registry("model")
