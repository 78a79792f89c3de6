"""A model trained elsewhere, evaluated (and analysed) like any run of the suite.

The runner loads the file instead of training: a qatbench `model.pt` (its record.json beside it
names the architecture and QuantSpec) or a plain `state_dict` of a named architecture with the
suite entry's `bits`. The file's SHA-256 is the run's only hyperparameter, so the same weights
give the same run id wherever the file lies, and different weights never share one.
"""

from __future__ import annotations

from dataclasses import dataclass

from qatbench.methods.base import Method, Minibatches
from qatbench.methods.hparams import hparam
from qatbench.methods.registry import METHODS


@dataclass(frozen=True)
class CheckpointHParams:
    sha256: str = hparam("", "qatbench: the checkpoint file's, filled in by qatbench, never by hand")


@METHODS.register("checkpoint", summary="evaluates a checkpoint trained elsewhere (no training)")
class Checkpoint(Method):
    kind = "checkpoint"
    HParams = CheckpointHParams

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        raise RuntimeError("a checkpoint is evaluated, not trained: its runs have 0 steps")
