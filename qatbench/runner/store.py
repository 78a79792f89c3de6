"""Run folders on disk: `results/<suite>/<run_id>/` holding record.json (written last and
atomically), curve.jsonl (one line per evaluation), model.pt and, for failed runs, error.log.

A record is the truth of a run; a folder without one is a run that never finished.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

RECORD = "record.json"
CURVE = "curve.jsonl"
MODEL = "model.pt"
ERROR_LOG = "error.log"
FINISHED = ("done", "diverged")  # a rerun would give the same result: never run twice


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)


def read_record(folder: Path) -> dict[str, Any] | None:
    """The record of a run folder, or None when it has none (unfinished) or it is unreadable."""
    try:
        return json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None


def is_finished(folder: Path) -> bool:
    record = read_record(folder)
    return record is not None and record.get("status") in FINISHED


def flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'hparams': {'lr': 0.1}} -> {'hparams.lr': 0.1}: flat keys, one column each in pandas."""
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
