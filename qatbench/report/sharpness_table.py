"""The sharpness columns of finished runs: top Hessian eigenvalue and trace per method and bits,
mean ± std over runs (seeds and test domains), beside the accuracy tables.

Each run's trace carries its own standard error (Hutchinson's); the spread shown here is the
spread across runs, which is what a comparison of methods needs. Runs without analyses are not
counted, and the caption says how many runs each cell averages.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from qatbench.report.tables import Table, finished_runs

SHARPNESS = (("hessian.top_eigenvalue", "λ_max"), ("hessian.trace", "Tr(H)"), ("hessian.loss", "Loss"))


def sharpness_tables(records: pd.DataFrame) -> list[Table]:
    if records.empty or "hessian.trace" not in records and "hessian.top_eigenvalue" not in records:
        return []
    done, _ = finished_runs(records)  # the newest record per cell, as in the accuracy tables
    present = [(key, header) for key, header in SHARPNESS if key in done]
    done = done.dropna(subset=[key for key, _ in present], how="all")
    tables = []
    for (suite, dataset, model), group in done.groupby(["suite", "dataset", "model"], sort=True):
        rows = (
            group[["label", "bits", "w_bits"]]
            .drop_duplicates()
            .sort_values(["w_bits", "label", "bits"], ascending=[False, True, True])
        )
        index = pd.MultiIndex.from_frame(rows[["label", "bits"]], names=["Method", "Bits"])
        columns = pd.MultiIndex.from_tuples([("Sharpness", header) for _, header in present])
        mean, std, n = (pd.DataFrame(np.nan, index=index, columns=columns) for _ in range(3))
        for (label, bits), row_runs in group.groupby(["label", "bits"]):
            for key, header in present:
                values = pd.to_numeric(row_runs[key], errors="coerce").dropna()
                mean.loc[(label, bits), ("Sharpness", header)] = values.mean() if len(values) else np.nan
                std.loc[(label, bits), ("Sharpness", header)] = values.std(ddof=1) if len(values) > 1 else np.nan
                n.loc[(label, bits), ("Sharpness", header)] = len(values)
        splits = ", ".join(sorted(str(s) for s in group.get("analysis.split", pd.Series(dtype=str)).dropna().unique()))
        sizes = ", ".join(str(int(s)) for s in sorted(group.get("analysis.subset_n", pd.Series()).dropna().unique()))
        caption = (
            f"Sharpness of the loss Hessian w.r.t. the weights (eval mode, step sizes fixed) on a fixed subset of "
            f"{sizes or '?'} '{splits or '?'}' examples: top eigenvalue (Lanczos), trace (Hutchinson), loss on "
            f"the subset; mean ± sample standard deviation over runs (seeds and test domains), "
            f"n = {int(np.nanmax(n.to_numpy())) if n.notna().any().any() else 0} unless marked."
        )
        tables.append(
            Table(
                f"{suite} · {dataset} · {model} · sharpness",
                mean,
                std,
                n.astype("Int64"),
                caption,
                fmt=".4g",
                bold_best=False,
            )
        )
    return tables
