"""Claims about following a sweep: a line when each run starts and ends (label, bits, test domain by
name, seed, result, elapsed), nothing in quiet mode, and `status` that says when nothing is left and
points at records written with other settings of the suite."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from qatbench.cli import main
from qatbench.runner import api
from tests.conftest import ROOT, write_suite

pytestmark = pytest.mark.usefixtures("one_thread")

SUITE = """
name: follow
datasets: [{name: RotatedMNIST, test_envs: [5]}]
models: [{name: small_cnn, options: {width: 4}}]
methods: [erm]
seeds: [0]
training: {steps: 4, batch_size: 8, eval_every: 4, eval_batch_size: 512}
"""


def test_each_run_gets_a_start_and_an_end_line_with_its_result_and_none_when_quiet(tmp_path, capsys):
    suite, results = write_suite(tmp_path, SUITE), tmp_path / "results"
    api.run(str(suite), results, device="cpu", progress=True)
    out = capsys.readouterr()
    lines = (out.out + out.err).splitlines()
    assert "suite 'follow': 1 run(s) to train, 0 already finished" in lines
    start = [line for line in lines if line.startswith("[1/1] start")]
    end = [line for line in lines if line.startswith("[1/1] end")]
    assert start and start[0].startswith("[1/1] start erm FP RotatedMNIST test=75 seed=0 (")
    assert end and re.search(r"test=75 seed=0 \(\w{8}\): I\.D\. \d+\.\d% OOD \d+\.\d% \(\d+ s\)$", end[0]), end

    quiet = write_suite(tmp_path, SUITE.replace("seeds: [0]", "seeds: [1]"), "quiet.yaml")
    api.run(str(quiet), results, device="cpu", progress=False)
    out = capsys.readouterr()
    assert "start" not in out.out + out.err and "end " not in out.out + out.err


def test_status_says_nothing_is_left_and_hints_at_records_of_other_settings(tmp_path, capsys):
    suite, results = write_suite(tmp_path, SUITE), tmp_path / "results"
    api.run(str(suite), results, device="cpu", progress=False)
    assert main(["status", str(suite), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "1 runs: 1 done" in out and "nothing left to run" in out and "ETA" not in out and "hint" not in out

    assert main(["status", str(suite), "--results", str(results), "--set", "training.steps=8"]) == 0
    out = capsys.readouterr().out
    assert "1 runs: 0 done" in out and "0 pending" not in out
    assert f"hint: 1 other record(s) in {results / 'follow'} belong to other settings of this suite" in out


def test_workers_print_their_start_and_end_lines_as_they_happen(tmp_path):
    suite = write_suite(tmp_path, SUITE.replace("seeds: [0]", "seeds: [0, 1]"))
    env = {k: v for k, v in os.environ.items() if k not in ("QATBENCH_QUIET", "QATBENCH_DATA")}
    command = [sys.executable, "-m", "qatbench.cli", "run", str(suite), "--results", str(tmp_path / "r"), "--workers", "2"]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "suite 'follow': 2 run(s) to train, 0 already finished; 2 workers"
    for seed in (0, 1):
        started = [line for line in lines if re.match(rf"\[worker [12]\] start erm FP RotatedMNIST test=75 seed={seed} ", line)]
        ended = [line for line in lines if re.match(rf"\[worker [12]\] end   erm FP .* seed={seed} .*OOD \d+\.\d%", line)]
        assert len(started) == 1 and len(ended) == 1, lines
        assert lines.index(started[0]) < lines.index(ended[0])
    assert lines[-1].startswith("2 runs: 2 done")
