"""Claims about the report's figures as a set: a method keeps one colour in every figure of a report
(whatever other methods a figure draws), more than 8 methods become small multiples, the y range
holds the chance line, and log axes with less than a decade of data still label their ticks."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb

from qatbench.report.figures import accuracy_vs_bits_figure, id_vs_ood_figure, sharpness_vs_ood_figure
from qatbench.report.figures_analysis import Surface, landscape_1d_figure
from qatbench.report.palette import Palette


def _values(labels: list[str]) -> pd.DataFrame:
    """Avg accuracies as report tables hold them: erm at FP, the others at W2A2 and W4A4, two seeds."""
    rows = []
    for k, label in enumerate(labels):
        for bits in ["FP"] if label == "erm" else ["W2A2", "W4A4"]:
            for seed in (0, 1):
                for header, base in (("I.D.", 90.0), ("OOD", 60.0)):
                    value = base - k - (10 if bits == "W2A2" else 0) + seed
                    rows.append({"label": label, "bits": bits, "header": header, "seed": seed, "value": value})
    return pd.DataFrame(rows)


def _line_colour(fig, label: str):
    ax = fig.axes[0]
    handles, labels = ax.get_legend_handles_labels()
    if label not in labels:
        ax = fig.axes[1]
        handles, labels = ax.get_legend_handles_labels()
    handle = handles[labels.index(label)]
    line = handle[0] if isinstance(handle, tuple) or hasattr(handle, "lines") else handle
    line = handle.lines[0] if hasattr(handle, "lines") else line
    return to_rgb(line.get_color())


def test_a_method_has_the_same_colour_in_two_figures_of_a_report():
    palette = Palette(["erm", "gaqat", "lsq", "pact"])
    bits_fig = accuracy_vs_bits_figure(_values(["erm", "gaqat", "lsq", "pact"]), "t", palette)
    surface = Surface(np.linspace(-1, 1, 5), None, np.ones(5), np.ones(5), {"label": "lsq", "bits": "W4A4"})
    landscape = landscape_1d_figure([surface], "acc", palette)  # lsq alone: not the first colour of a fresh cycle
    lsq_line = next(line for line in landscape.axes[0].get_lines() if line.get_label() == "lsq W4A4")
    assert _line_colour(bits_fig, "lsq") == to_rgb(lsq_line.get_color()) == to_rgb(palette.colour("lsq"))
    scatter = id_vs_ood_figure(_values(["erm", "lsq"]), "t", palette)
    colours = {tuple(np.round(c[:3], 4)) for coll in scatter.axes[0].collections for c in coll.get_facecolors()}
    assert tuple(np.round(palette.colour("lsq"), 4)) in colours
    assert palette.colour("gaqat") != palette.colour("lsq")


def test_more_than_eight_methods_become_small_multiples_with_a_chance_line_in_range():
    labels = ["erm", *[f"m{k:02d}" for k in range(12)]]
    fig = accuracy_vs_bits_figure(_values(labels), "t", Palette(labels), chance=10.0)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.lines]
    assert len(panels) == 4  # 12 quantized methods: 2 rows of 6, I.D. and OOD
    for ax in panels:
        drawn = {line.get_label() for line in ax.lines} | set(ax.get_legend_handles_labels()[1])
        assert len({label for label in drawn if label.startswith("m")}) <= 7
        low, high = ax.get_ylim()
        assert low <= 10.0 <= high  # chance is in view
        assert "chance (10%)" in ax.get_legend_handles_labels()[1] or ax.get_legend() is None


def test_a_log_axis_within_one_decade_labels_its_ticks():
    runs = pd.DataFrame(
        {
            "hessian.top_eigenvalue": [20.0, 25.0, 31.0, 40.0],
            "ood_acc": [0.7, 0.65, 0.6, 0.5],
            "domain": ["0"] * 4,
            "bits": ["W4A4"] * 4,
        }
    )
    fig = sharpness_vs_ood_figure(runs, "t", chance=10.0)
    ax = fig.axes[0]
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels == ["20", "25.2", "31.7", "40"]
    assert ax.get_ylim()[0] <= 10.0


def test_no_two_methods_of_a_leaderboard_sized_report_get_look_alike_colours():
    """25 labels (the leaderboard's two suites): every pair of colours at least MIN_DISTANCE apart in RGB,
    so eoq and sagm are no longer tab10's and Dark2's purples (0.14 apart)."""
    labels = ["asam", "cr", "dnq", "dorefa", "eoq", "erm", "erm_continued", "erm_ensemble", "fpq", "fqat", "gam"]
    labels += ["gaqat", "kd", "lsq", "lsq_from_pretrained", "lsq_plus", "lsq_sagm", "lsq_sam", "lsq_switch_at_200"]
    labels += ["mec", "pact", "ptq", "qtdog", "qtdog_w4", "sagm"]
    palette = Palette(labels)
    colours = [np.array(palette.colour(label)) for label in labels]
    closest = min(np.linalg.norm(a - b) for i, a in enumerate(colours) for b in colours[:i])
    assert closest >= 0.2, closest
    assert np.linalg.norm(np.array(palette.colour("eoq")) - np.array(palette.colour("sagm"))) >= 0.2


def test_the_sharpness_figure_has_one_legend_beside_its_panels_clear_of_the_chance_line():
    runs = pd.DataFrame(
        {
            "hessian.top_eigenvalue": [20.0, 25.0, 31.0, 40.0],
            "hessian.trace": [200.0, 260.0, 300.0, 390.0],
            "ood_acc": [0.7, 0.65, 0.6, 0.5],
            "domain": ["0", "0", "1", "1"],
            "bits": ["FP", "W4A4", "FP", "W4A4"],
        }
    )
    fig = sharpness_vs_ood_figure(runs, "t", chance=10.0)
    fig.canvas.draw()
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1 and legends[0].axes is fig.axes[-1]
    texts = [t.get_text() for t in legends[0].get_texts()]
    assert "chance (10%)" in texts and "W4A4" in texts and "1" in texts  # bits, domains and chance
    box = legends[0].get_window_extent()
    assert all(box.x0 >= ax.get_window_extent().x1 for ax in fig.axes)  # outside every panel


def test_the_sharpness_legend_names_a_run_only_the_first_panel_can_draw_in_one_colour_throughout():
    """A Hutchinson trace can come out <= 0 (not drawable on a log axis): that run's bits and domain
    are still in the one legend, and every other bits keeps its colour from panel to panel."""
    runs = pd.DataFrame(
        {
            "hessian.top_eigenvalue": [20.0, 25.0, 31.0, 40.0],
            "hessian.trace": [200.0, 260.0, 300.0, -5.0],
            "ood_acc": [0.7, 0.65, 0.6, 0.5],
            "domain": ["0", "0", "1", "2"],
            "bits": ["FP", "W4A4", "FP", "W2A2"],
        }
    )
    fig = sharpness_vs_ood_figure(runs, "t", chance=10.0)
    legend = fig.axes[-1].get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    assert {"FP", "W4A4", "W2A2", "0", "1", "2"} <= set(texts)
    first, last = (ax.collections[0] for ax in fig.axes)
    assert len(first.get_offsets()) == 4 and len(last.get_offsets()) == 3
    colours = [np.round(c.get_facecolors()[:3], 3).tolist() for c in (first, last)]  # FP, W4A4, FP in both
    assert colours[0] == colours[1]
