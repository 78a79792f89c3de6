"""Faults become records or one warning, never a traceback: a full disk at a heartbeat or at the
record, a parent model.pt that is missing (trained again and restored when it reproduces its record)
or damaged (named by the child's error and by `status`, with the command that retrains it), curve
lines that are not evaluations."""

from __future__ import annotations

import errno
import json
import logging
import os
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch

from qatbench import records
from qatbench.cli import main
from qatbench.report import render_regenerated
from qatbench.report.collect import load_curves, load_records
from qatbench.runner import api, store
from qatbench.runner.regenerate import NOTE, child_fields, regenerate_parent, wants_regeneration
from tests.conftest import ROOT, write_suite

SUITE = """\
name: faults
datasets: [{name: RotatedMNIST, test_envs: [0]}]
models: [{name: small_cnn, options: {width: 4}}]
methods: [{name: erm, hparams: {lr: 0.01}}, {name: lsq, steps: 4}]
bits: [W4A4]
seeds: [0]
training: {steps: 4, batch_size: 8, eval_every: 4, eval_batch_size: 1024, checkpoint_every: 0}
"""


def full_disk_for(name: str, monkeypatch, module=store):
    """Writes of files called `name` fail as on a full disk."""
    write = module.atomic_write_bytes

    def refuse(path, data):
        if path.name == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(path, data)

    monkeypatch.setattr(module, "atomic_write_bytes", refuse)


def _run(suite, results, **kwargs):
    return {r["label"]: r for r in api.run(api.load_suite(suite), results, progress=False, **kwargs).records}


def test_a_full_disk_at_the_heartbeat_is_a_warning_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    full_disk_for(store.HEARTBEAT, monkeypatch)
    done = _run(write_suite(tmp_path, SUITE), tmp_path / "results", only=["erm"])
    assert done["erm"]["status"] == "done"
    assert "cannot write the heartbeat" in caplog.text and "No space left on device" in caplog.text


def test_a_full_disk_at_the_record_is_a_failed_run_and_the_sweep_goes_on(tmp_path, monkeypatch):
    suite = write_suite(tmp_path, SUITE)
    full_disk_for(store.RECORD, monkeypatch, records)
    failed = _run(suite, tmp_path / "results")
    assert {r["status"] for r in failed.values()} == {"failed"}
    assert failed["erm"]["error"] == "cannot write record.json: No space left on device"
    monkeypatch.undo()  # space again: the next sweep trains what could not be kept
    assert {r["status"] for r in _run(suite, tmp_path / "results").values()} == {"done"}


def test_a_parent_without_its_model_pt_is_trained_again_and_restored_when_its_curve_is_reproduced(tmp_path):
    """A fresh clone of committed records has no model.pt (not committed): the sweep trains the parent
    again, keeps its record as it was, and its child starts from the same weights."""
    suite, results = write_suite(tmp_path, SUITE), tmp_path / "results"
    parent = _run(suite, results, only=["erm"])["erm"]
    folder = store.run_dir(results, "faults", parent["run_id"])
    kept = torch.load(folder / store.MODEL, weights_only=True)
    (folder / store.MODEL).unlink()
    child = _run(suite, results)["lsq"]
    assert child["status"] == "done", child
    restored = torch.load(folder / store.MODEL, weights_only=True)
    assert restored.keys() == kept.keys() and all(torch.equal(restored[k], kept[k]) for k in kept)
    assert store.read_record(folder) == parent  # the committed record is not rewritten
    assert json.loads((folder / NOTE).read_text())["exact"] is True
    assert not any(key.startswith("parent_regenerated") for key in child)
    assert render_regenerated(load_records(results)) == ""


def _shift_final_id_acc(folder: Path, by: float, key: str = "id_acc") -> float:
    """Make the committed record one this code does not reproduce: its final accuracy `key` moved."""
    curve = [json.loads(line) for line in (folder / store.CURVE).read_text().splitlines()]
    curve[-1][key] += by
    (folder / store.CURVE).write_text("".join(json.dumps(row) + "\n" for row in curve))
    record = store.read_record(folder)
    store.write_json(folder / store.RECORD, {**record, key: record[key] + by})
    return record[key]


def _parent_without_weights(tmp_path: Path, tolerance: float) -> tuple[Path, Path, dict, Path]:
    """A finished erm parent whose model.pt is gone, as on a new machine: (suite, results, record, folder)."""
    with_tolerance = SUITE.replace("checkpoint_every: 0}", f"checkpoint_every: 0, parent_tolerance: {tolerance}}}")
    suite = write_suite(tmp_path, with_tolerance)
    results = tmp_path / "results"
    parent = _run(suite, results, only=["erm"])["erm"]
    folder = store.run_dir(results, "faults", parent["run_id"])
    (folder / store.MODEL).unlink()
    return suite, results, parent, folder


def test_a_parent_that_differs_within_the_tolerance_is_restored_and_its_children_say_so(tmp_path):
    suite, results, parent, folder = _parent_without_weights(tmp_path, tolerance=0.02)
    trained = _shift_final_id_acc(folder, 0.015)
    child = _run(suite, results)["lsq"]
    assert child["status"] == "done" and (folder / store.MODEL).is_file()
    assert child["parent_regenerated.id_acc"] == trained  # the weights it started from, trained again
    assert child["parent_regenerated.difference"].startswith("step 4: id_acc")
    assert child["parent_regenerated.tolerance"] == 0.02
    text = render_regenerated(load_records(results))  # the leaderboard names the run and both starts
    (row,) = [line for line in text.splitlines() if line.startswith("| faults")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    recorded = f"{100 * (trained + 0.015):.1f} / {100 * parent['ood_acc']:.1f}"
    assert cells == ["faults", "lsq", "W4A4", child["environments"][0], "0", parent["run_id"], recorded,
                     f"{100 * trained:.1f} / {100 * parent['ood_acc']:.1f}", "2.0 points"], text


def test_a_parent_further_off_than_the_tolerance_is_refused_and_not_trained_again_at_that_tolerance(tmp_path):
    suite, results, parent, folder = _parent_without_weights(tmp_path, tolerance=0.02)
    _shift_final_id_acc(folder, 0.05, "ood_acc")  # OOD 5 points off
    child = _run(suite, results)["lsq"]
    assert child["status"] == "failed" and "ood_acc" in child["error"] and "parent_tolerance 0.02" in child["error"]
    spec = next(s for s in api.expand(api.load_suite(suite)) if s.label == "erm")
    assert not wants_regeneration(spec, folder)  # the same machine would train the same network again
    assert wants_regeneration(replace(spec, parent_tolerance=0.1), folder)  # a wider tolerance may accept it


def test_a_parent_recorded_on_another_device_is_refused_before_training_and_notes_follow_the_weights(tmp_path):
    suite = write_suite(tmp_path, SUITE.replace("checkpoint_every: 0}", "checkpoint_every: 0, parent_tolerance: 0.5}"))
    results = tmp_path / "results"
    _run(suite, results, only=["erm"])
    spec = next(s for s in api.expand(api.load_suite(suite)) if s.label == "erm")
    folder = store.run_dir(results, "faults", spec.run_id)
    weights = (folder / store.MODEL).read_bytes()
    store.write_json(folder / store.RECORD, {**store.read_record(folder), "device": "cuda:0"})
    (folder / store.MODEL).unlink()

    def never(*args, **kwargs):
        raise AssertionError("trained although the devices differ")

    note = regenerate_parent(spec, results, never, data_root=None, device="cpu")
    assert not note["restored"] and note["difference"] == "this sweep trains on cpu, the record on cuda:0"
    assert not (folder / store.MODEL).exists()
    store.atomic_write_bytes(folder / store.MODEL, weights)
    fake = {**json.loads((folder / NOTE).read_text()), "restored": True, "exact": False, "model_sha256": "0" * 64}
    store.write_json(folder / NOTE, fake)
    assert child_fields(folder) == {}  # its hash names other weights than the model.pt there


def test_a_damaged_parent_is_named_by_its_child_and_by_status_with_the_command_that_retrains_it(
    tmp_path, capsys, caplog
):
    suite, results = write_suite(tmp_path, SUITE), tmp_path / "results"
    parent = _run(suite, results, only=["erm"])["erm"]
    folder = store.run_dir(results, "faults", parent["run_id"])
    model = folder / store.MODEL
    model.write_bytes(model.read_bytes()[:100])  # cut short
    _shift_final_id_acc(folder, 0.125)  # not reproduced, and no tolerance: its weights stay out
    child = _run(suite, results)["lsq"]
    assert child["status"] == "failed"
    assert f"parent run {parent['run_id']}: {model} is damaged (" in child["error"]
    assert "trained again, it differs from its record: step 4: id_acc" in child["error"]
    assert "weights not restored" in caplog.text and len(model.read_bytes()) == 100
    assert "training.parent_tolerance 0.0" in child["error"]
    assert main(["status", str(suite), "--results", str(results)]) == 0
    (damaged,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("damaged:")]
    assert f"damaged: parent run {parent['run_id']} (erm): {model} (" in damaged
    command = damaged.split("to retrain its record too: ")[1]
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # `qatbench` of this interpreter, this checkout
    env = {**os.environ, "QATBENCH_QUIET": "1", "PYTHONPATH": str(ROOT), "PATH": path}
    assert subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, env=env).returncode == 0, command
    assert {json.loads(p.read_text())["status"] for p in results.rglob(store.RECORD)} == {"done"}
    assert shlex.split(command)[0] == "rm"


def test_curve_lines_that_are_not_evaluations_are_skipped_and_counted(tmp_path, caplog):
    folder = tmp_path / "results" / "s" / "run-a"
    folder.mkdir(parents=True)
    (folder / store.RECORD).write_text(json.dumps({"run_id": "run-a", "status": "done", "curve_file": store.CURVE}))
    lines = ['{"step": 1, "id_acc": 0.5}', "[1, 2]", '"text"', "7", '{"step": 2, "id_', '{"step": 3, "id_acc": 0.75}']
    (folder / store.CURVE).write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        curves = load_curves(load_records(tmp_path / "results"))
    assert curves["step"].tolist() == [1, 3] and curves["id_acc"].tolist() == [0.5, 0.75]
    assert "run run-a: 4 line(s) of" in caplog.text and "skipped" in caplog.text


def test_clean_removes_what_a_kill_left_mid_write_and_quiet_still_reports_damage(tmp_path):
    suite, results = write_suite(tmp_path, SUITE), tmp_path / "results"
    done = _run(suite, results, only=["erm"])["erm"]
    folder = store.run_dir(results, "faults", done["run_id"])
    leftovers = [folder / ".record.json.k1x.tmp", folder / ".model.pt.k2y.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a write")
    lsq = [s for s in api.expand(api.load_suite(suite)) if s.label == "lsq"][0]
    dead = store.run_dir(results, "faults", lsq.run_id)
    dead.mkdir(parents=True)
    (dead / store.RECORD).write_text('{"run_id": "cut sh')  # a damaged record: reported though quiet
    out = subprocess.run(
        [sys.executable, "-m", "qatbench.cli", "clean", str(suite), "--incomplete", "--results", str(results)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "QATBENCH_QUIET": "1"},
    )
    assert out.returncode == 0 and "2 temporary file(s) of interrupted writes removed" in out.stdout
    assert not any(path.exists() for path in leftovers) and store.is_finished(folder)
    assert f"unreadable record {dead / store.RECORD}" in out.stderr


def test_records_and_models_are_written_with_the_users_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        records.write_json(tmp_path / store.RECORD, {"status": "done"})
        assert (tmp_path / store.RECORD).stat().st_mode & 0o777 == 0o644
        os.umask(0o007)
        records.atomic_write_bytes(tmp_path / store.MODEL, b"x")
        assert (tmp_path / store.MODEL).stat().st_mode & 0o777 == 0o660
    finally:
        os.umask(previous)
