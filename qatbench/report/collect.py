"""Records on disk -> pandas. The only way any table or figure learns about a run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from qatbench.records import CURVE, RECORD, integrity
from qatbench.report.parents import with_parent_differences


def load_records(results: str | Path = "results") -> pd.DataFrame:
    """One row per record.json under `results` (any depth), every status; `run_dir` added.

    Unreadable records are reported in the log and skipped; they never stop a report. A QAT run's
    sharpness minus its FP parent's is added as `hessian.trace_minus_parent` (and `..._top_eigenvalue_...`).
    """
    rows = []
    for path in sorted(Path(results).rglob(RECORD)):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            integrity.warning("skipping unreadable record %s: %s", path, exc)
            continue
        if not isinstance(record, dict) or not {"run_id", "status"} <= set(record):
            integrity.warning("skipping record %s: not a run record (a JSON object with run_id and status)", path)
            continue
        record["run_dir"] = str(path.parent)
        rows.append(record)
    return with_parent_differences(pd.DataFrame(rows))


def load_curves(records: pd.DataFrame) -> pd.DataFrame:
    """The evaluation curves of the given runs, long format: one row per (run_id, step)."""
    frames = []
    for row in records.to_dict("records"):
        run_id = row["run_id"]
        curve_file = row.get("curve_file")
        path = Path(row["run_dir"]) / (curve_file if isinstance(curve_file, str) else CURVE)
        try:
            rows, skipped = read_curve(path)
        except OSError as exc:
            integrity.warning("run %s: no readable curve at %s (%s)", run_id, path, exc)
            continue
        if skipped:
            integrity.warning("run %s: %d line(s) of %s are not evaluations (torn or not objects): skipped",
                              run_id, skipped, path)
        curve = pd.DataFrame(rows)
        if not curve.empty:
            frames.append(curve.assign(run_id=run_id))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id", "step"])


def read_curve(path: Path) -> tuple[list[dict], int]:
    """The evaluation rows of a curve file, and how many lines were skipped: a line torn by a crash,
    or valid JSON that is not an object, drops that line, not the run. (json, not pd.read_json:
    its default float parser is not exact.)"""
    rows, skipped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            skipped += 1
    return rows, skipped
