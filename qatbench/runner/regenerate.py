"""Weights a finished parent run no longer has, trained again and checked against its record.

A suite's records are committed, its model.pt files are not (19 MB each for EfficientNet-Lite0), so a
fresh clone that resumes a grid holds finished FP parents without the weights their from_fp_run
children start from. Training is seeded and deterministic on one device and thread count, so the
parent is trained again, with the `compile` setting its record says it ran with, in a scratch folder;
its weights replace the missing file only when the new curve reproduces the committed one at every
evaluation (every accuracy exactly, the losses to float rounding). Otherwise the record stays as it
is, the weights stay missing, and the reason (the first evaluation that differs) is written beside
the record: the children fail with it, and the user decides whether to retrain the parent and its
record (`rm -r` the folder).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
from pathlib import Path

from qatbench.config import RunSpec
from qatbench.runner import store

LOSS_RTOL = 1e-6  # losses: float rounding of a reduction, not a different training run
MISMATCH = "regenerate.txt"  # why the last regeneration was refused, beside the record


def regenerate_parent(parent: RunSpec, results: Path, train, *, data_root, device: str) -> str | None:
    """Train `parent` again into a scratch folder and install its model.pt when the
    curve matches the committed one; return None then, else why not. `train` is `run_one`."""
    folder = store.run_dir(results, parent.suite, parent.run_id)
    record = store.read_record(folder) or {}
    again = dataclasses.replace(parent, compile=bool(record.get("compiled", False)), analysis=None)
    scratch = Path(tempfile.mkdtemp(prefix="qatbench-regenerate-"))  # outside results/: no report reads it
    try:
        fresh = train(again, scratch, data_root=data_root, device=device, progress=False)
        made = store.run_dir(scratch, parent.suite, parent.run_id)
        if fresh.get("status") != "done":
            reason = f"the run again ended {fresh.get('status')}: {fresh.get('error', '')}"
        elif fresh.get("device") != record.get("device"):
            reason = f"trained on {fresh.get('device')}, the record on {record.get('device')}"
        else:
            reason = curve_mismatch(_curve(folder / store.CURVE), _curve(made / store.CURVE))
        if reason is None:
            store.atomic_write_bytes(folder / store.MODEL, (made / store.MODEL).read_bytes())
            (folder / MISMATCH).unlink(missing_ok=True)
        else:
            (folder / MISMATCH).write_text(reason + "\n")
        return reason
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
