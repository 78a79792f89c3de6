"""Does a flatter quantized model generalise better out of distribution? Kendall's tau between
sharpness (top Hessian eigenvalue, trace) and OOD accuracy / OOD gap across runs.

The seed papers (FQAT, GAQAT, FPQ) argue it within one method family; this asks it across every
method and seed a results folder holds. Each run contributes one point: its Hessian, measured on
the final weights, against that run's final accuracies (`record.json`, not a selected checkpoint,
so that both numbers describe the same weights). Kendall's tau-b (scipy) is rank-based, so the very
different scales of eigenvalues at 2 and 8 bits do not swamp it. Rows are per test domain (OOD
accuracies of different domains are not on one scale) and per bit width, plus all bit widths pooled
(where bits confound both axes, the per-width rows are the honest ones). Seeds of one method are
not independent draws of "a method", so the p-values are optimistic; they rank evidence, they do
not certify it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from qatbench.report.render import MISSING, TextTable
from qatbench.report.tables import finished_runs

SHARPNESS = {"hessian.top_eigenvalue": "λ_max", "hessian.trace": "Tr(H)"}
TARGETS = {"ood_acc": "OOD acc", "ood_gap": "OOD gap"}  # gap = I.D. - OOD accuracy
MIN_RUNS = 4  # fewer points than this give no test worth printing
ALL = "all"


def sharpness_runs(records: pd.DataFrame) -> pd.DataFrame:
    """Finished runs (the newest per cell, as in the accuracy tables) with a sharpness measure and both
    final accuracies; `ood_gap` added."""
    if records.empty or not {"id_acc", "ood_acc"} <= set(records) or not set(SHARPNESS) & set(records):
        return pd.DataFrame()
    runs, _ = finished_runs(records)
    if runs.empty:
        return runs
    runs = runs.copy()
    for key in [*SHARPNESS, "id_acc", "ood_acc"]:
        runs[key] = pd.to_numeric(runs[key], errors="coerce") if key in runs else np.nan
    runs = runs.dropna(subset=["id_acc", "ood_acc"]).dropna(subset=list(SHARPNESS), how="all")
    runs["ood_gap"] = runs["id_acc"] - runs["ood_acc"]
    return runs


def kendall(x, y) -> tuple[float, float, int]:
    """(tau-b, two-sided p, n) over the pairs where both are finite; NaNs when n < MIN_RUNS or a side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < MIN_RUNS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan"), int(len(x))
    result = stats.kendalltau(x, y)
    return float(result.statistic), float(result.pvalue), int(len(x))


def correlation_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """Long format: table, domain, bits, measure, target, tau, p, n; per test domain, per bit width and 'all'."""
    rows = []
    for key, group in runs.groupby(["suite", "dataset", "model"], sort=True):
        bits_order = group.sort_values(["w_bits", "bits"], ascending=[False, True])["bits"].unique().tolist()
        domains = group.assign(_o=[min(t, default=-1) for t in group["test_envs"]]).sort_values("_o")["domain"]
        for domain in dict.fromkeys(domains):
            in_domain = group[group["domain"] == domain]
            for bits in [*bits_order, ALL] if len(bits_order) > 1 else bits_order:
                subset = in_domain if bits == ALL else in_domain[in_domain["bits"] == bits]
                if subset.empty:
                    continue
                for measure in SHARPNESS:
                    for target in TARGETS:
                        tau, p, n = kendall(subset[measure], subset[target])
                        pair = {"measure": measure, "target": target, "tau": tau, "p": p, "n": n}
                        rows.append({"table": key, "domain": domain, "bits": bits, **pair})
    return pd.DataFrame(rows)


def correlation_tables(records: pd.DataFrame) -> list[TextTable]:
    runs = sharpness_runs(records)
    if runs.empty:
        return []
    frame = correlation_frame(runs)
    tables = []
    for key, group in frame.groupby("table", sort=False):
        wide: dict[tuple, dict] = {}
        for row in group.itertuples():
            column = f"τ({SHARPNESS[row.measure]}, {TARGETS[row.target]})"
            cell = MISSING if np.isnan(row.tau) else f"{row.tau:+.2f} (p{_p(row.p)}, n={row.n})"
            wide.setdefault((row.domain, row.bits), {})[column] = cell
        cells = pd.DataFrame.from_dict(wide, orient="index")
        cells.index = pd.MultiIndex.from_tuples(cells.index, names=["Test domain", "Bits"])
        caption = (
            "Kendall's tau-b across finished runs between sharpness of the final weights (top Hessian eigenvalue, "
            "trace) and their final OOD accuracy or OOD gap (I.D. − OOD accuracy), two-sided p-values, n runs "
            f"(methods × seeds) per cell; per test domain and bit width, '{ALL}' pooling the bit widths. "
            "Negative τ with OOD accuracy (positive with the gap): sharper runs generalise worse. Seeds of a "
            f"method are not independent, so p is optimistic. {MISSING} : fewer than {MIN_RUNS} runs or no spread."
        )
        tables.append(TextTable(f"{' · '.join(key)} · sharpness vs OOD", cells, caption))
    return tables


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"={p:.3f}"
