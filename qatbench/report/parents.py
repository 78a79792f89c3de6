"""A QAT run and its FP parent: the record's `parent_run_id` names the full-precision run it was
quantized from (same seed and test domain), so the pair differs only by quantization. The
difference of their sharpness is a per-run quantity, kept beside the run's own numbers.
"""

from __future__ import annotations

import pandas as pd

PARENT_ID = "parent_run_id"
SHARPNESS = ("hessian.top_eigenvalue", "hessian.trace")
SUFFIX = "_minus_parent"


def with_parent_differences(records: pd.DataFrame) -> pd.DataFrame:
    """`records` with `<measure>_minus_parent` per sharpness measure: the run's value minus its FP parent's
    (NaN when the run has no parent, the parent is not among the records, or either did not finish)."""
    present = [m for m in SHARPNESS if m in records]
    if records.empty or PARENT_ID not in records or "run_id" not in records or not present:
        return records
    done = records[records["status"] == "done"].drop_duplicates("run_id").set_index("run_id")
    out = records.copy()
    for measure in present:
        own = pd.to_numeric(records[measure], errors="coerce").where(records["status"] == "done")
        parent = records[PARENT_ID].map(pd.to_numeric(done[measure], errors="coerce"))
        out[f"{measure}{SUFFIX}"] = own - parent
    return out
