"""Nothing read from a results folder or a data root runs code: a crafted checkpoint or CIFAR batch
is refused in one line, and the marker file its pickle would create never appears."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch

from qatbench.data import build_dataset
from qatbench.data.cifar import _unpickle
from qatbench.errors import UserError
from qatbench.runner import api, resume, store
from tests.conftest import run_cli, write_suite
from tests.test_cifar_imagenet import cifar_rows, make_cifar10

SUITE = """\
name: crafted
datasets: [{name: RotatedMNIST, test_envs: [0]}]
models: [{name: small_cnn, options: {width: 4}}]
methods: [{name: erm, hparams: {lr: 0.01}}]
bits: [W8A8]
seeds: [0]
training: {steps: 4, batch_size: 8, eval_every: 4, eval_batch_size: 512, checkpoint_every: 2}
"""


class Creates:
    """Unpickling calls open(path, 'w'): the file appears only if the loader runs code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def crafted_checkpoint(folder, marker) -> None:
    payload = pickle.dumps({"step": 2, "model": Creates(marker)})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / resume.RESUME).write_bytes(hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def test_a_crafted_checkpoint_is_refused_by_run_and_clean_and_runs_no_code(tmp_path):
    suite = write_suite(tmp_path, SUITE)
    (spec,) = api.expand(api.load_suite(suite))
    folder = store.run_dir(tmp_path / "results", spec.suite, spec.run_id)
    marker = tmp_path / "marker"

    crafted_checkpoint(folder, marker)
    cleaned = run_cli("clean", str(suite), "--incomplete", "--results", str(tmp_path / "results"))
    assert cleaned.returncode == 0 and not marker.exists()
    refused = [line for line in cleaned.stderr.splitlines() if "unusable checkpoint" in line]
    assert len(refused) == 1 and "refused" in refused[0] and len(refused[0]) < 600  # one line, even when quiet
    assert not (folder / resume.RESUME).exists()  # a dead run's folder: emptied

    crafted_checkpoint(folder, marker)
    ran = run_cli("run", str(suite), "--results", str(tmp_path / "results"))
    assert ran.returncode == 0, ran.stderr
    assert not marker.exists()
    refused = [line for line in ran.stderr.splitlines() if "unusable checkpoint" in line]
    assert len(refused) == 1 and "the run starts over" in refused[0] and len(refused[0]) < 600
    record = store.read_record(folder)
    assert record["status"] == "done" and record["resumed_from_step"] is None


def test_a_checkpoint_holds_only_tensors_and_plain_data(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    method = type("Method", (), {})()
    method.optimizer, method.generator = optimizer, torch.Generator().manual_seed(3)
    resume.save(tmp_path, 5, model, method, [0.1], "run-a")
    state = resume.load(tmp_path, "run-a")  # through weights_only=True
    assert state["step"] == 5 and torch.equal(state["model"]["weight"], model.weight.detach())
    np.random.seed(7)
    before = resume.rng_state()
    expected = np.random.rand(3)
    resume.set_rng_state(before)
    assert np.array_equal(np.random.rand(3), expected)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_read_with_numpy_arrays_under_every_pickle_protocol(tmp_path, protocol):
    make_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    rows = cifar_rows(0, 4)
    with open(batch, "wb") as f:
        pickle.dump({b"batch_label": b"testing", b"data": rows, b"labels": [1, 2, 3, 4]}, f, protocol=protocol)
    read = _unpickle(batch)
    assert np.array_equal(read["data"], rows) and read["labels"] == [1, 2, 3, 4]
    assert read["batch_label"] == b"testing"
    assert build_dataset("CIFAR10", tmp_path, 0).num_classes == 10


def test_a_tampered_cifar_batch_is_refused_and_runs_no_code(tmp_path):
    make_cifar10(tmp_path)
    marker = tmp_path / "marker"
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({b"data": Creates(marker), b"labels": [1]}))
    with pytest.raises(UserError) as info:
        build_dataset("CIFAR10", tmp_path, 0)
    assert not marker.exists()
    assert str(info.value).startswith(f"{batch}: not a CIFAR python pickle (UnpicklingError: refers to io.open, which")
    assert len(str(info.value).splitlines()) == 1
