"""Weights a finished parent run no longer has, trained again and checked against its record.

A suite's records are committed, its model.pt files are not (19 MB each for EfficientNet-Lite0), so a
fresh clone that resumes a grid holds finished FP parents without the weights their from_fp_run
children start from. The parent is trained again in a scratch folder with the settings its record
names (compile, threads, divergence factor; a device other than the record's is refused before any
training), and its curve is compared with the committed one at every evaluation (every accuracy
exactly, the losses to float rounding). Reproduced: the weights are the record's and are installed.
Not reproduced (measured: the same code, torch and seed on another CPU of this project's machine
gave 45.3% instead of 43.2% OOD at step 600; float kernels differ between CPUs): the weights are
installed only when `training.parent_tolerance` allows the final I.D. and OOD accuracies'
difference, and every child trained from them carries `parent_regenerated.*` (the difference, the
new parent's accuracies) in its record. Otherwise the weights stay missing and the children fail
naming the first difference; the user decides whether to retrain the parent and its record (`rm -r`
the folder). The outcome is NOTE beside the record, with the installed weights' hash, so that a
note never describes weights that have been replaced since.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qatbench.config import RunSpec
from qatbench.runner import store

LOSS_RTOL = 1e-6  # losses: float rounding of a reduction, not a different training run
NOTE = "regenerated.json"  # the last regeneration's outcome, beside the parent's record (not committed)
COMPARED = ("id_acc", "ood_acc")  # what parent_tolerance bounds, at the final evaluation


def wants_regeneration(parent: RunSpec, folder: Path) -> bool:
    """A done parent whose model.pt cannot be loaded, not already refused at this tolerance (training
    it again on the same machine gives the same network: delete the note to try anyway)."""
    record = store.read_record(folder) or {}
    if record.get("status") != "done" or store.model_problem(folder) is None:
        return False
    note = _note(folder)
    return not (note and not note.get("restored") and note.get("tolerance") == parent.parent_tolerance)


def regenerate_parent(
    parent: RunSpec, results: Path, train: Callable[..., dict[str, Any]], *, data_root: Path | None, device: str
) -> dict[str, Any]:
    """Train `parent` again in a scratch folder; install its model.pt when its curve reproduces the
    committed one, or its final accuracies are within `parent.parent_tolerance`. Returns the note
    written beside the record: restored, exact, difference, both final accuracies and the installed
    weights' sha256. `train` is `run_one`; `device` is the resolved device the sweep trains on."""
    folder = store.run_dir(results, parent.suite, parent.run_id)
    record = store.read_record(folder) or {}
    note: dict[str, Any] = {"tolerance": parent.parent_tolerance, **{f"record.{k}": record.get(k) for k in COMPARED}}
    if device != record.get("device"):  # another device's kernels: never the record's network
        note.update(difference=f"this sweep trains on {device}, the record on {record.get('device')}")
        return _keep(folder, note, None)
    again = dataclasses.replace(  # the record's own settings where the suite's may have changed since
        parent,
        compile=bool(record.get("compiled", False)),
        threads=int(record.get("threads", parent.threads)),
        diverge_factor=float(record.get("diverge_factor", parent.diverge_factor)),
        analysis=None,
    )
    scratch = Path(tempfile.mkdtemp(prefix="qatbench-regenerate-"))  # outside results/: no report reads it
    try:
        fresh = train(again, scratch, data_root=data_root, device=device, progress=False)
        made = store.run_dir(scratch, parent.suite, parent.run_id)
        if fresh.get("status") != "done":
            note["difference"] = f"the run again ended {fresh.get('status')}: {fresh.get('error', '')}"
            return _keep(folder, note, None)
        note.update({f"again.{k}": fresh.get(k) for k in COMPARED})
        note["difference"] = curve_mismatch(_curve(folder / store.CURVE), _curve(made / store.CURVE))
        return _keep(folder, note, (made / store.MODEL).read_bytes())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _keep(folder: Path, note: dict[str, Any], weights: bytes | None) -> dict[str, Any]:
    """Decide, then write the note before the weights: a kill between the two leaves a note whose hash
    names weights that are not there, never weights without their note."""
    note["exact"] = weights is not None and note["difference"] is None
    note["restored"] = weights is not None and (note["exact"] or _within(note, note["tolerance"]))
    note["model_sha256"] = hashlib.sha256(weights).hexdigest() if note["restored"] else None
    store.write_json(folder / NOTE, note)
    if note["restored"]:
        store.atomic_write_bytes(folder / store.MODEL, weights)
    return note


def _within(note: dict[str, Any], tolerance: float) -> bool:
    pairs = [(note.get(f"record.{k}"), note.get(f"again.{k}")) for k in COMPARED]
    numbers = all(isinstance(a, int | float) and isinstance(b, int | float) for a, b in pairs)
    return tolerance > 0 and numbers and all(abs(a - b) <= tolerance for a, b in pairs)


def _note(folder: Path) -> dict[str, Any] | None:
    try:
        note = json.loads((Path(folder) / NOTE).read_text())
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) else None


def child_fields(parent_folder: Path) -> dict[str, Any]:
    """What a child's record says about its parent's weights when they were trained again and differ
    from the parent's record: nothing when they are the record's own, or when the note describes
    other weights than the model.pt there now (the parent retrained since, a file copied back)."""
    note = _note(parent_folder)
    if not note or not note.get("restored") or note.get("exact"):
        return {}
    try:
        current = hashlib.sha256((Path(parent_folder) / store.MODEL).read_bytes()).hexdigest()
    except OSError:
        return {}
    if current != note.get("model_sha256"):
        return {}
    return {
        "parent_regenerated": {
            "difference": note.get("difference"),
            "tolerance": note.get("tolerance"),
            **{k: note.get(f"again.{k}") for k in COMPARED},
        }
    }


def refusal(parent_folder: Path) -> str | None:
    """Why the last regeneration kept the weights out, if it did."""
    note = _note(parent_folder)
    if not note or note.get("restored"):
        return None
    accuracies = ", ".join(
        f"{k} {note.get(f'again.{k}')} against {note.get(f'record.{k}')}" for k in COMPARED if f"again.{k}" in note
    )
    detail = f" (final {accuracies}; training.parent_tolerance {note.get('tolerance')})" if accuracies else ""
    return f"{note.get('difference')}{detail}; delete {Path(parent_folder) / NOTE} to try again"


def curve_mismatch(committed: list[dict], fresh: list[dict]) -> str | None:
    """The first evaluation at which two curves differ: accuracies (counts over a split) exactly, the
    losses and other floats to LOSS_RTOL."""
    if [row.get("step") for row in committed] != [row.get("step") for row in fresh]:
        return (
            f"evaluated at steps {[r.get('step') for r in fresh]}, "
            f"the record at {[r.get('step') for r in committed]}"
        )
    for old, new in zip(committed, fresh):
        for key in sorted(set(old) | set(new)):
            a, b = old.get(key), new.get(key)
            same = (
                math.isclose(a, b, rel_tol=LOSS_RTOL, abs_tol=0.0)
                if not key.endswith("acc") and isinstance(a, float) and isinstance(b, float)
                else a == b
            )
            if not same:
                return f"step {old['step']}: {key} {b!r} trained again, {a!r} in the record"
    return None


def _curve(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a torn line: the curves then differ, which is the answer
            continue
    return [row for row in rows if isinstance(row, dict)]
