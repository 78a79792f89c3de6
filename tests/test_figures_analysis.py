"""Analysis figures on synthetic run folders: which files are written, what each figure holds, and that
unreadable files are skipped, not fatal. The report layer never imports torch."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.container import BarContainer

from qatbench.report.figures_analysis import (
    analysis_figures,
    curve,
    landscape_1d_figure,
    layer_trace_figure,
    load_surface,
    plot_density,
    plot_landscape_2d,
    plot_landscape_3d,
    smoothed_density,
)
from qatbench.report.palette import natural_key
from tests.conftest import ROOT

PNG = b"\x89PNG\r\n\x1a\n"
X = np.linspace(-1.0, 1.0, 9)
trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz


def _write_surface(run_dir: Path, name: str, *, label: str, run_id: str, direction: str = "random", **arrays) -> Path:
    """A landscape file and its sidecar; `arrays` holds loss (and y for 2D); acc is 1 - loss / 10."""
    folder = run_dir / "landscape"
    folder.mkdir(parents=True, exist_ok=True)
    loss = arrays["loss"]
    np.savez(folder / f"{name}.npz", x=X, acc=1 - loss / 10, **arrays)
    meta = {
        "kind": "2d" if "y" in arrays else "1d",
        "direction": direction,
        "label": label,
        "method": label,
        "bits": "W4A4",
        "run_id": run_id,
        "seed": 0,
        "normalization": "filter",
        "ignore": "biasbn",
        "bn": "eval",
        "subset_n": 64,
        "subset_hash": "0" * 16,
        "grid": len(X),
        "span": 1.0,
        "complete": bool(np.isfinite(loss).all()),
        "points_done": int(np.isfinite(loss).sum()),
        "center_loss": 0.1,
    }
    (folder / f"{name}.json").write_text(json.dumps(meta))
    return folder / f"{name}.npz"


def _write_hessian(run_dir: Path, *, label: str, run_id: str, layer_trace: dict, density: dict | None) -> None:
    hessian = {
        "backend": "fast",
        "label": label,
        "method": label,
        "bits": "W4A4",
        "run_id": run_id,
        "eigenvalues": [12.0, 7.0],
        "trace": 90.0,
        "trace_stderr": 2.0,
        "layer_trace": layer_trace,
        "density": density,
    }
    (run_dir / "hessian.json").write_text(json.dumps(hessian))


def _bowl(sharpness: float) -> np.ndarray:
    xx, yy = np.meshgrid(X, X)
    return 0.1 + sharpness * (xx**2 + yy**2)


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    """lsq: complete 1D random + 2D surface, hessian with density and layer traces; gaqat: an interrupted 1D
    random curve (last 4 points NaN), a 1D eigenvector curve, hessian with neither; a run with no analysis."""
    lsq, gaqat, plain = tmp_path / "runs" / "lsq", tmp_path / "runs" / "gaqat", tmp_path / "runs" / "plain"
    for folder in (lsq, gaqat, plain):
        folder.mkdir(parents=True)
    _write_surface(lsq, "random_1d", label="lsq", run_id="aaaaaaaa1111", loss=0.1 + 3 * X**2)
    _write_surface(lsq, "random_2d", label="lsq", run_id="aaaaaaaa1111", y=X, loss=_bowl(3.0))
    interrupted = np.where(np.arange(len(X)) < 5, 0.1 + X**2, np.nan)
    _write_surface(gaqat, "random_1d", label="gaqat", run_id="bbbbbbbb2222", loss=interrupted)
    _write_surface(gaqat, "eig_1d", label="gaqat", run_id="bbbbbbbb2222", direction="eigenvector", loss=X**2)
    density = {"nodes": [[0.5, 2.0, 9.0], [0.4, 3.0, 0.0]], "weights": [[0.7, 0.2, 0.1], [0.8, 0.2, 0.0]]}
    traces = {"conv1": [3.0, 0.3], "layer1.0.conv1": [2.0, 0.2], "fc": [1.0, 0.1]}
    _write_hessian(lsq, label="lsq", run_id="aaaaaaaa1111", layer_trace=traces, density=density)
    _write_hessian(gaqat, label="gaqat", run_id="bbbbbbbb2222", layer_trace={}, density=None)
    return [lsq, gaqat, plain]


EXPECTED = {
    f"{stem}{suffix}"
    for stem in (
        "landscape_1d_random_loss",
        "landscape_1d_random_acc",
        "landscape_1d_eigenvector_loss",
        "landscape_1d_eigenvector_acc",
        "landscape_2d_lsq_W4A4_aaaaaaaa",
        "landscape_2d_lsq_W4A4_aaaaaaaa_3d",
        "density",
        "layer_trace",
    )
    for suffix in (".png", ".pdf")
}


def test_analysis_figures_writes_each_figure_as_png_and_pdf(runs, tmp_path):
    written = analysis_figures(runs, tmp_path / "figures")
    assert {p.name for p in written} == EXPECTED
    assert {p.name for p in (tmp_path / "figures").iterdir()} == EXPECTED
    for path in written:
        assert path.read_bytes().startswith(PNG if path.suffix == ".png" else b"%PDF")


def test_runs_without_analysis_files_draw_nothing(tmp_path):
    (tmp_path / "run").mkdir()
    assert analysis_figures([tmp_path / "run", tmp_path / "missing"], tmp_path / "figures") == []
    assert not (tmp_path / "figures").exists()


def test_1d_overlay_has_one_curve_per_run_and_skips_uncomputed_points(runs):
    surfaces = [load_surface(run / "landscape" / "random_1d.npz") for run in runs[:2]]
    ax = landscape_1d_figure(surfaces, "loss").axes[0]
    assert ax.get_legend_handles_labels()[1] == ["lsq W4A4", "gaqat W4A4"]
    lsq_line, gaqat_line = ax.get_lines()
    assert len(lsq_line.get_xdata()) == 9
    assert np.allclose(gaqat_line.get_xdata(), X[:5])  # the interrupted run draws its 5 computed points
    assert np.isfinite(gaqat_line.get_ydata()).all()
    assert ax.get_xlabel() == "filter-normalised random direction"
    _, acc = curve(surfaces[1], "acc")
    assert np.allclose(acc, 1 - (0.1 + X[:5] ** 2) / 10)


def test_1d_overlay_refuses_mixed_directions(runs):
    gaqat = runs[1] / "landscape"
    with pytest.raises(ValueError, match="one direction"):
        landscape_1d_figure([load_surface(gaqat / "random_1d.npz"), load_surface(gaqat / "eig_1d.npz")])


def test_interrupted_2d_surface_still_draws(tmp_path):
    half = _bowl(1.0)
    half[5:] = np.nan  # rows y > 0 not computed yet
    surface = load_surface(_write_surface(tmp_path, "s", label="lsq", run_id="c" * 12, y=X, loss=half))
    written = plot_landscape_2d(surface, tmp_path / "out" / "contour") + plot_landscape_3d(surface, tmp_path / "3d")
    assert [p.name for p in written] == ["contour.png", "contour.pdf", "3d.png", "3d.pdf"]
    assert all(p.read_bytes().startswith(PNG if p.suffix == ".png" else b"%PDF") for p in written)


def test_smoothed_density_integrates_to_one_and_peaks_at_a_single_node():
    grid, density = smoothed_density(np.array([[3.0]]), np.array([[1.0]]))
    assert trapezoid(density, grid) == pytest.approx(1.0, abs=0.02)
    assert grid[np.argmax(density)] == pytest.approx(3.0, abs=0.01)


def test_smoothed_density_averages_runs_and_ignores_zero_weight_padding():
    nodes = np.array([[5.0, 6.0, 0.0], [5.5, 7.0, 0.0]])  # the trailing 0.0 are padding with zero weight
    weights = np.array([[0.5, 0.5, 0.0], [0.25, 0.75, 0.0]])
    grid, density = smoothed_density(nodes, weights)
    assert trapezoid(density, grid) == pytest.approx(1.0, abs=0.02)
    assert grid.min() > 4.0  # padding nodes at 0 would stretch the grid there
    assert trapezoid(density * grid, grid) == pytest.approx(np.mean(np.sum(nodes * weights, axis=1)), rel=1e-3)


def test_density_plot_creates_parent_folders(tmp_path):
    written = plot_density([("lsq W4A4", np.array([[1.0, 10.0]]), np.array([[0.9, 0.1]]))], tmp_path / "a" / "b" / "d")
    assert written == [tmp_path / "a" / "b" / "d.png", tmp_path / "a" / "b" / "d.pdf"]
    assert all(p.stat().st_size > 0 for p in written)


def test_a_figure_saved_twice_is_the_same_bytes(tmp_path):
    """The committed leaderboard figures change only when their data change: no creation date."""
    data = [("lsq W4A4", np.array([[1.0, 10.0]]), np.array([[0.9, 0.1]]))]
    first = [p.read_bytes() for p in plot_density(data, tmp_path / "first")]
    time.sleep(1.1)  # the PDF date has one-second resolution
    second = [p.read_bytes() for p in plot_density(data, tmp_path / "second")]
    assert b"CreationDate" not in first[1]
    assert first == second


def test_layer_trace_puts_layers_in_natural_order_and_groups_by_label():
    entries = {  # hessian.json stores its keys sorted as strings: 10 and 14 before 3
        "lsq W4A4": {"0": (3.0, 0.3), "10": (2.0, 0.2), "14": (1.0, 0.1), "3": (4.0, 0.1)},
        "gaqat W4A4": {"0": (1.5, 0.1), "14": (0.5, 0.05), "3": (2.5, 0.1)},
    }
    ax = layer_trace_figure(entries).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "3", "10", "14"]
    lsq_bars, gaqat_bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [bar.get_height() for bar in lsq_bars] == [3.0, 4.0, 2.0, 1.0]
    assert [bar.get_height() for bar in gaqat_bars][::3] == [1.5, 0.5] and gaqat_bars[1].get_height() == 2.5
    assert np.isnan(gaqat_bars[2].get_height())  # no bar for the layer it lacks


def test_natural_order_of_dotted_layer_names():
    names = ["layer10.conv1", "fc", "layer2.conv1", "layer1.1.conv2", "layer1.0.conv2"]
    assert sorted(names, key=natural_key) == ["fc", "layer1.0.conv2", "layer1.1.conv2", "layer2.conv1", "layer10.conv1"]


def test_unreadable_files_are_skipped_with_a_warning(runs, tmp_path, caplog):
    lsq, gaqat, _ = runs
    (lsq / "landscape" / "random_2d.json").write_text("{not json")
    (gaqat / "landscape" / "eig_1d.npz").write_bytes(b"PK\x03\x04 truncated")
    (gaqat / "hessian.json").write_text(json.dumps(["not", "an", "object"]))
    with caplog.at_level(logging.WARNING, logger="qatbench.report.figures_analysis"):
        written = analysis_figures(runs, tmp_path / "figures")
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for path in ("random_2d.json", "eig_1d.npz", "gaqat/hessian.json"):
        assert path in warned
    assert {p.name for p in written} == {
        f"{stem}{suffix}"
        for stem in ("landscape_1d_random_loss", "landscape_1d_random_acc", "density", "layer_trace")
        for suffix in (".png", ".pdf")
    }


def test_import_does_not_import_torch():
    code = "import qatbench.report.figures_analysis, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False"
