"""The method table. Entries are `Method` subclasses; `kind` says whether they train float
models ("fp") or quantized ones ("qat")."""

from qatbench.registry import Registry

METHODS: Registry = Registry("method")
