"""Records -> tables. Reads JSON and never imports torch, so reports are fast and run anywhere.

`qatbench.report(records, format="md")` renders the tables; the package itself is callable so
that the documented API and the subpackage share one name.
"""

from __future__ import annotations

import sys
import types
from typing import Literal

import pandas as pd

from qatbench.errors import UserError, allowed_list, did_you_mean
from qatbench.report.collect import load_curves, load_records
from qatbench.report.select import SELECTIONS, Selection
from qatbench.report.sharpness_table import sharpness_tables
from qatbench.report.tables import Table, build_tables, to_latex, to_markdown

__all__ = ["SELECTIONS", "Selection", "Table", "build_tables", "load_curves", "load_records", "render"]

Format = Literal["md", "latex"]


def render(records: pd.DataFrame, format: Format = "md", selection: str = "training_domain") -> str:
    """The accuracy tables of every (suite, dataset, model) in `records`, plus what is missing."""
    if format not in ("md", "latex"):
        raise UserError(
            f"--format: unknown format '{format}'{did_you_mean(format, ['md', 'latex'])}; allowed: latex, md"
        )
    if selection not in SELECTIONS:
        raise UserError(
            f"--selection: unknown selection '{selection}'{did_you_mean(selection, SELECTIONS)}; "
            f"allowed: {allowed_list(SELECTIONS)}"
        )
    if records.empty or "status" not in records:
        return "No records found.\n"
    tables = build_tables(records, SELECTIONS[selection](), load_curves) + sharpness_tables(records)
    body = to_markdown(tables) if format == "md" else to_latex(tables)
    return body + _not_counted(records, format)


def _not_counted(records: pd.DataFrame, format: Format) -> str:
    """Runs that did not finish are listed with their reasons, never silently dropped."""
    bad = records[records["status"] != "done"]
    if bad.empty:
        return ""
    comment = "% " if format == "latex" else ""
    lines = [f"\n{comment}Not counted: {len(bad)} run(s) that did not finish:"]
    for row in bad.to_dict("records"):
        what = " ".join(f"{row.get(k, '?')}" for k in ("run_id", "label", "bits"))
        lines.append(
            f"{comment}- {what} seed {row.get('seed', '?')} test_envs {row.get('test_envs', '?')}: "
            f"{row['status']}: {row.get('error') or ''}"
        )
    return "\n".join(lines) + "\n"


class _CallableModule(types.ModuleType):
    def __call__(self, records: pd.DataFrame, format: Format = "md", selection: str = "training_domain") -> str:
        return render(records, format=format, selection=selection)


sys.modules[__name__].__class__ = _CallableModule
