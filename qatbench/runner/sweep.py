"""Run every RunSpec of a suite once: full-precision parents first, finished runs skipped."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from qatbench.config import RunSpec
from qatbench.data import build_dataset
from qatbench.runner import store
from qatbench.runner.train import run_one

log = logging.getLogger(__name__)


def plan(specs: list[RunSpec]) -> list[RunSpec]:
    """Every run once, runs without a parent (the FP parents among them) before those with one."""
    with_parents = [s.parent for s in specs if s.parent is not None] + list(specs)
    ordered: dict[str, RunSpec] = {}
    for spec in sorted(with_parents, key=lambda s: s.parent is not None):  # stable sort
        ordered.setdefault(spec.run_id, spec)
    return list(ordered.values())


@dataclass
class SweepSummary:
    records: list[dict[str, Any]] = field(default_factory=list)
    reused: int = 0

    @property
    def counts(self) -> Counter:
        return Counter(r.get("status", "unknown") for r in self.records)

    def line(self) -> str:
        counts = self.counts
        parts = [f"{counts.get('done', 0)} done"]
        parts += [f"{n} {status}" for status, n in sorted(counts.items()) if status != "done"]
        return f"{len(self.records)} runs: " + ", ".join(parts) + f" ({self.reused} already finished, skipped)"


def check_data(specs: list[RunSpec], data_root: Path | None) -> None:
    """Build each dataset the pending runs need once, before any run: a missing folder or a
    wrong layout is the user's input, one line and exit 2, not a failed record per run. (It
    also fills the image cache, which every run then maps.)"""
    seen = set()
    for spec in specs:
        key = (spec.dataset, repr(sorted(spec.dataset_options.items())))
        if key not in seen:
            seen.add(key)
            build_dataset(spec.dataset, data_root, spec.data_seed, dict(spec.dataset_options))


def run_specs(
    specs: list[RunSpec], results: Path, *, data_root: Path | None = None, device: str = "auto", progress: bool = True
) -> SweepSummary:
    summary = SweepSummary()
    planned = plan(specs)
    check_data([s for s in planned if not store.is_finished(store.run_dir(results, s.suite, s.run_id))], data_root)
    for spec in tqdm(planned, desc="runs", unit="run", disable=not progress):
        folder = store.run_dir(results, spec.suite, spec.run_id)
        if store.is_finished(folder):
            summary.records.append(store.read_record(folder))
            summary.reused += 1
            continue
        summary.records.append(run_one(spec, results, data_root=data_root, device=device, progress=progress))
    return summary
