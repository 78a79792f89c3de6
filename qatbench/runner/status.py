"""Where a sweep stands, read from its run folders alone: how many runs are done, running, failed,
dead or pending, and how long the rest will take at the step times its finished runs measured.
`clean` removes what only a crash leaves behind: partial folders nobody works on."""

from __future__ import annotations

import json
import shutil
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from qatbench.config import RunSpec
from qatbench.provenance import FingerprintCache, stale_reason
from qatbench.runner import resume, store

STATES = ("done", "diverged", "failed", "running", "dead", "pending")


@dataclass
class SuiteStatus:
    states: dict[str, str] = field(default_factory=dict)  # run_id -> state
    eta_s: float | None = None  # pending + running work at the measured run times, one worker
    stale: dict[str, str] = field(default_factory=dict)  # finished run_id -> how its data differs now
    others: int = 0  # records in the suite's folder that belong to other settings (--set, --only)
    folder: str = ""

    @property
    def counts(self) -> Counter:
        return Counter(self.states.values())

    def line(self, name: str) -> str:
        counts = self.counts
        parts = ", ".join(f"{counts.get(s, 0)} {s}" for s in STATES)
        lines = [f"suite '{name}': {len(self.states)} runs: {parts}"]
        left = counts.get("pending", 0) + counts.get("running", 0) + counts.get("dead", 0)
        eta = "no step time measured yet" if self.eta_s is None else _duration(self.eta_s)
        if left:
            lines.append(f"ETA for the {left} left: {eta} (one worker)")
        elif counts.get("failed", 0):  # the next `run` tries them again
            lines.append(f"ETA for the {counts['failed']} failed, tried again by the next run: {eta} (one worker)")
        else:
            lines.append("nothing left to run")
        if self.stale:
            lines.append(
                f"stale: {len(self.stale)} finished run(s) read data that differs from the data on disk now "
                f"(kept; qatbench run --rerun-stale retrains them):"
            )
            lines += [f"  {run_id}  {reason}" for run_id, reason in sorted(self.stale.items())[:10]]
        if self.others:
            lines.append(
                f"hint: {self.others} other record(s) in {self.folder} belong to other settings of this suite "
                f"(written with other --set or --only values); pass the same --set to see them"
            )
        return "\n".join(lines)


def suite_status(specs: list[RunSpec], results: Path, data_root: Path | None = None) -> SuiteStatus:
    """States of every run, and an ETA from the wall times (training, evaluations and analyses) of the
    finished runs: per method the median, else the median time per step of all of them. Finished
    runs whose data differs from the data under `data_root` (else their own root) now are listed."""
    status = SuiteStatus()
    run_times: dict[str, list[float]] = {}
    per_step: list[float] = []
    prints = FingerprintCache()
    for spec in specs:
        folder = store.run_dir(results, spec.suite, spec.run_id)
        status.states[spec.run_id] = store.state(folder)
        record = store.read_record(folder) or {}
        reason = stale_reason(record, data_root, prints) if record.get("status") in store.FINISHED else None
        if reason:
            status.stale[spec.run_id] = reason
        wall = record.get("wall_time_s")
        if record.get("status") == "done" and isinstance(wall, int | float):
            wall += float(record.get("analysis.time_s") or 0.0)
            run_times.setdefault(spec.method, []).append(wall)
            per_step.append(wall / max(spec.steps, 1))
    if per_step:
        status.eta_s = 0.0
        for spec in specs:
            state = status.states[spec.run_id]
            if state not in ("pending", "dead", "running", "failed"):  # failed runs are tried again
                continue
            known = run_times.get(spec.method)
            estimate = statistics.median(known) if known else statistics.median(per_step) * max(spec.steps, 1)
            if state == "running" and spec.steps:
                estimate *= (
                    1 - min(_steps_done(store.run_dir(results, spec.suite, spec.run_id)), spec.steps) / spec.steps
                )
            status.eta_s += estimate
    if specs:
        suite_folder = Path(results) / specs[0].suite
        status.folder = str(suite_folder)
        mine = set(status.states)
        status.others = sum(
            1 for record in suite_folder.glob(f"*/{store.RECORD}") if record.parent.name not in mine
        )
    return status


def clean_incomplete(specs: list[RunSpec], results: Path) -> tuple[list[Path], list[Path]]:
    """Empty the folders of dead partial runs (no record, nobody holding the lock); never a finished,
    failed or running run's, and not one with a valid checkpoint to resume from (kept, and returned
    second). The lock file stays: a process that opened it must keep locking the same file."""
    removed, resumable = [], []
    for spec in specs:
        folder = store.run_dir(results, spec.suite, spec.run_id)
        if store.state(folder) != "dead":
            continue
        with store.claim(folder) as mine:  # a run that starts now is not removed under its feet
            if not mine or store.read_record(folder) is not None:
                continue
            if resume.valid(folder):
                resumable.append(folder)
                continue
            for path in folder.iterdir():
                if path.name != store.LOCK:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(folder)
    return removed, resumable


def clean_temporary(specs: list[RunSpec], results: Path) -> list[Path]:
    """Remove the temporary files a kill left mid-write (`.record.json.*.tmp`, `.model.pt.*.tmp`, any
    `.<name>.*.tmp` of an atomic write) from every run folder nobody is working on, finished or not."""
    removed = []
    for spec in specs:
        folder = store.run_dir(results, spec.suite, spec.run_id)
        if not folder.is_dir() or not any(folder.rglob(".*.tmp")):
            continue
        with store.claim(folder) as mine:  # a live writer's temporary file is not a leftover
            if not mine:
                continue
            for path in folder.rglob(".*.tmp"):
                if path.is_file():
                    path.unlink(missing_ok=True)
                    removed.append(path)
    return removed


def damaged_parents(specs: list[RunSpec], results: Path) -> list[tuple[RunSpec, str]]:
    """Finished full-precision parents of unfinished runs whose model.pt no child can load, with the
    reason (a fresh clone has none: model.pt is not committed). A sweep trains such a parent again
    and keeps the weights if they match its record (runner/regenerate.py); its record stays."""
    parents = {
        spec.parent.run_id: spec.parent
        for spec in specs
        if spec.parent is not None and not store.is_finished(store.run_dir(results, spec.suite, spec.run_id))
    }
    damaged = []
    for parent in parents.values():
        folder = store.run_dir(results, parent.suite, parent.run_id)
        if store.state(folder) == "done":
            problem = store.model_problem(folder)
            if problem is not None:
                damaged.append((parent, problem))
    return damaged


def _steps_done(folder: Path) -> int:
    """The step a running run last reported in its heartbeat."""
    try:
        return int(json.loads((folder / store.HEARTBEAT).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


def grid_cells(specs: list[RunSpec]) -> list[dict]:
    """One row per planned run (label, bits, test domain by name, seed, run id): the grid a leaderboard
    names its pending cells from. Ensembles count as cells; the FP parents that --only brings are the
    suite's own erm runs."""
    from qatbench.runner.sweep import named_test_domains  # sweep imports the training stack

    return [
        {
            "suite": spec.suite,
            "label": spec.label,
            "bits": spec.bits_label,
            "domain": named_test_domains(spec),
            "seed": spec.seed,
            "run_id": spec.run_id,
        }
        for spec in specs
    ]
