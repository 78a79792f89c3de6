"""The report's figures, drawn from the same numbers as its tables: accuracy against bit width per
method (I.D. and OOD), I.D. against OOD accuracy per run, sharpness against OOD accuracy per run, and
the landscape and spectrum figures of the runs' analysis files (figures_analysis.py).

Like the tables, this reads records only and never imports torch. Figures are built on
`matplotlib.figure.Figure` (no pyplot state) in seaborn's paper style, written as PNG and PDF.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from qatbench.report.figures_analysis import _slug, _styled, analysis_figures, save_figure
from qatbench.report.sharpness import SHARPNESS, kendall, sharpness_runs
from qatbench.report.tables import AVG, FP, Table

log = logging.getLogger(__name__)
HEADERS = ("I.D.", "OOD")


def _avg_values(tables: list[Table]) -> pd.DataFrame:
    """Per-seed Avg accuracies of every row of the given tables (one suite, dataset and model), FP rows once."""
    frames = [t.values[t.values["domain"] == AVG] for t in tables if t.values is not None and len(t.values)]
    if not frames:
        return pd.DataFrame(columns=["label", "bits", "header", "seed", "value"])
    return pd.concat(frames).drop_duplicates(["label", "bits", "header", "seed"])


def _bits_order(values: pd.DataFrame) -> list[str]:
    def width(bits: str) -> int:
        return 32 if bits == FP else int("".join(c for c in bits.split("A")[0] if c.isdigit()) or 0)

    return sorted(set(values["bits"]) - {FP}, key=lambda bits: (width(bits), bits))


@_styled
def accuracy_vs_bits_figure(values: pd.DataFrame, title: str) -> Figure:
    """Mean ± std over seeds of the Avg accuracy per method and bit width; FP rows as dashed lines."""
    order = _bits_order(values)
    fig = Figure(figsize=(8.0, 3.4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=False)
    quantized = sorted(set(values.loc[values["bits"] != FP, "label"]))
    fp_rows = sorted(set(values.loc[values["bits"] == FP, "label"]))
    colors = dict(zip(quantized + fp_rows, sns.color_palette("husl", len(quantized) + len(fp_rows))))
    for ax, header in zip(axes, HEADERS):
        cells = values[values["header"] == header]
        if cells.empty:  # I.D.-only suites
            ax.set_axis_off()
            continue
        stats = cells.groupby(["label", "bits"])["value"].agg(["mean", "std"]).reset_index()
        for label in quantized:
            line = stats[(stats["label"] == label) & (stats["bits"] != FP)].set_index("bits").reindex(order)
            ax.errorbar(
                range(len(order)), line["mean"], yerr=line["std"], label=label, color=colors[label], lw=1, marker="o"
            )
        for label in fp_rows:
            mean = stats[(stats["label"] == label) & (stats["bits"] == FP)]["mean"]
            if len(mean):
                ax.axhline(float(mean.iloc[0]), color=colors[label], ls="--", lw=0.8, label=f"{label} (FP)")
        ax.set_xticks(range(len(order)), order)
        ax.set_xlabel("bit width")
        ax.set_ylabel(f"{header} accuracy (%), Avg")
    axes[1].legend(frameon=False, fontsize=5, ncol=2, loc="best")
    fig.suptitle(title, fontsize=8)
    return fig


@_styled
def id_vs_ood_figure(values: pd.DataFrame, title: str) -> Figure:
    """One point per method, bits and seed (Avg over domains); the diagonal is no OOD gap."""
    wide = values.pivot_table(index=["label", "bits", "seed"], columns="header", values="value")
    wide = wide.reindex(columns=list(HEADERS)).dropna().reset_index()
    fig = Figure(figsize=(5.2, 4.0), layout="constrained")
    ax = fig.add_subplot()
    sns.scatterplot(data=wide, x="I.D.", y="OOD", hue="label", style="bits", ax=ax, s=18, palette="husl")
    low = float(np.nanmin(wide[["I.D.", "OOD"]].to_numpy())) if len(wide) else 0.0
    high = float(np.nanmax(wide[["I.D.", "OOD"]].to_numpy())) if len(wide) else 100.0
    ax.plot([low, high], [low, high], color="grey", lw=0.6, ls=":")
    ax.set_xlabel("I.D. accuracy (%), Avg")
    ax.set_ylabel("OOD accuracy (%), Avg")
    ax.legend(frameon=False, fontsize=5, ncol=2, bbox_to_anchor=(1.02, 1), loc="upper left")
    ax.set_title(title, fontsize=8)
    return fig


@_styled
def sharpness_vs_ood_figure(runs: pd.DataFrame, title: str) -> Figure:
    """Final OOD accuracy against each sharpness measure (log axis), one point per run, Kendall's tau in the title."""
    measures = [m for m in SHARPNESS if m in runs and runs[m].notna().any()]
    fig = Figure(figsize=(4.0 * len(measures), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(measures)))
    for ax, measure in zip(axes, measures):
        data = runs.assign(ood=runs["ood_acc"] * 100, x=runs[measure])
        data = data[data["x"] > 0]  # a log axis: non-positive sharpness (a saddle) cannot be drawn
        style = "domain" if data["domain"].nunique() > 1 else None
        sns.scatterplot(data=data, x="x", y="ood", hue="bits", style=style, ax=ax, s=14, palette="colorblind")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks collide on short log ranges
        taus = []  # per test domain: OOD accuracies of different domains are not on one scale
        for domain, group in runs.groupby("domain", sort=False):
            tau, p, n = kendall(group[measure], group["ood_acc"])
            taus.append(
                f"{domain}: τ = {tau:+.2f} (p = {p:.2g}, n = {n})" if np.isfinite(tau) else f"{domain}: n = {n}"
            )
        ax.set_title("\n".join(taus), fontsize=6)
        ax.set_xlabel(SHARPNESS[measure])
        ax.set_ylabel("OOD accuracy (%), final weights")
        ax.legend(frameon=False, fontsize=5)
    fig.suptitle(title, fontsize=8)
    return fig


def report_figures(tables: list[Table], records: pd.DataFrame, out: Path) -> list[Path]:
    """Every figure of a report under `out`, one folder per suite, dataset and model."""
    out, written = Path(out), []
    by_key: dict[tuple, list[Table]] = {}
    for table in tables:
        by_key.setdefault(table.key[:3], []).append(table)
    runs = sharpness_runs(records)
    for key, group in by_key.items():
        folder, title = out / _slug(*key), " · ".join(key)
        values = _avg_values(group)
        if len(values):
            if _bits_order(values):
                written += save_figure(accuracy_vs_bits_figure(values, title), folder / "accuracy_vs_bits")
            if (values["header"] == "OOD").any():  # I.D.-only suites (test_envs: none) have no OOD axis
                written += save_figure(id_vs_ood_figure(values, title), folder / "id_vs_ood")
        mine = (
            runs[(runs["suite"] == key[0]) & (runs["dataset"] == key[1]) & (runs["model"] == key[2])]
            if len(runs)
            else runs
        )
        if len(mine):
            written += save_figure(sharpness_vs_ood_figure(mine, title), folder / "sharpness_vs_ood")
        for bits, run_dirs in _representative_runs(records, key).items():
            written += analysis_figures(run_dirs, folder / "analysis" / _slug(bits))
    return written


def _representative_runs(records: pd.DataFrame, key: tuple) -> dict[str, list[Path]]:
    """Per bit width, one finished run per method (lowest seed, first test domain): overlays stay readable."""
    if records.empty or "run_dir" not in records:
        return {}
    mine = records[(records["status"] == "done") & (records["suite"] == key[0])]
    mine = mine[(mine["dataset"] == key[1]) & (mine["model"] == key[2])]
    first = mine.assign(_env=[min(t, default=-1) for t in mine["test_envs"]]).sort_values(["seed", "_env"])
    first = first.drop_duplicates(["label", "bits"])
    return {str(bits): [Path(d) for d in group["run_dir"]] for bits, group in first.groupby("bits")}
