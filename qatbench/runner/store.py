"""Run folders on disk: `results/<suite>/<run_id>/` holding record.json (written last and
atomically), curve.jsonl (one line per evaluation), model.pt and, for failed runs, error.log.

A record is the truth of a run; a folder without one is a run that never finished.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from qatbench.records import (
    CURVE,
    ERROR_LOG,
    FINISHED,
    FLOAT_CURVE,
    MODEL,
    RECORD,
    atomic_write_bytes,
    flatten,
    read_record,
    write_json,
)

__all__ = [
    "CURVE",
    "ERROR_LOG",
    "FINISHED",
    "FLOAT_CURVE",
    "MODEL",
    "RECORD",
    "atomic_write_bytes",
    "flatten",
    "is_finished",
    "read_record",
    "run_dir",
    "save_model",
    "write_json",
]


def run_dir(results: Path, suite: str, run_id: str) -> Path:
    return Path(results) / suite / run_id


def save_model(path: Path, model: torch.nn.Module) -> None:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def is_finished(folder: Path) -> bool:
    record = read_record(folder)
    return record is not None and record.get("status") in FINISHED
