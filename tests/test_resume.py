"""A killed run resumes from its last checkpoint and ends with exactly the numbers of an uninterrupted
one (CPU): weights, method state, RNG states and the data order are all restored. A corrupt
checkpoint is detected by its checksum and the run starts over."""

from __future__ import annotations

import pytest
import torch

from qatbench.runner import api, resume, store
from tests.conftest import write_suite

SUITE = """\
name: resume
datasets: [{{name: RotatedMNIST, test_envs: [0]}}]
models: [{{name: small_cnn, options: {{width: 8}}}}]
methods:
  - {{name: erm, hparams: {{lr: 0.01}}}}
{extra}bits: [W4A4]
seeds: [0]
training: {{steps: 16, batch_size: 8, eval_every: 4, eval_batch_size: 512, checkpoint_every: 4}}
"""
METHODS = ["erm", "sam", "asam", "sagm", "gam", "lsq", "lsq_plus", "pact", "dorefa", "kd", "lsq_sam", "lsq_sagm"]
METHODS += ["gaqat", "fqat", "fpq", "cr", "mec", "ptq", "dnq"]


class Killed(Exception):
    pass


def _suite(tmp_path, method: str, **replace: str):
    steps = "" if method == "ptq" else ", steps: 16"  # ptq trains nothing
    extra = "" if method == "erm" else f"  - {{name: {method}{steps}}}\n"
    text = SUITE.format(extra=extra)
    for old, new in replace.items():
        text = text.replace(old, new)
    return write_suite(tmp_path, text)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def _run(suite, results):
    summary = api.run(api.load_suite(suite), results, progress=False)
    return {r["label"]: r for r in summary.records}


def _curve(results, record):
    return (results / "resume" / record["run_id"] / store.CURVE).read_text()


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_a_killed_run_resumes_to_exactly_the_uninterrupted_numbers(tmp_path, monkeypatch, method):
    suite = _suite(tmp_path, method)
    straight = _run(suite, tmp_path / "straight")
    save = resume.save

    def killed_after_step_8(folder, step, *args):
        save(folder, step, *args)
        if step == 8 and not (folder / "killed-once").exists():
            (folder / "killed-once").touch()
            raise Killed("the process died here")

    monkeypatch.setattr(resume, "save", killed_after_step_8)
    first = _run(suite, tmp_path / "resumed")
    label = method
    if method != "ptq":  # ptq trains nothing: nothing to kill
        assert first[label]["status"] == "failed" and "Killed" in first[label]["error"]
    for _ in range(2):  # the parent is killed once too; each rerun goes on from the checkpoints
        again = _run(suite, tmp_path / "resumed")
    ours, theirs = again[label], straight[label]
    assert ours["status"] == theirs["status"] == "done"
    if method != "ptq":
        assert ours["resumed_from_step"] == 8 and theirs["resumed_from_step"] is None
    for key in [k for k in theirs if k.endswith("_acc") or k.startswith("train.")]:
        assert ours[key] == theirs[key], key
    assert _curve(tmp_path / "resumed", ours) == _curve(tmp_path / "straight", theirs)
    folders = [d / "resume" / r["run_id"] for d, r in ((tmp_path / "resumed", ours), (tmp_path / "straight", theirs))]
    assert _same(*(torch.load(f / store.MODEL, weights_only=False) for f in folders))  # bit for bit
    assert not (tmp_path / "resumed" / "resume" / ours["run_id"] / resume.RESUME).exists()  # removed once done


def test_a_corrupt_checkpoint_is_reported_and_the_run_starts_over(tmp_path, caplog):
    folder = tmp_path / "run"
    model = torch.nn.Linear(2, 2)
    resume.save(folder, 7, model, object(), [0.1], "run-a")
    assert resume.load(folder, "run-a")["step"] == 7
    data = bytearray((folder / resume.RESUME).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    (folder / resume.RESUME).write_bytes(bytes(data))
    (folder / ".resume.pt.x1.tmp").write_bytes(b"half a save")  # what a kill during a save leaves
    assert resume.load(folder, "run-a") is None
    assert "unusable checkpoint" in caplog.text and "SHA-256" in caplog.text
    assert list(folder.iterdir()) == []  # the checkpoint and the torn temporary file are gone


def test_a_checkpoint_of_another_run_or_version_is_not_used(tmp_path, caplog, monkeypatch):
    folder = tmp_path / "run"
    resume.save(folder, 7, torch.nn.Linear(2, 2), object(), [0.1], "run-a")
    assert resume.load(folder, "run-b") is None and "written by run run-a" in caplog.text
    resume.save(folder, 7, torch.nn.Linear(2, 2), object(), [0.1], "run-a")
    monkeypatch.setattr(resume, "_versions", lambda: {"qatbench": "9.9", "torch": "0"})
    assert resume.load(folder, "run-a") is None and not (folder / resume.RESUME).exists()


def test_a_diverged_run_keeps_only_its_own_checkpoint_from_before_the_diverged_step(tmp_path, caplog):
    folder = tmp_path / "run"
    resume.save(folder, 7, torch.nn.Linear(2, 2), object(), [0.1], "run-a")
    assert resume.keep_before_divergence(folder, "run-b", 9) is None and "of run run-a" in caplog.text
    assert resume.keep_before_divergence(folder, "run-a", 7) is None  # an earlier attempt's, from a later step
    data = bytearray((folder / resume.RESUME).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / resume.RESUME).write_bytes(bytes(data))
    assert resume.keep_before_divergence(folder, "run-a", 9) is None and "SHA-256" in caplog.text
    assert not (folder / resume.BEFORE_DIVERGENCE).exists()
    resume.save(folder, 7, torch.nn.Linear(2, 2), object(), [0.1], "run-a")
    assert resume.keep_before_divergence(folder, "run-a", 8) == 7
    assert resume.read_file(folder / resume.BEFORE_DIVERGENCE)["step"] == 7 and not (folder / resume.RESUME).exists()
    assert resume.keep_before_divergence(tmp_path / "none", "run-a", 8) is None  # diverged before any checkpoint


def test_a_checkpoint_that_does_not_fit_restarts_the_run_instead_of_failing_it(tmp_path, monkeypatch, caplog):
    suite = _suite(tmp_path, "erm")
    straight = _run(suite, tmp_path / "straight")["erm"]
    save = resume.save

    def killed_after_step_8(folder, step, *args):
        save(folder, step, *args)
        if step == 8:
            raise Killed("the process died here")

    monkeypatch.setattr(resume, "save", killed_after_step_8)
    assert _run(suite, tmp_path / "resumed")["erm"]["status"] == "failed"
    monkeypatch.setattr(resume, "save", save)
    monkeypatch.setattr(resume, "restore", lambda *args: (_ for _ in ()).throw(AttributeError("renamed attribute")))
    again = _run(suite, tmp_path / "resumed")["erm"]
    assert again["status"] == "done" and again["resumed_from_step"] is None  # started over, not failed
    assert "checkpoint unusable (AttributeError: renamed attribute)" in caplog.text
    assert again["ood_acc"] == straight["ood_acc"]
