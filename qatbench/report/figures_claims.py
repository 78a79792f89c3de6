"""The claims table as a figure: per claim and setting, the measured effect with its 95% CI, a vertical
line at zero, one panel per unit (accuracy in pp, Hessian trace, top eigenvalue, Kendall's tau), the
marker coloured by the verdict. Waiting and untested rows are listed, never drawn as zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

from qatbench.report.claims import unit
from qatbench.report.figures_analysis import _slug, _styled, save_figure
from qatbench.report.verdicts import CONTRADICTED, SUPPORTED, ClaimTable, Row

VERDICT_COLORS = dict(zip((SUPPORTED, CONTRADICTED, "inconclusive"), sns.color_palette("colorblind", 3)))


def _unit(row: Row) -> str:
    return "Kendall's τ" if row.claim.kind == "correlation" else {"pp": "accuracy (pp)"}.get(
        unit(row.claim.metric), unit(row.claim.metric)
    )


def _color(row: Row):
    return VERDICT_COLORS.get(row.verdict.split(" at ")[0], VERDICT_COLORS["inconclusive"])


@_styled
def claims_figure(table: ClaimTable) -> Figure:
    """Effect ± 95% CI per claim and setting, grouped into one panel per unit."""
    drawn = [row for row in table.rows if np.isfinite(row.effect) and not row.waiting]
    panels: dict[str, list[Row]] = {}
    for row in drawn:
        panels.setdefault(_unit(row), []).append(row)
    heights = [max(len(rows), 1) for rows in panels.values()] or [1]
    fig = Figure(figsize=(6.4, 0.9 + 0.22 * sum(heights) + 0.35 * len(heights)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(heights), 1, gridspec_kw={"height_ratios": heights}))
    for ax, (name, rows) in zip(axes, panels.items()):
        y = np.arange(len(rows))[::-1]
        for position, row in zip(y, rows):
            low, high = row.ci_low, row.ci_high
            if np.isfinite(low):
                ax.plot([low, high], [position, position], color=_color(row), lw=1.2)
            ax.plot(row.effect, position, "o", color=_color(row), ms=3.5)
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_yticks(y, [f"{row.claim.id} · {row.setting} ({'>' if row.claim.sign > 0 else '<'} 0)" for row in rows])
        ax.tick_params(axis="y", labelsize=6)
        ax.set_xlabel(f"effect, {name}", fontsize=7)
        ax.set_ylim(-0.7, len(rows) - 0.3)
    if not panels:
        axes[0].set_axis_off()
    waiting = [f"{row.claim.id}: {row.verdict}" for row in table.rows if row.waiting]
    handles = [
        axes[0].plot([], [], "o", color=color, label=verdict)[0] for verdict, color in VERDICT_COLORS.items()
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=6, frameon=False)
    title = " · ".join(map(str, table.key)) + " · claims (effect, 95% CI)"
    fig.suptitle(title + ("\n" + "; ".join(sorted(set(waiting))) if waiting else ""), fontsize=7)
    return fig


def claims_figures(tables: list[ClaimTable], out: Path) -> list[Path]:
    """`claims.png` and `.pdf` per table, one folder per suite, dataset and model (as report_figures)."""
    written: list[Path] = []
    for table in tables:
        written += save_figure(claims_figure(table), Path(out) / _slug(*table.key) / "claims")
    return written
