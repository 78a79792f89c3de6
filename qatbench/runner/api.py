"""The Python entry points behind `qatbench run`: load a suite, run it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from qatbench import config
from qatbench.config import RunSpec, Suite
from qatbench.data import resolve_data_root
from qatbench.runner.catalog import CATALOG
from qatbench.runner.sweep import SweepSummary, plan, run_specs
from qatbench.runner.train import resolve_device


def load_suite(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Suite:
    """Read and validate a suite against the registered methods, datasets and models."""
    return config.load_suite(path, overrides, catalog=CATALOG)


def expand(suite: Suite) -> list[RunSpec]:
    """Every run of the suite, FP parents of QAT runs included, in the order they will run."""
    return plan(config.expand(suite, CATALOG))


def run(
    suite: Suite | str | os.PathLike,
    results: str | os.PathLike = "results",
    *,
    data_root: str | os.PathLike | None = None,
    device: str = "auto",
    progress: bool = True,
) -> SweepSummary:
    """Run every run of `suite` not already finished under `results`; returns their records."""
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    root = resolve_data_root(data_root, suite.data_root)
    resolve_device(device)  # a bad --device is the user's mistake, not a failure of every run
    return run_specs(config.expand(suite, CATALOG), Path(results), data_root=root, device=device, progress=progress)
