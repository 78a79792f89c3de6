"""Model selection: which evaluation of a run its reported accuracies come from.

DomainBed's semantics (Gulrajani & Lopez-Paz 2021, Sec. 3), applied to the checkpoints of one
run (qatbench suites fix hparams, as SWAD/SAGM do):

- training-domain validation: the evaluation with the best mean accuracy on the training
  domains' held-out `out` splits (`id_acc`);
- test-domain oracle: the best mean accuracy on the test domains' `out` splits;
- last: the final evaluation.
"""
from __future__ import annotations

import pandas as pd


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
            if curve.empty:
                continue
            score = self.score(curve, list(test_envs))
            rows.append(curve.loc[score.idxmax()])  # first best: ties go to the earlier checkpoint
        return pd.DataFrame(rows).set_index("run_id") if rows else pd.DataFrame()


class TrainingDomainValidation(Selection):
    name = "training_domain"
    description = "training-domain validation"

    def score(self, curve, test_envs):
        return curve["id_acc"]


class TestDomainOracle(Selection):
    name = "oracle"
    description = "test-domain validation (oracle)"

    def score(self, curve, test_envs):
        return curve[[f"env{i}_out_acc" for i in test_envs]].mean(axis=1)


class LastCheckpoint(Selection):
    name = "last"
    description = "last checkpoint"

    def score(self, curve, test_envs):
        return curve["step"]


SELECTIONS = {cls.name: cls for cls in (TrainingDomainValidation, TestDomainOracle, LastCheckpoint)}
