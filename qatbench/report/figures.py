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
from matplotlib.ticker import FixedLocator, FuncFormatter, LogFormatterSciNotation, NullFormatter

from qatbench.report.figures_analysis import _slug, _styled, analysis_figures, save_figure
from qatbench.report.palette import Palette, chance_percent, chunks
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


LEGEND = {"frameon": False, "fontsize": 7}


def _y_range(ax, values: list[float], references: list[float]) -> None:
    """y limits over the data (with error bars) and the chance and FP reference lines, padded, within 0-100:
    never an auto-zoom in which a point of accuracy fills the panel without its reference in view."""
    finite = [v for v in [*values, *references] if v is not None and np.isfinite(v)]
    if not finite:
        return
    low, high = min(finite), max(finite)
    pad = max(2.0, 0.06 * (high - low))
    ax.set_ylim(max(0.0, low - pad), min(100.0, high + pad))


def _chance_line(ax, chance: float | None, label: bool = True) -> None:
    if chance is not None:
        ax.axhline(chance, color="0.35", ls=":", lw=0.9, label=f"chance ({chance:.3g}%)" if label else None)


@_styled
def accuracy_vs_bits_figure(
    values: pd.DataFrame, title: str, palette: Palette | None = None, chance: float | None = None
) -> Figure:
    """Mean ± std over seeds of the Avg accuracy per method and bit width; FP rows as dashed lines, chance
    dotted. More than 8 quantized methods: small multiples, one row of panels per group of methods, with
    the same FP lines and the same y range in every row of a column."""
    order = _bits_order(values)
    quantized = sorted(set(values.loc[values["bits"] != FP, "label"]))
    fp_rows = sorted(set(values.loc[values["bits"] == FP, "label"]))
    palette = palette or Palette([*quantized, *fp_rows])
    groups = chunks(quantized)
    fig = Figure(figsize=(9.0, 3.2 * len(groups) + 0.3), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(groups), 2, sharey="col", squeeze=False))
    stats = values.groupby(["header", "label", "bits"])["value"].agg(["mean", "std"]).reset_index()
    for column, header in enumerate(HEADERS):
        cells = stats[stats["header"] == header]
        if cells.empty:  # I.D.-only suites
            for ax in axes[:, column]:
                ax.set_axis_off()
            continue
        fp_means = {
            label: float(cells[(cells["label"] == label) & (cells["bits"] == FP)]["mean"].iloc[0])
            for label in fp_rows
            if ((cells["label"] == label) & (cells["bits"] == FP)).any()
        }
        shown: list[float] = []
        for row, group in enumerate(groups):
            ax = axes[row, column]
            for label in group:
                line = cells[(cells["label"] == label) & (cells["bits"] != FP)].set_index("bits").reindex(order)
                ax.errorbar(
                    range(len(order)),
                    line["mean"],
                    yerr=line["std"],
                    label=label,
                    color=palette.colour(label),
                    marker=palette.marker(label),
                    lw=1.2,
                    ms=4,
                    capsize=2,
                )
                shown += list(line["mean"] - line["std"].fillna(0)) + list(line["mean"] + line["std"].fillna(0))
            for label, mean in fp_means.items():
                ax.axhline(mean, color=palette.colour(label), ls="--", lw=0.9, label=f"{label} (FP)")
            _chance_line(ax, chance)
            ax.set_xticks(range(len(order)), order)
            ax.set_xlabel("bit width")
            ax.set_ylabel(f"{header} accuracy (%), Avg")
            if column == 1 or values[values["header"] == "OOD"].empty:
                ax.legend(**LEGEND, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        _y_range(axes[0, column], shown, [*fp_means.values(), chance])
    fig.suptitle(title, fontsize=9)
    return fig


@_styled
def id_vs_ood_figure(
    values: pd.DataFrame, title: str, palette: Palette | None = None, chance: float | None = None
) -> Figure:
    """One point per method, bits and seed (Avg over domains); the diagonal is no OOD gap, dotted lines chance."""
    wide = values.pivot_table(index=["label", "bits", "seed"], columns="header", values="value")
    wide = wide.reindex(columns=list(HEADERS)).dropna().reset_index()
    palette = palette or Palette(wide["label"])
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    sns.scatterplot(
        data=wide, x="I.D.", y="OOD", hue="label", style="bits", ax=ax, s=22, palette=palette.mapping(wide["label"])
    )
    points = wide[["I.D.", "OOD"]].to_numpy().ravel().tolist()
    low = min([*points, chance] if chance is not None else points or [0.0])
    high = max(points or [100.0])
    ax.plot([low, high], [low, high], color="grey", lw=0.6, ls="-", label="I.D. = OOD")
    if chance is not None:
        ax.axhline(chance, color="0.35", ls=":", lw=0.9, label=f"chance ({chance:.3g}%)")
        ax.axvline(chance, color="0.35", ls=":", lw=0.9)
    pad = max(2.0, 0.05 * (high - low))
    ax.set_xlim(max(0.0, low - pad), min(100.0, high + pad))
    ax.set_ylim(max(0.0, low - pad), min(100.0, high + pad))
    ax.set_xlabel("I.D. accuracy (%), Avg")
    ax.set_ylabel("OOD accuracy (%), Avg")
    ax.legend(**LEGEND, ncol=2 if wide["label"].nunique() > 10 else 1, bbox_to_anchor=(1.02, 1), loc="upper left")
    ax.set_title(title, fontsize=9)
    return fig


def _log_ticks(ax, values) -> None:
    """Labelled ticks on a log x axis whatever its range: within a decade matplotlib labels no tick at all."""
    finite = np.asarray([v for v in values if np.isfinite(v) and v > 0], float)
    if finite.size == 0:
        return
    low, high = float(finite.min()), float(finite.max())
    if high / low < 10:  # less than a decade: four ticks across the data, labelled in plain numbers
        ticks = np.geomspace(low, high, 4) if high > low else np.array([low])
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    else:
        ax.xaxis.set_major_formatter(LogFormatterSciNotation())
    ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks collide on short log ranges


@_styled
def sharpness_vs_ood_figure(runs: pd.DataFrame, title: str, chance: float | None = None) -> Figure:
    """Final OOD accuracy against each sharpness measure (log axis), one point per run, Kendall's tau in the title."""
    measures = [m for m in SHARPNESS if m in runs and runs[m].notna().any()]
    fig = Figure(figsize=(4.4 * len(measures), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(measures)))
    # every panel maps every bits and domain of the runs, also those it cannot draw (a trace <= 0 on a
    # log axis): the same colour and marker in each panel, and the last panel's legend names them all
    orders = {"hue_order": list(runs["bits"].unique()), "style_order": list(runs["domain"].unique())}
    for ax, measure in zip(axes, measures):
        data = runs.assign(ood=runs["ood_acc"] * 100, x=runs[measure])
        data = data[data["x"] > 0]  # a log axis: non-positive sharpness (a saddle) cannot be drawn
        style = "domain" if runs["domain"].nunique() > 1 else None
        sns.scatterplot(data=data, x="x", y="ood", hue="bits", style=style, ax=ax, s=16, palette="colorblind", **orders)
        ax.set_xscale("log")
        _log_ticks(ax, data["x"])
        _chance_line(ax, chance)
        _y_range(ax, list(data["ood"]), [chance])
        taus = []  # per test domain: OOD accuracies of different domains are not on one scale
        for domain, group in runs.groupby("domain", sort=False):
            tau, p, n = kendall(group[measure], group["ood_acc"])
            taus.append(
                f"{domain}: τ = {tau:+.2f} (p = {p:.2g}, n = {n})" if np.isfinite(tau) else f"{domain}: n = {n}"
            )
        ax.set_title("\n".join(taus), fontsize=7)
        ax.set_xlabel(f"{SHARPNESS[measure]} (log scale)")
        ax.set_ylabel("OOD accuracy (%), final weights")
        if ax is axes[-1]:  # one legend, beside the panels: inside, it covered points and the chance line
            ax.legend(**LEGEND, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        elif ax.get_legend() is not None:
            ax.get_legend().remove()
    fig.suptitle(title, fontsize=9)
    return fig


MAIN_FIGURES = ("accuracy_vs_bits", "id_vs_ood", "sharpness_vs_ood")


def planned_figures(tables: list[Table], records: pd.DataFrame) -> list[tuple[tuple, str]]:
    """The main figures the records give, as ((suite, dataset, model), name) in drawing order: what
    `report_figures` draws and what the leaderboard links, from one rule."""
    runs = sharpness_runs(records)
    plan = []
    for key, group in _by_key(tables).items():
        values = _avg_values(group)
        if len(values) and _bits_order(values):
            plan.append((key, "accuracy_vs_bits"))
        if len(values) and (values["header"] == "OOD").any():  # I.D.-only suites (test_envs: none): no OOD axis
            plan.append((key, "id_vs_ood"))
        if len(_runs_of(runs, key)):
            plan.append((key, "sharpness_vs_ood"))
    return plan


def figure_folder(key: tuple) -> str:
    """The folder of one (suite, dataset, model)'s figures, relative to the figures root."""
    return _slug(*key)


def report_figures(tables: list[Table], records: pd.DataFrame, out: Path, analysis: bool = True) -> list[Path]:
    """Every figure of a report under `out`, one folder per suite, dataset and model; `analysis`: also
    the landscape and spectrum figures of one run per method and bit width."""
    out, written = Path(out), []
    by_key = _by_key(tables)
    runs = sharpness_runs(records)
    palette = Palette(records["label"].dropna() if "label" in records else [])  # one colour per method, all figures
    for key, name in planned_figures(tables, records):
        title, chance, stem = " · ".join(key), _chance(records, key[1]), out / figure_folder(key) / name
        if name == "accuracy_vs_bits":
            written += save_figure(accuracy_vs_bits_figure(_avg_values(by_key[key]), title, palette, chance), stem)
        elif name == "id_vs_ood":
            written += save_figure(id_vs_ood_figure(_avg_values(by_key[key]), title, palette, chance), stem)
        else:
            written += save_figure(sharpness_vs_ood_figure(_runs_of(runs, key), title, chance), stem)
    if analysis:
        for key in by_key:
            for bits, run_dirs in _representative_runs(records, key).items():
                written += analysis_figures(run_dirs, out / figure_folder(key) / "analysis" / _slug(bits), palette)
    return written


def _by_key(tables: list[Table]) -> dict[tuple, list[Table]]:
    by_key: dict[tuple, list[Table]] = {}
    for table in tables:
        by_key.setdefault(table.key[:3], []).append(table)
    return by_key


def _runs_of(runs: pd.DataFrame, key: tuple) -> pd.DataFrame:
    if not len(runs):
        return runs
    return runs[(runs["suite"] == key[0]) & (runs["dataset"] == key[1]) & (runs["model"] == key[2])]


def _chance(records: pd.DataFrame, dataset: str) -> float | None:
    classes = None
    if "num_classes" in records and "dataset" in records:
        known = pd.to_numeric(records.loc[records["dataset"] == dataset, "num_classes"], errors="coerce").dropna()
        classes = known.iloc[0] if len(known) else None
    return chance_percent(dataset, classes)


def _representative_runs(records: pd.DataFrame, key: tuple) -> dict[str, list[Path]]:
    """Per bit width, one finished run per method (lowest seed, first test domain): overlays stay readable."""
    if records.empty or "run_dir" not in records:
        return {}
    mine = records[(records["status"] == "done") & (records["suite"] == key[0])]
    mine = mine[(mine["dataset"] == key[1]) & (mine["model"] == key[2])]
    first = mine.assign(_env=[min(t, default=-1) for t in mine["test_envs"]]).sort_values(["seed", "_env"])
    first = first.drop_duplicates(["label", "bits"])
    return {str(bits): [Path(d) for d in group["run_dir"]] for bits, group in first.groupby("bits")}
