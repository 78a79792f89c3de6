"""Resumable checkpoints of a run in progress: `resume.pt` holds the SHA-256 of its payload on its
first line, then the payload (model, method state, RNG states, the step reached, the run id and the
versions that wrote it), written atomically in one file, so no crash can leave a checkpoint and a
checksum that disagree. A checkpoint that does not match its checksum (a disk that filled up, a copy
cut short), belongs to another run or version, or cannot be applied, is reported, removed, and the
run starts over instead of failing; the finished run removes it, except a diverged run, which keeps
its last checkpoint as `before_divergence.pt` (the last checkpointed step k before the diverged
one, with the weights update k + 1 started from) so that what went wrong can be looked at; nothing in
qatbench reads it back (`read_file` does, for a user).

The payload holds tensors and plain data only (numpy's RNG state travels as a tensor), and is read
with `torch.load(weights_only=True)`, whose unpickler admits nothing else: the SHA-256 line is a
checksum, not a signature, so a crafted checkpoint in a shared results folder must not be able to
run code. Such a file is refused like a corrupt one, in `run` and in `clean --incomplete`.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qatbench.errors import excerpt, first_line
from qatbench.methods.state import restore, snapshot
from qatbench.records import integrity
from qatbench.runner import store
from qatbench.version import __version__

RESUME = "resume.pt"
BEFORE_DIVERGENCE = "before_divergence.pt"


def rng_state() -> dict[str, Any]:
    """Every RNG state as tensors and plain containers (what `weights_only=True` reads back)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian)
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _versions() -> dict[str, str]:
    return {"qatbench": str(__version__), "torch": str(torch.__version__)}  # TorchVersion: a class


def save(
    folder: Path,
    step: int,
    model: torch.nn.Module,
    method: Any,
    step_times: list[float],
    run_id: str,
    divergence: dict[str, Any] | None = None,
) -> None:
    """Checkpoint after `step` updates, checksum and payload in one atomic write."""
    state = {
        "run_id": run_id,
        "versions": _versions(),
        "step": step,
        "model": model.state_dict(),
        "method": snapshot(method, model),
        "rng": rng_state(),
        "step_times": list(step_times),
        "divergence": divergence or {},  # the divergence monitor's running average
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    store.atomic_write_bytes(Path(folder) / RESUME, hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def _read(folder: Path) -> dict[str, Any]:
    return read_file(Path(folder) / RESUME)


def read_file(path: Path) -> dict[str, Any]:
    """A checkpoint file's payload (tensors and plain data only), after its checksum is checked."""
    data = Path(path).read_bytes()
    digest, _, payload = data.partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise ValueError("its SHA-256 does not match its content")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's message runs over many lines; name what it refused
        refused = re.search(r"GLOBAL (\S+)", str(exc))
        what = refused.group(1) if refused else first_line(exc)
        raise ValueError(f"it holds more than tensors and plain data ({excerpt(what, 100)}), refused") from None


def valid(folder: Path) -> bool:
    """Whether the folder holds a checkpoint that reads back whole (for `clean`, which keeps those)."""
    path = Path(folder) / RESUME
    try:
        return path.is_file() and isinstance(_read(folder), dict)
    except Exception as exc:  # noqa: BLE001
        integrity.warning("unusable checkpoint %s (%s)", path, excerpt(exc, 300))
        return False


def load(folder: Path, run_id: str) -> dict[str, Any] | None:
    """The run's last checkpoint, or None: none, or unusable (then removed, with a warning)."""
    path = Path(folder) / RESUME
    if not path.is_file():
        return None
    try:
        state = _read(folder)
        if state.get("run_id") != run_id or state.get("versions") != _versions():
            raise ValueError(f"written by run {state.get('run_id')} with {state.get('versions')}")
        return state
    except Exception as exc:  # noqa: BLE001  (whatever is wrong with it, the run starts over)
        integrity.warning("unusable checkpoint %s (%s): removed; the run starts over", path, excerpt(exc, 300))
        discard(folder)
        return None


def apply(state: dict[str, Any], model: torch.nn.Module, method: Any) -> None:
    """Weights and method state of the checkpoint; the RNG is set by the caller once the data is replayed."""
    model.load_state_dict(state["model"])
    restore(method, state["method"], model)


def keep_before_divergence(folder: Path, run_id: str, diverged_step: int) -> int | None:
    """Keep a diverged run's last checkpoint as BEFORE_DIVERGENCE; the step k it holds (k < the
    diverged step: its weights are the ones update k + 1 started from), or None when the run had
    none this time (it diverged before its first checkpoint), or it is another run's, a later
    step's (left by an earlier attempt) or unreadable."""
    path = Path(folder) / RESUME
    if not path.is_file():
        return None
    try:
        state = read_file(path)
        if state.get("run_id") != run_id or not int(state["step"]) < diverged_step:
            raise ValueError(f"it holds step {state.get('step')} of run {state.get('run_id')}")
        path.replace(Path(folder) / BEFORE_DIVERGENCE)
        return int(state["step"])
    except Exception as exc:  # noqa: BLE001  (a diverged run's record is written whatever this file is)
        integrity.warning("checkpoint %s not kept for the diverged run (%s)", path, excerpt(exc, 300))
        return None


def discard(folder: Path) -> None:
    """The checkpoint, and any temporary file a save killed halfway left beside it."""
    (Path(folder) / RESUME).unlink(missing_ok=True)
    for leftover in Path(folder).glob(f".{RESUME}.*.tmp"):
        leftover.unlink(missing_ok=True)
