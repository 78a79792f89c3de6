"""Model selection, significance marks, sharpness correlations, table cells and rendering of the
report layer, on synthetic records and curves whose numbers are known by hand (or from scipy called
here on its own, with the formula spelled out)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qatbench import report
from qatbench.report.comparisons import comparison_table
from qatbench.report.render import TextTable, to_latex, to_markdown
from qatbench.report.select import SELECTIONS, LastCheckpoint, TestDomainOracle, TrainingDomainValidation
from qatbench.report.sharpness import MIN_RUNS, correlation_tables, kendall
from qatbench.report.significance import ALPHA, bootstrap_ci, compare, welch, welch_ci
from qatbench.report.tables import DAGGER, best_cells, build_tables, to_text
from tests.conftest import write_run_folder

ENVS = ["0", "15", "30"]


# ---------------------------------------------------------------------------------------------- helpers


def _write_run(
    results: Path,
    run_id: str,
    *,
    label: str,
    bits: str,
    seed: int,
    test_envs: list[int],
    curve: list[tuple],
    status: str = "done",
    error: str = "",
    finished_at: str = "2026-01-01T00:00:00+00:00",
) -> None:
    """curve: (id_acc, ood_acc, in_acc) per evaluation, at steps 10, 20, ...; in_acc is env{t}_in_acc of
    every test env t (a float), or per test env ({t: acc}); env{t}_out_acc = env{t}_in_acc."""
    rows = []
    for k, (id_acc, ood_acc, in_acc) in enumerate(curve):
        per_env = in_acc if isinstance(in_acc, dict) else dict.fromkeys(test_envs, in_acc)
        row = {"step": 10 * (k + 1), "loss": 1.0, "id_acc": id_acc, "ood_acc": ood_acc}
        for t, acc in per_env.items():
            row.update({f"env{t}_in_acc": acc, f"env{t}_out_acc": acc})
        rows.append(row)
    write_run_folder(
        results, run_id, label=label, bits=bits, seed=seed, test_envs=test_envs, environments=ENVS,
        curve_rows=rows, status=status, error=error, finished_at=finished_at,
    )  # fmt: skip


def _done(results: Path, run_id: str, label: str, bits: str, seed: int, ood: float, id_acc: float, test_env=0):
    """A finished run with one evaluation: the accuracies every selection reports."""
    _write_run(results, run_id, label=label, bits=bits, seed=seed, test_envs=[test_env], curve=[(id_acc, ood, ood)])


def _failed(results: Path, run_id: str, label: str, bits: str, seed: int, error: str, status="failed"):
    _write_run(results, run_id, label=label, bits=bits, seed=seed, test_envs=[0], curve=[], status=status, error=error)


def _welch_by_hand(a, b) -> float:
    """t = (m1 - m2) / sqrt(s1²/n1 + s2²/n2), Welch–Satterthwaite df, two-sided p = 2 sf(|t|, df)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(2 * stats.t.sf(abs(t), df))


def _curve(run_id: str, rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"run_id": run_id, "step": 10 * (k + 1), **row} for k, row in enumerate(rows)])


def _markdown_rows(text: str, title: str) -> dict[tuple[str, str], list[str]]:
    """The body rows of the markdown table titled `title`: (method, bits) -> cells."""
    lines = text.splitlines()
    start = lines.index(f"### {title}") + 2
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows[(cells[0], cells[1])] = cells[2:]
    return rows


# ------------------------------------------------------------------------------------ 1. model selection


def test_selections_are_exactly_the_three_documented_rules():
    assert set(SELECTIONS) == {"training_domain", "oracle", "last"}
    assert SELECTIONS["training_domain"] is TrainingDomainValidation
    assert SELECTIONS["oracle"] is TestDomainOracle
    assert SELECTIONS["last"] is LastCheckpoint


@pytest.fixture
def curves() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run r with two test envs (0 and 2): id_acc ties at steps 20 and 30, the last step is 40."""
    rows = [
        {"id_acc": 0.70, "ood_acc": 0.10, "env0_in_acc": 0.11, "env2_in_acc": 0.13},
        {"id_acc": 0.90, "ood_acc": 0.20, "env0_in_acc": 0.21, "env2_in_acc": 0.23},
        {"id_acc": 0.90, "ood_acc": 0.30, "env0_in_acc": 0.31, "env2_in_acc": 0.33},
        {"id_acc": 0.80, "ood_acc": 0.40, "env0_in_acc": 0.60, "env2_in_acc": 0.90},
    ]
    records = pd.DataFrame({"run_id": ["r"], "test_envs": [[0, 2]]})
    return _curve("r", rows), records


def test_training_domain_picks_best_id_acc_and_the_earlier_step_on_ties(curves):
    curve, records = curves
    chosen = TrainingDomainValidation().select(curve, records)
    assert list(chosen.index) == ["r"]
    assert chosen.loc["r", "step"] == 20  # steps 20 and 30 both have id_acc 0.90
    assert chosen.loc["r", "ood_acc"] == pytest.approx(0.20)
    assert chosen.loc["r", "id_acc"] == pytest.approx(0.90)


def test_oracle_takes_the_last_step_and_the_mean_in_split_accuracy_of_the_test_envs(curves):
    curve, records = curves
    chosen = TestDomainOracle().select(curve, records)
    assert chosen.loc["r", "step"] == 40
    assert chosen.loc["r", "ood_acc"] == pytest.approx((0.60 + 0.90) / 2)  # not the curve's 0.40
    assert chosen.loc["r", "id_acc"] == pytest.approx(0.80)


def test_last_checkpoint_takes_the_last_step_and_keeps_its_ood_acc(curves):
    curve, records = curves
    chosen = LastCheckpoint().select(curve, records)
    assert chosen.loc["r", "step"] == 40
    assert chosen.loc["r", "ood_acc"] == pytest.approx(0.40)


def test_last_checkpoint_goes_by_step_not_by_row_order():
    curve = _curve("r", [{"id_acc": 0.5, "ood_acc": 0.5}, {"id_acc": 0.6, "ood_acc": 0.6}])
    curve["step"] = [30, 10]
    chosen = LastCheckpoint().select(curve, pd.DataFrame({"run_id": ["r"], "test_envs": [[0]]}))
    assert chosen.loc["r", "ood_acc"] == pytest.approx(0.5)


def test_a_run_whose_curve_lacks_the_needed_column_is_left_out_not_an_exception():
    curve = _curve("r", [{"id_acc": 0.9, "ood_acc": 0.5}])  # no env0_in_acc at all
    records = pd.DataFrame({"run_id": ["r"], "test_envs": [[0]]})
    assert TestDomainOracle().select(curve, records).empty
    assert TrainingDomainValidation().select(curve.drop(columns="id_acc"), records).empty
    assert TestDomainOracle().select(curve, pd.DataFrame({"run_id": ["r"], "test_envs": [[]]})).empty
    # the others of the same batch are still selected
    both = pd.concat([curve, _curve("s", [{"id_acc": 0.8, "ood_acc": 0.4}])], ignore_index=True)
    chosen = LastCheckpoint().select(both, pd.DataFrame({"run_id": ["r", "s", "gone"], "test_envs": [[0]] * 3}))
    assert list(chosen.index) == ["r", "s"]  # "gone" has no curve rows
    assert chosen["ood_acc"].tolist() == pytest.approx([0.5, 0.4])


def test_oracle_leaves_out_a_run_lacking_the_in_split_column_among_runs_that_have_it():
    curves = pd.concat(
        [
            _curve("r", [{"id_acc": 0.9, "ood_acc": 0.5, "env0_in_acc": 0.7}]),
            _curve("s", [{"id_acc": 0.9, "ood_acc": 0.5}]),  # an older curve format: no in-split accuracies
        ],
        ignore_index=True,
    )
    chosen = TestDomainOracle().select(curves, pd.DataFrame({"run_id": ["r", "s"], "test_envs": [[0], [0]]}))
    assert list(chosen.index) == ["r"]


@pytest.fixture
def two_test_env_results(tmp_path: Path) -> Path:
    """erm FP, two seeds, test envs 0 and 2 together (domain "0 + 30"), two evaluations each."""
    _write_run(
        tmp_path,
        "a",
        label="erm",
        bits="FP",
        seed=0,
        test_envs=[0, 2],
        curve=[(0.9, 0.50, {0: 0.10, 2: 0.20}), (0.8, 0.60, {0: 0.70, 2: 0.80})],
    )
    _write_run(
        tmp_path,
        "b",
        label="erm",
        bits="FP",
        seed=1,
        test_envs=[0, 2],
        curve=[(0.9, 0.40, {0: 0.10, 2: 0.20}), (0.8, 0.30, {0: 0.60, 2: 0.70})],
    )
    return tmp_path


@pytest.mark.parametrize(
    "selection, ood",
    [
        ("oracle", "70.0 ± 7.1"),  # last step, mean of the in splits: (70+80)/2=75, (60+70)/2=65
        ("training_domain", "45.0 ± 7.1"),  # step 10 (best id_acc): 50, 40
        ("last", "45.0 ± 21.2"),  # step 20: 60, 30
    ],
)
def test_render_reports_the_selected_checkpoints_accuracy(two_test_env_results, selection, ood):
    records = report.load_records(two_test_env_results)
    text = report.render(records, selection=selection)
    rows = _markdown_rows(text, "suite · RotatedMNIST · small_cnn · FP")
    assert rows[("erm", "FP")][:2] == [ood, ood]  # the one domain "0 + 30" and Avg
    assert f"{SELECTIONS[selection].description} model selection" in text


def test_oracle_cell_with_a_run_lacking_in_split_accuracies_says_it_has_fewer_seeds(tmp_path: Path):
    _write_run(tmp_path, "a", label="erm", bits="FP", seed=0, test_envs=[0], curve=[(0.9, 0.5, 0.7)])
    _write_run(tmp_path, "b", label="erm", bits="FP", seed=1, test_envs=[0], curve=[(0.9, 0.5, 0.7)])
    (tmp_path / "suite" / "b" / "curve.jsonl").write_text('{"step": 10, "id_acc": 0.9, "ood_acc": 0.5}\n')
    [table] = build_tables(report.load_records(tmp_path), TestDomainOracle(), report.load_curves)
    assert table.mean.loc[("erm", "FP"), ("OOD", "0")] == pytest.approx(70.0)
    assert table.n.loc[("erm", "FP"), ("OOD", "0")] == 1


# ------------------------------------------------------------------------------------- 2. significance


def test_welch_matches_the_formula_on_equal_spreads():
    p = welch([1, 2, 3], [4, 5, 6])
    # t = -3 / sqrt(1/3 + 1/3) = -3.674, df = (2/3)² / (2 · (1/3)² / 2) = 4
    assert p == pytest.approx(2 * stats.t.sf(3 / math.sqrt(2 / 3), 4), rel=1e-12)
    assert p == pytest.approx(0.02131164, abs=1e-8)
    assert p == pytest.approx(_welch_by_hand([1, 2, 3], [4, 5, 6]), rel=1e-12)


def test_welch_matches_the_formula_on_unequal_spreads():
    a, b = [1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0]
    # s1² = 5/3, s2² = 100; t = (2.5 - 20) / sqrt(5/12 + 100/3) = -3.0117; df ≈ 2.050 (not n1 + n2 - 2 = 5)
    va, vb = (5 / 3) / 4, 100 / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    assert df == pytest.approx(2.0501, abs=1e-4)
    expected = 2 * stats.t.sf(17.5 / math.sqrt(va + vb), df)
    assert welch(a, b) == pytest.approx(expected, rel=1e-12)
    assert welch(a, b) == pytest.approx(_welch_by_hand(a, b), rel=1e-12)
    assert welch(a, b) > 2 * stats.t.sf(17.5 / math.sqrt(va + vb), 5)  # the pooled df would be too sure


@pytest.mark.parametrize("a, b", [([1.0], [1.0, 2.0]), ([1.0, 2.0], [3.0]), ([], [1.0, 2.0])])
def test_welch_is_nan_with_fewer_than_two_values(a, b):
    assert math.isnan(welch(a, b))


def test_welch_on_two_constants_is_undefined():
    # no spread in either group says nothing about seed noise: never a mark
    assert math.isnan(welch([0.5, 0.5, 0.5], [0.5, 0.5]))
    assert math.isnan(welch([0.5, 0.5, 0.5], [0.6, 0.6, 0.6]))


def test_welch_ci_is_the_t_interval_with_welch_satterthwaite_df():
    a, b = np.array([4.0, 5.0, 6.5]), np.array([1.0, 2.0, 3.0, 2.5])
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    delta = a.mean() - b.mean()
    assert welch_ci(a, b) == pytest.approx((delta - half, delta + half), rel=1e-12)
    assert all(math.isnan(x) for x in welch_ci([1.0], [2.0, 3.0]))


def test_bootstrap_ci_is_deterministic_and_brackets_the_observed_delta():
    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]
    low, high = bootstrap_ci(a, b)
    assert (low, high) == bootstrap_ci(a, b)  # the same report twice
    assert low <= -3.0 <= high
    assert -5.0 <= low < high <= -1.0  # extreme resamples: mean(a) ∈ [1, 3], mean(b) ∈ [4, 6]
    narrow = bootstrap_ci(a, b, level=0.5)
    assert low <= narrow[0] < narrow[1] <= high


def test_bootstrap_ci_of_two_constants_is_their_difference():
    assert bootstrap_ci([1.0, 1.0, 1.0], [2.0, 2.0, 2.0]) == pytest.approx((-1.0, -1.0))


@pytest.mark.parametrize("a, b", [([1.0], [1.0, 2.0]), ([1.0, 2.0], [3.0])])
def test_bootstrap_ci_is_nan_with_fewer_than_two_values(a, b):
    assert all(math.isnan(x) for x in bootstrap_ci(a, b))


def test_compare_gives_delta_counts_and_the_significance_flag():
    result = compare([4.0, 5.0, 6.0], [1.0, 2.0, 3.0, 2.0])
    assert result.delta == pytest.approx(5.0 - 2.0)
    assert (result.n, result.n_baseline) == (3, 4)
    assert result.p_value == pytest.approx(_welch_by_hand([4, 5, 6], [1, 2, 3, 2]), rel=1e-12)
    assert result.p_value < ALPHA and result.significant
    assert (result.ci_low, result.ci_high) == welch_ci([4.0, 5.0, 6.0], [1.0, 2.0, 3.0, 2.0])
    assert result.ci_low > 0  # the interval excludes 0 exactly when p < 0.05
    boot = compare([4.0, 5.0, 6.0], [1.0, 2.0, 3.0, 2.0], interval="bootstrap")
    assert (boot.ci_low, boot.ci_high) == bootstrap_ci([4.0, 5.0, 6.0], [1.0, 2.0, 3.0, 2.0])

    close = compare([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])
    assert close.delta == pytest.approx(-0.5)
    assert close.p_value == pytest.approx(_welch_by_hand([1, 2, 3], [1.5, 2.5, 3.5]), rel=1e-12)
    assert close.p_value >= ALPHA and not close.significant

    single = compare([1.0], [2.0, 3.0])
    assert single.delta == pytest.approx(-1.5) and math.isnan(single.p_value) and not single.significant
    assert math.isnan(single.ci_low) and math.isnan(single.ci_high)


# ---------------------------------------------------------------------------------------- 3. sharpness


@pytest.mark.parametrize("n", [4, 5, 7])
def test_kendall_on_concordant_and_reversed_ranks(n):
    x = np.arange(n, dtype=float) ** 2  # monotone, not linear: only ranks matter
    tau, p, count = kendall(x, 3 * x + 1)
    assert (tau, count) == (pytest.approx(1.0), n)
    assert p == pytest.approx(stats.kendalltau(x, 3 * x + 1).pvalue)
    assert p == pytest.approx(2 / math.factorial(n))  # exact test: 1 of n! orders is as extreme, two-sided
    tau, p, count = kendall(x, -x)
    assert (tau, count) == (pytest.approx(-1.0), n)
    assert p == pytest.approx(stats.kendalltau(x, -x).pvalue) and p == pytest.approx(2 / math.factorial(n))


def test_kendall_with_ties_is_tau_b_as_scipy_computes_it():
    x, y = [1, 2, 3, 4, 5, 6], [1, 3, 2, 4, 4, 6]
    # concordant 13, discordant 1, one tie in y: tau-b = 12 / sqrt(15 · 14)
    tau, p, n = kendall(x, y)
    assert tau == pytest.approx(12 / math.sqrt(15 * 14))
    assert p == pytest.approx(stats.kendalltau(x, y).pvalue) and n == 6


def test_kendall_is_nan_with_too_few_points_or_a_constant_side():
    assert MIN_RUNS == 4
    tau, p, n = kendall([1, 2, 3], [3, 2, 1])
    assert math.isnan(tau) and math.isnan(p) and n == 3
    tau, p, n = kendall([1, 2, 3, 4], [5, 5, 5, 5])
    assert math.isnan(tau) and math.isnan(p) and n == 4
    tau, p, n = kendall([2, 2, 2, 2, 2], [1, 2, 3, 4, 5])
    assert math.isnan(tau) and math.isnan(p) and n == 5


def test_kendall_drops_pairs_with_a_nan():
    tau, p, n = kendall([1, 2, np.nan, 3, 4, 5, np.inf], [1, 2, 3, np.nan, 4, 5, 6])
    assert (tau, n) == (pytest.approx(1.0), 4)  # pairs 0, 1, 4, 5: NaN on either side and inf are dropped
    assert p == pytest.approx(stats.kendalltau([1, 2, 4, 5], [1, 2, 4, 5]).pvalue) == pytest.approx(2 / 24)
    tau, _, n = kendall([1, 2, np.nan, 3, 4], [1, 2, 3, np.nan, 4])  # 5 rows, 3 usable pairs
    assert math.isnan(tau) and n == 3


def _run_keys(records: pd.DataFrame) -> pd.DataFrame:
    """The keys every table needs: one run per label, all on test domain "0"."""
    return records.assign(
        label=records["run_id"], seed=0, test_envs=[[0]] * len(records), environments=[["0", "15"]] * len(records)
    )


@pytest.fixture
def sharpness_records() -> pd.DataFrame:
    """W8A8: λ_max rises as OOD acc falls (tau -1); W4A4: both rise (tau +1); a failed run is ignored."""
    rows = []
    for k, (eig, trace, ood) in enumerate([(1, 10, 0.9), (2, 20, 0.8), (3, 30, 0.7), (4, 40, 0.6)]):
        rows.append(dict(bits="W8A8", w_bits=8, eig=eig, trace=trace, ood=ood, id=0.95, run=f"w8-{k}"))
    for k, (eig, trace, ood) in enumerate([(10, 100, 0.5), (20, np.nan, 0.6), (30, 300, 0.7), (40, 400, 0.8)]):
        rows.append(dict(bits="W4A4", w_bits=4, eig=eig, trace=trace, ood=ood, id=0.85, run=f"w4-{k}"))
    records = pd.DataFrame(
        {
            "run_id": [r["run"] for r in rows],
            "suite": "suite",
            "dataset": "RotatedMNIST",
            "model": "small_cnn",
            "bits": [r["bits"] for r in rows],
            "w_bits": [r["w_bits"] for r in rows],
            "status": "done",
            "id_acc": [r["id"] for r in rows],
            "ood_acc": [r["ood"] for r in rows],
            "hessian.top_eigenvalue": [float(r["eig"]) for r in rows],
            "hessian.trace": [float(r["trace"]) for r in rows],
        }
    )
    records = _run_keys(records)
    failed = records.iloc[[0]].assign(run_id="broken", status="failed", **{"hessian.top_eigenvalue": 100.0})
    return pd.concat([records, failed], ignore_index=True)


def test_correlation_table_has_a_row_per_bit_width_and_one_pooling_them(sharpness_records):
    [table] = correlation_tables(sharpness_records)
    assert table.title == "suite · RotatedMNIST · small_cnn · sharpness vs OOD"
    cells = table.cells
    assert list(cells.index) == [("0", "W8A8"), ("0", "W4A4"), ("0", "all")]  # per domain: widest, then the pool
    p4 = 2 / math.factorial(4)  # 0.0833: exact two-sided p of a perfect order of 4
    assert cells.loc[("0", "W8A8"), "τ(λ_max, OOD acc)"] == f"-1.00 (p={p4:.3f}, n=4)" == "-1.00 (p=0.083, n=4)"
    assert cells.loc[("0", "W8A8"), "τ(λ_max, OOD gap)"] == "+1.00 (p=0.083, n=4)"  # gap = 0.95 - ood
    assert cells.loc[("0", "W8A8"), "τ(Tr(H), OOD acc)"] == "-1.00 (p=0.083, n=4)"
    assert cells.loc[("0", "W4A4"), "τ(λ_max, OOD acc)"] == "+1.00 (p=0.083, n=4)"
    assert cells.loc[("0", "W4A4"), "τ(Tr(H), OOD acc)"] == "—"  # one trace is NaN: 3 < MIN_RUNS points
    eig = sharpness_records["hessian.top_eigenvalue"][:8]
    ood = sharpness_records["ood_acc"][:8]
    pooled = stats.kendalltau(eig, ood)
    expected = f"{pooled.statistic:+.2f} (p={pooled.pvalue:.3f}, n=8)"  # the failed run is not counted
    assert cells.loc[("0", "all"), "τ(λ_max, OOD acc)"] == expected
    # by hand: of the 28 pairs 9 concordant, 16 discordant, 3 tied in ood only (0.6, 0.7, 0.8 appear twice)
    assert pooled.statistic == pytest.approx((9 - 16) / math.sqrt(28 * (28 - 3)))
    assert expected == "-0.26 (p=0.375, n=8)"
    assert cells.loc[("0", "all"), "τ(Tr(H), OOD acc)"].endswith("n=7)")  # n per pair: one trace is NaN


def test_correlation_is_per_test_domain(sharpness_records):
    other = sharpness_records.assign(
        run_id=sharpness_records["run_id"] + "-d2", label=sharpness_records["label"] + "-d2", test_envs=[[1]] * 9
    )
    other["ood_acc"] = other["ood_acc"] - 0.5  # another domain's scale: pooled, it would swamp the ranks
    [table] = correlation_tables(pd.concat([sharpness_records, other], ignore_index=True))
    assert list(table.cells.index.get_level_values(0).unique()) == ["0", "15"]
    assert table.cells.loc[("15", "W8A8"), "τ(λ_max, OOD acc)"] == "-1.00 (p=0.083, n=4)"


def test_correlation_p_below_a_thousandth_prints_as_such(sharpness_records):
    eight = pd.DataFrame(
        {
            "run_id": [f"r{k}" for k in range(8)],
            "suite": "suite",
            "dataset": "RotatedMNIST",
            "model": "resnet",
            "bits": "W2A2",
            "w_bits": 2,
            "status": "done",
            "id_acc": 0.9,
            "ood_acc": [0.8 - k / 100 for k in range(8)],
            "hessian.top_eigenvalue": [float(k + 1) for k in range(8)],
        }
    )
    tables = correlation_tables(pd.concat([sharpness_records, _run_keys(eight)], ignore_index=True))
    assert [t.title for t in tables] == [
        "suite · RotatedMNIST · resnet · sharpness vs OOD",
        "suite · RotatedMNIST · small_cnn · sharpness vs OOD",
    ]
    cells = tables[0].cells
    assert 2 / math.factorial(8) < 0.001  # exact p of a perfect order of 8
    assert cells.loc[("0", "W2A2"), "τ(λ_max, OOD acc)"] == "-1.00 (p<0.001, n=8)"
    assert cells.loc[("0", "W2A2"), "τ(Tr(H), OOD acc)"] == "—"  # no trace column for these runs at all


def test_correlation_table_with_one_bit_width_has_no_pooled_row(sharpness_records):
    [table] = correlation_tables(sharpness_records[sharpness_records["bits"] == "W4A4"])
    assert list(table.cells.index) == [("0", "W4A4")]


def test_no_correlation_table_without_sharpness(sharpness_records):
    assert correlation_tables(sharpness_records.drop(columns=["hessian.top_eigenvalue", "hessian.trace"])) == []
    assert correlation_tables(pd.DataFrame()) == []


# --------------------------------------------------------------------------------------- 4. table cells

LSQ_OOD, LSQ_ID = [0.50, 0.51, 0.52], [0.80, 0.82, 0.84]
DOREFA_OOD, DOREFA_ID = [0.60, 0.61, 0.62], [0.81, 0.82, 0.831]  # OOD: p << 0.05; I.D.: p ≈ 1, prints 82.0 too
PACT_OOD, PACT_ID = [0.45, 0.55], [0.70, 0.72]  # seed 2 never run


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """W4A4 and W8A8 on test env 0 ("0"), seeds 0-2; erm FP on top of both tables."""
    for seed in range(3):
        _done(tmp_path, f"erm-{seed}", "erm", "FP", seed, ood=0.95 + seed / 100, id_acc=0.99)
        _done(tmp_path, f"lsq-{seed}", "lsq", "W4A4", seed, ood=LSQ_OOD[seed], id_acc=LSQ_ID[seed])
        _done(tmp_path, f"dorefa-{seed}", "dorefa", "W4A4", seed, ood=DOREFA_OOD[seed], id_acc=DOREFA_ID[seed])
        _done(tmp_path, f"lsq8-{seed}", "lsq", "W8A8", seed, ood=0.70, id_acc=0.90)
    for seed in range(2):
        _done(tmp_path, f"pact-{seed}", "pact", "W4A4", seed, ood=PACT_OOD[seed], id_acc=PACT_ID[seed])
    _failed(tmp_path, "qdrop-0", "qdrop", "W4A4", 0, "RuntimeError: boom\nTraceback (most recent call last):")
    _failed(tmp_path, "apot-0", "apot", "W4A4", 0, "ValueError: first")
    _failed(tmp_path, "apot-1", "apot", "W4A4", 1, "ValueError: second")
    _failed(tmp_path, "nipq-0", "nipq", "W4A4", 0, "loss is nan at step 30", status="diverged")
    return tmp_path


@pytest.fixture
def tables(results: Path) -> dict[str, object]:
    built = build_tables(report.load_records(results), TrainingDomainValidation(), report.load_curves)
    return {table.key[-1]: table for table in built}


def _text(table, row, column):
    return to_text(table).cells.loc[row, column]


def test_one_table_per_bit_width_each_with_the_fp_rows(tables):
    assert list(tables) == ["W8A8", "W4A4"]  # widest first
    assert list(tables["W8A8"].mean.index) == [("erm", "FP"), ("lsq", "W8A8")]
    assert list(tables["W4A4"].mean.index) == [
        ("erm", "FP"),
        ("apot", "W4A4"),
        ("dorefa", "W4A4"),
        ("lsq", "W4A4"),
        ("nipq", "W4A4"),
        ("pact", "W4A4"),
        ("qdrop", "W4A4"),
    ]
    for table in tables.values():
        assert table.mean.loc[("erm", "FP"), ("OOD", "0")] == pytest.approx(96.0)  # 95, 96, 97
        assert table.std.loc[("erm", "FP"), ("OOD", "0")] == pytest.approx(1.0)
        assert _text(table, ("erm", "FP"), ("OOD", "0")) == "96.0 ± 1.0"


def test_a_cell_with_two_of_three_seeds_says_so(tables):
    table = tables["W4A4"]
    assert table.mean.loc[("pact", "W4A4"), ("OOD", "0")] == pytest.approx(50.0)
    assert table.std.loc[("pact", "W4A4"), ("OOD", "0")] == pytest.approx(math.sqrt(50))  # sample std of 45, 55
    assert table.n.loc[("pact", "W4A4"), ("OOD", "0")] == 2
    assert _text(table, ("pact", "W4A4"), ("OOD", "0")) == "50.0 ± 7.1 (2/3 seeds)"
    assert _text(table, ("pact", "W4A4"), ("OOD", "Avg")) == "50.0 ± 7.1 (2/3 seeds)"


def test_cells_of_runs_that_did_not_finish_say_why(tables):
    table = tables["W4A4"]
    assert _text(table, ("qdrop", "W4A4"), ("OOD", "0")) == "failed: RuntimeError: boom"  # first line only
    assert _text(table, ("qdrop", "W4A4"), ("I.D.", "0")) == "failed: RuntimeError: boom"
    assert _text(table, ("qdrop", "W4A4"), ("OOD", "Avg")) == "0: failed: RuntimeError: boom"
    assert _text(table, ("apot", "W4A4"), ("OOD", "0")) == "2 failed: ValueError: first"
    assert _text(table, ("nipq", "W4A4"), ("OOD", "0")) == "diverged"


def test_a_diverged_run_recorded_without_its_environments_takes_them_from_its_suites_other_runs(results: Path):
    """Records the runner wrote before it kept a diverged run's dataset facts: the cell still says
    why, instead of the run vanishing from the table (and its cell reading 'not run')."""
    path = next(p for p in results.rglob("record.json") if json.loads(p.read_text())["run_id"] == "nipq-0")
    record = json.loads(path.read_text())
    del record["environments"]
    path.write_text(json.dumps(record))
    built = build_tables(report.load_records(results), TrainingDomainValidation(), report.load_curves)
    table = {table.key[-1]: table for table in built}["W4A4"]
    assert _text(table, ("nipq", "W4A4"), ("OOD", "0")) == "diverged"
    for change in ({"dataset_options.folder": "other"}, {"test_envs": [9]}):  # other data, or a domain they lack
        path.write_text(json.dumps({**record, **change}))
        built = build_tables(report.load_records(results), TrainingDomainValidation(), report.load_curves)
        assert ("nipq", "W4A4") not in {table.key[-1]: table for table in built}["W4A4"].mean.index


def test_a_long_error_is_cut_to_sixty_characters(tmp_path: Path):
    _done(tmp_path, "lsq-0", "lsq", "W4A4", 0, ood=0.5, id_acc=0.8)
    _failed(tmp_path, "x-0", "x", "W4A4", 0, "E" * 80 + "\nsecond line")
    [table] = build_tables(report.load_records(tmp_path), TrainingDomainValidation(), report.load_curves)
    cell = _text(table, ("x", "W4A4"), ("OOD", "0"))
    assert cell.startswith("failed: EEEE") and cell.endswith("E...") and len(cell) < len("failed: ") + 80
    assert set(cell.removeprefix("failed: ").removesuffix("...")) == {"E"}


def test_a_domain_never_attempted_reads_not_run(tmp_path: Path):
    for seed in range(2):
        _done(tmp_path, f"lsq-{seed}-0", "lsq", "W4A4", seed, ood=0.5, id_acc=0.8, test_env=0)
        _done(tmp_path, f"lsq-{seed}-2", "lsq", "W4A4", seed, ood=0.7, id_acc=0.8, test_env=2)
        _done(tmp_path, f"pact-{seed}-0", "pact", "W4A4", seed, ood=0.6, id_acc=0.8, test_env=0)
    [table] = build_tables(report.load_records(tmp_path), TrainingDomainValidation(), report.load_curves)
    assert list(table.mean.columns.get_level_values(1).unique()) == ["0", "30", "Avg"]
    assert _text(table, ("pact", "W4A4"), ("OOD", "30")) == "not run"
    assert _text(table, ("pact", "W4A4"), ("OOD", "Avg")) == "30: not run"  # the incomplete domain, and why
    assert _text(table, ("pact", "W4A4"), ("OOD", "0")) == "60.0 ± 0.0"  # constants 60 vs 50: no test, no mark
    assert _text(table, ("lsq", "W4A4"), ("OOD", "Avg")) == "60.0 ± 0.0"  # per seed (50 + 70) / 2


def test_best_quantized_row_is_bold_ties_as_printed_both_and_fp_never(results, tables):
    table = tables["W4A4"]
    bold = best_cells(table)
    assert bold.loc[("erm", "FP")].sum() == 0  # 96.0 and 99.0: the best numbers, but context only
    assert bold[("OOD", "0")][bold[("OOD", "0")]].index.tolist() == [("dorefa", "W4A4")]  # 61.0
    assert bold[("OOD", "Avg")][bold[("OOD", "Avg")]].index.tolist() == [("dorefa", "W4A4")]
    # I.D.: lsq 82.0 and dorefa 82.033 both print 82.0
    assert table.mean.loc[("dorefa", "W4A4"), ("I.D.", "0")] == pytest.approx(82.0333, abs=1e-4)
    assert bold[("I.D.", "0")][bold[("I.D.", "0")]].index.tolist() == [("dorefa", "W4A4"), ("lsq", "W4A4")]
    assert not bold.loc[("pact", "W4A4")].any() and not bold.loc[("qdrop", "W4A4")].any()
    md = report.render(report.load_records(results))
    rows = _markdown_rows(md, "suite · RotatedMNIST · small_cnn · W4A4")
    assert rows[("dorefa", "W4A4")][0] == f"**61.0 ± 1.0{DAGGER}**"
    assert rows[("lsq", "W4A4")][3] == "**82.0 ± 2.0**"
    assert rows[("erm", "FP")][0] == "96.0 ± 1.0"


def test_bold_follows_the_numbers_as_printed_at_half_way_means(tmp_path: Path):
    for seed, (a, b) in enumerate([(0.653, 0.654), (0.654, 0.654)]):
        _done(tmp_path, f"lsq-{seed}", "lsq", "W4A4", seed, ood=a, id_acc=0.8)
        _done(tmp_path, f"pact-{seed}", "pact", "W4A4", seed, ood=b, id_acc=0.8)
    [table] = build_tables(report.load_records(tmp_path), TrainingDomainValidation(), report.load_curves)
    text = to_text(table)
    assert text.cells.loc[("lsq", "W4A4"), ("OOD", "0")] == "65.3 ± 0.1"  # mean 65.35, printed 65.3
    assert text.cells.loc[("pact", "W4A4"), ("OOD", "0")] == "65.4 ± 0.0"
    assert text.bold.loc[("pact", "W4A4"), ("OOD", "0")]
    assert not text.bold.loc[("lsq", "W4A4"), ("OOD", "0")]


def test_dagger_marks_cells_where_welch_p_against_lsq_is_below_alpha(tables):
    table = tables["W4A4"]
    p_ood = _welch_by_hand(np.multiply(DOREFA_OOD, 100), np.multiply(LSQ_OOD, 100))
    p_id = _welch_by_hand(np.multiply(DOREFA_ID, 100), np.multiply(LSQ_ID, 100))
    # OOD: t = 10 / sqrt(1/3 + 1/3) = 12.25 on df 4; I.D.: means 82.03 vs 82.0, p near 1
    assert p_ood == pytest.approx(2 * stats.t.sf(10 / math.sqrt(2 / 3), 4), rel=1e-6) and p_ood < ALPHA
    assert p_id > 0.9
    assert table.p_values.loc[("dorefa", "W4A4"), ("OOD", "0")] == pytest.approx(p_ood, rel=1e-6)
    assert table.p_values.loc[("dorefa", "W4A4"), ("I.D.", "0")] == pytest.approx(p_id, rel=1e-6)
    assert _text(table, ("dorefa", "W4A4"), ("OOD", "0")) == f"61.0 ± 1.0{DAGGER}"
    assert _text(table, ("dorefa", "W4A4"), ("OOD", "Avg")) == f"61.0 ± 1.0{DAGGER}"
    assert _text(table, ("dorefa", "W4A4"), ("I.D.", "0")) == "82.0 ± 1.1"  # no dagger: p >= 0.05
    # pact OOD (45, 55) vs lsq (50, 51, 52): p well above 0.05, no dagger either
    assert table.p_values.loc[("pact", "W4A4"), ("OOD", "0")] == pytest.approx(
        _welch_by_hand([45, 55], [50, 51, 52]), rel=1e-6
    )
    assert table.p_values.loc[("pact", "W4A4"), ("OOD", "0")] >= ALPHA
    # the baseline, the FP rows (erm is their own baseline) and cells without values carry no test
    assert table.p_values.loc[("lsq", "W4A4")].isna().all()
    assert table.p_values.loc[("erm", "FP")].isna().all()
    assert table.p_values.loc[("qdrop", "W4A4")].isna().all()
    assert DAGGER not in _text(table, ("lsq", "W4A4"), ("OOD", "0"))


# ---------------------------------------------------------------------------------------- 5. comparisons


def test_comparison_rows_hold_delta_ci_and_p_against_the_baseline(tables):
    table = tables["W4A4"]
    versus = comparison_table(table)
    cells = versus.cells
    assert versus.title == "suite · RotatedMNIST · small_cnn · W4A4 · vs baseline"
    assert ("lsq", "W4A4") not in cells.index and ("erm", "FP") not in cells.index  # the baselines themselves
    assert list(cells.index) == [
        ("apot", "W4A4"),
        ("dorefa", "W4A4"),
        ("nipq", "W4A4"),
        ("pact", "W4A4"),
        ("qdrop", "W4A4"),
    ]
    dorefa = cells.loc[("dorefa", "W4A4")]
    mean = table.mean
    delta = mean.loc[("dorefa", "W4A4"), ("OOD", "Avg")] - mean.loc[("lsq", "W4A4"), ("OOD", "Avg")]
    assert delta == pytest.approx(10.0)
    assert dorefa["Baseline"] == "lsq"
    assert dorefa["Δ OOD"] == f"+10.0{DAGGER}"
    assert dorefa["p OOD"] == f"{_welch_by_hand([60, 61, 62], [50, 51, 52]):.3f}" == "0.000"
    # Welch's interval: delta ± t(0.975, df) * se, se = sqrt(1/3 + 1/3) (both groups have variance 1)
    se, df = math.sqrt(2 / 3), 4.0
    ci = (10.0 - stats.t.ppf(0.975, df) * se, 10.0 + stats.t.ppf(0.975, df) * se)
    assert dorefa["95% CI OOD"] == f"[{ci[0]:+.1f}, {ci[1]:+.1f}]" == "[+7.7, +12.3]"
    id_delta = mean.loc[("dorefa", "W4A4"), ("I.D.", "Avg")] - mean.loc[("lsq", "W4A4"), ("I.D.", "Avg")]
    assert dorefa["Δ I.D."] == f"{id_delta:+.1f}" == "+0.0"  # no dagger
    assert dorefa["p I.D."] == f"{_welch_by_hand(np.multiply(DOREFA_ID, 100), np.multiply(LSQ_ID, 100)):.3f}"
    assert dorefa["Seeds"] == "3 vs 3"
    pact = cells.loc[("pact", "W4A4")]
    assert pact["Δ OOD"] == "-1.0" and pact["Seeds"] == "2 vs 3"
    qdrop = cells.loc[("qdrop", "W4A4")]  # no finished run: nothing to compare
    assert (qdrop["Δ OOD"], qdrop["95% CI OOD"], qdrop["p OOD"], qdrop["Seeds"]) == ("—", "—", "—", "0 vs 3")


def test_comparison_with_a_single_seed_has_delta_but_no_ci_or_p(tmp_path: Path):
    for seed in range(3):
        _done(tmp_path, f"lsq-{seed}", "lsq", "W4A4", seed, ood=LSQ_OOD[seed], id_acc=0.8)
    _done(tmp_path, "pact-0", "pact", "W4A4", 0, ood=0.70, id_acc=0.8)
    [table] = build_tables(report.load_records(tmp_path), TrainingDomainValidation(), report.load_curves)
    row = comparison_table(table).cells.loc[("pact", "W4A4")]
    assert (row["Δ OOD"], row["95% CI OOD"], row["p OOD"], row["Seeds"]) == ("+19.0", "—", "—", "1 vs 3")


def test_no_comparison_table_when_the_baseline_has_no_runs(tmp_path: Path):
    _done(tmp_path, "erm-0", "erm", "FP", 0, ood=0.9, id_acc=0.9)
    _done(tmp_path, "erm-1", "erm", "FP", 1, ood=0.8, id_acc=0.9)
    for seed in range(2):
        _done(tmp_path, f"pact-{seed}", "pact", "W4A4", seed, ood=0.5 + seed / 10, id_acc=0.8)
    records = report.load_records(tmp_path)
    [table] = build_tables(records, TrainingDomainValidation(), report.load_curves)
    assert comparison_table(table) is None  # erm is the FP rows' own baseline, lsq is not in the table
    assert "No † marks: the baseline lsq has no finished runs in this table." in table.notes
    assert table.p_values.isna().all().all()
    _failed(tmp_path, "lsq-0", "lsq", "W4A4", 0, "RuntimeError: boom")  # attempted, never finished
    [table] = build_tables(report.load_records(tmp_path), TrainingDomainValidation(), report.load_curves)
    assert comparison_table(table) is None
    assert table.p_values.isna().all().all()
    assert "### suite · RotatedMNIST · small_cnn · W4A4 · vs baseline" not in report.render(
        report.load_records(tmp_path)
    )


# ------------------------------------------------------------------------------------------- 6. render


@pytest.fixture
def tiny() -> TextTable:
    cells = pd.DataFrame(
        {"Δ OOD": ["+1.0†", "-2.0"], "OOD": ["61.0 ± 1.0", "—"]},
        index=pd.Index(["lsq_v2", "erm"], name="Method"),
    )
    bold = pd.DataFrame({"Δ OOD": [True, False], "OOD": [False, True]}, index=cells.index)
    return TextTable("my_table", cells, "A caption with 5% and Δ.", ["a note"], bold)


def test_latex_wraps_bold_escapes_and_uses_booktabs(tiny):
    tex = to_latex([tiny])
    assert r"\textbf{+1.0$^\dagger$}" in tex
    assert r"\textbf{--}" in tex  # a missing cell, bold, is still "--"
    assert r"lsq\_v2" in tex and "lsq_v2" not in tex
    assert r"$\Delta$ OOD" in tex and "Δ" not in tex
    assert r"61.0 $\pm$ 1.0" in tex and r"\textbf{61.0" not in tex
    assert r"\caption{my\_table. A caption with 5\% and $\Delta$. a note}" in tex
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert tex.count(rule) == 1
    assert r"\begin{tabular}{lrr}" in tex
    body = tex[tex.index(r"\midrule") : tex.index(r"\bottomrule")]
    assert body.splitlines()[1:] == [
        r"lsq\_v2 & \textbf{+1.0$^\dagger$} & 61.0 $\pm$ 1.0 \\",
        r"erm & -2.0 & \textbf{--} \\",
    ]


def test_markdown_wraps_bold_in_double_asterisks(tiny):
    md = to_markdown([tiny])
    lines = md.splitlines()
    assert lines[0] == "### my_table"
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:6]]
    assert rows[0] == ["Method", "Δ OOD", "OOD"]
    assert rows[2] == ["lsq_v2", "**+1.0†**", "61.0 ± 1.0"]
    assert rows[3] == ["erm", "-2.0", "**—**"]
    assert "A caption with 5% and Δ." in md and "- a note" in md
