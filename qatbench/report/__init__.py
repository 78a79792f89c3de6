"""Records -> tables. Reads JSON and never imports torch, so reports are fast and run anywhere.

`qatbench.report(records, format="md")` renders the tables; the package itself is callable so
that the documented API and the subpackage share one name.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Literal

import pandas as pd

from qatbench.errors import UserError, allowed_list, did_you_mean
from qatbench.report.claims import Claim, load_claims
from qatbench.provenance import FingerprintCache, stale_reason
from qatbench.report.collect import load_curves, load_records
from qatbench.report.comparisons import comparison_table
from qatbench.report.pending import pending_tables
from qatbench.report.regenerated import regenerated_table
from qatbench.report.references import attach_references, load_references
from qatbench.report.render import TextTable, to_latex, to_markdown
from qatbench.report.select import SELECTIONS, Selection
from qatbench.report.sharpness import correlation_tables
from qatbench.report.sharpness_table import sharpness_tables
from qatbench.report.tables import TABLE, Table, build_tables, to_text
from qatbench.report.verdicts import ClaimTable, claims_text_tables, measure_claims

__all__ = [
    "SELECTIONS",
    "Claim",
    "ClaimTable",
    "Selection",
    "Table",
    "TextTable",
    "build_tables",
    "claim_tables",
    "claims_text",
    "format_report",
    "load_claims",
    "load_curves",
    "load_records",
    "load_references",
    "render",
    "render_claims",
    "render_pending",
    "report_tables",
    "text_tables",
]

Format = Literal["md", "latex"]
DEFAULT_REFERENCES = Path("suites") / "references"


def text_tables(
    records: pd.DataFrame,
    selection: str = "training_domain",
    references: pd.DataFrame | None = None,
    baseline: str | None = None,
) -> list[TextTable]:
    """Every table of a report, in order: per suite, dataset and model, the accuracy table of each bit
    width with its comparison against the baseline, then sharpness and its correlation with OOD accuracy."""
    _check_selection(selection)
    baselines = {"quantized": baseline} if baseline else {}
    tables = build_tables(records, SELECTIONS[selection](), load_curves, baselines)
    out: list[TextTable] = []
    prints = FingerprintCache()
    for table in tables:
        if references is not None and not references.empty:
            attach_references(table, references, _table_records(records, table.key))
        text = to_text(table)
        text.notes += data_notes(_table_records(records, table.key), prints)
        out.append(text)
        versus = comparison_table(table, baselines)
        if versus is not None:
            out.append(versus)
    out += [to_text(table) for table in sharpness_tables(records)]
    out += correlation_tables(records)
    return out


def render(
    records: pd.DataFrame,
    format: Format = "md",
    selection: str = "training_domain",
    references: pd.DataFrame | None = None,
    baseline: str | None = None,
    claims: list[Claim] | None = None,
) -> str:
    """The tables of every (suite, dataset, model, bits) in `records`, the verdicts on `claims` when
    given, plus what is missing."""
    _check_format(format)
    if records.empty or "status" not in records:
        return "No records found.\n"
    return format_report(report_tables(records, selection, references, baseline, claims), records, format)


def report_tables(
    records: pd.DataFrame,
    selection: str = "training_domain",
    references: pd.DataFrame | None = None,
    baseline: str | None = None,
    claims: list[Claim] | None = None,
) -> list[TextTable]:
    """What `render` writes, before its format: built once, they serve both the Markdown and the
    LaTeX leaderboard."""
    tables = text_tables(records, selection, references, baseline)
    if claims:
        tables += claims_text_tables(claim_tables(records, claims, selection))
    return tables


def format_report(tables: list[TextTable], records: pd.DataFrame, format: Format = "md") -> str:
    """`report_tables` of `records` in Markdown or LaTeX, plus what is missing."""
    _check_format(format)
    body = to_markdown(tables) if format == "md" else to_latex(tables)
    return body + _not_counted(records, format)


def claim_tables(records: pd.DataFrame, claims: list[Claim], selection: str = "training_domain") -> list[ClaimTable]:
    """Per (suite, dataset, model): every claim measured on the records, with its verdict."""
    _check_selection(selection)
    if records.empty or "status" not in records:
        return []
    return measure_claims(records, claims, SELECTIONS[selection](), load_curves)


def render_claims(
    records: pd.DataFrame, claims: list[Claim], format: Format = "md", selection: str = "training_domain"
) -> str:
    """The claims tables alone (`qatbench report --claims`)."""
    _check_format(format)
    return claims_text(claim_tables(records, claims, selection), format)


def claims_text(tables: list[ClaimTable], format: Format = "md") -> str:
    _check_format(format)
    if not tables:
        return "No records found.\n"
    texts = claims_text_tables(tables)
    return to_markdown(texts) if format == "md" else to_latex(texts)


def render_pending(cells: pd.DataFrame, suite_files: dict[str, str], records: pd.DataFrame, format: Format = "md") -> str:
    """The pending cells of each suite's grid (report/pending.py), after the tables; "" when none."""
    tables = pending_tables(cells, records, suite_files)
    if not tables:
        return ""
    return "\n" + (to_markdown(tables) if format == "md" else to_latex(tables))


def render_regenerated(records: pd.DataFrame, format: Format = "md") -> str:
    """The runs whose parent was trained again (report/regenerated.py), after the tables; "" when none."""
    table = regenerated_table(records)
    if table is None:
        return ""
    return "\n" + (to_markdown([table]) if format == "md" else to_latex([table]))


def _check_format(format: str) -> None:
    if format not in ("md", "latex"):
        raise UserError(
            f"--format: unknown format '{format}'{did_you_mean(format, ['md', 'latex'])}; allowed: latex, md"
        )


def _check_selection(selection: str) -> None:
    if selection not in SELECTIONS:
        raise UserError(
            f"--selection: unknown selection '{selection}'{did_you_mean(selection, SELECTIONS)}; "
            f"allowed: {allowed_list(SELECTIONS)}"
        )


def _table_records(records: pd.DataFrame, key: tuple) -> pd.DataFrame:
    """The records of one table, with the settings references are compared on under plain names."""
    mine = records[(records[TABLE] == pd.Series(key[:3], index=TABLE)).all(axis=1)]
    if "dataset_options.image_size" in mine:
        mine = mine.assign(image_size=mine["dataset_options.image_size"])
    return mine


def data_notes(records: pd.DataFrame, prints: FingerprintCache | None = None) -> list[str]:
    """What a table's numbers rest on, when it is not the whole data as it is now: image files the
    runs skipped as unreadable, and runs whose data on disk has changed since they read it."""
    notes = []
    if "data_skipped_n" in records:
        skipped = pd.to_numeric(records["data_skipped_n"], errors="coerce").fillna(0)
        if skipped.max() > 0:
            lists = [names for names in records.get("data_skipped", []) if isinstance(names, list)]
            examples = sorted({str(name).rsplit("/", 1)[-1] for names in lists for name in names})
            notes.append(
                f"{int(skipped.max())} unreadable image file(s) were skipped by these runs "
                f"(e.g. {', '.join(examples[:3])}; the records' data_skipped lists them)"
            )
    prints = prints or FingerprintCache()
    stale = [
        str(row.get("run_id"))
        for row in records.to_dict("records")
        if row.get("status") == "done" and stale_reason(row, None, prints)
    ]
    if stale:
        notes.append(
            f"stale: {len(stale)} run(s) read data that differs from the data under their data root now "
            f"({', '.join(r[:8] for r in stale[:5])}{', ...' if len(stale) > 5 else ''}); "
            f"qatbench run --rerun-stale retrains them"
        )
    return notes


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
            f"{row['status']}: {str(row.get('error') or '').strip().splitlines()[0] if row.get('error') else ''}"
        )
    return "\n".join(lines) + "\n"


class _CallableModule(types.ModuleType):
    def __call__(self, records: pd.DataFrame, format: Format = "md", selection: str = "training_domain") -> str:
        return render(records, format=format, selection=selection)


sys.modules[__name__].__class__ = _CallableModule
