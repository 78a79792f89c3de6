"""What this harness measured for each claim of suites/references/claims.yaml: per table (suite, dataset,
model) and setting (bit width; and test domain for correlations), the effect with its 95% CI, n, p,
Holm's correction across the rows of the table, the smallest effect this n detects, and a verdict:

- `supported`: Holm-adjusted p < ALPHA and the effect has the sign the paper asserts;
- `contradicted`: Holm-adjusted p < ALPHA and the effect has the other sign;
  (p: the paired t-test's, the test the printed t interval inverts, so a verdict never disagrees with
  its own interval's side of zero before correction; the exact sign-flip p is printed beside it, but
  its floor of 2/2^n (1/32 at 6 pairs) would make every verdict of a small table inconclusive after Holm)
- `inconclusive at n = ...` otherwise; a claim whose method (or baseline) has no finished runs waits,
  and its row says so.

Which numbers: a difference claim uses the accuracies of the selected evaluation (as the accuracy
tables do) and the Hessian of the final weights; runs pair on seed and test domain (a run with
`baseline: parent` pairs with its own FP parent, or, quantized from the pretrained weights, with the
`erm` run of its seed and domain), the paired statistics of paired.py; where fewer than
two runs pair, Welch's unpaired test of significance.py. A correlation claim uses the final accuracies
(the same weights as the Hessian, as sharpness.py does): Kendall's tau-b with scipy's p and a paired
percentile bootstrap CI over runs (Efron & Tibshirani 1993).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from qatbench.report.claims import METRICS, PARENT, Claim, describe, unit
from qatbench.report.paired import ALPHA, holm, kendall_detectable, paired, welch_detectable
from qatbench.report.parents import PARENT_ID
from qatbench.report.render import MISSING, TextTable
from qatbench.report.select import Selection
from qatbench.report.sharpness import kendall
from qatbench.report.significance import compare
from qatbench.report.tables import FP, KEYS, TABLE, finished_runs, selected_runs

BOOTSTRAP_RESAMPLES = 999
PROTOCOL = "protocol"  # records name how quantization met training (config/protocol.py)
FP_COUNTERPART = "erm"  # `baseline: parent` for runs without one (from_pretrained): this FP run, same seed and domain
BOOTSTRAP_SEED = 0  # a report must not change from one rendering to the next
SUPPORTED, CONTRADICTED, WAITING = "supported", "contradicted", "waiting"


@dataclass
class Row:
    """One claim in one setting of one table."""

    claim: Claim
    setting: str
    test: str = ""  # paired, Welch, Kendall; "" while waiting
    effect: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p: float = math.nan  # the p the verdict uses: paired t, Welch or Kendall
    flip_p: float = math.nan  # paired rows: the exact sign-flip permutation p
    n: str = "0"
    n_min: int = 0
    detectable: float = math.nan
    waiting: str = ""  # why no test was made
    p_holm: float = math.nan
    verdict: str = ""


@dataclass
class ClaimTable:
    key: tuple  # (suite, dataset, model)
    rows: list[Row] = field(default_factory=list)


def measure_claims(records: pd.DataFrame, claims: list[Claim], selection: Selection, load_curves) -> list[ClaimTable]:
    """One ClaimTable per (suite, dataset, model) of the records, every claim in each, verdicts set."""
    runs, _ = finished_runs(records)
    if runs.empty:
        return []
    keep = [*KEYS, "domain", "run_dir", "curve_file", PARENT_ID, "method", PROTOCOL, *METRICS]
    runs = runs[[c for c in keep if c in runs]]  # records have ~200 columns; copies of them are slow
    final = runs.copy()
    chosen = selected_runs(runs, load_curves(runs), selection)
    selected = (
        runs.drop(columns=["ood_acc", "id_acc"], errors="ignore").merge(
            chosen[["run_id", "ood_acc", "id_acc"]], on="run_id"
        )
        if len(chosen)
        else runs.iloc[0:0]
    )
    tables = []
    for key, table_runs in final.groupby(TABLE, sort=True):
        mine = selected[(selected[TABLE] == pd.Series(key, index=TABLE)).all(axis=1)] if len(selected) else selected
        table = ClaimTable(key)
        for claim in [c for c in claims if c.applies_to(key[0])]:  # TABLE's first key is the suite
            if claim.kind == "difference":
                table.rows += _difference_rows(claim, mine)
            else:
                table.rows += _correlation_rows(claim, table_runs)
        _judge(table.rows)
        tables.append(table)
    return tables


def values(runs: pd.DataFrame, metric: tuple[str, ...]) -> pd.Series:
    """The metric of each run in display units (accuracies in percentage points); 'a - b' subtracts."""
    columns = [
        pd.to_numeric(runs[m], errors="coerce") * METRICS[m][1] if m in runs else pd.Series(np.nan, index=runs.index)
        for m in metric
    ]
    return columns[0] - columns[1] if len(columns) == 2 else columns[0]


def _bits_order(runs: pd.DataFrame) -> list[str]:
    return runs.sort_values(["w_bits", "bits"], ascending=[False, True])["bits"].drop_duplicates().tolist()


def _difference_rows(claim: Claim, runs: pd.DataFrame) -> list[Row]:
    mine = runs[runs["label"] == claim.method] if len(runs) else runs
    if mine.empty:
        return [Row(claim, ", ".join(claim.bits) or "all", waiting=f"no finished runs of {claim.method}")]
    rows = []
    for bits in claim.bits or _bits_order(mine):
        ours = mine[mine["bits"] == bits]
        row = Row(claim, bits)
        rows.append(row)
        if ours.empty:
            row.waiting = f"no finished runs of {claim.method} at {bits}"
        elif claim.baseline == PARENT:
            _versus_parent(row, ours, runs)
        else:
            _versus_method(row, ours, runs)
    return rows


def _versus_parent(row: Row, ours: pd.DataFrame, runs: pd.DataFrame) -> None:
    """Each run minus its FP parent; a run quantized from the pretrained weights (no parent: protocol
    from_pretrained) minus its FP counterpart, the `erm` run of the same seed and test domain, which
    started from the same weights and trained as many steps in full precision."""
    metric = row.claim.metric
    parents = runs.drop_duplicates("run_id").set_index("run_id")
    ours = ours if PARENT_ID in ours else ours.assign(**{PARENT_ID: None})
    named = ours[PARENT_ID].notna()
    pairs = ours[named & ours[PARENT_ID].isin(parents.index)]
    differences = values(pairs, metric).to_numpy() - values(parents, metric).loc[pairs[PARENT_ID]].to_numpy()
    orphans = ours[~named]
    counterparts = runs[(runs["label"] == FP_COUNTERPART) & (runs["bits"] == FP)]
    if len(orphans) and len(counterparts):
        a = orphans.assign(_v=values(orphans, metric))[["seed", "domain", "_v"]]
        b = counterparts.assign(_v=values(counterparts, metric))[["seed", "domain", "_v"]]
        matched = a.merge(b, on=["seed", "domain"], suffixes=("", "_fp"))
        differences = np.concatenate([differences, (matched["_v"] - matched["_v_fp"]).to_numpy()])
    if len(differences) == 0:
        row.waiting = (
            "no finished FP parent among the records"
            if named.any()
            else f"the records name no FP parent (parent_run_id) and no {FP_COUNTERPART} run pairs with them"
        )
        return
    _paired(row, differences)


def _versus_method(row: Row, ours: pd.DataFrame, runs: pd.DataFrame) -> None:
    """Against another method at the same bits, or at FP when it has no runs at these bits (an FP baseline)."""
    baseline = same_protocol_baseline(row.claim.baseline, ours, runs)
    theirs = baseline[baseline["bits"] == row.setting]
    theirs = theirs if len(theirs) else baseline[baseline["bits"] == FP]
    if theirs.empty:
        row.waiting = f"no finished runs of {row.claim.baseline}"
        return
    metric = row.claim.metric
    a = ours.assign(_v=values(ours, metric))[["seed", "domain", "_v"]]
    b = theirs.assign(_v=values(theirs, metric))[["seed", "domain", "_v"]]
    pairs = a.merge(b, on=["seed", "domain"], suffixes=("", "_base")).dropna()
    if len(pairs) >= 2:
        _paired(row, (pairs["_v"] - pairs["_v_base"]).to_numpy())
        return
    ours_v, theirs_v = a["_v"].dropna().to_numpy(), b["_v"].dropna().to_numpy()
    result = compare(ours_v, theirs_v)
    row.test, row.effect, row.p = "Welch", result.delta, result.p_value
    row.ci_low, row.ci_high = result.ci_low, result.ci_high
    row.n, row.n_min = f"{len(ours_v)} vs {len(theirs_v)}", min(len(ours_v), len(theirs_v))
    row.detectable = welch_detectable(ours_v, theirs_v)


def same_protocol_baseline(name: str, ours: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The runs labelled `name`; but when the claim's runs trained under one protocol and those under
    another (fpq fine-tunes the FP run, while the suite's `lsq` is quantized from the pretrained
    weights), the runs of method `name` under the claim's protocol where the records have them (the
    suite's lsq_from_fp), so that a claim compares methods, not protocols."""
    labelled = runs[runs["label"] == name]
    if PROTOCOL not in runs or "method" not in runs or ours[PROTOCOL].nunique() != 1:
        return labelled
    protocol = ours[PROTOCOL].iloc[0]
    if labelled.empty or (labelled[PROTOCOL] == protocol).any():
        return labelled
    matched = runs[(runs["method"] == name) & (runs[PROTOCOL] == protocol)]
    return matched if matched["label"].nunique() == 1 else labelled


def _paired(row: Row, differences: np.ndarray) -> None:
    result = paired(differences)
    if result.n == 0:
        row.waiting = f"no {describe(row.claim.metric)} in the records of these runs"
        return
    row.test, row.effect, row.p, row.flip_p = "paired t", result.mean, result.t_p, result.flip_p
    row.ci_low, row.ci_high, row.detectable = result.ci_low, result.ci_high, result.detectable
    row.n, row.n_min = str(result.n), result.n


def _correlation_rows(claim: Claim, runs: pd.DataFrame) -> list[Row]:
    domains = runs.assign(_o=[min(t, default=-1) for t in runs["test_envs"]]).sort_values("_o")["domain"]
    rows = []
    for bits in claim.bits or _bits_order(runs):
        for domain in dict.fromkeys(domains):
            subset = runs[(runs["bits"] == bits) & (runs["domain"] == domain)]
            row = Row(claim, f"{bits} · {domain}", test="Kendall")
            rows.append(row)
            x, y = values(subset, claim.x).to_numpy(), values(subset, claim.y).to_numpy()
            keep = np.isfinite(x) & np.isfinite(y)
            x, y = x[keep], y[keep]
            row.effect, row.p, n = kendall(x, y)
            row.n, row.n_min = str(n), n
            if n == 0:
                row.waiting = f"no finished runs with {describe(claim.x)} and {describe(claim.y)} at {bits}"
            elif np.isfinite(row.effect):
                row.ci_low, row.ci_high = tau_interval(x, y)
                row.detectable = kendall_detectable(n)
    return rows


def tau_b(x, y, axis: int = -1) -> np.ndarray:
    """Kendall's tau-b along `axis`, vectorised over bootstrap resamples (scipy's kendalltau takes one
    pair of vectors; this agrees with it, ties included, see tests)."""
    x, y = np.moveaxis(np.asarray(x, float), axis, -1), np.moveaxis(np.asarray(y, float), axis, -1)
    dx = np.sign(x[..., :, None] - x[..., None, :])
    dy = np.sign(y[..., :, None] - y[..., None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (dx * dy).sum((-2, -1)) / np.sqrt((dx != 0).sum((-2, -1)) * (dy != 0).sum((-2, -1)))


def tau_interval(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of tau-b, runs resampled with their (x, y) pairs; resamples without spread
    (tau undefined) are left out; scipy's own interval over them, which warns of them, is not used."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            (x, y), tau_b, paired=True, vectorized=True, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
            confidence_level=level, rng=np.random.default_rng(BOOTSTRAP_SEED),
        )  # fmt: skip
    distribution = result.bootstrap_distribution[np.isfinite(result.bootstrap_distribution)]
    if not len(distribution):
        return math.nan, math.nan
    low, high = np.percentile(distribution, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def _judge(rows: list[Row]) -> None:
    """Holm across the tested rows of one table, then each row's verdict."""
    adjusted = holm([row.p for row in rows])
    for row, p_holm in zip(rows, adjusted):
        row.p_holm = float(p_holm)
        row.verdict = verdict(row.effect, row.p_holm, row.claim.sign, row.n, row.waiting)


def verdict(effect: float, p_holm: float, sign: int, n: str, waiting: str = "") -> str:
    if waiting:
        return f"{WAITING}: {waiting}"
    if p_holm < ALPHA and np.isfinite(effect) and effect != 0:
        return SUPPORTED if np.sign(effect) == sign else CONTRADICTED
    return f"inconclusive at n = {n}"


# ---------------------------------------------------------------------------------------------- text


def claims_text_tables(tables: list[ClaimTable]) -> list[TextTable]:
    return [_text_table(table) for table in tables]


def _text_table(table: ClaimTable) -> TextTable:
    cells = {}
    for row in table.rows:
        fmt = _fmt(row.claim)
        ci = MISSING if not np.isfinite(row.ci_low) else f"[{row.ci_low:{fmt}}, {row.ci_high:{fmt}}]"
        cells[(row.claim.id, row.setting)] = {
            "Effect": MISSING if not np.isfinite(row.effect) else f"{row.effect:{fmt}}",
            "95% CI": ci,
            "n": row.n if not row.waiting else MISSING,
            "Test": row.test if not row.waiting else MISSING,
            "p": _p(row.p),
            "p sign-flip": _p(row.flip_p),
            "p Holm": _p(row.p_holm),
            "Detectable": MISSING if not np.isfinite(row.detectable) else f"±{row.detectable:{fmt.lstrip('+')}}",
            "Verdict": row.verdict,
            "Paper": row.claim.paper_value or MISSING,
        }
    frame = pd.DataFrame.from_dict(cells, orient="index")
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=["Claim", "Setting"])
    counts = pd.Series([row.verdict.split(":")[0].split(" at ")[0] for row in table.rows]).value_counts()
    tally = ", ".join(f"{counts.get(v, 0)} {v}" for v in (SUPPORTED, CONTRADICTED, "inconclusive", WAITING))
    caption = (
        f"What this harness measured for each claim of the papers ({tally}). Effect: the claim's quantity "
        f"(see below; accuracies in percentage points). Differences: runs paired on seed and test domain "
        f"(`parent`: each QAT run with its own FP parent, or the erm run of its seed and domain when it was "
        f"quantized from the pretrained weights), mean paired difference with its 95% t interval "
        f"and the paired t-test's p, beside it the two-sided sign-flip permutation p that assumes no normal "
        f"distribution (exact up to 16 pairs; never below 2/2^n, so 1/32 at 6 pairs); Welch's t-test where "
        f"fewer than 2 runs pair (n = runs vs runs). Correlations: Kendall's "
        f"tau-b over runs (final weights and accuracies) with scipy's p and a bootstrap 95% interval. "
        f"p Holm: the first p with Holm's correction across the rows of this table. Verdict: supported or "
        f"contradicted when p Holm < {ALPHA} (by the sign of the effect against the paper's), else inconclusive "
        f"at its n. "
        f"Detectable: the smallest true effect a two-sided test at {ALPHA} (uncorrected) finds with 80% power "
        f"at this n and spread. Paper: the paper's own number, when it gives one."
    )
    notes = []
    for claim in dict.fromkeys(row.claim for row in table.rows):
        notes.append(f"{claim.id}: {claim.statement} ({claim.paper}, {claim.where}). Measured: {_quantity(claim)}.")
    title = " · ".join(map(str, table.key)) + " · claims"
    return TextTable(title, frame, caption, notes)


def _quantity(claim: Claim) -> str:
    sign = "> 0" if claim.direction == "greater" else "< 0"
    if claim.kind == "correlation":
        return f"Kendall's τ({describe(claim.x)}, {describe(claim.y)}) {sign}"
    baseline = "its FP parent" if claim.baseline == PARENT else claim.baseline
    metric = describe(claim.metric)
    metric = f"({metric})" if len(claim.metric) > 1 else metric
    return f"{metric} of {claim.method} minus {baseline}, {unit(claim.metric)}, {sign}"


def _fmt(claim: Claim) -> str:
    if claim.kind == "correlation":
        return "+.2f"
    return "+.1f" if unit(claim.metric) == "pp" else "+.4g"


def _p(p: float) -> str:
    if not np.isfinite(p):
        return MISSING
    return "<0.001" if p < 0.001 else f"{p:.3f}"
