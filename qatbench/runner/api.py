"""The Python entry points behind `qatbench run`: load a suite, run it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from qatbench import config
from qatbench.config import RunSpec, Suite
from qatbench.data import DATASETS, resolve_data_root
from qatbench.errors import UserError, allowed_list, did_you_mean
from qatbench.provenance import FingerprintCache, stale_reason
from qatbench.runner import store
from qatbench.runner.catalog import CATALOG
from qatbench.runner.launchers import run_local, submit_slurm
from qatbench.runner.sweep import SweepSummary, named_test_domains, plan, run_specs
from qatbench.runner.train import resolve_device


def load_suite(path: str | os.PathLike, overrides: Sequence[str] = ()) -> Suite:
    """Read and validate a suite against the registered methods, datasets and models."""
    return config.load_suite(path, overrides, catalog=CATALOG)


def expand(suite: Suite, only: Sequence[str] = ()) -> list[RunSpec]:
    """Every run of the suite (or of the method entries labelled in `only`), FP parents of QAT
    runs included, in the order they will run."""
    return plan(select(config.expand(suite, CATALOG), suite, only))


def select(specs: list[RunSpec], suite: Suite, only: Sequence[str]) -> list[RunSpec]:
    """The runs of the method entries named in `only` (by label); all of them when it is empty.
    The parents of the kept QAT runs stay the suite's, whatever is left out."""
    if not only:
        return specs
    labels = [m.label or m.name for m in suite.methods]
    for label in only:
        if label not in labels:
            raise UserError(
                f"--only: no method entry labelled '{label}'{did_you_mean(label, labels)}; "
                f"allowed: {allowed_list(labels)}"
            )
    return [spec for spec in specs if spec.label in only]


def check_results_folder(folder: Path) -> None:
    """Runs can write under `folder`: a file in its place, or a folder this user cannot write, is
    the user's mistake, told before any run (not a `failed` record per run, which could not be written)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--results: {existing} is a file, not a folder; name a folder for the results")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--results: {existing} is not writable by this user; name a folder you can write")


def run(
    suite: Suite | str | os.PathLike,
    results: str | os.PathLike = "results",
    *,
    data_root: str | os.PathLike | None = None,
    device: str = "auto",
    progress: bool = True,
    only: Sequence[str] = (),
    workers: int = 1,
    launcher: str = "local",
    rerun_stale: bool = False,
) -> SweepSummary:
    """Run every run of `suite` not already finished under `results` on `workers` local processes;
    returns their records. `rerun_stale`: finished runs whose data differs from the data on disk now
    are trained again (else they stay finished, and the summary flags them)."""
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    root = resolve_data_root(data_root, suite.data_root)
    check_results_folder(Path(results) / suite.name)
    resolve_device(device)  # a bad --device is the user's mistake, not a failure of every run
    specs = select(config.expand(suite, CATALOG), suite, only)
    if launcher == "slurm":
        jobs, summary = submit_slurm(
            specs, Path(results), suite.slurm, data_root=root, device=device, rerun_stale=rerun_stale
        )
        if summary is None:  # a real cluster: the jobs run on; `qatbench status` follows them
            return SweepSummary(submitted=[str(job.job_id) for job in jobs])
        return summary
    if workers > 1:
        return run_local(
            specs, Path(results), workers, data_root=root, device=device, progress=progress, rerun_stale=rerun_stale
        )
    return run_specs(specs, Path(results), data_root=root, device=device, progress=progress, rerun_stale=rerun_stale)


def dry_run(
    suite: Suite, results: str | os.PathLike, only: Sequence[str] = (), data_root: str | os.PathLike | None = None
) -> list[str]:
    """One line per run (its state: finished, stale or pending; test domains by name), then the data
    roots the runs would read. A data root that is given and missing is a UserError (exit 2)."""
    root = resolve_data_root(data_root, suite.data_root)
    specs = expand(suite, only)
    prints = FingerprintCache()
    lines, counts = [], {"finished": 0, "stale": 0, "pending": 0}
    for spec in specs:
        record = store.read_record(store.run_dir(Path(results), spec.suite, spec.run_id))
        state = "pending"
        if record is not None and record.get("status") in store.FINISHED:
            state = "stale" if stale_reason(record, root, prints) else "finished"
        counts[state] += 1
        lines.append(
            f"{spec.run_id}  {state:8s}  {spec.label:10s} {spec.bits_label:5s} {spec.dataset} "
            f"test_envs={list(spec.test_envs)} ({named_test_domains(spec)}) seed={spec.seed} steps={spec.steps}"
        )
    summary = f"{len(specs)} runs in suite '{suite.name}': {counts['pending']} to run"
    if counts["stale"]:
        summary += f", {counts['stale']} stale (their data has changed on disk; --rerun-stale retrains them)"
    lines.append(summary)
    on_disk = sorted({s.dataset for s in specs if DATASETS.entry(s.dataset).meta.get("needs_root", True)})
    if on_disk and root is None:
        lines.append(
            f"no data root: {', '.join(on_disk)} read from disk; `run` needs --data-root DIR or $QATBENCH_DATA"
        )
    elif on_disk:
        lines.append(f"data root: {root} (read by {', '.join(on_disk)})")
    return lines
