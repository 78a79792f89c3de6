"""Claims as data, the paired statistics behind their verdicts, the verdict rules, and the claims table
(golden Markdown, `qatbench report --claims`, its figure); numbers against hand-computed values.

After an intended change of the claims table, regenerate and review the diff:
    QATBENCH_REGENERATE_GOLDEN=1 pytest tests/test_claims.py
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qatbench import report
from qatbench.cli import main
from qatbench.errors import UserError
from qatbench.report.claims import load_claims
from qatbench.report.paired import detectable_effect, holm, kendall_detectable, paired, sign_flip_p
from qatbench.report.parents import with_parent_differences
from qatbench.report.sharpness_table import sharpness_tables
from qatbench.report.verdicts import tau_b, tau_interval
from tests.conftest import ROOT, run_cli, write_run_folder

GOLDEN = ROOT / "tests" / "golden"
REGENERATE = bool(os.environ.get("QATBENCH_REGENERATE_GOLDEN"))
VALID = """claims:
  - id: c1
    paper: P
    where: Table 1
    statement: s
    method: lsq
    baseline: parent
    metric: hessian.trace
    direction: greater
"""


# ------------------------------------------------------------------------------------ 1. the claims file


def _claims_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "claims.yaml"
    path.write_text(text)
    return path


def test_the_shipped_claims_file_loads_and_names_the_issue_claims():
    claims = {c.id: c for c in load_claims(ROOT / "suites" / "references" / "claims.yaml")}
    assert claims["fqat-ood-drop"].metric == ("id_acc", "ood_acc") and claims["fqat-ood-drop"].baseline == "parent"
    assert claims["gaqat-ood"].bits == ("W4A4", "W3A3") and claims["gaqat-ood"].baseline == "lsq_sagm"
    assert claims["qtdog-flatter"].direction == "less"
    assert claims["flatness-predicts-ood"].kind == "correlation"
    assert {"fqat-sharper-trace", "fqat-sharper-eigenvalue", "fpq-flatter", "cr-accuracy", "mec-accuracy"} <= set(
        claims
    )


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("greater", "bigger", "claim 1 (c1), key 'direction': 'bigger' not allowed; allowed: greater, less"),
        ("hessian.trace", "hessian.trce", "claim 1 (c1), key 'metric': metric 'hessian.trce' unknown (did you mean"),
        ("hessian.trace", "ood_acc - hessian.trace", "key 'metric': 'ood_acc - hessian.trace' is not one metric"),
        ("parent\n", "parent\n    baseln: x\n", "claim 1 (c1), key 'baseln' unknown for a difference claim (did you"),
        ("    method: lsq\n", "", "claim 1 (c1), key 'method' missing; a difference claim needs id, paper"),
        ("P\n", "P\n    kind: regression\n", "key 'kind': 'regression' not allowed; allowed: correlation, difference"),
        ("P\n", "P\n    bits: {a: 1}\n", "key 'bits': expected a bit width or a list of them"),
        ("P\n", "P\n    suites: [1]\n", "key 'suites': expected a suite name or a list of them"),
        ("claims:", "claims: [", "not valid YAML at line"),
        ("claims:", "claimz:", "expected a top-level key 'claims' holding a list of claims"),
    ],
)  # fmt: skip
def test_a_bad_claims_file_is_one_line_naming_file_entry_key_and_allowed_values(tmp_path, old, new, expected):
    path = _claims_file(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(UserError) as error:
        load_claims(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(path)) and expected in message


def test_a_duplicate_claim_id_is_refused(tmp_path):
    path = _claims_file(tmp_path, VALID + VALID.split("claims:\n")[1])
    with pytest.raises(UserError, match=r"claim 2 \(c1\), key 'id': 'c1' is used twice"):
        load_claims(path)


def test_report_claims_with_a_bad_file_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "claims.yaml").write_text(VALID.replace("greater", "up"))
    (tmp_path / "results").mkdir()
    code = main(["report", str(tmp_path / "results"), "--claims", "--references", str(tmp_path / "refs")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "key 'direction': 'up' not allowed" in err


# --------------------------------------------------------------------------------- 2. paired statistics


def test_paired_ci_and_p_match_the_hand_computed_t_values():
    # d = 1, 2, 3: mean 2, sd 1, se 1/sqrt(3); t_{0.975, 2} = 4.302652729911275 (tables); t = 2 sqrt(3)
    result = paired([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert (result.mean, result.n) == (2.0, 3)
    assert result.ci_low == pytest.approx(2 - half, abs=1e-9) and result.ci_high == pytest.approx(2 + half, abs=1e-9)
    # two-sided p of t = 2 sqrt(3) at df 2: 1 - t / sqrt(t^2 + 2) (Student's t with 2 df has a closed form)
    t = 2 * math.sqrt(3)
    assert result.t_p == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-9)
    assert result.flip_p == 0.25  # of the 8 sign flips, only +++ and --- reach |mean| >= 2


def _flips_by_hand(d) -> float:
    """Every one of the 2^n sign patterns; p = share whose |mean| reaches the observed |mean|."""
    d = np.asarray(d, float)
    observed = abs(d.mean())
    means = [abs(np.mean(d * np.array(signs))) for signs in itertools.product((1, -1), repeat=len(d))]
    return float(np.mean([m >= observed - 1e-12 for m in means]))


@pytest.mark.parametrize("d", [[1.0, -2.0, 3.0, 4.0], [0.5, 1.5, -0.2, 2.0, 0.7, -0.1], [3.0, 1.0, 4.0, 1.0, 5.0]])
def test_sign_flip_p_is_the_exact_enumeration(d):
    assert sign_flip_p(np.array(d)) == pytest.approx(_flips_by_hand(d), abs=1e-12)


def test_sign_flip_p_of_four_differences_by_hand():
    # 1, -2, 3, 4: sum 6; |sum| >= 6 when the flipped values sum to <= 2 ({}, {1}, {2}) or mirror: 6 of 16
    assert sign_flip_p(np.array([1.0, -2.0, 3.0, 4.0])) == 6 / 16


def test_holm_against_a_hand_example():
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4): 4 x 0.005 = 0.02; 3 x 0.01 = 0.03; 2 x 0.03 = 0.06;
    # 1 x 0.04 = 0.04 -> 0.06 (monotone); NaN is untested and does not count in m
    adjusted = holm([0.01, 0.04, 0.03, np.nan, 0.005])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and adjusted[4] == pytest.approx(0.02)
    assert np.isnan(adjusted[3])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_detectable_effect_has_80_percent_power_by_simulation():
    """At the detectable effect, simulated paired t-tests (n = 10, sd 1) reject in 80% of draws."""
    n, alpha = 10, 0.05
    delta = detectable_effect(n - 1, 1 / math.sqrt(n))
    assert delta == pytest.approx(0.996, abs=0.002)  # Cohen's d for power 0.8, one-sample t, n = 10
    draws = np.random.default_rng(1).normal(delta, 1.0, size=(100_000, n))
    t = draws.mean(axis=1) / (draws.std(axis=1, ddof=1) / math.sqrt(n))
    power = np.mean(np.abs(t) > stats.t.ppf(1 - alpha / 2, n - 1))
    assert power == pytest.approx(0.80, abs=0.006)


def test_kendall_detectable_uses_the_null_variance_of_tau():
    n = 42
    se = math.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1)))
    assert kendall_detectable(n) == pytest.approx((1.959963985 + 0.841621234) * se, rel=1e-6)


def test_vectorised_tau_b_agrees_with_scipy_ties_included():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, size=30).astype(float), rng.normal(size=30)
    y[:5] = y[5]
    assert tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    batch = tau_b(np.stack([x, y]), np.stack([y, x]))
    assert batch == pytest.approx([stats.kendalltau(x, y).statistic] * 2, abs=1e-12)


def test_a_tau_interval_of_three_runs_is_the_finite_resamples_and_warns_nothing():
    """Most resamples of 3 runs repeat a run (tau undefined); scipy warned of its own interval over
    them, on the user's terminal at every `report`, though that interval is not the one used."""
    x, y = np.array([1.0, 2.0, 3.0]), np.array([3.0, 1.0, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low, high = tau_interval(x, y)
    assert (low, high) == (-1.0, 1.0)  # resamples of 2 distinct runs give tau = +-1
    assert tau_interval(np.array([1.0, 2.0]), np.array([5.0, 5.0])) == pytest.approx((np.nan, np.nan), nan_ok=True)


# ----------------------------------------------------------------------------------------- 3. verdicts


def _run(results, run_id, label, bits, seed, *, trace, ood=0.5, id_acc=0.9, env=0, parent=None):
    """A finished run with one evaluation (what every selection reports) and a Hessian trace."""
    curve = [{"step": 10, "loss": 1.0, "id_acc": id_acc, "ood_acc": ood}]
    curve[0] |= {f"env{env}_in_acc": ood, f"env{env}_out_acc": ood}
    write_run_folder(
        results, run_id, label=label, bits=bits, seed=seed, test_envs=[env], environments=["0", "15"],
        curve_rows=curve, id_acc=id_acc, ood_acc=ood, parent_run_id=parent, **{"hessian.trace": trace},
    )  # fmt: skip


def _claim(tmp_path, **fields) -> list:
    defaults = {"direction": "greater", "baseline": "parent", "metric": "hessian.trace"}
    text = VALID
    for key, value in fields.items():
        text = text.replace(f"    {key}: {defaults[key]}", f"    {key}: {value}")
    return load_claims(_claims_file(tmp_path, text))


def _parent_records(tmp_path, differences) -> pd.DataFrame:
    """Per seed: an erm parent (trace 100), a sam decoy of the same seed (trace 1000), and lsq quantized from
    the erm run with trace 100 + difference."""
    results = tmp_path / "results"
    for seed, diff in enumerate(differences):
        _run(results, f"erm{seed}", "erm", "FP", seed, trace=100.0)
        _run(results, f"sam{seed}", "sam", "FP", seed, trace=1000.0)
        _run(results, f"lsq{seed}", "lsq", "W4A4", seed, trace=100.0 + diff, parent=f"erm{seed}")
    return report.load_records(results)


def _only_row(records, claims):
    (table,) = report.claim_tables(records, claims)
    (row,) = table.rows
    return row


def test_supported_when_paired_differences_are_significant_in_the_claimed_direction(tmp_path):
    d = [10.0, 12.0, 11.0, 13.0]
    row = _only_row(_parent_records(tmp_path, d), _claim(tmp_path))
    half = stats.t.ppf(0.975, 3) * np.std(d, ddof=1) / 2  # the run pairs with its parent erm, never the sam decoy
    assert (row.test, row.n, row.effect) == ("paired t", "4", pytest.approx(11.5))
    assert (row.ci_low, row.ci_high) == (pytest.approx(11.5 - half), pytest.approx(11.5 + half))
    assert row.verdict == "supported" and row.flip_p == 2 / 16


def test_contradicted_when_significant_in_the_other_direction(tmp_path):
    row = _only_row(_parent_records(tmp_path, [10.0, 12.0, 11.0, 13.0]), _claim(tmp_path, direction="less"))
    assert row.verdict == "contradicted"


def test_a_claim_scoped_to_suites_is_measured_only_in_their_tables(tmp_path):
    records = _parent_records(tmp_path, [10.0, 12.0, 11.0, 13.0])
    suite = records["suite"].iloc[0]
    (elsewhere,) = report.claim_tables(records, _claim(tmp_path, metric="hessian.trace\n    suites: [another_suite]"))
    assert elsewhere.rows == []  # no "waiting" row where the claim's runs can never exist
    (here,) = report.claim_tables(records, _claim(tmp_path, metric=f"hessian.trace\n    suites: [{suite}]"))
    assert [row.verdict for row in here.rows] == ["supported"]


def test_inconclusive_says_its_n(tmp_path):
    row = _only_row(_parent_records(tmp_path, [1.0, -1.0, 2.0, -1.5]), _claim(tmp_path))
    assert row.verdict == "inconclusive at n = 4" and row.p > 0.5
    assert np.isfinite(row.ci_low) and row.ci_low < 0 < row.ci_high


def test_holm_turns_a_lone_significant_row_inconclusive_beside_a_second_claim(tmp_path):
    records = _parent_records(tmp_path, [1.0, 2.0, 0.5, 2.5])  # t = 3.29 at df 3: p = 0.046
    alone = _only_row(records, _claim(tmp_path))
    assert 0.025 < alone.p < 0.05 and alone.verdict == "supported"
    twice = load_claims(_claims_file(tmp_path, VALID + VALID.split("claims:\n")[1].replace("c1", "c2")))
    (table,) = report.claim_tables(records, twice)
    assert [row.p_holm for row in table.rows] == [pytest.approx(2 * alone.p)] * 2
    assert [row.verdict for row in table.rows] == ["inconclusive at n = 4"] * 2


def test_runs_that_do_not_pair_fall_back_to_welch(tmp_path):
    results = tmp_path / "results"
    for seed, (ours, theirs) in enumerate([(0.60, 0.50), (0.62, 0.52), (0.61, 0.49)]):
        _run(results, f"fpq{seed}", "fpq", "W4A4", seed, trace=1.0, ood=ours)
        _run(results, f"lsq{seed}", "lsq", "W4A4", seed + 10, trace=1.0, ood=theirs)  # other seeds: no pair
    claims = _claim(tmp_path, baseline="lsq", metric="ood_acc")
    claims = [c.__class__(**{**c.__dict__, "method": "fpq"}) for c in claims]
    row = _only_row(report.load_records(results), claims)
    welch = stats.ttest_ind([60, 62, 61], [50, 52, 49], equal_var=False)
    assert (row.test, row.n) == ("Welch", "3 vs 3")
    assert row.effect == pytest.approx(32 / 3) and row.p == pytest.approx(welch.pvalue)


def test_a_claim_whose_method_has_no_runs_waits_and_says_so(tmp_path):
    records = _parent_records(tmp_path, [1.0, 2.0])
    claims = [c.__class__(**{**c.__dict__, "method": "qtdog"}) for c in _claim(tmp_path)]
    row = _only_row(records, claims)
    assert row.verdict == "waiting: no finished runs of qtdog" and row.test == ""


# ------------------------------------------------------------------------- 4. sharpness against the parent


def test_records_carry_each_runs_sharpness_minus_its_parents():
    records = report.load_records(GOLDEN / "results").set_index("run_id")
    lsq, erm = records.loc["glsq-W4A4-0-1"], records.loc["germ-FP-0-1"]
    assert lsq["parent_run_id"] == "germ-FP-0-1"
    assert lsq["hessian.trace_minus_parent"] == pytest.approx(lsq["hessian.trace"] - erm["hessian.trace"])
    assert lsq["hessian.top_eigenvalue_minus_parent"] == pytest.approx(
        lsq["hessian.top_eigenvalue"] - erm["hessian.top_eigenvalue"]
    )
    assert np.isnan(erm["hessian.trace_minus_parent"])  # FP runs have no parent
    assert np.isnan(records.loc["gpact-W2A2-0-2", "hessian.trace_minus_parent"])  # failed: no sharpness


def test_without_parent_ids_the_records_are_unchanged():
    records = pd.DataFrame({"run_id": ["a"], "status": ["done"], "hessian.trace": [1.0]})
    assert with_parent_differences(records).equals(records)


def test_the_sharpness_table_has_the_full_precision_rows():
    (table,) = sharpness_tables(report.load_records(GOLDEN / "results"))
    assert {("erm", "FP"), ("sam", "FP")} <= set(table.mean.index)
    assert table.mean.loc[("erm", "FP"), ("Sharpness", "Tr(H)")] > 0


# ------------------------------------------------------------------------------------ 5. the claims table


def test_golden_claims_table_matches_byte_for_byte():
    records = report.load_records(GOLDEN / "results")
    text = report.render_claims(records, load_claims(GOLDEN / "references" / "claims.yaml"))
    if REGENERATE:
        (GOLDEN / "claims.md").write_text(text)
    assert text == (GOLDEN / "claims.md").read_text()
    for verdict in ("supported", "contradicted", "inconclusive at n = 9", "waiting: no finished runs of qtdog"):
        assert f"| {verdict} " in text


def test_report_claims_cli_writes_latex_and_the_figure(tmp_path):
    out = tmp_path / "out"
    result = run_cli(
        "report", str(GOLDEN / "results"), "--claims", "--format", "latex", "--references", str(GOLDEN / "references"),
        "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    tex = (out / "claims.tex").read_text()
    assert r"\begin{tabular}" in tex and "contradicted" in tex and "Holm" in tex
    assert result.stdout == tex + "\n"
    figure = out / "figures" / "golden_RotatedMNIST_small_cnn" / "claims.png"
    assert figure.stat().st_size > 10_000 and figure.with_suffix(".pdf").is_file()


def test_a_metric_the_records_lack_waits_instead_of_testing_nothing(tmp_path):
    records = _parent_records(tmp_path, [1.0, 2.0]).drop(columns=["hessian.trace"])
    row = _only_row(records, _claim(tmp_path))
    assert row.verdict == "waiting: no Tr(H) in the records of these runs"
    orphans = records.drop(columns=["parent_run_id"])
    row = _only_row(orphans[orphans["label"] != "erm"], _claim(tmp_path))
    assert row.verdict == "waiting: the records name no FP parent (parent_run_id) and no erm run pairs with them"


def test_runs_quantized_from_the_pretrained_weights_pair_with_the_erm_run_of_their_seed(tmp_path):
    records = _parent_records(tmp_path, [1.0, 2.0, 4.0])
    with_parents = _only_row(records, _claim(tmp_path))
    orphans = records.assign(parent_run_id=None)  # protocol from_pretrained: no parent_run_id
    row = _only_row(orphans, _claim(tmp_path))
    assert row.n == "3" and row.effect == pytest.approx(7 / 3)  # erm's trace 100, not the sam decoy's 1000
    assert (row.effect, row.p) == pytest.approx((with_parents.effect, with_parents.p))


def test_a_method_is_compared_with_its_baseline_under_its_own_protocol(tmp_path):
    """fpq fine-tunes the FP run; the suite's `lsq` is quantized from the pretrained weights and
    `lsq_from_fp` fine-tunes the FP run: fpq's claim pairs with lsq_from_fp, not with lsq."""
    results = tmp_path / "results"
    for seed in range(3):
        for run, label, method, protocol, ood in [
            ("lsq", "lsq", "lsq", "from_pretrained", 0.40),
            ("fp", "lsq_from_fp", "lsq", "from_fp_run", 0.60 + 0.01 * seed),
            ("fpq", "fpq", "fpq", "from_fp_run", 0.61 + 0.02 * seed),
        ]:
            curve = [{"step": 10, "loss": 1.0, "id_acc": 0.9, "ood_acc": ood, "env0_in_acc": ood, "env0_out_acc": ood}]
            write_run_folder(
                results, f"{run}{seed}", label=label, bits="W4A4", seed=seed, test_envs=[0], environments=["0", "15"],
                curve_rows=curve, id_acc=0.9, ood_acc=ood, method=method, protocol=protocol,
            )  # fmt: skip
    text = VALID.replace("method: lsq", "method: fpq").replace("baseline: parent", "baseline: lsq")
    claims = load_claims(_claims_file(tmp_path, text.replace("metric: hessian.trace", "metric: ood_acc")))
    row = _only_row(report.load_records(results), claims)
    assert row.n == "3" and row.effect == pytest.approx(2.0)  # +1, +2, +3 points over lsq_from_fp, not +21..+25
