"""The run store under concurrency and crashes: a run's lock keeps a second process off it, dies with
its holder (even kill -9), and `status` / `clean --incomplete` tell running, dead and finished runs apart."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qatbench.cli import main
from qatbench.runner import store
from tests.conftest import ROOT, TINY_SUITE, run_cli, write_suite

HOLD = """import sys, time
from qatbench.runner import store
with store.claim(sys.argv[1]) as mine:
    print(mine, flush=True)
    time.sleep(60)
"""


def _holder(folder: Path) -> subprocess.Popen:
    """Another process holding the run's lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "True"
    return proc


def test_a_claimed_run_is_refused_to_a_second_process_until_its_holder_dies(tmp_path):
    folder = tmp_path / "suite" / "run"
    holder = _holder(folder)
    try:
        assert store.is_locked(folder) and store.state(folder) == "running"
        with store.claim(folder) as mine:
            assert mine is False
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: no cleanup code runs; the kernel drops the lock
        holder.wait()
    assert not store.is_locked(folder)
    with store.claim(folder) as mine:
        assert mine is True and store.is_locked(folder)  # held (by us, now)
    (folder / store.CURVE).write_text("{}\n")  # what a crash leaves: a partial run, no record
    assert store.state(folder) == "dead"


def test_states_of_run_folders(tmp_path):
    assert store.state(tmp_path / "nothing") == "pending"
    for status in ("done", "diverged", "failed"):
        store.write_json(tmp_path / status / store.RECORD, {"run_id": status, "status": status})
        assert store.state(tmp_path / status) == status
    other = tmp_path / "other-node"
    beat = {"pid": 1, "host": socket.gethostname() + "-elsewhere", "step": 3, "steps": 10, "time": time.time()}
    store.atomic_write_bytes(other / store.HEARTBEAT, json.dumps(beat).encode())
    assert store.state(other) == "running"  # another node's fresh heartbeat: its lock may be invisible
    store.atomic_write_bytes(other / store.HEARTBEAT, json.dumps({**beat, "time": time.time() - 3600}).encode())
    assert store.state(other) == "dead"
    local = tmp_path / "this-node"
    store.beat(local, 3, 10)  # this node, fresh, but nobody holds the lock: the process died
    assert store.state(local) == "dead"


def _trained(stdout: str) -> tuple[int, int, int]:
    """(runs trained, runs reused, runs left to another process) from a `qatbench run` summary line."""
    match = re.search(r"(\d+) runs: .*\((\d+) already finished, skipped\)(?:; (\d+) left to another)?", stdout)
    assert match, stdout
    total, reused, elsewhere = int(match[1]), int(match[2]), int(match[3] or 0)
    return total - reused, reused, elsewhere


@pytest.mark.slow
def test_two_concurrent_runs_of_one_suite_train_each_run_exactly_once(tmp_path, capsys):
    suite = write_suite(tmp_path, TINY_SUITE)
    results = tmp_path / "results"
    env = {**os.environ, "QATBENCH_QUIET": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "qatbench.cli", "run", str(suite), "--results", str(results)]
    procs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    trained = [_trained(out)[0] for out in outputs]
    assert sum(trained) == 4, outputs  # 2 erm + 2 lsq, each trained by exactly one of the two
    records = [json.loads(p.read_text()) for p in results.rglob(store.RECORD)]
    assert len(records) == 4 and {r["status"] for r in records} == {"done"}
    assert main(["run", str(suite), "--results", str(results), "--quiet"]) == 0
    assert _trained(capsys.readouterr().out) == (0, 4, 0)  # nothing left to do, nothing trained twice


def test_status_counts_and_clean_removes_only_dead_partial_runs(tmp_path, capsys):
    suite = write_suite(tmp_path, TINY_SUITE)
    results = tmp_path / "results"
    assert main(["run", str(suite), "--results", str(results), "--dry-run"]) == 0  # in process; the holder is not
    listing = capsys.readouterr().out.splitlines()
    run_ids = [line.split()[0] for line in listing if line.split()[1:2] == ["pending"]]
    assert len(run_ids) == 4
    done, dead, failed, running = (results / "tiny" / run_id for run_id in run_ids)
    store.write_json(done / store.RECORD, {"run_id": run_ids[0], "status": "done", "wall_time_s": 8.0})
    (dead.mkdir(parents=True), (dead / store.CURVE).write_text('{"step": 40}\n'))
    store.write_json(failed / store.RECORD, {"run_id": run_ids[2], "status": "failed", "error": "boom"})
    holder = _holder(running)
    try:
        assert main(["status", str(suite), "--results", str(results)]) == 0
        status = capsys.readouterr().out
        assert "4 runs: 1 done, 0 diverged, 1 failed, 1 running, 1 dead, 0 pending" in status
        assert "ETA for the 2 left: 1 min (one worker)" in status  # 2 x 8 s, by the measured run
        assert main(["clean", str(suite), "--incomplete", "--results", str(results)]) == 0
        assert "1 dead partial run(s) of suite 'tiny' removed" in capsys.readouterr().out
        assert not (dead / store.CURVE).exists() and store.state(dead) == "pending"  # its lock file stays
        assert done.is_dir() and failed.is_dir() and running.is_dir()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_out_of_memory_is_a_failed_record_with_a_hint_and_the_sweep_goes_on(tmp_path, monkeypatch):
    import torch

    from qatbench.runner import api, train

    suite = api.load_suite(write_suite(tmp_path, TINY_SUITE))
    calls = []

    def exhausted(spec, *args, **kwargs):
        calls.append(spec.run_id)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train, "_train", exhausted)
    summary = api.run(suite, tmp_path / "results", progress=False)
    assert len(calls) == 4 and summary.counts == {"failed": 4}  # every run tried: one failure stops nothing
    record = store.read_record(tmp_path / "results" / "tiny" / calls[0])
    assert record["error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" + train.OOM_HINT
    assert "Traceback" in (tmp_path / "results" / "tiny" / calls[0] / store.ERROR_LOG).read_text()


def test_a_corrupt_record_is_reported_and_its_run_counts_as_unfinished(tmp_path, caplog):
    folder = tmp_path / "suite" / "run"
    folder.mkdir(parents=True)
    (folder / store.RECORD).write_text('{"run_id": "run", "status": "do')  # cut short
    assert store.read_record(folder) is None and not store.is_finished(folder)
    assert "unreadable record" in caplog.text and str(folder / store.RECORD) in caplog.text
    assert store.state(folder) == "dead"  # a partial run: clean --incomplete may remove it, run redoes it


def test_clean_keeps_a_killed_run_that_can_resume(tmp_path):
    import torch

    from qatbench.runner import resume
    from qatbench.runner.status import clean_incomplete

    suite = write_suite(tmp_path, TINY_SUITE)
    specs = api_specs(suite)
    folder = tmp_path / "results" / "tiny" / specs[0].run_id
    resume.save(folder, 40, torch.nn.Linear(2, 2), object(), [0.1], specs[0].run_id)
    (folder / store.CURVE).write_text('{"step": 40}\n')
    assert store.state(folder) == "dead"
    removed, kept = clean_incomplete(specs, tmp_path / "results")
    assert removed == [] and kept == [folder] and (folder / resume.RESUME).is_file()


def api_specs(suite):
    from qatbench.runner import api

    return api.expand(api.load_suite(suite))


# four PTQ runs that fail once they run (more calibration images asked than the data holds; a
# missing weights file would be refused before any run) and their FP parent, which does not fail
FAILING = """\
name: faults
datasets: [{name: RotatedMNIST, test_envs: [0]}]
models: [{name: small_cnn, options: {width: 4}}]
methods: [{name: erm}, {name: ptq}]
bits: [W2A2, W3A3, W4A4, W8A8]
quant: {calib_images: 1000000}
seeds: [0]
training: {steps: 2, batch_size: 4, eval_every: 2}
"""


@pytest.mark.slow
def test_workers_try_a_failing_run_once_per_sweep(tmp_path):
    """Failed runs are retried by the next sweep, but within one sweep no second worker repeats one."""
    suite = write_suite(tmp_path, FAILING)
    out = run_cli("run", str(suite), "--results", str(tmp_path / "results"), "--workers", "2", timeout=600)
    assert out.returncode == 1, out.stdout + out.stderr
    match = re.search(r"5 runs: 1 done, 4 failed .*trained by 2 workers: (\d+) \+ (\d+)", out.stdout)
    assert match and int(match[1]) + int(match[2]) == 5, out.stdout
