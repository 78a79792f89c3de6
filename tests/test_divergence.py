"""An exploded run is `diverged` with its step and loss, never a `done` result in the tables; a
merely bad quantized model (PTQ at 2 bits, near chance) stays `done`."""

from __future__ import annotations

import math

import pytest
import torch

from qatbench.runner import api, resume, store
from qatbench.runner.divergence import Diverged, DivergenceMonitor
from tests.conftest import write_suite

SUITE = """\
name: explode
datasets: [{name: RotatedMNIST, test_envs: [0]}]
models: [{name: small_cnn, options: {width: 4}}]
methods:
  - {name: erm, label: exploding, hparams: {lr: 1000000.0}}
  - {name: ptq, label: ptq2}
parent: {name: erm, hparams: {lr: 0.05}}
bits: [W2A2]
seeds: [0]
training: {steps: 30, batch_size: 8, eval_every: 30, eval_batch_size: 1024, checkpoint_every: 0}
"""


def test_a_learning_rate_of_1e6_is_diverged_with_its_step_and_loss(tmp_path):
    suite = api.load_suite(write_suite(tmp_path, SUITE))
    records = {r["label"]: r for r in api.run(suite, tmp_path / "results", progress=False).records}
    exploded = records["exploding"]  # the FP erm run (the suite's parent) trained at lr 1e6
    assert exploded["status"] == "diverged" and exploded["diverge_factor"] == 4.0
    assert 1 <= exploded["diverged_step"] < 30 and exploded["diverged_loss"] > 4 * math.log(10)
    assert "training.diverge_factor" in exploded["error"] or "loss became" in exploded["error"]
    bad = records["ptq2"]  # 2-bit PTQ of a sane parent: about chance, and a result all the same
    assert bad["status"] == "done" and bad["id_acc"] < 0.5


def test_a_diverged_run_keeps_its_last_checkpoint_from_before_the_loss_broke(tmp_path):
    suite = api.load_suite(write_suite(tmp_path, SUITE.replace("checkpoint_every: 0", "checkpoint_every: 1")))
    records = {r["label"]: r for r in api.run(suite, tmp_path / "results", progress=False).records}
    exploded = records["exploding"]
    assert exploded["status"] == "diverged" and exploded["diverged_step"] >= 2  # checkpointed after step 1
    assert exploded["checkpoint_before_divergence.file"] == resume.BEFORE_DIVERGENCE
    assert exploded["checkpoint_before_divergence.step"] == exploded["diverged_step"] - 1
    assert exploded["environments"] == ["0", "15", "30", "45", "60", "75"] and exploded["num_classes"] == 10
    folder = store.run_dir(tmp_path / "results", "explode", exploded["run_id"])
    assert not (folder / resume.RESUME).exists()
    kept = resume.read_file(folder / resume.BEFORE_DIVERGENCE)  # checksum checked, weights_only
    assert kept["step"] == exploded["diverged_step"] - 1 and kept["run_id"] == exploded["run_id"]
    assert all(torch.isfinite(t).all() for t in kept["model"].values() if t.is_floating_point())
    finished = store.run_dir(tmp_path / "results", "explode", records["ptq2"]["run_id"])
    assert not list(finished.glob("*divergence*")) and "checkpoint_before_divergence.step" not in records["ptq2"]


def test_loss_far_above_its_start_diverges_and_a_chance_level_loss_does_not():
    monitor = DivergenceMonitor(4.0, num_classes=10)
    for step in range(1, 200):  # a QAT run from a parent at loss 0.05 drifting to chance (ln 10)
        monitor.update(step, {"loss": 0.05 if step < 20 else math.log(10)})
    monitor = DivergenceMonitor(4.0, num_classes=10)
    monitor.update(1, {"loss": 2.3})
    with pytest.raises(Diverged) as info:
        for step in range(2, 50):
            monitor.update(step, {"loss": 1e9})
    assert info.value.step == 2 and info.value.loss == 1e9  # the smoothed loss passes 9.2 at once
    with pytest.raises(Diverged, match="loss became"):
        DivergenceMonitor(0, 10).update(3, {"loss": float("nan")})
    off = DivergenceMonitor(0, 10)
    for step in range(1, 10):
        off.update(step, {"loss": 1e9})  # factor 0: only a non-finite loss counts
