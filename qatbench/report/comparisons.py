"""Each method against the suite's baseline at the same bits: the difference of the Avg columns with
Welch's confidence interval and p-value, the numbers behind the accuracy tables' daggers."""

from __future__ import annotations

import numpy as np
import pandas as pd

from qatbench.report.render import TextTable
from qatbench.report.significance import ALPHA, compare
from qatbench.report.tables import AVG, BASELINES, FP, METRICS, Table


def comparison_table(table: Table, baselines: dict[str, str] | None = None) -> TextTable | None:
    """Rows = methods other than their baseline; columns per metric: Δ (pp), 95% CI, Welch p, seeds."""
    baselines = {**BASELINES, **(baselines or {})}
    if table.values is None or table.values.empty:
        return None
    values = table.values[table.values["domain"] == AVG]
    per_cell = {k: g["value"].to_numpy() for k, g in values.groupby(["label", "bits", "header"])}
    present = set(values["label"])
    rows = {}
    for label, bits in table.mean.index:
        baseline = baselines["fp" if bits == FP else "quantized"]
        if label == baseline or baseline not in present:
            continue
        row = {"Baseline": baseline}
        for _, header in METRICS:
            ours, theirs = per_cell.get((label, bits, header)), per_cell.get((baseline, bits, header))
            if ours is None or theirs is None:
                row.update({f"Δ {header}": "—", f"95% CI {header}": "—", f"p {header}": "—"})
                continue
            result = compare(ours, theirs)
            row[f"Δ {header}"] = f"{result.delta:+.1f}" + ("†" if result.significant else "")
            row[f"95% CI {header}"] = (
                "—" if np.isnan(result.ci_low) else f"[{result.ci_low:+.1f}, {result.ci_high:+.1f}]"
            )
            row[f"p {header}"] = "—" if np.isnan(result.p_value) else f"{result.p_value:.3f}"
        row["Seeds"] = f"{len(ours) if ours is not None else 0} vs {len(theirs) if theirs is not None else 0}"
        rows[(label, bits)] = row
    if not rows:
        return None
    cells = pd.DataFrame.from_dict(rows, orient="index")
    cells.index = pd.MultiIndex.from_tuples(cells.index, names=["Method", "Bits"])
    caption = (
        f"Avg accuracy (percentage points) minus the baseline's at the same bits (quantized rows: "
        f"{baselines['quantized']}, FP rows: {baselines['fp']}), over the seeds that have every domain; "
        f"95% confidence interval of the difference and two-sided p-value of Welch's t-test, † p < {ALPHA} "
        f"(uncorrected for the number of rows). With a handful of seeds a group, a missing dagger means little; "
        f"— : fewer than 2 seeds in a group, or neither group varies."
    )
    return TextTable(f"{table.title} · vs baseline", cells, caption)
