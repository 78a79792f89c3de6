"""Run folders on disk: `results/<suite>/<run_id>/` holding record.json (written last and
atomically), curve.jsonl (one line per evaluation), model.pt and, for failed runs, error.log.

A record is the truth of a run; a folder without one is a run that never finished.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from qatbench.records import CURVE, ERROR_LOG, FINISHED, MODEL, RECORD, flatten, read_record

__all__ = [
    "CURVE",
    "ERROR_LOG",
    "FINISHED",
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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, allow_nan=True) + "\n").encode())


def save_model(path: Path, model: torch.nn.Module) -> None:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def is_finished(folder: Path) -> bool:
    record = read_record(folder)
    return record is not None and record.get("status") in FINISHED
