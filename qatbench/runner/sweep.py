"""Run every RunSpec of a suite once: full-precision parents first, finished runs skipped."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from qatbench.config import RunSpec
from qatbench.data import build_dataset, split_environments
from qatbench.models import build_model
from qatbench.quant import quantize_model
from qatbench.runner import store
from qatbench.runner.analyze import check_subset_size, load_weights, subset_pool
from qatbench.runner.train import analyze_after, now, run_one

log = logging.getLogger(__name__)


def plan(specs: list[RunSpec]) -> list[RunSpec]:
    """Every run once: runs without a parent (the FP parents among them), then those with one, then
    ensembles, whose members (and their parents) come along even when only the ensemble was asked for."""
    members = [m for s in specs for m in s.members]
    runs = [s.parent for s in [*specs, *members] if s.parent is not None] + list(specs) + members
    ordered: dict[str, RunSpec] = {}
    for spec in sorted(runs, key=lambda s: (bool(s.members), s.parent is not None)):  # stable sort
        ordered.setdefault(spec.run_id, spec)
    return list(ordered.values())


@dataclass
class SweepSummary:
    records: list[dict[str, Any]] = field(default_factory=list)
    reused: int = 0
    elsewhere: list[str] = field(default_factory=list)  # run ids another process was working on
    trained_by_worker: list[int] = field(default_factory=list)  # local workers: runs each one trained
    submitted: list[str] = field(default_factory=list)  # Slurm job ids, when the jobs run on without us
    trained: int = 0  # runs this process trained (a worker's share)

    @property
    def counts(self) -> Counter:
        return Counter(r.get("status", "unknown") for r in self.records)

    def line(self) -> str:
        if self.submitted:
            return f"submitted {len(self.submitted)} Slurm array task(s): {', '.join(self.submitted)}"
        counts = self.counts
        parts = [f"{counts.get('done', 0)} done"]
        parts += [f"{n} {status}" for status, n in sorted(counts.items()) if status != "done"]
        line = f"{len(self.records)} runs: " + ", ".join(parts) + f" ({self.reused} already finished, skipped)"
        if self.trained_by_worker:
            line += (
                f"; trained by {len(self.trained_by_worker)} workers: {' + '.join(map(str, self.trained_by_worker))}"
            )
        if self.elsewhere:
            line += f"; {len(self.elsewhere)} left to another process running them"
        return line


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


def check_analysis(specs: list[RunSpec], data_root: Path | None) -> None:
    """What would fail every run's analysis alike fails now, in one line: a subset larger than
    its data, a checkpoint that does not fit its architecture."""
    seen = set()
    for spec in specs:
        sizes = [spec.analysis.subset, *(cut.subset for cut in spec.analysis.landscape)] if spec.analysis else []
        key = (spec.dataset, repr(sorted(spec.dataset_options.items())), spec.test_envs, spec.data_seed, tuple(sizes))
        if sizes and key not in seen:
            seen.add(key)
            dataset = build_dataset(spec.dataset, data_root, spec.data_seed, dict(spec.dataset_options))
            splits = split_environments(dataset, spec.holdout_fraction, spec.data_seed)
            pool = subset_pool(dataset, splits, spec.test_envs, spec.analysis.split)
            check_subset_size(len(pool), max(sizes), spec.analysis.split, dataset.name, spec.test_envs)
        if spec.checkpoint:
            dataset = build_dataset(spec.dataset, data_root, spec.data_seed, dict(spec.dataset_options))
            model = build_model(spec.model, dataset.input_shape, dataset.num_classes, dict(spec.model_options))
            load_weights(quantize_model(model, spec.quant) if spec.quant else model, Path(spec.checkpoint))


def run_specs(
    specs: list[RunSpec],
    results: Path,
    *,
    data_root: Path | None = None,
    device: str = "auto",
    progress: bool = True,
    checked: bool = False,
    since: str | None = None,
) -> SweepSummary:
    """Every run in plan order, each under its lock; `checked`: the data and analysis checks already ran.

    A failed run is tried again, once per sweep: a failure recorded since `since` (the sweep's start,
    shared by its workers) is this sweep's own, and another worker does not repeat it."""
    since = since or now()
    summary = SweepSummary()
    planned = plan(specs)
    if not checked:
        pending = [s for s in planned if not store.is_finished(store.run_dir(results, s.suite, s.run_id))]
        check_data(pending, data_root)
        check_analysis(planned, data_root)
    for spec in tqdm(planned, desc="runs", unit="run", disable=not progress):
        folder = store.run_dir(results, spec.suite, spec.run_id)
        for needed in [spec.parent, *spec.members]:  # another process training one: wait until it is done
            if needed is not None:
                with store.claim(store.run_dir(results, needed.suite, needed.run_id), wait=True):
                    pass
        with store.claim(folder) as mine:
            if not mine:
                summary.elsewhere.append(spec.run_id)
                continue
            record = store.read_record(folder)
            if record is not None and record.get("status") == "failed" and str(record.get("finished_at")) >= since:
                summary.records.append(record)  # tried in this sweep already, by another worker
                continue
            if store.is_finished(folder):  # checked under the lock: another process may just have finished it
                record = store.read_record(folder)
                record = analyze_after(folder, spec, record, data_root=data_root, device=device, progress=progress)
                summary.records.append(record)
                summary.reused += 1
                continue
            summary.records.append(run_one(spec, results, data_root=data_root, device=device, progress=progress))
            summary.trained += 1
    return summary
