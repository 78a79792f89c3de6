"""Run folders on disk: `results/<suite>/<run_id>/` holding record.json (written last and
atomically), curve.jsonl (one line per evaluation), model.pt and, for failed runs, error.log.

A record is the truth of a run; a folder without one is a run that never finished. While a process
works on a run it holds the folder's `.lock` (an advisory `flock`, released by the kernel when the
process dies, even by kill -9) and refreshes `heartbeat` (pid, host, step, time), so that a second
`qatbench run` or a Slurm array task never trains the same run, and a running run is told from a
crashed one: locked means running on this machine; unlocked without a record means dead, partial.
Over NFS, where other nodes' locks may not be visible, a heartbeat younger than `STALE_S` counts too.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from qatbench.errors import UserError, first_line
from qatbench.records import (
    CURVE,
    ERROR_LOG,
    FINISHED,
    FLOAT_CURVE,
    MODEL,
    RECORD,
    atomic_write_bytes,
    flatten,
    integrity,
    read_record,
    write_json,
)

LOCK = ".lock"
HEARTBEAT = "heartbeat"
STALE_S = 600.0  # a heartbeat older than this is a dead run's (runs beat at least every HEARTBEAT_S)
HEARTBEAT_S = 30.0
CLAIM_TRIES = 5

__all__ = [
    "CURVE",
    "HEARTBEAT",
    "LOCK",
    "ERROR_LOG",
    "FINISHED",
    "FLOAT_CURVE",
    "MODEL",
    "RECORD",
    "atomic_write_bytes",
    "beat",
    "claim",
    "heartbeat_age",
    "is_locked",
    "state",
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


@contextlib.contextmanager
def claim(folder: Path, wait: bool = False) -> Iterator[bool]:
    """Hold the run's lock while the block runs; yields False (and holds nothing) when another process
    holds it and `wait` is False. With `wait`, blocks until the other process is done with the run."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a+") as handle:
        if not _lock(handle, folder, wait):
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _lock(handle, folder: Path, wait: bool) -> bool:
    """Take the lock; without `wait`, a few short retries first: `status` probes locks for microseconds,
    and a probe must never make a worker give a run away. A filesystem without flock is one line."""
    for attempt in range(CLAIM_TRIES):
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            time.sleep(0.01 * (attempt + 1))
        except OSError as exc:
            raise UserError(
                f"{folder / LOCK}: cannot lock ({exc.strerror or exc}); the results folder needs a filesystem "
                f"with flock (on Lustre, mount with -o flock)"
            ) from None
    return False


def is_locked(folder: Path) -> bool:
    """True while a live process on this machine holds the run's lock."""
    path = Path(folder) / LOCK
    if not path.is_file():
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False


def beat(folder: Path, step: int, steps: int) -> bool:
    """Refresh the heartbeat: who works on the run, how far it is, when it last said so. A heartbeat
    that cannot be written (a full disk) is said and skipped: it reports on a run, it is not the run;
    the lock still tells a live run on this machine, and whatever the disk refuses next fails the run."""
    beat_record = {"pid": os.getpid(), "host": socket.gethostname(), "step": step, "steps": steps, "time": time.time()}
    try:
        atomic_write_bytes(Path(folder) / HEARTBEAT, json.dumps(beat_record).encode())
    except OSError as exc:
        integrity.warning("cannot write the heartbeat of %s (%s); the run goes on", folder, exc.strerror or exc)
        return False
    return True


def model_problem(folder: Path) -> str | None:
    """Why a finished run's model.pt cannot serve as a parent (missing, unreadable), or None."""
    path = Path(folder) / MODEL
    if not path.exists():
        return "not there (model.pt files are not committed: a fresh clone has none)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (a torn zip, a disk error, foreign content: all damage)
        return first_line(exc)
    return None if isinstance(state, dict) else f"holds a {type(state).__name__}, not a state_dict"


def _heartbeat(folder: Path) -> dict | None:
    try:
        found = json.loads((Path(folder) / HEARTBEAT).read_text())
        float(found["time"])
        return found
    except (OSError, ValueError, KeyError, TypeError):
        return None


def heartbeat_age(folder: Path) -> float | None:
    """Seconds since the run's last heartbeat; None when it has none."""
    found = _heartbeat(folder)
    return None if found is None else max(0.0, time.time() - float(found["time"]))


def state(folder: Path) -> str:
    """done | diverged | failed | running | dead (a partial run nobody works on) | pending (nothing yet)."""
    folder = Path(folder)
    record = read_record(folder)
    if record is not None and record.get("status") in FINISHED:
        return record["status"]
    if is_locked(folder):
        return "running"
    found = _heartbeat(folder)
    remote = found is not None and found.get("host") != socket.gethostname()
    if remote and time.time() - float(found["time"]) < STALE_S:
        return "running"  # another node's run: its lock may be invisible over NFS
    if record is not None and record.get("status") == "failed":
        return "failed"
    if folder.is_dir() and any(p.name != LOCK for p in folder.iterdir()):
        return "dead"
    return "pending"
