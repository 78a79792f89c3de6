"""The CLI as a user types it: a tiny suite runs, writes records, is not run twice, and
reports in Markdown and LaTeX; failing and diverging runs are recorded and the sweep goes on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import qatbench
from qatbench.runner import run_one
from tests.conftest import TINY_SUITE, run_cli, write_suite


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory) -> tuple[Path, Path, object]:
    folder = tmp_path_factory.mktemp("e2e")
    suite = folder / "tiny.yaml"
    suite.write_text(TINY_SUITE)
    results = folder / "results"
    first = run_cli("run", str(suite), "--results", str(results))
    return suite, results, first


def _records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.rglob("record.json"))]


def test_tiny_suite_runs_and_writes_a_record_per_run(tiny_results):
    suite, results, first = tiny_results
    assert first.returncode == 0, first.stderr
    assert "4 runs: 4 done (0 already finished, skipped)" in first.stdout
    records = _records(results)
    assert sorted((r["method"], r["bits"], r["test_envs"][0]) for r in records) == [
        ("erm", "FP", 0),
        ("erm", "FP", 5),
        ("lsq", "W4A4", 0),
        ("lsq", "W4A4", 5),
    ]
    for record in records:
        folder = results / "tiny" / record["run_id"]
        assert record["status"] == "done"
        assert (folder / "model.pt").is_file()
        curve = [json.loads(line) for line in (folder / "curve.jsonl").read_text().splitlines()]
        assert [row["step"] for row in curve] == ([40, 80] if record["method"] == "erm" else [10])
        assert record["ood_acc"] == curve[-1]["ood_acc"]
        assert 0.0 <= record["ood_acc"] <= 1.0 and record["id_acc"] > 0.5  # well above chance (0.1) after 80 steps
        test_env = record["test_envs"][0]
        assert record["ood_acc"] == record[f"env{test_env}_acc"]
    erm = [r for r in records if r["method"] == "erm"]
    assert sum(r["id_acc"] - r["ood_acc"] for r in erm) > 0  # the OOD gap, even this small
    lsq = next(r for r in records if r["method"] == "lsq")
    erm_ids = {r["run_id"] for r in records if r["method"] == "erm"}
    assert lsq["parent_run_id"] in erm_ids
    assert lsq["quant.w_bits"] == 4 and lsq["effective_hparams.weight_decay"] == 1e-4  # LSQ Table 2, 4 bits


def test_second_run_trains_nothing(tiny_results):
    suite, results, _ = tiny_results
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}
    again = run_cli("run", str(suite), "--results", str(results))
    assert again.returncode == 0, again.stderr
    assert "4 runs: 4 done (4 already finished, skipped)" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()} == before


def test_dry_run_lists_runs_as_finished(tiny_results):
    suite, results, _ = tiny_results
    listing = run_cli("run", str(suite), "--results", str(results), "--dry-run")
    assert listing.stdout.count("finished") == 4 and "4 runs in suite 'tiny'" in listing.stdout


def test_report_prints_the_table_in_markdown(tiny_results):
    _, results, _ = tiny_results
    report = run_cli("report", str(results))
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    assert "### tiny · RotatedMNIST · small_cnn · W4A4" in lines
    header = next(line for line in lines if line.startswith("| Method"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "Method",
        "Bits",
        "OOD 0",
        "OOD 75",
        "OOD Avg",
        "I.D. 0",
        "I.D. 75",
        "I.D. Avg",
    ]
    erm_row = next(line for line in lines if line.startswith("| erm"))
    # one seed: the cell is the selected accuracy itself, no ± part
    erm_0 = next(r for r in _records(results) if r["method"] == "erm" and r["test_envs"] == [0])
    curve = [json.loads(x) for x in (results / "tiny" / erm_0["run_id"] / "curve.jsonl").read_text().splitlines()]
    best = max(curve, key=lambda row: row["id_acc"])  # training-domain validation
    assert erm_row.split("|")[3].strip() == f"{100 * best['ood_acc']:.1f}"
    assert "training-domain validation" in report.stdout


def test_report_writes_latex_with_booktabs(tiny_results, tmp_path):
    _, results, _ = tiny_results
    report = run_cli("report", str(results), "--format", "latex", "--out", str(tmp_path))
    assert report.returncode == 0, report.stderr
    tex = (tmp_path / "report.tex").read_text()
    assert tex.strip() == report.stdout.strip()
    for fragment in (
        r"\begin{table}",
        r"\toprule",
        r"\midrule",
        r"\bottomrule",
        r"\multicolumn{3}{c}{OOD}",
        r"\caption{tiny $\cdot$ RotatedMNIST $\cdot$ small\_cnn $\cdot$ W4A4.",
    ):
        assert fragment in tex


def test_failed_and_diverged_runs_are_recorded_and_the_sweep_goes_on(tmp_path):
    suite = write_suite(
        tmp_path,
        """
        name: faults
        datasets: [{name: RotatedMNIST, test_envs: [0]}]
        models:
          - {name: small_cnn, options: {width: 8}}
        methods:
          - {name: erm, label: erm-exploding, hparams: {optimizer: sgd, lr: 1.0e+30}}
          - {name: lsq, steps: 2}
        seeds: [0]
        training: {steps: 4, batch_size: 8, eval_every: 2}
    """,
    )
    result = run_cli("run", str(suite), "--results", str(tmp_path / "results"))
    assert result.returncode == 1
    assert "2 runs: 0 done, 1 diverged, 1 failed" in result.stdout
    by_model = {}
    for record in _records(tmp_path / "results"):
        by_model.setdefault((record["model"], record["method"]), record)
    assert by_model[("small_cnn", "erm")]["status"] == "diverged"
    exploded = by_model[("small_cnn", "erm")]
    assert "loss became" in exploded["error"] or "diverge_factor" in exploded["error"]
    assert exploded["diverged_step"] >= 1
    assert by_model[("small_cnn", "lsq")]["status"] == "failed"
    assert (
        "parent run" in by_model[("small_cnn", "lsq")]["error"]
        and "diverged" in by_model[("small_cnn", "lsq")]["error"]
    )
    failed = by_model[("small_cnn", "lsq")]
    assert (tmp_path / "results" / "faults" / failed["run_id"] / "error.log").read_text().startswith("Traceback")
    report = run_cli("report", str(tmp_path / "results"))
    assert report.returncode == 0
    assert "Not counted: 2 run(s) that did not finish" in report.stdout


def test_same_spec_gives_the_same_numbers_on_cpu(tmp_path):
    suite = qatbench.load_suite(write_suite(tmp_path, TINY_SUITE), ["datasets[0].test_envs=[5]"])
    erm = next(s for s in qatbench.expand(suite) if s.method == "erm")
    first = run_one(erm, tmp_path / "a", progress=False)
    second = run_one(erm, tmp_path / "b", progress=False)
    keys = [k for k in first if k.endswith("_acc") or k.startswith("train.")]
    assert keys and {k: first[k] for k in keys} == {k: second[k] for k in keys}
    assert (tmp_path / "a" / "tiny" / erm.run_id / "curve.jsonl").read_text() == (
        tmp_path / "b" / "tiny" / erm.run_id / "curve.jsonl"
    ).read_text()
