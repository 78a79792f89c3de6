"""Turning RunSpecs into records: training, storage, sweeps."""

from qatbench.runner.catalog import CATALOG, RegistryCatalog
from qatbench.runner.sweep import SweepSummary, plan, run_specs
from qatbench.runner.train import run_one

__all__ = ["CATALOG", "RegistryCatalog", "SweepSummary", "plan", "run_one", "run_specs"]
