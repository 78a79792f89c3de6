"""Weights a finished parent run no longer has, trained again and checked against its record.

A suite's records are committed, its model.pt files are not (19 MB each for EfficientNet-Lite0), so a
fresh clone that resumes a grid holds finished FP parents without the weights their from_fp_run
children start from. The parent is trained again, with the `compile` setting its record says it ran
with, in a scratch folder, and its curve is compared with the committed one at every evaluation
(every accuracy exactly, the losses to float rounding). Reproduced: the weights are the record's
and are installed. Not reproduced (measured: the same code, torch and seed on another CPU of this
project's machine gave 45.4% instead of 43.9% OOD at step 300; float kernels differ between CPUs):
the weights are installed only when `training.parent_tolerance` allows the final I.D. and OOD
accuracies' difference, and every child trained from them carries `parent_regenerated.*` (the
difference, the new parent's accuracies) in its record. Otherwise the record stays as it is, the
weights stay missing, and the children fail naming the first difference; the user decides whether
to retrain the parent and its record (`rm -r` the folder). The outcome is NOTE, beside the record.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from qatbench.config import RunSpec
from qatbench.runner import store

LOSS_RTOL = 1e-6  # losses: float rounding of a reduction, not a different training run
NOTE = "regenerated.json"  # the last regeneration's outcome, beside the parent's record (not committed)
COMPARED = ("id_acc", "ood_acc")  # what parent_tolerance bounds, at the final evaluation


def regenerate_parent(parent: RunSpec, results: Path, train, *, data_root, device: str) -> dict[str, Any]:
    """Train `parent` again in a scratch folder; install its model.pt when its curve reproduces the
    committed one, or its final accuracies are within `parent.parent_tolerance`. Returns the note
    written beside the record: restored, exact, difference, and both final accuracies. `train` is
    `run_one`."""
    folder = store.run_dir(results, parent.suite, parent.run_id)
    record = store.read_record(folder) or {}
    again = dataclasses.replace(parent, compile=bool(record.get("compiled", False)), analysis=None)
    scratch = Path(tempfile.mkdtemp(prefix="qatbench-regenerate-"))  # outside results/: no report reads it
    try:
        fresh = train(again, scratch, data_root=data_root, device=device, progress=False)
        made = store.run_dir(scratch, parent.suite, parent.run_id)
        note = {"tolerance": parent.parent_tolerance, **{f"record.{k}": record.get(k) for k in COMPARED}}
        if fresh.get("status") != "done":
            note["difference"] = f"the run again ended {fresh.get('status')}: {fresh.get('error', '')}"
        elif fresh.get("device") != record.get("device"):
            note["difference"] = f"trained on {fresh.get('device')}, the record on {record.get('device')}"
        else:
            note.update({f"again.{k}": fresh.get(k) for k in COMPARED})
            note["difference"] = curve_mismatch(_curve(folder / store.CURVE), _curve(made / store.CURVE))
        note["exact"] = note["difference"] is None
        note["restored"] = note["exact"] or _within(note, parent.parent_tolerance)
        if note["restored"]:
            store.atomic_write_bytes(folder / store.MODEL, (made / store.MODEL).read_bytes())
        store.write_json(folder / NOTE, note)
        return note
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _within(note: dict[str, Any], tolerance: float) -> bool:
    pairs = [(note.get(f"record.{k}"), note.get(f"again.{k}")) for k in COMPARED]
    numbers = all(isinstance(a, int | float) and isinstance(b, int | float) for a, b in pairs)
    return tolerance > 0 and numbers and all(abs(a - b) <= tolerance for a, b in pairs)


def child_fields(parent_folder: Path) -> dict[str, Any]:
    """What a child's record says about its parent's weights when they were trained again and differ
    from the parent's record (nothing when they are the record's own)."""
    try:
        note = json.loads((Path(parent_folder) / NOTE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(note, dict) or not note.get("restored") or note.get("exact"):
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
    try:
        note = json.loads((Path(parent_folder) / NOTE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(note, dict) or note.get("restored"):
        return None
    accuracies = ", ".join(
        f"{k} {note.get(f'again.{k}')} against {note.get(f'record.{k}')}" for k in COMPARED if f"again.{k}" in note
    )
    return f"{note.get('difference')}" + (
        f" (final {accuracies}; training.parent_tolerance {note.get('tolerance')})" if accuracies else ""
    )


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
