"""The leaderboard names the cells of a suite's grid that no committed record fills yet: the suite
file under suites/ is expanded, and the runs without a committed finished record are listed per
method and bit width, by test domain and seed."""

from __future__ import annotations

import subprocess

import pandas as pd

from qatbench.cli import main
from qatbench.report.pending import pending_tables
from tests.conftest import run_cli

SUITE = """\
name: grow
datasets: [{name: RotatedMNIST, test_envs: [0, 5]}]
models: [{name: small_cnn, options: {width: 4}}]
methods: [erm]
seeds: [0, 1]
training: {steps: 4, batch_size: 8, eval_every: 4, eval_batch_size: 512}
"""


def test_pending_cells_are_grouped_by_method_bits_domain_and_seed():
    cells = pd.DataFrame(
        [
            ("s", "erm", "FP", "sketch", 0, "a"), ("s", "erm", "FP", "sketch", 1, "b"),
            ("s", "erm", "FP", "photo", 0, "c"), ("s", "lsq", "W4A4", "sketch", 0, "d"),
            ("t", "erm", "FP", "sketch", 0, "e"),
        ],
        columns=["suite", "label", "bits", "domain", "seed", "run_id"],
    )  # fmt: skip
    records = pd.DataFrame({"run_id": ["a", "d", "e", "b"], "status": ["done", "done", "done", "failed"]})
    (table,) = pending_tables(cells, records, {"s": "suites/s.yaml"})  # suite t is complete: no table
    assert table.title == "s · pending"
    assert table.cells.loc[("erm", "FP")].tolist() == ["1 of 3", "sketch (seed 1); photo (seed 0)"]
    assert table.cells.loc[("lsq", "W4A4")].tolist() == ["1 of 1", "none"]
    assert "2 of 4 pending (2 finished)" in table.caption and "`qatbench run suites/s.yaml`" in table.caption


def test_an_ensemble_row_names_its_pending_domains_without_a_seed():
    """An ensemble is one run per test domain (recorded as seed 0): its pending cells are domains."""
    cells = pd.DataFrame(
        [
            ("s", "erm", "FP", "sketch", 0, "a"), ("s", "erm", "FP", "sketch", 1, "b"),
            ("s", "erm_ensemble", "FP", "sketch", 0, "c"), ("s", "erm_ensemble", "FP", "photo", 0, "d"),
            ("s", "erm_ensemble", "FP", "cartoon", 0, "e"),
            ("s", "eoq", "W7A32", "sketch", 0, "f"), ("s", "eoq", "W7A32", "photo", 0, "g"),
        ],
        columns=["suite", "label", "bits", "domain", "seed", "run_id"],
    )  # fmt: skip
    records = pd.DataFrame({"run_id": ["a", "c"], "status": ["done", "done"]})
    (table,) = pending_tables(cells, records, {})
    assert table.cells.loc[("erm", "FP")].tolist() == ["1 of 2", "sketch (seed 1)"]
    assert table.cells.loc[("erm_ensemble", "FP")].tolist() == ["1 of 3", "photo; cartoon"]
    assert table.cells.loc[("eoq", "W7A32")].tolist() == ["0 of 2", "all (2 domains)"]


def test_the_leaderboard_lists_the_runs_a_committed_suite_still_lacks(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "suites").mkdir(parents=True)
    (repo / "suites" / "grow.yaml").write_text(SUITE)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    done = run_cli("run", "suites/grow.yaml", "--set", "seeds=[0]", "--set", "datasets[0].test_envs=[0]", cwd=repo)
    assert done.returncode == 0, done.stderr
    subprocess.run([*git, "add", "results", "suites"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one run"], cwd=repo, check=True)
    monkeypatch.chdir(repo)  # the report in this process, from the repository's root as a user runs it
    assert main(["report", "--leaderboard"]) == 0
    md = (repo / "reports" / "leaderboard.md").read_text()
    assert "### grow · pending" in md
    assert "| erm      | FP     | 1 of 4     | 0 (seed 1); 75 (seeds 0, 1) |" in md
    assert "3 of 4 pending (1 finished)" in md
    assert main(["report", "--check"]) == 0
