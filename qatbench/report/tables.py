"""The accuracy table of the papers: rows = method x bits, columns = each test domain + Avg,
for OOD accuracy and for I.D. accuracy; mean ± std over seeds. One table model, two renderings
(Markdown for terminals and READMEs, LaTeX through pandas' Styler for papers).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from qatbench.report.select import Selection

METRICS = (("ood_acc", "OOD"), ("id_acc", "I.D."))
AVG = "Avg"

log = logging.getLogger(__name__)


@dataclass
class Table:
    """Numbers of one table: mean, sample std and seed count per cell, same shape."""

    title: str
    mean: pd.DataFrame  # index (Method, Bits); columns (metric header, domain)
    std: pd.DataFrame
    n: pd.DataFrame
    caption: str
    notes: list[str] = field(default_factory=list)
    fmt: str = ".1f"  # accuracies in %; sharpness values need significant digits (".4g")


NO_TEST_DOMAIN = "no test domain"  # test_envs: none (I.D. only, e.g. CIFAR without -C)
KEYS = ["run_id", "suite", "dataset", "model", "label", "bits", "w_bits", "seed", "test_envs", "environments"]
CELL = ["suite", "dataset", "model", "label", "bits", "seed", "domain"]  # one run per cell and seed


def finished_runs(records: pd.DataFrame) -> tuple[pd.DataFrame, dict[tuple, list[str]]]:
    """Done runs, one per (table, row, domain, seed), and notes per table on what was set aside.

    A results folder can hold several configurations under one label (a suite edited and run
    again): the most recent finished record counts, the others are named in a note.
    """
    notes: dict[tuple, list[str]] = {}
    if records.empty or "status" not in records:
        return pd.DataFrame(columns=KEYS), notes
    done = records[records["status"] == "done"]
    absent = [k for k in KEYS if k not in done]
    complete = done.dropna(subset=[k for k in KEYS if k in done]) if not absent else done.iloc[0:0]
    if len(complete) < len(done):
        lacking = absent or [k for k in KEYS if done[k].isna().any()]
        log.warning(
            "%d finished record(s) lack keys a table needs (%s); not shown",
            len(done) - len(complete),
            ", ".join(lacking),
        )
    if complete.empty:
        return pd.DataFrame(columns=[*KEYS, "domain"]), notes
    runs = complete.drop_duplicates("run_id").copy()
    runs["domain"] = [
        " + ".join(envs[i] for i in tests) or NO_TEST_DOMAIN
        for tests, envs in zip(runs["test_envs"], runs["environments"])
    ]
    order = runs["finished_at"] if "finished_at" in runs else pd.Series("", index=runs.index)
    runs = runs.assign(_order=order.fillna("")).sort_values("_order", kind="stable")
    superseded = runs[runs.duplicated(CELL, keep="last")]
    for (suite, dataset, model), group in superseded.groupby(["suite", "dataset", "model"]):
        notes.setdefault((suite, dataset, model), []).append(
            f"{len(group)} older record(s) of another configuration under the same method, bits, seed and "
            f"domain are not counted: {', '.join(sorted(group['run_id']))}"
        )
    return runs.drop_duplicates(CELL, keep="last").drop(columns="_order"), notes


def selected_runs(runs: pd.DataFrame, curves: pd.DataFrame, selection: Selection) -> pd.DataFrame:
    """Finished runs with the metrics of their selected evaluation."""
    chosen = selection.select(curves, runs) if not runs.empty else pd.DataFrame()
    if chosen.empty:
        return pd.DataFrame()
    runs = runs[[*KEYS, "domain"]].merge(chosen[["ood_acc", "id_acc"]], left_on="run_id", right_index=True)
    runs["domain_order"] = [min(tests, default=-1) for tests in runs["test_envs"]]
    return runs


def build_tables(records: pd.DataFrame, selection: Selection, load_curves) -> list[Table]:
    runs, notes = finished_runs(records)
    runs = selected_runs(runs, load_curves(runs), selection)
    if runs.empty:
        return []
    tables = []
    for key, group in runs.groupby(["suite", "dataset", "model"], sort=True):
        table = _table(group, " · ".join(key), selection)
        table.notes.extend(notes.get(key, []))
        tables.append(table)
    return tables


def _table(runs: pd.DataFrame, title: str, selection: Selection) -> Table:
    domains = list(dict.fromkeys(runs.sort_values("domain_order")["domain"]))
    rows = (
        runs[["label", "bits", "w_bits"]]
        .drop_duplicates()
        .sort_values(["w_bits", "label", "bits"], ascending=[False, True, True])
    )
    index = pd.MultiIndex.from_frame(rows[["label", "bits"]], names=["Method", "Bits"])
    columns = pd.MultiIndex.from_tuples([(header, d) for _, header in METRICS for d in [*domains, AVG]])
    mean, std, n = (pd.DataFrame(np.nan, index=index, columns=columns) for _ in range(3))
    for (label, bits), row_runs in runs.groupby(["label", "bits"]):
        for metric, header in METRICS:
            for domain, values in row_runs.groupby("domain")[metric]:
                mean.loc[(label, bits), (header, domain)] = values.mean() * 100
                std.loc[(label, bits), (header, domain)] = values.std(ddof=1) * 100
                n.loc[(label, bits), (header, domain)] = len(values)
            per_seed = row_runs.pivot_table(index="seed", columns="domain", values=metric)
            complete = per_seed.reindex(columns=domains).dropna()  # Avg only over seeds with every domain
            if len(complete):
                averages = complete.mean(axis=1) * 100
                mean.loc[(label, bits), (header, AVG)] = averages.mean()
                std.loc[(label, bits), (header, AVG)] = averages.std(ddof=1)
                n.loc[(label, bits), (header, AVG)] = len(averages)
    n_max = int(np.nanmax(n.to_numpy())) if n.notna().any().any() else 0
    caption = (
        f"Accuracy (%) on the whole test domain (OOD) and on held-out data of the training domains (I.D.); "
        f"mean ± sample standard deviation over seeds, n = {n_max} unless marked; "
        f"{selection.description} model selection. Columns name the test domain; "
        f"Avg averages the domains per seed first."
    )
    return Table(title, mean, std, n.astype("Int64"), caption)


def format_cell(mean: float, std: float, n, n_max: int, pm: str = "±", fmt: str = ".1f") -> str:
    if pd.isna(mean):
        return "—"
    text = f"{mean:{fmt}}"
    if not pd.isna(std):
        text += f" {pm} {std:{fmt}}"
    if not pd.isna(n) and int(n) != n_max:
        text += f" (n={int(n)})"
    return text


def formatted(table: Table, pm: str = "±") -> pd.DataFrame:
    n_max = int(table.n.max().max()) if table.n.notna().any().any() else 0
    cells = table.mean.copy().astype(object)
    for r in range(cells.shape[0]):
        for c in range(cells.shape[1]):
            cells.iat[r, c] = format_cell(
                table.mean.iat[r, c], table.std.iat[r, c], table.n.iat[r, c], n_max, pm, table.fmt
            )
    return cells


def to_markdown(tables: list[Table]) -> str:
    blocks = []
    for table in tables:
        cells = formatted(table)
        cells.columns = [f"{header} {domain}" for header, domain in cells.columns]
        blocks.append(f"### {table.title}\n\n{cells.reset_index().to_markdown(index=False)}\n\n{table.caption}\n")
        blocks.extend(f"- {note}\n" for note in table.notes)
    return "\n".join(blocks)


def to_latex(tables: list[Table]) -> str:
    blocks = []
    for table in tables:
        cells = formatted(table, pm=r"$\pm$").map(lambda s: s.replace("—", "--"))
        cells = cells.reset_index(col_level=1)  # Method and Bits head their columns on the domain row
        styler = cells.style.hide(axis="index").format(escape="latex", subset=list(cells.columns[:2]))
        styler = styler.format_index(escape="latex", axis=1)
        latex = styler.to_latex(
            caption=_latex_escape(" ".join([f"{table.title}. {table.caption}", *table.notes])),
            column_format="ll" + "r" * (cells.shape[1] - 2),
            hrules=True,
            multicol_align="c",
            position_float="centering",
            environment="table",
        )
        blocks.append(latex)
    return "\n".join(blocks)


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "·": r"$\cdot$",
}
_LATEX_PATTERN = re.compile("|".join(re.escape(c) for c in _LATEX_SPECIAL))


def _latex_escape(text: str) -> str:
    """Escape free text (captions) in one pass, so no replacement is escaped again."""
    return _LATEX_PATTERN.sub(lambda m: _LATEX_SPECIAL[m.group()], text)
