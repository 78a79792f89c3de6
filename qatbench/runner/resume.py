"""Resumable checkpoints of a run in progress: `resume.pt` (model, method state, RNG states, the
step reached) with its SHA-256 in `resume.sha256`, both written atomically, the checksum last. A
checkpoint whose bytes do not match its checksum (a disk that filled up, a copy cut short) is
reported, removed, and the run starts over instead of crashing; the finished run removes it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qatbench.methods.state import restore, snapshot
from qatbench.runner import store

RESUME = "resume.pt"
CHECKSUM = "resume.sha256"

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(folder: Path, step: int, model: torch.nn.Module, method: Any, step_times: list[float]) -> None:
    """Checkpoint after `step` updates; the checksum is written last, so a torn write is never trusted."""
    state = {
        "step": step,
        "model": model.state_dict(),
        "method": snapshot(method, model),
        "rng": rng_state(),
        "step_times": list(step_times),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    store.atomic_write_bytes(Path(folder) / RESUME, data)
    store.atomic_write_bytes(Path(folder) / CHECKSUM, hashlib.sha256(data).hexdigest().encode())


def load(folder: Path) -> dict[str, Any] | None:
    """The run's last checkpoint, or None (none, or corrupt: then it is removed, with a warning)."""
    path, checksum = Path(folder) / RESUME, Path(folder) / CHECKSUM
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != checksum.read_text().strip():
            raise ValueError("its SHA-256 does not match resume.sha256")
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001  (whatever is wrong with it, the run starts over)
        log.warning("corrupt checkpoint %s (%s): removed; the run starts over", path, exc)
        discard(folder)
        return None


def apply(state: dict[str, Any], model: torch.nn.Module, method: Any) -> None:
    """Weights and method state of the checkpoint; the RNG is set by the caller once the data is replayed."""
    model.load_state_dict(state["model"])
    restore(method, state["method"], model)


def discard(folder: Path) -> None:
    (Path(folder) / RESUME).unlink(missing_ok=True)
    (Path(folder) / CHECKSUM).unlink(missing_ok=True)
