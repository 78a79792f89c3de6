"""Ensembles of finished runs, evaluated as one model: `ensemble` (of full-precision runs, the
DomainBed-style baseline) and `eoq` (QT-DoG's Ensemble of Quantized models).

- ensemble: Lakshminarayanan, Pritzel, Blundell, "Simple and Scalable Predictive Uncertainty
  Estimation using Deep Ensembles", NeurIPS 2017 (arXiv:1612.01474): the prediction is the mean of
  the members' predicted probabilities (their Sec. 2.4); members differ by their seed only.
- eoq: Javed, Le, Salzmann, "QT-DoG: Quantization-aware Training for Domain Generalization", ICML
  2025 (arXiv:2410.06020): 5 `qtdog` models of different seeds, ensembled "using the same method as
  Ensemble of Averages (EoA)" (saqibjaved1/QT-DoG README.md l. 71). EoA's code
  (salesforce/ensemble-of-averages domainbed/EoA.py, `accuracy`) sums the members' logits and
  takes the argmax, so `eoq` averages logits by default; `average: probabilities` is the other way.

1. the suite names the members by a method entry's label (`members`); the grid makes one
   ensemble per dataset, test environment(s), model and bit width, over all the suite's seeds
2. each member's model.pt is loaded into its architecture, quantized as it was trained
3. scores = mean over members of softmax(member(x)) (or of member(x): `average: logits`)
4. prediction = argmax scores; the record's accuracies are those of the ensemble

The runner does 1-2 (qatbench/config/grid.py, qatbench/runner/ensemble.py); this class is 3-4.
Nothing is trained: an ensemble's runs have 0 steps, and it waits for its members in a sweep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn import functional as F

from qatbench.methods.base import Method, Minibatches
from qatbench.methods.hparams import hparam
from qatbench.methods.registry import METHODS

Average = Literal["probabilities", "logits"]


@dataclass(frozen=True)
class EnsembleHParams:
    members: str = hparam("erm", "DomainBed-style FP ensemble: the label of the entry whose seeds are the members")
    average: Average = hparam("probabilities", "Deep Ensembles (Lakshminarayanan et al. 2017) Sec. 2.4")


@dataclass(frozen=True)
class EoqHParams:
    members: str = hparam("qtdog", "QT-DoG README (EoQ: an ensemble of QT-DoG models)")
    average: Average = hparam("logits", "EoA code (salesforce/ensemble-of-averages domainbed/EoA.py `accuracy`)")


def ensemble_scores(logits: list[torch.Tensor], average: Average) -> torch.Tensor:
    """Scores whose argmax is the ensemble's prediction: log of the mean probabilities (so that
    cross-entropy on them is the ensemble's negative log-likelihood), or the mean logits."""
    if average == "logits":
        return torch.stack(logits).mean(dim=0)
    probabilities = torch.stack([F.softmax(z, dim=1) for z in logits]).mean(dim=0)
    return probabilities.log()


class Ensemble(Method):
    """`model` is an nn.ModuleList of the members, each in eval mode for good."""

    kind = "ensemble"
    trains = False
    compilable = False
    HParams = EnsembleHParams

    def update(self, minibatches: Minibatches) -> dict[str, float]:
        raise RuntimeError("an ensemble evaluates its members, it does not train: its runs have 0 steps")

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return ensemble_scores([member(x) for member in self.model], self.hparams.average)

    def train(self) -> None:  # members keep their BN statistics: an ensemble is only ever evaluated
        self.model.eval()


METHODS.register(
    "ensemble",
    summary="ensemble of finished runs (averaged softmax of one entry's seeds)",
    paper="Lakshminarayanan et al., NeurIPS 2017, arXiv:1612.01474",
)(Ensemble)


@METHODS.register(
    "eoq",
    summary="QT-DoG's ensemble of quantized models (members: qtdog runs of every seed)",
    paper="Javed et al., ICML 2025, arXiv:2410.06020",
)
class EnsembleOfQuantized(Ensemble):
    HParams = EoqHParams
