"""One table model, two renderings: Markdown for terminals and READMEs, LaTeX (booktabs, escaped) through
pandas' Styler for papers. Every table of a report (accuracy, sharpness, significance, correlation)
becomes a `TextTable` first, so the two formats can never disagree on a number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

MISSING = "—"


@dataclass
class TextTable:
    """Cells as text. `index` levels are the row headers; columns may be two-level (group, name)."""

    title: str
    cells: pd.DataFrame
    caption: str
    notes: list[str] = field(default_factory=list)
    bold: pd.DataFrame | None = None  # same shape as cells; True = best of its column


def to_markdown(tables: list[TextTable]) -> str:
    blocks = []
    for table in tables:
        cells = table.cells.map(_md_escape)
        cells.index = cells.index.map(
            lambda key: tuple(map(_md_escape, key)) if isinstance(key, tuple) else _md_escape(key)
        )
        if table.bold is not None:
            cells = cells.mask(table.bold.fillna(False).astype(bool), "**" + cells + "**")
        if isinstance(cells.columns, pd.MultiIndex):
            cells.columns = [" ".join(str(part) for part in col if part) for col in cells.columns]
        body = cells.reset_index().to_markdown(index=False, disable_numparse=True)
        notes = "".join(f"- {note}\n" for note in table.notes)
        blocks.append(f"### {table.title}\n\n{body}\n\n{table.caption}\n" + (f"\n{notes}" if notes else ""))
    return "\n".join(blocks)


def _md_escape(text) -> str:
    """A '|' inside a cell (a label, an error message) would start a new column."""
    return str(text).replace("|", "\\|")


def to_latex(tables: list[TextTable]) -> str:
    blocks = []
    for table in tables:
        blocks.append(_latex_table(table))
    return "\n".join(blocks)


def _latex_table(table: TextTable) -> str:
    n_index = table.cells.index.nlevels
    cells = table.cells.map(lambda text: _latex_escape(str(text)).replace(MISSING, "--"))
    bold = table.bold
    two_level = isinstance(cells.columns, pd.MultiIndex)
    # the row headers become columns, heading their columns on the lower header row
    cells = cells.reset_index(col_level=1) if two_level else cells.reset_index()
    cells.iloc[:, :n_index] = cells.iloc[:, :n_index].map(lambda text: _latex_escape(str(text)))
    if two_level:
        cells.columns = pd.MultiIndex.from_tuples([tuple(_latex_escape(str(p)) for p in c) for c in cells.columns])
    else:
        cells.columns = [_latex_escape(str(c)) for c in cells.columns]
    styler = cells.style.hide(axis="index")
    if bold is not None:
        flags = bold.fillna(False).astype(bool).to_numpy()
        props = pd.DataFrame("", index=cells.index, columns=cells.columns)
        props.iloc[:, n_index:] = [["textbf:--rwrap;" if flag else "" for flag in row] for row in flags]
        styler = styler.apply(lambda _: props, axis=None)
    return styler.to_latex(
        caption=_latex_escape(" ".join([f"{table.title}. {table.caption}", *table.notes])),
        column_format="l" * n_index + "r" * (cells.shape[1] - n_index),
        hrules=True,
        multicol_align="c",
        position_float="centering",
        environment="table",
    )


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
    "†": r"$^\dagger$",
    "‡": r"$^\ddagger$",
    "τ": r"$\tau$",
    "λ": r"$\lambda$",
    "Δ": r"$\Delta$",
    "−": "-",
    "≥": r"$\geq$",
    "<": r"$<$",
    ">": r"$>$",
}
_LATEX_PATTERN = re.compile("|".join(re.escape(c) for c in _LATEX_SPECIAL))


def _latex_escape(text: str) -> str:
    """Escape free text in one pass, so no replacement is escaped again."""
    return _LATEX_PATTERN.sub(lambda m: _LATEX_SPECIAL[m.group()], text)
