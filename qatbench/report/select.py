"""Model selection: which evaluation of a run its reported accuracies come from.

DomainBed's semantics (Gulrajani & Lopez-Paz 2021, Sec. 3 and `model_selection.py`), applied to the
checkpoints of one run; qatbench suites fix hparams (as SWAD and SAGM report), so there is one
configuration per method, bits, seed and domain, and the choice among configurations that DomainBed
adds on top reduces to it:

- training-domain validation: the evaluation with the best mean accuracy on the training domains'
  held-out `out` splits (`id_acc`); early stopping is allowed, ties go to the earlier checkpoint;
- test-domain oracle: the last evaluation (DomainBed disallows early stopping for the oracle), its
  validation the test domains' `out` splits, so the OOD accuracy it reports is that of the test
  domains' `in` splits, the data it never looked at;
- last checkpoint: the last evaluation, OOD accuracy on the whole test domain.
"""

from __future__ import annotations

import logging

import pandas as pd

log = logging.getLogger(__name__)


class Selection:
    name = ""
    description = ""
    ood_description = "on the whole test domain"  # where the reported OOD accuracy is measured

    def score(self, curve: pd.DataFrame, test_envs: list[int]) -> pd.Series:
        """Validation score per evaluation; the maximum is chosen."""
        raise NotImplementedError

    def reported(self, row: pd.Series, test_envs: list[int]) -> pd.Series:
        """The chosen evaluation as reported (OOD and I.D. accuracy)."""
        return row

    def select(self, curves: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
        """One row per run: the chosen evaluation's metrics, indexed by run_id."""
        rows = []
        for run_id, test_envs in records[["run_id", "test_envs"]].itertuples(index=False):
            curve = curves[curves["run_id"] == run_id]
            try:
                score = self.score(curve, list(test_envs)).dropna()
                if score.empty:
                    log.warning("run %s: its curve has no values to select on; not shown", run_id)
                    continue
                # first best: ties go to the earlier checkpoint
                rows.append(self.reported(curve.loc[score.idxmax()].copy(), list(test_envs)))
            except KeyError as exc:
                log.warning("run %s: its curve lacks %s; not shown", run_id, exc)
        return pd.DataFrame(rows).set_index("run_id") if rows else pd.DataFrame()


class TrainingDomainValidation(Selection):
    name = "training_domain"
    description = "training-domain validation"

    def score(self, curve, test_envs):
        return curve["id_acc"]


class TestDomainOracle(Selection):
    __test__ = False  # not a pytest class
    name = "oracle"
    description = "test-domain oracle (last checkpoint; the test domains' out splits are its validation)"
    ood_description = "on the test domains' in splits"

    def score(self, curve, test_envs):
        if not test_envs:
            raise KeyError("a test domain (the oracle needs one)")
        return curve["step"]

    def reported(self, row, test_envs):
        in_splits = [row[f"env{t}_in_acc"] for t in test_envs]
        if any(pd.isna(acc) for acc in in_splits):  # curves of runs are concatenated: absent reads NaN
            raise KeyError(", ".join(f"env{t}_in_acc" for t in test_envs))
        row["ood_acc"] = sum(in_splits) / len(in_splits)
        return row


class LastCheckpoint(Selection):
    name = "last"
    description = "last checkpoint"

    def score(self, curve, test_envs):
        return curve["step"]


SELECTIONS = {cls.name: cls for cls in (TrainingDomainValidation, TestDomainOracle, LastCheckpoint)}
