"""What a run folder holds, named once for the runner that writes it and the report that reads
it (the report must stay torch-free, so this module imports nothing but the standard library)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
# Damaged or refused files (records, checkpoints, curves, caches): said even in quiet mode, which
# hides only progress and advice (the CLI keeps this logger at WARNING).
integrity = logging.getLogger("qatbench.integrity")

RECORD = "record.json"  # written last and atomically: a folder without one never finished
CURVE = "curve.jsonl"  # one line per evaluation
FLOAT_CURVE = "curve_float.jsonl"  # PTQ runs: the float model's evaluations before it is quantized
MODEL = "model.pt"  # the final state_dict
ERROR_LOG = "error.log"  # traceback of a failed run
FINISHED = ("done", "diverged")  # a rerun would give the same result: never run twice


def read_record(folder: Path) -> dict[str, Any] | None:
    """The record of a run folder, or None when it has none (unfinished) or it is unreadable (then
    said in the log: the run counts as unfinished and is run again)."""
    path = Path(folder) / RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        integrity.warning("unreadable record %s (%s): the run counts as unfinished", path, exc)
        return None
    if not isinstance(record, dict):
        integrity.warning("record %s is not a JSON object: the run counts as unfinished", path)
        return None
    return record


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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers see all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from the user's group
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, allow_nan=True) + "\n").encode())
