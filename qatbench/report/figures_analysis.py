"""The sharpness-analysis figures of trained runs, drawn from their analysis records alone.

Loss landscapes as Li et al. 2018 ("Visualizing the Loss Landscape of Neural Nets") draw them: 1D curves,
2D contours with labelled lines, 3D surfaces; the Hessian eigenvalue density on a log axis as PyHessian
(Yao et al. 2020) draws it; per-layer Hessian traces as grouped bars with error bars. Like the tables,
this module reads files and never imports torch, so figures can be remade anywhere from copied results.
Figures are built on `matplotlib.figure.Figure` directly: no pyplot state, no backend switching.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib as mpl
import numpy as np
import seaborn as sns
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure

from qatbench.report.palette import Palette, natural_key

log = logging.getLogger(__name__)

LANDSCAPE = "landscape"  # <run_dir>/landscape/<name>.npz + <name>.json
HESSIAN = "hessian.json"
METRICS = {"loss": "loss", "acc": "accuracy"}
DENSITY_FLOOR = 1e-8  # PyHessian adds 1e-7 before its log plot; clipping keeps empty stretches visible but flat
DPI = 150
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, zipfile.BadZipFile)


@dataclass(frozen=True)
class Surface:
    """One landscape file: `loss[j, i]` is at `(x[i], y[j])` (2D), NaN where not computed yet."""

    x: np.ndarray
    y: np.ndarray | None
    loss: np.ndarray
    acc: np.ndarray
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def name(self) -> str:
        return f"{self.meta.get('label', '?')} {self.meta.get('bits', '')}".strip()


def load_surface(npz_path: str | Path) -> Surface:
    """A surface and its JSON sidecar; ValueError when the two do not describe one grid."""
    npz_path, sidecar = Path(npz_path), Path(npz_path).with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
    except ValueError as exc:  # json's message names no file, and the broken one is the sidecar, not the npz
        raise ValueError(f"{sidecar}: {exc}") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{sidecar}: not a JSON object")
    # our own handle: np.load leaks its file when the zip inside is broken
    with open(npz_path, "rb") as handle, np.load(handle, allow_pickle=False) as arrays:
        x = np.asarray(arrays["x"], float)
        y = np.asarray(arrays["y"], float) if "y" in arrays else None
        loss, acc = np.asarray(arrays["loss"], float), np.asarray(arrays["acc"], float)
    kind = meta.get("kind", "1d" if y is None else "2d")
    shape = (len(x),) if kind == "1d" else (0 if y is None else len(y), len(x))
    if kind not in ("1d", "2d") or loss.shape != shape or acc.shape != shape:
        raise ValueError(f"kind {kind!r} with x {x.shape}, y {None if y is None else y.shape}, loss {loss.shape}")
    return Surface(x, y if kind == "2d" else None, loss, acc, {**meta, "kind": kind}, npz_path)


def load_hessian(json_path: str | Path) -> dict:
    """A hessian.json; `layer_trace` as {layer: (mean, stderr)} ({} if absent), `density` as arrays or None."""
    hessian = json.loads(Path(json_path).read_text())
    if not isinstance(hessian, dict):
        raise ValueError("not a JSON object")
    # checked here, so that a malformed part skips its file instead of failing a figure
    layer_trace = hessian["layer_trace"] = {
        str(k): tuple(map(float, v)) for k, v in (hessian.get("layer_trace") or {}).items()
    }
    if any(len(v) != 2 for v in layer_trace.values()):
        raise ValueError("layer_trace values must be [mean, stderr]")
    density = hessian["density"] = hessian.get("density")
    if density is not None:
        nodes, weights = np.asarray(density["nodes"], float), np.asarray(density["weights"], float)
        if nodes.shape != weights.shape:
            raise ValueError(f"density nodes {nodes.shape} and weights {weights.shape} differ")
        hessian["density"] = {"nodes": nodes, "weights": weights}
    return hessian


def save_figure(fig: Figure, out_stem: Path) -> list[Path]:
    """`out_stem`.png (dpi 150) and .pdf, parent folders created. The PDF carries no creation date,
    so the committed figures change only when their data do (`report --leaderboard` rewrites them)."""
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".pdf")]
    for path in paths:
        metadata = {"CreationDate": None} if path.suffix == ".pdf" else None
        fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata=metadata)
    return paths


def _styled(build: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build in seaborn's paper style without changing the caller's rcParams."""

    @functools.wraps(build)
    def styled(*args, **kwargs) -> Figure:
        with mpl.rc_context({**sns.axes_style("whitegrid"), **sns.plotting_context("paper")}):
            return build(*args, **kwargs)

    return styled


def _direction_label(meta: Mapping, axis: int | None = None) -> str:
    direction = meta.get("direction", "random")
    if direction == "interpolation":
        return "interpolation α"
    if direction == "eigenvector":
        return "top Hessian eigenvector" if axis is None else f"Hessian eigenvector {axis}"
    base = "filter-normalised random direction" if meta.get("normalization") == "filter" else "random direction"
    return base if axis is None else f"{base} {axis}"


def _distinct(names: Sequence[str], tags: Sequence[str]) -> list[str]:
    """Legend names, with a tag (seed, run id) added only where two runs would share one."""
    return [f"{name} ({tag})" if names.count(name) > 1 else name for name, tag in zip(names, tags)]


def curve(surface: Surface, metric: str = "loss") -> tuple[np.ndarray, np.ndarray]:
    """The computed points of a 1D surface: an interrupted run draws what it has."""
    values = getattr(surface, metric)
    done = np.isfinite(values)
    return surface.x[done], values[done]


def _colours(labels: Sequence[str], palette) -> list:
    """The report's colour per method label, or a colourblind palette by position without one."""
    if palette is not None:
        return [palette.colour(label) for label in labels]
    return list(sns.color_palette("colorblind", len(labels)))


AXIS_LABEL = {"loss": "loss", "acc": "accuracy (%)"}
LEGEND = {"frameon": False, "fontsize": 7}


@_styled
def landscape_1d_figure(surfaces: Sequence[Surface], metric: str = "loss", palette=None) -> Figure:
    """Curves of several runs along one kind of direction; accuracy in percent; titled with what it shows."""
    directions = {s.meta.get("direction") for s in surfaces}
    if not surfaces or len(directions) > 1:
        raise ValueError(f"one direction per 1D figure, got {sorted(map(str, directions))}")
    fig = Figure(figsize=(5.6, 3.4), layout="constrained")
    ax = fig.add_subplot()
    tags = [f"{s.meta.get('domain', '?')}, seed {s.meta.get('run_seed', '?')}" for s in surfaces]  # the run's
    names = _distinct([s.name for s in surfaces], tags)
    scale = 100.0 if metric == "acc" else 1.0
    colours = _colours([str(s.meta.get("label", "?")) for s in surfaces], palette)
    for surface, name, color in zip(surfaces, names, colours):
        x, values = curve(surface, metric)
        ax.plot(x, values * scale, color=color, label=name, lw=1.5)
    direction = _direction_label(surfaces[0].meta)
    ax.set_xlabel(direction)
    ax.set_ylabel(AXIS_LABEL[metric])
    bits = sorted({str(s.meta.get("bits", "")) for s in surfaces} - {""})
    ax.set_title(f"{METRICS[metric].capitalize()} along a {direction}" + (f" · {', '.join(bits)}" if bits else ""))
    ax.legend(**LEGEND, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_landscape_1d(surfaces: Sequence[Surface], out_stem: Path, metric: str = "loss", palette=None) -> list[Path]:
    """Several runs' 1D curves along one kind of direction, overlaid."""
    return save_figure(landscape_1d_figure(surfaces, metric, palette), out_stem)


def _grid(surface: Surface, metric: str, n_levels: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray, BoundaryNorm]:
    """Mesh, values and colour levels of a 2D surface. A loss spanning >10x gets geometric levels: on linear
    ones the basin around the trained weights, the part worth seeing, is a single level."""
    values = getattr(surface, metric)
    if surface.y is None or not np.isfinite(values).any():
        raise ValueError(f"{surface.path}: not a 2D surface with computed points")
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    hi = max(hi, lo + max(abs(lo) * 1e-3, 1e-9))  # a flat surface still needs increasing levels
    geometric = metric == "loss" and lo > 0 and hi / lo > 10
    levels = np.geomspace(lo, hi, n_levels) if geometric else np.linspace(lo, hi, n_levels)
    return *np.meshgrid(surface.x, surface.y), values, BoundaryNorm(levels, 256)


@_styled
def landscape_2d_figure(surface: Surface, metric: str = "loss") -> Figure:
    xx, yy, values, norm = _grid(surface, metric)
    fig = Figure(figsize=(4.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(values)
    filled = ax.contourf(xx, yy, masked, levels=norm.boundaries, cmap="viridis", norm=norm)
    lines = ax.contour(xx, yy, masked, levels=norm.boundaries[::3], colors="white", linewidths=0.6)
    ax.clabel(lines, fmt="%.3g", fontsize=6)
    ax.plot(0, 0, marker="*", color="red", markersize=9, linestyle="none")
    ax.set_aspect("equal")
    ax.grid(False)
    ax.set_xlabel(_direction_label(surface.meta, 1))
    ax.set_ylabel(_direction_label(surface.meta, 2))
    ax.set_title(f"{surface.name}: {METRICS[metric]}")
    fig.colorbar(filled, ax=ax, label=METRICS[metric], format="%.3g")
    return fig


def plot_landscape_2d(surface: Surface, out_stem: Path, metric: str = "loss") -> list[Path]:
    """Filled contour with labelled contour lines; the trained weights (the origin) starred."""
    return save_figure(landscape_2d_figure(surface, metric), out_stem)


@_styled
def landscape_3d_figure(surface: Surface, metric: str = "loss") -> Figure:
    xx, yy, values, norm = _grid(surface, metric)
    fig = Figure(figsize=(5.0, 4.0))
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(xx, yy, values, cmap="viridis", norm=norm, linewidth=0, antialiased=True)
    ax.set_xlabel(_direction_label(surface.meta, 1), fontsize=6)
    ax.set_ylabel(_direction_label(surface.meta, 2), fontsize=6)
    ax.set_zlabel(METRICS[metric])
    ax.set_title(f"{surface.name}: {METRICS[metric]}")
    return fig


def plot_landscape_3d(surface: Surface, out_stem: Path, metric: str = "loss") -> list[Path]:
    """The 2D surface as a 3D plot; uncomputed (NaN) points leave holes."""
    return save_figure(landscape_3d_figure(surface, metric), out_stem)


def _spectrum_range(nodes: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Range of the weighted nodes: zero-weight padding (an exhausted Krylov space) must not stretch it."""
    real = nodes[weights > 0]
    return (float(real.min()), float(real.max())) if real.size else (0.0, 0.0)


def _kernel_grid(lo: float, hi: float) -> tuple[np.ndarray, float]:
    """1,000 points over the span +- 5 sigma, sigma = 1% of the span, so that the density integrates to 1."""
    sigma = 0.01 * ((hi - lo) or max(abs(hi), 1.0))
    return np.linspace(lo - 5 * sigma, hi + 5 * sigma, 1000), sigma


def smoothed_density(
    nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray | None = None, sigma: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """SLQ nodes/weights (runs x steps) -> a Gaussian-smoothed spectral density averaged over runs.

    sigma (the kernel's standard deviation) defaults to 1% of the spectrum's span, the grid to 1,000 points
    over the span +- 5 sigma, over which the density integrates to 1. PyHessian's `density_generate` uses a
    variance of 1e-5 * max(1, span) on 10,000 bins: narrower spikes, the same picture on a log axis.
    """
    nodes, weights = np.atleast_2d(np.asarray(nodes, float)), np.atleast_2d(np.asarray(weights, float))
    default_grid, default_sigma = _kernel_grid(*_spectrum_range(nodes, weights))
    grid = default_grid if grid is None else np.asarray(grid, float)
    sigma = default_sigma if sigma is None else float(sigma)
    kernel = np.exp(-0.5 * ((grid[:, None, None] - nodes[None]) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    return grid, np.mean(np.sum(kernel * weights[None], axis=2), axis=1)


@_styled
def density_figure(entries: Sequence[tuple[str, np.ndarray, np.ndarray]], colours=None) -> Figure:
    fig = Figure(figsize=(5.6, 3.4), layout="constrained")
    ax = fig.add_subplot()
    # one grid and one kernel for every run, so their densities compare point by point
    ranges = [_spectrum_range(np.asarray(n, float), np.asarray(w, float)) for _, n, w in entries]
    grid, sigma = _kernel_grid(min(lo for lo, _ in ranges), max(hi for _, hi in ranges))
    for (label, nodes, weights), color in zip(entries, colours or sns.color_palette("colorblind", len(entries))):
        _, density = smoothed_density(nodes, weights, grid, sigma)
        ax.semilogy(grid, np.maximum(density, DENSITY_FLOOR), color=color, label=label, lw=1.2)
    ax.set_ylim(bottom=DENSITY_FLOOR)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)")
    ax.set_title("Hessian eigenvalue density (SLQ)")
    ax.legend(**LEGEND, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_density(entries: Sequence[tuple[str, np.ndarray, np.ndarray]], out_stem: Path, colours=None) -> list[Path]:
    """Hessian eigenvalue densities (label, SLQ nodes, weights) on a log y axis, as in PyHessian."""
    return save_figure(density_figure(entries, colours), out_stem)


@_styled
def layer_trace_figure(entries: Mapping[str, Mapping[str, tuple[float, float]]], colours=None) -> Figure:
    """Grouped bars per layer, layers in natural order (hessian.json stores its keys sorted as strings,
    which put layer 10 before layer 3; numbers inside names compare as numbers here)."""
    layers = sorted({layer for traces in entries.values() for layer in traces}, key=natural_key)
    fig = Figure(figsize=(max(5.0, 0.45 * len(layers) + 3.0), 3.4), layout="constrained")
    ax = fig.add_subplot()
    positions, width = np.arange(len(layers)), 0.8 / max(len(entries), 1)
    colours = colours or sns.color_palette("colorblind", len(entries))
    for k, ((label, traces), color) in enumerate(zip(entries.items(), colours)):
        mean, stderr = np.array([traces.get(layer, (np.nan, np.nan)) for layer in layers], float).reshape(-1, 2).T
        offset = (k - (len(entries) - 1) / 2) * width
        ax.bar(positions + offset, mean, width, yerr=stderr, capsize=2, color=color, label=label)
    rotation = 45 if max(map(len, layers), default=0) > 3 else 0
    ax.set_xticks(positions, layers, rotation=rotation, ha="right" if rotation else "center", fontsize=7)
    ax.grid(axis="x", visible=False)
    ax.set_xlabel("layer")
    ax.set_ylabel("Hessian trace")
    ax.set_title("Per-layer Hessian trace (Hutchinson, ± std. error)")
    ax.legend(**LEGEND, ncol=2 if len(entries) > 10 else 1, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_layer_trace(
    entries: Mapping[str, Mapping[str, tuple[float, float]]], out_stem: Path, colours=None
) -> list[Path]:
    """Per-layer Hessian trace, label -> {layer: (mean, stderr)}, grouped bars in the layers' natural order."""
    return save_figure(layer_trace_figure(entries, colours), out_stem)


def _slug(*parts: object) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9_+-]+", "-", str(part)) for part in parts)


def _read_runs(run_dirs: Sequence[Path]) -> tuple[list[Surface], list[dict]]:
    """The analysis files of the runs; an unreadable one is logged and skipped, it never stops a report."""
    surfaces, hessians = [], []
    for run_dir in map(Path, run_dirs):
        files = [(load_surface, path, surfaces) for path in sorted((run_dir / LANDSCAPE).glob("*.npz"))]
        if (run_dir / HESSIAN).is_file():
            files.append((load_hessian, run_dir / HESSIAN, hessians))
        for load, path, found in files:
            try:
                found.append(load(path))
            except _UNREADABLE as exc:
                log.warning("skipping unreadable analysis file %s: %s", path, exc)
    return surfaces, hessians


def analysis_figures(run_dirs: Sequence[Path], out: Path, palette=None) -> list[Path]:
    """Every analysis figure the runs' files allow, written under `out`; [] when there is nothing to draw.
    `palette` (report/palette.py): the report's colour per method; without one, the runs' own."""
    surfaces, hessians = _read_runs(run_dirs)
    if palette is None:
        labels = [x.meta.get("label", "?") for x in surfaces] + [h.get("label", "?") for h in hessians]
        palette = Palette(map(str, labels))
    out, written = Path(out), []
    for direction in sorted({str(s.meta.get("direction")) for s in surfaces if s.meta["kind"] == "1d"}):
        group = [s for s in surfaces if s.meta["kind"] == "1d" and str(s.meta.get("direction")) == direction]
        for metric in METRICS:
            drawable = [s for s in group if np.isfinite(getattr(s, metric)).any()]
            if drawable:
                stem = out / _slug("landscape_1d", direction, metric)
                written += plot_landscape_1d(drawable, stem, metric, palette)
    used: set[str] = set()
    for surface in (s for s in surfaces if s.meta["kind"] == "2d"):
        if not np.isfinite(surface.loss).any():
            log.info("surface %s has no computed points yet; not drawn", surface.path)
            continue
        label, bits, run_id = (str(surface.meta.get(key, "")) for key in ("label", "bits", "run_id"))
        stem = _slug("landscape_2d", label, bits, run_id[:8])
        if stem in used:  # a second 2D surface of the same run: its file name tells them apart
            stem = f"{stem}_{_slug(surface.path.stem)}"
        used.add(stem)
        written += plot_landscape_2d(surface, out / stem)
        written += plot_landscape_3d(surface, out / f"{stem}_3d")
    names = _distinct(
        [f"{h.get('label', '?')} {h.get('bits', '')}".strip() for h in hessians],
        [str(h.get("run_id", "?"))[:8] for h in hessians],
    )
    with_density = [(n, h) for n, h in zip(names, hessians) if h["density"]]
    if with_density:
        densities = [(n, h["density"]["nodes"], h["density"]["weights"]) for n, h in with_density]
        colours = [palette.colour(str(h.get("label", "?"))) for _, h in with_density]
        written += plot_density(densities, out / "density", colours)
    with_traces = [(n, h) for n, h in zip(names, hessians) if h["layer_trace"]]
    if with_traces:
        traces = {n: h["layer_trace"] for n, h in with_traces}
        colours = [palette.colour(str(h.get("label", "?"))) for _, h in with_traces]
        written += plot_layer_trace(traces, out / "layer_trace", colours)
    return written
