"""Run every RunSpec of a suite once: full-precision parents first, finished runs skipped."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from qatbench.config import RunSpec
from qatbench.errors import first_line
from qatbench.data import build_dataset, split_environments
from qatbench.models import build_model
from qatbench.provenance import FingerprintCache, stale_reason
from qatbench.quant import quantize_model
from qatbench.runner import store
from qatbench.runner.analyze import check_subset_size, load_weights, subset_pool
from qatbench.runner.threads import intra_op_threads
from qatbench.runner.catalog import CATALOG
from qatbench.runner.regenerate import refusal, regenerate_parent, wants_regeneration
from qatbench.runner.train import analyze_after, now, resolve_device, run_one

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
    stale: list[str] = field(default_factory=list)  # finished runs whose data differs now, kept (no --rerun-stale)

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
        if self.stale:
            line += (
                f"; {len(self.stale)} finished run(s) read data that differs from the data on disk now: "
                f"kept and flagged (qatbench run --rerun-stale retrains them)"
            )
        return line


def finished_and_current(folder: Path, data_root: Path | None, rerun_stale: bool, cache: FingerprintCache) -> bool:
    """Whether the run in `folder` counts as finished: it is, and either its data is unchanged or
    stale runs are kept (without --rerun-stale a stale run stays finished, and is flagged)."""
    if not store.is_finished(folder):
        return False
    return not (rerun_stale and stale_reason(store.read_record(folder) or {}, data_root, cache))


def check_data(specs: list[RunSpec], data_root: Path | None) -> None:
    """Build each dataset the pending runs need once, and each model on it, before any run: a
    missing folder, a wrong layout, a holdout fraction that leaves a split empty, a missing
    weights package or an image size the model cannot take is the user's input, one line and
    exit 2, not a failed record per run. (It also fills the image cache, which every run then maps.)"""
    datasets, models, split = {}, set(), set()
    for spec in specs:
        key = (spec.dataset, repr(sorted(spec.dataset_options.items())))
        if key not in datasets:
            datasets[key] = build_dataset(spec.dataset, data_root, spec.data_seed, dict(spec.dataset_options))
        dataset = datasets[key]
        if (key, spec.holdout_fraction) not in split:
            split.add((key, spec.holdout_fraction))
            split_environments(dataset, spec.holdout_fraction, spec.data_seed)
        model_key = (spec.model, repr(sorted(spec.model_options.items())), dataset.input_shape, dataset.num_classes)
        if model_key not in models:
            models.add(model_key)
            build_model(spec.model, dataset.input_shape, dataset.num_classes, dict(spec.model_options))


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
    rerun_stale: bool = False,
    worker: int | None = None,
) -> SweepSummary:
    """Every run in plan order, each under its lock; `checked`: the data and analysis checks already ran;
    `worker`: this is worker k of `--workers N` (start and end lines named by it, no bars).

    A failed run is tried again, once per sweep: a failure recorded since `since` (the sweep's start,
    shared by its workers) is this sweep's own, and another worker does not repeat it. A finished run
    whose data differs from the data on disk now is run again with `rerun_stale`, else kept and flagged."""
    since = since or now()
    summary = SweepSummary()
    planned = plan(specs)
    prints = FingerprintCache()
    pending = [
        s
        for s in planned
        if not finished_and_current(store.run_dir(results, s.suite, s.run_id), data_root, rerun_stale, prints)
    ]
    parents_of_pending = {s.parent.run_id for s in pending if s.parent is not None}
    if not checked:
        check_data(pending, data_root)
        check_analysis(planned, data_root)
    progress_log = SweepProgress(planned, pending, enabled=progress, worker=worker)
    bars = progress and worker is None  # per-run bars: one process per terminal
    for spec in planned:
        folder = store.run_dir(results, spec.suite, spec.run_id)
        for needed in [spec.parent, *spec.members]:  # another process training one: wait until it is done
            if needed is not None:
                with store.claim(store.run_dir(results, needed.suite, needed.run_id), wait=True):
                    pass
        with store.claim(folder) as mine:
            if not mine:
                summary.elsewhere.append(spec.run_id)
                progress_log.skip(spec)
                continue
            record = store.read_record(folder)
            if record is not None and record.get("status") == "failed" and str(record.get("finished_at")) >= since:
                summary.records.append(record)  # tried in this sweep already, by another worker
                progress_log.skip(spec)
                continue
            if finished_and_current(folder, data_root, rerun_stale, prints):  # under the lock: another process
                record = store.read_record(folder)  # may just have finished it
                if stale_reason(record, data_root, prints):
                    summary.stale.append(spec.run_id)
                with intra_op_threads(spec.threads):
                    record = analyze_after(folder, spec, record, data_root=data_root, device=device, progress=bars)
                summary.records.append(record)
                summary.reused += 1
                progress_log.skip(spec)
                if spec.run_id in parents_of_pending and wants_regeneration(spec, folder):
                    _regenerate(spec, results, progress_log, data_root=data_root, device=device)
                continue
            progress_log.start(spec)
            record = run_one(spec, results, data_root=data_root, device=device, progress=bars)
            progress_log.end(spec, record)
            summary.records.append(record)
            summary.trained += 1
    progress_log.close()
    return summary


def _regenerate(parent: RunSpec, results: Path, progress_log: SweepProgress, *, data_root, device: str) -> None:
    """A finished parent whose model.pt is gone (a fresh clone of the committed records): train it
    again and keep the weights if they reproduce its curve, or are within training.parent_tolerance.
    Whatever happens is a line or a warning: its children fail on their own if the weights stay out."""
    folder = store.run_dir(results, parent.suite, parent.run_id)
    problem = store.model_problem(folder)
    progress_log.write(f"parent {parent.run_id} ({parent.label}): model.pt {problem}; training it again")
    try:
        note = regenerate_parent(parent, results, run_one, data_root=data_root, device=str(resolve_device(device)))
    except OSError as exc:  # a full disk at the scratch folder, the note or the weights
        log.warning("parent %s: could not be trained again: %s", parent.run_id, first_line(exc))
        return
    if note["exact"]:
        progress_log.write(f"parent {parent.run_id}: its curve is reproduced; model.pt restored")
    elif note["restored"]:
        log.warning(
            "parent %s: trained again it differs from its record (%s) within training.parent_tolerance %s; "
            "its children start from these weights and their records say so (parent_regenerated.*)",
            parent.run_id,
            note["difference"],
            parent.parent_tolerance,
        )
    else:
        log.warning("parent %s: weights not restored: %s", parent.run_id, refusal(folder))


def named_test_domains(spec: RunSpec) -> str:
    """The run's test environments by name (indices where the dataset learns its names from disk)."""
    if not spec.test_envs:
        return "no test domain"
    try:
        names = CATALOG.dataset_environments(spec.dataset, dict(spec.dataset_options)) or []
    except Exception:  # noqa: BLE001  (names are for display; the index is always right)
        names = []
    return ", ".join(names[i] if i < len(names) else f"env {i}" for i in spec.test_envs)


class SweepProgress:
    """One line when each run starts and when it ends (its I.D./OOD accuracy or its status, elapsed),
    written above one overall bar counting the steps of the runs to train, whose rate gives the ETA.
    A worker of `--workers N` writes only its lines, each starting `[worker k]` (N bars in one terminal
    would overwrite each other; the parent's summary closes the sweep). Nothing at all when disabled
    (--quiet, QATBENCH_QUIET)."""

    def __init__(self, planned: list[RunSpec], pending: list[RunSpec], enabled: bool, worker: int | None = None):
        self.enabled, self.total, self.worker = enabled, len(pending), worker
        self.pending = {s.run_id for s in pending}
        self.index, self.started = 0, 0.0
        self.bar = tqdm(
            total=sum(max(s.steps, 1) for s in pending),
            desc=f"sweep ({self.total} runs to train)",
            unit="step",
            disable=not enabled or worker is not None,
            dynamic_ncols=True,
        )
        if enabled and planned and worker is None:
            finished = len(planned) - len(pending)
            self.write(f"suite '{planned[0].suite}': {self.total} run(s) to train, {finished} already finished")

    def write(self, line: str) -> None:
        if self.enabled:
            tqdm.write(line)
            sys.stdout.flush()  # a worker's stdout is a pipe or a file: lines as they happen

    def tag(self) -> str:
        return f"[worker {self.worker}]" if self.worker is not None else f"[{self.index}/{self.total}]"

    def start(self, spec: RunSpec) -> None:
        self.index += 1
        self.started = time.monotonic()
        self.write(f"{self.tag()} start {_what(spec)}")

    def end(self, spec: RunSpec, record: dict[str, Any]) -> None:
        elapsed = _elapsed(time.monotonic() - self.started)
        status = record.get("status", "?")
        if status == "done":
            result = " ".join(
                f"{name} {100 * record[key]:.1f}%"
                for name, key in (("I.D.", "id_acc"), ("OOD", "ood_acc"))
                if isinstance(record.get(key), int | float)
            )
        else:
            result = f"{status}: {str(record.get('error') or '').splitlines()[0][:160] if record.get('error') else ''}"
        self.write(f"{self.tag()} end   {_what(spec)}: {result} ({elapsed})")
        self.bar.update(max(spec.steps, 1))

    def skip(self, spec: RunSpec) -> None:
        """A run another process had, or finished meanwhile: its steps leave the bar's total."""
        if spec.run_id in self.pending and self.bar.total:
            self.bar.total -= max(spec.steps, 1)
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _what(spec: RunSpec) -> str:
    return (
        f"{spec.label} {spec.bits_label} {spec.dataset} test={named_test_domains(spec)} seed={spec.seed} "
        f"({spec.run_id[:8]})"
    )


def _elapsed(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
