"""qatbench: does a quantization-aware training method hold up out of distribution?

    suite = qatbench.load_suite("suites/quickstart.yaml", ["training.steps=50"])
    qatbench.run(suite, "results")
    print(qatbench.report(qatbench.load_records("results")))

Names are imported on first use, so `qatbench report` never pays for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from qatbench.version import __version__

_EXPORTS = {
    "load_suite": "qatbench.runner.api",
    "run": "qatbench.runner.api",
    "expand": "qatbench.runner.api",
    "load_records": "qatbench.report.collect",
    "quantize_model": "qatbench.quant",
    "calibrate": "qatbench.quant",
    "QuantSpec": "qatbench.config",
    "RunSpec": "qatbench.config",
    "Suite": "qatbench.config",
    "UserError": "qatbench.errors",
    "hessian": "qatbench.analysis.measure",
    "landscape": "qatbench.analysis.measure",
    "analyze": "qatbench.runner.analysis_api",
    "evaluate_checkpoint": "qatbench.runner.analysis_api",
    "METHODS": "qatbench.methods",
    "DATASETS": "qatbench.data",
    "MODELS": "qatbench.models",
}
__all__ = sorted([*_EXPORTS, "report"])


def __getattr__(name: str) -> Any:
    if name == "report":  # the report package is itself callable: qatbench.report(records, format="md")
        return importlib.import_module("qatbench.report")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'qatbench' has no attribute '{name}'")
