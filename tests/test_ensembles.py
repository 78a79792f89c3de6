"""Ensembles as runs (`ensemble`, `eoq`): the prediction is the averaged softmax (or logits) of the
members, an ensemble of one member is that member, members are every seed of one entry, and an
ensemble whose members are missing or failed is a failed run that names them."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import qatbench
from qatbench.config.analysis import AnalysisConfig, HessianConfig
from qatbench.errors import UserError
from qatbench.methods import METHODS
from qatbench.methods.ensemble import ensemble_scores
from qatbench.runner import run_one, store
from qatbench.runner.analyze import analyze_run
from qatbench.runner.api import expand
from qatbench.runner.evaluate import count_correct
from qatbench.runner.sweep import plan
from tests.conftest import write_suite

# three members' logits (rows: examples) on three one-hot inputs, and the labels
LOGITS = [
    [[10.0, 0.0], [0.0, 1.0], [1.0, 0.0]],  # member A
    [[0.0, 3.0], [0.0, 1.0], [1.0, 0.0]],  # member B
    [[0.0, 3.0], [1.0, 0.0], [0.0, 5.0]],  # member C
]
LABELS = [1, 1, 0]


def _members() -> nn.ModuleList:
    members = nn.ModuleList()
    for table in LOGITS:
        layer = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor(table).T)  # one-hot example i -> row i of the table
        members.append(layer)
    return members


def _hand_averaged_probabilities(i: int) -> list[float]:
    rows = [[math.exp(v) / sum(math.exp(u) for u in table[i]) for v in table[i]] for table in LOGITS]
    return [sum(r[c] for r in rows) / 3 for c in range(2)]


def test_ensemble_accuracy_is_that_of_the_averaged_probabilities():
    # by hand: mean softmax picks class 1, 1, 1 -> 2 of 3 right; mean logits pick 0, 1, 1 -> 1 of 3;
    # a majority vote would pick 1, 1, 0 -> 3 of 3
    assert [max(range(2), key=lambda c: _hand_averaged_probabilities(i)[c]) for i in range(3)] == [1, 1, 1]
    data = TensorDataset(torch.eye(3), torch.tensor(LABELS))
    ensemble = METHODS.get("ensemble")(_members(), 2, {"members": "x"})
    assert count_correct(ensemble.predict, data, 2, torch.device("cpu")) == (2, 3)
    probabilities = ensemble.predict(torch.eye(3)).exp()
    expected = torch.tensor([_hand_averaged_probabilities(i) for i in range(3)])
    torch.testing.assert_close(probabilities, expected)
    by_logits = METHODS.get("ensemble")(_members(), 2, {"members": "x", "average": "logits"})
    assert count_correct(by_logits.predict, data, 2, torch.device("cpu")) == (1, 3)


def test_eoq_averages_logits_as_eoa_does_and_ensemble_probabilities():
    assert METHODS.get("eoq").HParams().average == "logits"
    assert METHODS.get("eoq").HParams().members == "qtdog"
    assert METHODS.get("ensemble").HParams().average == "probabilities"


def test_ensemble_scores_of_one_member_rank_as_its_logits():
    logits = torch.tensor([[0.3, -1.0, 2.0], [5.0, 4.0, -3.0]])
    torch.testing.assert_close(ensemble_scores([logits], "probabilities"), logits.log_softmax(dim=1))
    torch.testing.assert_close(ensemble_scores([logits], "logits"), logits)


SUITE = """\
name: ens
datasets:
  - {{name: RotatedMNIST, test_envs: [5], data_seed: 0}}
models:
  - {{name: small_cnn, options: {{width: 4}}}}
methods:
  - {{name: erm, hparams: {{lr: 0.01}}}}
  - {{name: ensemble, label: erm_ensemble{hparams}}}
seeds: {seeds}
training: {{steps: 12, batch_size: 8, eval_every: 12, eval_batch_size: 4096}}
"""


def _suite(tmp_path, seeds="[0]", hparams=""):
    return qatbench.load_suite(write_suite(tmp_path, SUITE.format(seeds=seeds, hparams=hparams)))


def test_an_ensemble_run_of_one_member_equals_that_member(tmp_path):
    specs = expand(_suite(tmp_path))
    erm, ensemble = specs
    assert (erm.method, ensemble.method) == ("erm", "ensemble") and ensemble.members == (erm,)
    results = tmp_path / "results"
    member = run_one(erm, results, progress=False)
    record = run_one(ensemble, results, progress=False)
    assert record["status"] == "done", record.get("error")
    accuracies = [k for k in member if k.endswith("_acc") and member[k] is not None]
    assert len(accuracies) >= 6 * 3 + 2
    assert {k: record[k] for k in accuracies} == {k: member[k] for k in accuracies}
    assert record["members"] == [erm.run_id] and record["model_file"] is None and record["steps"] == 0
    assert record["bits"] == "FP" and record["label"] == "erm_ensemble"
    folder = store.run_dir(results, "ens", ensemble.run_id)
    assert not (folder / store.MODEL).exists()
    with pytest.raises(UserError, match="an ensemble of 1 runs has no single model to analyse"):
        analyze_run(folder, AnalysisConfig(hessian=HessianConfig()))


def test_ensemble_members_are_every_seed_and_come_first_in_the_plan(tmp_path):
    specs = expand(_suite(tmp_path, seeds="[0, 1, 2]"))
    ensemble = next(s for s in specs if s.members)
    assert [m.seed for m in ensemble.members] == [0, 1, 2]
    assert {m.run_id for m in ensemble.members} == {s.run_id for s in specs if s.method == "erm"}
    ordered = plan([ensemble])  # asked for alone (--only erm_ensemble): its members come along, first
    assert [s.method for s in ordered] == ["erm", "erm", "erm", "ensemble"]
    other = expand(_suite(tmp_path, seeds="[0, 1]"))
    assert next(s for s in other if s.members).run_id != ensemble.run_id  # other members, other id


def test_ensemble_with_missing_then_failed_members_fails_naming_them(tmp_path):
    specs = expand(_suite(tmp_path, seeds="[0, 1]"))
    ensemble = next(s for s in specs if s.members)
    results = tmp_path / "results"
    record = run_one(ensemble, results, progress=False)
    assert record["status"] == "failed"
    for member in ensemble.members:
        assert f"erm seed {member.seed} ({member.run_id})" in record["error"]
    assert "not run yet" in record["error"]
    failed = ensemble.members[1]
    store.write_json(store.run_dir(results, "ens", failed.run_id) / store.RECORD, {"status": "failed", "error": "boom"})
    record = run_one(ensemble, results, progress=False)
    assert record["status"] == "failed"
    assert f"did not finish: erm seed 1 ({failed.run_id}): failed: boom" in record["error"]


@pytest.mark.parametrize(
    "change, message",
    [
        ("seeds", "datasets[0].data_seed: the ensemble methods[1] averages runs of 2 seeds"),
        ("members", "methods[1].hparams.members: no other method entry labelled 'ermm' (did you mean 'erm'?)"),
    ],
)
def test_ensemble_suite_mistakes_are_one_line(tmp_path, change, message):
    text = SUITE.format(seeds="[0, 1]", hparams=", hparams: {members: ermm}" if change == "members" else "")
    if change == "seeds":
        text = text.replace(", data_seed: 0", "")
    with pytest.raises(UserError, match=re.escape(message)):
        qatbench.load_suite(write_suite(tmp_path, text))
