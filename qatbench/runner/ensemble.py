"""The members of an ensemble run (qatbench/methods/ensemble.py), loaded from their finished runs.

A sweep runs an ensemble after its members (`sweep.plan`) and waits for members another worker is
training; a member that is missing or did not finish makes the ensemble a `failed` run whose error
names it, so the ensemble is tried again, from the same members, in the next sweep.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from qatbench.config import RunSpec
from qatbench.runner import store
from qatbench.runner.analyze import load_run_model


def member_models(spec: RunSpec, results: Path, dataset, device: torch.device) -> list[nn.Module]:
    """Each member's model as it was trained (architecture, quantization, weights), in eval mode."""
    missing, unfinished, records = [], [], []
    for member in spec.members:
        folder = store.run_dir(results, member.suite, member.run_id)
        record = store.read_record(folder)
        name = f"{member.label} seed {member.seed} ({member.run_id})"
        if record is None:
            missing.append(name)
        elif record.get("status") != "done":
            unfinished.append(f"{name}: {record.get('status')}: {record.get('error', '')}".rstrip(": "))
        records.append((record, folder))
    if unfinished:
        raise RuntimeError(f"ensemble members did not finish: {'; '.join(unfinished)}")
    if missing:
        raise RuntimeError(f"ensemble members not run yet: {', '.join(missing)}")
    return [load_run_model(record, folder / store.MODEL, dataset, device) for record, folder in records]
