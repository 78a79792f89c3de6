"""Runs that started from a parent trained again, not from the weights its record measured.

model.pt files are not committed, so a session on a new machine trains a from_fp_run cell's parent
again (runner/regenerate.py); float kernels differ between CPUs, so that parent is a different network
of the same seed, kept within `training.parent_tolerance`. Such a child is paired in the tables with
its parent's record and with siblings trained from the original weights: the reader must see which
runs those are and how far their starting point was from the record, beside the claims they enter.
"""

from __future__ import annotations

import pandas as pd

from qatbench.report.render import TextTable
from qatbench.report.tables import domain_names

PREFIX = "parent_regenerated."


def regenerated_table(records: pd.DataFrame) -> TextTable | None:
    """One row per finished run whose parent was trained again: the parent's final I.D. and OOD
    accuracy in its record and trained again; None when no run has one."""
    column = f"{PREFIX}id_acc"
    if records.empty or column not in records:
        return None
    runs = records[(records["status"] == "done") & records[column].notna()]
    if runs.empty:
        return None
    runs = runs.assign(domain=domain_names(runs))
    parents = records[records["status"] == "done"].drop_duplicates("run_id").set_index("run_id")
    rows = {}
    for _, run in runs.sort_values(["suite", "label", "bits", "domain", "seed"]).iterrows():
        parent = parents.loc[run["parent_run_id"]] if run["parent_run_id"] in parents.index else None
        rows[(run["suite"], run["label"], run["bits"], run["domain"], str(run["seed"]))] = {
            "Parent": run["parent_run_id"],
            "Record I.D. / OOD": _pair(parent["id_acc"], parent["ood_acc"]) if parent is not None else "not found",
            "Trained again I.D. / OOD": _pair(run[column], run[f"{PREFIX}ood_acc"]),
            "Tolerance": f"{100 * float(run[f'{PREFIX}tolerance']):.1f} points",
        }
    cells = pd.DataFrame.from_dict(rows, orient="index")
    cells.index = pd.MultiIndex.from_tuples(cells.index, names=["Suite", "Method", "Bits", "Test domain", "Seed"])
    caption = (
        f"{len(cells)} run(s) trained from a parent trained again (its model.pt is not committed), which "
        "reached the final accuracies under 'Trained again' instead of its record's; the tolerance is the "
        "suite's training.parent_tolerance. Their pairs with the parent's record and with runs from the "
        "original weights carry this difference."
    )
    return TextTable("Runs from a parent trained again", cells, caption)


def _pair(id_acc, ood_acc) -> str:
    return f"{100 * float(id_acc):.1f} / {100 * float(ood_acc):.1f}"
