"""Does a flatter quantized model generalise better out of distribution? Kendall's tau between
sharpness (top Hessian eigenvalue, trace) and OOD accuracy / OOD gap across runs.

The seed papers (FQAT, GAQAT, FPQ) argue it within one method family; this asks it across every
method and seed a results folder holds. Each run contributes one point: its Hessian, measured on
the final weights, against that run's final accuracies (`record.json`, not a selected checkpoint,
so that both numbers describe the same weights). Kendall's tau-b (scipy) is rank-based, so the very
different scales of eigenvalues at 2 and 8 bits do not swamp it; its p-value is the exact or
asymptotic two-sided test scipy chooses. Rows pool runs per bit width and over all bit widths
(where bits confound both axes, the per-width rows are the honest ones); test domains are pooled.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from qatbench.report.render import TextTable

SHARPNESS = {"hessian.top_eigenvalue": "λ_max", "hessian.trace": "Tr(H)"}
TARGETS = {"ood_acc": "OOD acc", "ood_gap": "OOD gap"}  # gap = I.D. - OOD accuracy
MIN_RUNS = 4  # fewer points than this give no test worth printing
ALL = "all"


def sharpness_runs(records: pd.DataFrame) -> pd.DataFrame:
    """Finished runs with a sharpness measure and both final accuracies; `ood_gap` added."""
    needed = {"status", "id_acc", "ood_acc", "bits"}
    if records.empty or not needed <= set(records) or not set(SHARPNESS) & set(records):
        return pd.DataFrame()
    runs = records[records["status"] == "done"].copy()
    for key in SHARPNESS:
        runs[key] = pd.to_numeric(runs[key], errors="coerce") if key in runs else np.nan
    runs = runs.dropna(subset=["id_acc", "ood_acc"]).dropna(subset=list(SHARPNESS), how="all")
    runs["ood_gap"] = runs["id_acc"] - runs["ood_acc"]
    return runs.drop_duplicates("run_id")


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
    """Long format: group, bits, sharpness, target, tau, p, n; one row per (table, bits or all, pair)."""
    rows = []
    for key, group in runs.groupby(["suite", "dataset", "model"], sort=True):
        bits_order = group.sort_values("w_bits", ascending=False)["bits"].unique().tolist()
        for bits in [*bits_order, ALL] if len(bits_order) > 1 else bits_order:
            subset = group if bits == ALL else group[group["bits"] == bits]
            for measure in SHARPNESS:
                for target in TARGETS:
                    tau, p, n = kendall(subset[measure], subset[target])
                    rows.append(
                        {"table": key, "bits": bits, "measure": measure, "target": target, "tau": tau, "p": p, "n": n}
                    )
    return pd.DataFrame(rows)


def correlation_tables(records: pd.DataFrame) -> list[TextTable]:
    runs = sharpness_runs(records)
    if runs.empty:
        return []
    frame = correlation_frame(runs)
    tables = []
    for key, group in frame.groupby("table", sort=False):
        wide = {}
        for row in group.itertuples():
            column = f"τ({SHARPNESS[row.measure]}, {TARGETS[row.target]})"
            cell = "—" if np.isnan(row.tau) else f"{row.tau:+.2f} (p{_p(row.p)})"
            wide.setdefault(row.bits, {"n": str(row.n)})[column] = cell
        cells = pd.DataFrame.from_dict(wide, orient="index")
        cells.index.name = "Bits"
        caption = (
            "Kendall's tau-b across finished runs between sharpness of the final weights (top Hessian eigenvalue, "
            "trace) and their final OOD accuracy or OOD gap (I.D. − OOD accuracy), two-sided p-values; "
            f"test domains and seeds pooled, n runs per row; '{ALL}' pools the bit widths as well. "
            f"Negative τ with OOD accuracy (positive with the gap): sharper runs generalise worse. "
            f"— : fewer than {MIN_RUNS} runs or no spread."
        )
        tables.append(TextTable(f"{' · '.join(key)} · sharpness vs OOD", cells, caption))
    return tables


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"={p:.3f}"
