"""A run id means one set of numbers on CPU whatever launches it: every run sets its own torch
thread count (`training.threads`), so `run`, `--workers 2`, Slurm array tasks, and a `--workers`
sweep killed with kill -9 and finished by a plain `run` all write the same numbers, each run
trained by exactly one worker. The plain runs are the reference, trained in this process once."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from qatbench.cli import main
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
seeds: [0, 1]
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


def plain_run(suite, results) -> dict[str, dict[str, float]]:
    """The suite trained by a plain `run` in this process: the numbers every launcher must write
    (without $QATBENCH_DATA, as run_cli starts the launchers' interpreters)."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("QATBENCH_DATA", raising=False)
        assert main(["run", str(suite), "--results", str(results), "--quiet"]) == 0
    return numbers(results)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> dict[str, dict[str, float]]:
    folder = tmp_path_factory.mktemp("plain")
    return plain_run(write_suite(folder, SUITE), folder / "results")


def no_warnings(caplog) -> None:
    """In process, log records go to caplog rather than stderr: a one-line error must come alone."""
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def trained_once_each(out: str, runs: int, results) -> None:
    """The sweep's summary and its records: every run trained by exactly one of the two workers."""
    summary = rf"{runs} runs: {runs} done \(0 already finished, skipped\); trained by 2 workers: (\d+) \+ (\d+)"
    match = re.search(summary, out)
    assert match and int(match[1]) + int(match[2]) == runs, out
    records = [json.loads(p.read_text()) for p in results.rglob(store.RECORD)]
    assert len(records) == runs == len({r["run_id"] for r in records}) and {r["status"] for r in records} == {"done"}


def test_workers_and_a_plain_run_write_the_same_numbers(tmp_path, plain, capsys, caplog):
    suite = write_suite(tmp_path, SUITE)
    workers = run_cli("run", str(suite), "--results", str(tmp_path / "workers"), "--workers", "2")
    assert workers.returncode == 0, workers.stderr
    trained_once_each(workers.stdout, 4, tmp_path / "workers")  # 4 runs, 2 workers: the queue is shared
    ours = numbers(tmp_path / "workers")
    assert len(ours) == 4 and ours.keys() == plain.keys()
    for run_id, record in plain.items():
        assert record["threads"] == 1 and any(k.endswith("_acc") for k in record)
        assert ours[run_id] == record  # every accuracy, loss and count, bit for bit
    assert main(["run", str(suite), "--results", str(tmp_path / "workers"), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--workers" in err, err
    no_warnings(caplog)


@pytest.mark.slow
def test_a_killed_workers_sweep_finished_by_a_plain_run_has_the_uninterrupted_numbers(tmp_path):
    suite = write_suite(tmp_path, SUITE.replace("steps: 24", "steps: 100").replace("eval_every: 24", "eval_every: 200")
                        .replace("seeds: [0, 1]", "seeds: [0]")
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
    assert finished.returncode == 0, finished.stderr
    ours, theirs = numbers(tmp_path / "killed"), plain_run(suite, tmp_path / "straight")
    assert len(ours) == 2 and ours.keys() == theirs.keys()  # none lost, none twice
    assert {json.loads(p.read_text())["status"] for p in (tmp_path / "killed").rglob(store.RECORD)} == {"done"}
    assert any(record.get("resumed_from_step") for record in ours.values())  # it went on from a checkpoint
    for run_id, record in theirs.items():
        ours[run_id].pop("resumed_from_step", None)
        assert ours[run_id] == record


@pytest.mark.slow
def test_slurm_array_tasks_and_a_plain_run_write_the_same_numbers(tmp_path, plain, capsys, caplog):
    suite = write_suite(tmp_path, SUITE + "slurm: {cluster: local, tasks: 2, cpus_per_task: 1, gpus_per_task: 0}\n")
    slurm = run_cli("run", str(suite), "--results", str(tmp_path / "slurm"), "--launcher", "slurm")
    assert slurm.returncode == 0, slurm.stderr
    trained_once_each(slurm.stdout, 4, tmp_path / "slurm")  # submitit's local executor ran the array's two tasks
    assert list((tmp_path / "slurm" / "launch" / ".slurm").iterdir())  # submitit's job folders: the real path
    assert numbers(tmp_path / "slurm") == plain
    assert main(["run", str(suite), "--results", str(tmp_path / "slurm"), "--launcher", "pbs"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--launcher: unknown launcher 'pbs'; allowed: local, slurm" in err
    no_warnings(caplog)


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
