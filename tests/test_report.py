"""Report tables on synthetic records with hand-computed numbers; the report layer never
imports torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from qatbench import report
from qatbench.report.select import LastCheckpoint, TrainingDomainValidation
from tests.conftest import ROOT, run_cli, write_run_folder

ENVS = ["0", "15", "30"]


def _write_run(
    results: Path,
    run_id: str,
    *,
    label: str,
    bits: str,
    seed: int,
    test_env: int,
    curve: list[tuple[float, float, float]],
    status: str = "done",
    error: str = "",
    finished_at: str = "2026-01-01T00:00:00+00:00",
) -> None:
    """curve: (id_acc, ood_acc, test-env out acc) per evaluation, at steps 10, 20, ..."""
    rows = [
        {"step": 10 * (k + 1), "loss": 1.0, "id_acc": i, "ood_acc": o, f"env{test_env}_out_acc": t}
        for k, (i, o, t) in enumerate(curve)
    ]
    write_run_folder(
        results, run_id, label=label, bits=bits, seed=seed, test_envs=[test_env], environments=ENVS,
        curve_rows=rows, status=status, error=error, finished_at=finished_at,
    )  # fmt: skip


@pytest.fixture
def results(tmp_path: Path) -> Path:
    # erm, FP: test env 0 and 2, seeds 0 and 1; selection by best id_acc picks the middle row
    _write_run(
        tmp_path,
        "a",
        label="erm",
        bits="FP",
        seed=0,
        test_env=0,
        curve=[(0.5, 0.1, 0.9), (0.9, 0.60, 0.1), (0.8, 0.7, 0.2)],
    )
    _write_run(tmp_path, "b", label="erm", bits="FP", seed=1, test_env=0, curve=[(0.9, 0.70, 0.5)])
    _write_run(tmp_path, "c", label="erm", bits="FP", seed=0, test_env=2, curve=[(0.9, 0.80, 0.5)])
    _write_run(tmp_path, "d", label="erm", bits="FP", seed=1, test_env=2, curve=[(0.9, 0.90, 0.5)])
    # lsq_v2, W4A4: one seed is missing test env 2, one run failed
    _write_run(tmp_path, "e", label="lsq_v2", bits="W4A4", seed=0, test_env=0, curve=[(0.8, 0.50, 0.5)])
    _write_run(tmp_path, "f", label="lsq_v2", bits="W4A4", seed=1, test_env=0, curve=[(0.8, 0.40, 0.5)])
    _write_run(tmp_path, "g", label="lsq_v2", bits="W4A4", seed=0, test_env=2, curve=[(0.8, 0.30, 0.5)])
    _write_run(
        tmp_path,
        "h",
        label="lsq_v2",
        bits="W4A4",
        seed=1,
        test_env=2,
        curve=[],
        status="failed",
        error="RuntimeError: out of memory",
    )
    return tmp_path


def test_tables_hold_mean_and_sample_std_over_seeds_with_training_domain_validation(results):
    tables = report.build_tables(report.load_records(results), TrainingDomainValidation(), report.load_curves)
    [table] = tables
    assert table.title == "suite · RotatedMNIST · small_cnn · W4A4"  # FP rows join each bit width's table
    assert list(table.mean.index) == [("erm", "FP"), ("lsq_v2", "W4A4")]
    erm = table.mean.loc[("erm", "FP")]
    assert erm[("OOD", "0")] == pytest.approx(65.0)  # seeds: 60 (selected step 20), 70
    assert table.std.loc[("erm", "FP"), ("OOD", "0")] == pytest.approx(7.0710678)  # sample std of 60, 70
    assert erm[("OOD", "30")] == pytest.approx(85.0)
    assert erm[("OOD", "Avg")] == pytest.approx(75.0)  # per seed: (60+80)/2=70, (70+90)/2=80
    assert table.std.loc[("erm", "FP"), ("OOD", "Avg")] == pytest.approx(7.0710678)
    assert erm[("I.D.", "0")] == pytest.approx(90.0)
    lsq = table.mean.loc[("lsq_v2", "W4A4")]
    assert lsq[("OOD", "0")] == pytest.approx(45.0)
    assert lsq[("OOD", "30")] == pytest.approx(30.0) and table.n.loc[("lsq_v2", "W4A4"), ("OOD", "30")] == 1
    assert lsq[("OOD", "Avg")] == pytest.approx(40.0)  # only seed 0 has both domains: (50+30)/2


@pytest.mark.parametrize("selection, expected", [(TrainingDomainValidation(), 0.6), (LastCheckpoint(), 0.7)])
def test_selection_picks_the_checkpoint_its_rule_names(results, selection, expected):
    records = report.load_records(results)
    chosen = selection.select(report.load_curves(records), records[records["run_id"] == "a"])
    assert chosen.loc["a", "ood_acc"] == expected


def test_markdown_marks_partial_cells_and_lists_what_did_not_finish(results):
    text = report.render(report.load_records(results), format="md")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()[2:6]]
    assert rows[0] == ["Method", "Bits", "OOD 0", "OOD 30", "OOD Avg", "I.D. 0", "I.D. 30", "I.D. Avg"]
    assert rows[2] == ["erm", "FP", "65.0 ± 7.1", "85.0 ± 7.1", "75.0 ± 7.1", "90.0 ± 0.0", "90.0 ± 0.0", "90.0 ± 0.0"]
    lines = text.splitlines()
    assert "| 30.0 (1/2 seeds; failed: RuntimeError: out of memory) |" in lines[5]
    assert "| 40.0 (1/2 seeds) |" in lines[5]
    assert "n = 2 seeds unless a cell says otherwise" in text
    assert "Not counted: 1 run(s) that did not finish:" in text
    assert "- h lsq_v2 W4A4 seed 1 test_envs [2]: failed: RuntimeError: out of memory" in text


def test_an_ensemble_is_one_run_per_domain_not_a_row_missing_seeds(results):
    """erm_ensemble averages the erm seeds: one record per test domain (seed 0, `members` listed). Its
    cells are complete, not "1/2 seeds", and the caption says what the row is."""
    for env, ood in ((0, 0.66), (2, 0.86)):
        curve = [(0.9, ood, 0.5)]
        _write_run(results, f"ens-{env}", label="erm_ensemble", bits="FP", seed=0, test_env=env, curve=curve)
        record = results / "suite" / f"ens-{env}" / "record.json"
        record.write_text(json.dumps(json.loads(record.read_text()) | {"members": ["a", "b"], "steps": 0}))
    text = report.render(report.load_records(results), format="md")
    row = next(line for line in text.splitlines() if line.startswith("| erm_ensemble"))  # the accuracy table
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[2:5] == ["66.0", "86.0", "76.0"]  # no "(1/2 seeds)": its one run per domain is all it has
    assert "n = 2 seeds unless a cell says otherwise" in text
    assert "erm_ensemble: an ensemble, one run per test domain that averages the members' seeds." in text


def test_latex_escapes_names_and_uses_pm(results):
    tex = report.render(report.load_records(results), format="latex")
    assert r"lsq\_v2" in tex and r"65.0 $\pm$ 7.1" in tex and r"30.0 (1/2 seeds; failed: RuntimeError" in tex
    assert r"\begin{tabular}{llrrrrrr}" in tex
    assert r"\multicolumn{2}{c}{} & \multicolumn{3}{c}{OOD} & \multicolumn{3}{c}{I.D.} \\" in tex
    assert r"Method & Bits & 0 & 30 & Avg & 0 & 30 & Avg \\" in tex
    assert r"\caption{suite $\cdot$ RotatedMNIST $\cdot$ small\_cnn $\cdot$ W4A4. Accuracy (\%)" in tex
    assert "% Not counted: 1 run(s)" in tex


def test_callable_package_and_render_agree(results):
    records = report.load_records(results)
    assert report(records, format="latex") == report.render(records, format="latex")


@pytest.mark.parametrize("content", ["{ not json", "[1, 2]", '{"status": "done"}'])
def test_unreadable_record_is_skipped_not_fatal(results, content):
    (results / "suite" / "a" / "record.json").write_text(content)
    records = report.load_records(results)
    assert "a" not in set(records["run_id"]) and len(records) == 7
    assert "### suite" in report.render(records)


def test_a_done_record_missing_table_keys_or_curve_is_left_out_not_fatal(results):
    record = json.loads((results / "suite" / "a" / "record.json").read_text())
    del record["environments"]
    (results / "suite" / "a" / "record.json").write_text(json.dumps(record))
    (results / "suite" / "b" / "curve.jsonl").write_text('{"step": 10}\n')
    table = report.build_tables(report.load_records(results), TrainingDomainValidation(), report.load_curves)[0]
    assert table.n.loc[("erm", "FP"), ("OOD", "0")] == 0  # a: no environments, b: no accuracies
    assert table.reasons.loc[("erm", "FP"), ("OOD", "0")] == "1 done without a selectable evaluation (see the log)"


def test_a_copied_run_folder_counts_once(results):
    shutil.copytree(results / "suite" / "a", results / "copy-of-suite" / "a")
    table = report.build_tables(report.load_records(results), TrainingDomainValidation(), report.load_curves)[0]
    assert table.n.loc[("erm", "FP"), ("OOD", "0")] == 2
    assert table.mean.loc[("erm", "FP"), ("OOD", "0")] == pytest.approx(65.0)


def test_an_older_configuration_under_the_same_label_is_named_not_averaged(results):
    _write_run(
        results,
        "a-old",
        label="erm",
        bits="FP",
        seed=0,
        test_env=0,
        curve=[(0.9, 0.10, 0.1)],
        finished_at="2025-06-01T00:00:00+00:00",
    )
    [table] = report.build_tables(report.load_records(results), TrainingDomainValidation(), report.load_curves)
    assert table.mean.loc[("erm", "FP"), ("OOD", "0")] == pytest.approx(65.0)
    assert table.n.loc[("erm", "FP"), ("OOD", "0")] == 2
    assert (
        "1 older record(s) of another configuration under the same method, bits, seed and domain are not counted: a-old"
        in table.notes
    )
    assert "- 1 older record(s)" in report.render(report.load_records(results))


def test_a_results_folder_of_failures_only_lists_them(tmp_path):
    _write_run(tmp_path, "x", label="erm", bits="FP", seed=0, test_env=0, curve=[], status="failed", error="boom")
    text = report.render(report.load_records(tmp_path))
    assert "| erm      | FP     | failed: boom |" in text  # the table says why each cell is empty
    assert "- x erm FP seed 0 test_envs [0]: failed: boom" in text


def test_no_records_says_so(tmp_path):
    assert report.render(pd.DataFrame()) == "No records found.\n"


def test_report_layer_never_imports_torch(results):
    code = (
        "import sys, qatbench.report, qatbench.cli; assert 'torch' not in sys.modules, 'torch imported'; "
        "qatbench.cli.main(['report', sys.argv[1], '--format', 'latex']); assert 'torch' not in sys.modules"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(results)], check=True, cwd=ROOT, capture_output=True, text=True
    )
    assert r"\begin{table}" in out.stdout


def _id_only(results: Path) -> Path:
    """A CIFAR-like suite: no test domain (test_envs: none), so no OOD accuracy at all."""
    for run_id, label, bits, seed, acc in [("i0", "erm", "FP", 0, 0.9), ("i1", "erm", "FP", 1, 0.92)] + [
        (f"q{s}", "lsq", "W4A4", s, 0.8 + s / 100) for s in range(2)
    ]:
        _write_run(results, run_id, label=label, bits=bits, seed=seed, test_env=0, curve=[(acc, None, None)])
        path = results / "suite" / run_id / "record.json"
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "test_envs": [], "environments": ["train"]}))
    return results


def test_an_id_only_suite_has_id_columns_and_draws_its_figures(tmp_path):
    results = _id_only(tmp_path / "results")
    [table] = report.build_tables(report.load_records(results), TrainingDomainValidation(), report.load_curves)
    assert list(table.mean.columns) == [("I.D.", "no test domain"), ("I.D.", "Avg")]
    assert table.mean.loc[("lsq", "W4A4"), ("I.D.", "Avg")] == pytest.approx(80.5)
    assert (table.reasons == "").all().all()  # every cell is complete: no OOD cell asks for a reason
    out = run_cli("report", str(results), "--out", str(tmp_path / "out"), "--references", "none")
    assert out.returncode == 0, out.stderr
    figures = tmp_path / "out" / "figures" / "suite_RotatedMNIST_small_cnn"
    assert (figures / "accuracy_vs_bits.png").is_file() and not (figures / "id_vs_ood.png").exists()


def test_a_pipe_in_a_label_or_error_never_splits_a_markdown_cell(results):
    _write_run(results, "p", label="my|method", bits="W4A4", seed=0, test_env=0, curve=[(0.5, 0.5, 0.5)])
    _write_run(
        results, "q", label="my|method", bits="W4A4", seed=1, test_env=0, curve=[], status="failed",
        error="ValueError: bad | value\nsecond line with % and _",
    )  # fmt: skip
    text = report.render(report.load_records(results))
    row = next(line for line in text.splitlines() if line.startswith("| my"))
    assert row.count(" | ") == 7  # 8 columns: 7 inner separators
    assert "my\\|method" in row and "bad \\| value" in row
    tex = report.render(report.load_records(results), format="latex")
    assert "second line" not in tex  # the not-counted list keeps each error to its first line, in comments
