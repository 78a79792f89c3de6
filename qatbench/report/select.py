"""Model selection: which evaluation of a run its reported accuracies come from.

DomainBed's semantics (Gulrajani & Lopez-Paz 2021, Sec. 3), applied to the checkpoints of one
run (qatbench suites fix hparams, as SWAD/SAGM do):

- training-domain validation: the evaluation with the best mean accuracy on the training
  domains' held-out `out` splits (`id_acc`);
- last: the final evaluation.

DomainBed's test-domain oracle chooses among hparam configurations (each at its last step), so
with fixed hparams it is the last checkpoint; it arrives with hparam sweeps.
"""

from __future__ import annotations

import logging

import pandas as pd

log = logging.getLogger(__name__)


class Selection:
    name = ""
    description = ""

    def score(self, curve: pd.DataFrame, test_envs: list[int]) -> pd.Series:
        raise NotImplementedError

    def select(self, curves: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
        """One row per run: the chosen evaluation's metrics, indexed by run_id."""
        rows = []
        for run_id, test_envs in records[["run_id", "test_envs"]].itertuples(index=False):
            curve = curves[curves["run_id"] == run_id]
            try:
                score = self.score(curve, list(test_envs))
            except KeyError as exc:
                log.warning("run %s: its curve lacks %s; not shown", run_id, exc)
                continue
            score = score.dropna()
            if score.empty:
                log.warning("run %s: its curve has no values to select on; not shown", run_id)
                continue
            rows.append(curve.loc[score.idxmax()])  # first best: ties go to the earlier checkpoint
        return pd.DataFrame(rows).set_index("run_id") if rows else pd.DataFrame()


class TrainingDomainValidation(Selection):
    name = "training_domain"
    description = "training-domain validation"

    def score(self, curve, test_envs):
        return curve["id_acc"]


class LastCheckpoint(Selection):
    name = "last"
    description = "last checkpoint"

    def score(self, curve, test_envs):
        return curve["step"]


SELECTIONS = {cls.name: cls for cls in (TrainingDomainValidation, LastCheckpoint)}
