"""A run id means one set of numbers on CPU whatever launches it: every run sets its own torch
thread count (`training.threads`), so `run`, `--workers 2`, and a `--workers` sweep killed with
kill -9 and finished by a plain `run` all write the same numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from qatbench.runner import resume, store
from tests.conftest import ROOT, run_cli, write_suite

SUITE = """\
name: launch
datasets: [{name: RotatedMNIST, test_envs: [0]}]
models: [{name: small_cnn, options: {width: 8}}]
methods:
  - {name: erm, hparams: {lr: 0.05}}
  - {name: lsq, steps: 24}
bits: [W4A4]
seeds: [0]
training: {steps: 24, batch_size: 32, eval_every: 24, eval_batch_size: 1024, checkpoint_every: 8}
"""
TIMES = ("wall_time_s", "step_time_s", "time_s")  # measured, not computed: they differ run to run


def numbers(results) -> dict[str, dict[str, float]]:
    """Every record's numeric fields (times aside), by run id."""
    found = {}
    for path in results.rglob(store.RECORD):
        record = json.loads(path.read_text())
        found[record["run_id"]] = {
            k: v
            for k, v in record.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and not k.endswith(TIMES)
        }
    return found


def test_workers_and_a_plain_run_write_the_same_numbers(tmp_path):
    suite = write_suite(tmp_path, SUITE)
    plain = run_cli("run", str(suite), "--results", str(tmp_path / "plain"))
    workers = run_cli("run", str(suite), "--results", str(tmp_path / "workers"), "--workers", "2")
    assert plain.returncode == 0 and workers.returncode == 0, plain.stderr + workers.stderr
    ours, theirs = numbers(tmp_path / "workers"), numbers(tmp_path / "plain")
    assert len(ours) == 2 and ours.keys() == theirs.keys()
    for run_id, record in theirs.items():
        assert record["threads"] == 1 and any(k.endswith("_acc") for k in record)
        assert ours[run_id] == record  # every accuracy, loss and count, bit for bit


@pytest.mark.slow
def test_a_killed_workers_sweep_finished_by_a_plain_run_has_the_uninterrupted_numbers(tmp_path):
    suite = write_suite(tmp_path, SUITE.replace("steps: 24", "steps: 100").replace("eval_every: 24", "eval_every: 200")
                        .replace("checkpoint_every: 8", "checkpoint_every: 25"))
    env = {**os.environ, "QATBENCH_QUIET": "1"}
    command = [sys.executable, "-m", "qatbench.cli", "run", str(suite), "--results", str(tmp_path / "killed")]
    sweep = subprocess.Popen([*command, "--workers", "2"], cwd=ROOT, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((tmp_path / "killed").rglob(resume.RESUME)) and time.time() < deadline and sweep.poll() is None:
        time.sleep(0.02)
    os.killpg(sweep.pid, signal.SIGKILL)  # the sweep and its workers, as a node failure would
    sweep.wait()
    assert not list((tmp_path / "killed").rglob(store.RECORD))  # killed mid-run, before any finished
    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    straight = run_cli("run", str(suite), "--results", str(tmp_path / "straight"))
    assert finished.returncode == 0 and straight.returncode == 0, finished.stderr + straight.stderr
    ours, theirs = numbers(tmp_path / "killed"), numbers(tmp_path / "straight")
    assert len(ours) == 2 and ours.keys() == theirs.keys()
    assert any(record.get("resumed_from_step") for record in ours.values())  # it went on from a checkpoint
    for run_id, record in theirs.items():
        ours[run_id].pop("resumed_from_step", None)
        assert ours[run_id] == record


@pytest.mark.slow
def test_slurm_array_tasks_and_a_plain_run_write_the_same_numbers(tmp_path):
    suite = write_suite(tmp_path, SUITE + "slurm: {cluster: local, tasks: 2, cpus_per_task: 1, gpus_per_task: 0}\n")
    plain = run_cli("run", str(suite), "--results", str(tmp_path / "plain"))
    slurm = run_cli("run", str(suite), "--results", str(tmp_path / "slurm"), "--launcher", "slurm")
    assert plain.returncode == 0 and slurm.returncode == 0, plain.stderr + slurm.stderr
    assert "trained by 2 workers" in slurm.stdout  # submitit's local executor ran the array's two tasks
    ours, theirs = numbers(tmp_path / "slurm"), numbers(tmp_path / "plain")
    assert len(ours) == 2 and ours == theirs


def test_sigterm_to_a_workers_sweep_stops_its_workers_too(tmp_path):
    """`kill <pid>` of `qatbench run --workers 2` must not leave spawned workers training the old plan."""
    suite = write_suite(tmp_path, SUITE.replace("steps: 24", "steps: 100000").replace("eval_every: 24", "eval_every: 100000"))
    env = {**os.environ, "QATBENCH_QUIET": "1"}
    command = [sys.executable, "-m", "qatbench.cli", "run", str(suite), "--results", str(tmp_path / "r"), "--workers", "2"]
    sweep = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 300
    while not list((tmp_path / "r").rglob("heartbeat")) and time.time() < deadline and sweep.poll() is None:
        time.sleep(0.1)
    children = subprocess.run(["pgrep", "-P", str(sweep.pid)], capture_output=True, text=True).stdout.split()
    workers = [int(pid) for pid in children]
    assert len(workers) >= 2, children  # the two workers (and the executor's helpers, if any)
    try:
        sweep.send_signal(signal.SIGTERM)  # the parent alone, as `kill <pid>` does
        _, err = sweep.communicate(timeout=60)
        assert sweep.returncode == 128 + signal.SIGTERM and "worker(s) terminated" in err, err
        time.sleep(1)
        alive = [pid for pid in workers if _alive(pid)]
        assert not alive, alive
    finally:
        os.killpg(sweep.pid, signal.SIGKILL) if sweep.poll() is None else None
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not list((tmp_path / "r").rglob(store.RECORD))  # nothing finished; the runs resume next time


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited
