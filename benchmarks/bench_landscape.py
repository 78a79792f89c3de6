"""Time per point of a 2D loss landscape (`qatbench.analysis.landscape`) against its floor and
against the naive loop, on a briefly trained CIFAR ResNet-20 (float, and LSQ W4A4), one process.

    python benchmarks/bench_landscape.py [--models float w4a4] [--rounds 3] [--subset 512] [--quick]

Target (sharpness-analysis issue): a 21x21 surface within 1.25x of its floor, 441 forwards of
the evaluation subset (eval mode, no_grad, forward + cross-entropy + argmax, nothing else), and
no slower than the naive loop that per point deep-copies the state_dict, adds the two directions
and loads it (0.99 s a point here in shared/MEASURED.md). `points_per_forward=4` (vmap over grid
points) is a row too: expected slower on a CPU.

Peer: `loss-landscapes` 3.0 (PyPI, Debernardi; `pip install qatbench[bench]`), whose
`random_plane` per point adds a direction in place to every parameter of a deep copy and calls
a metric (here the floor's evaluation of the subset). Its row is timed with that same step
(`ModelParameters.add_` + the metric); its set-up (deep copy, random directions, filter
normalisation, a Python loop over filters) is `random_plane(steps=1)` less one point. It
filter-normalises every parameter, a quantizer's 0-d step size too, so on an LSQ model it fails
(`TypeError: len() of a 0-d tensor`): the benchmark prints the error and compares on float only.

A whole grid takes minutes per variant, so each round times one 21-point row of the grid with
every variant in turn (the order rotating; the machine's load, which others share, hits all
alike), and the per-point medians over rounds are scaled to 441 points; the one-off set-up
(directions, filter normalisation, evaluator) is timed apart and added to the qatbench grid.
Each model's surfaces are checked against the naive loop's on three points first.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from bench_hessian import trained_model, w4a4
from torch import nn
from torch.nn import functional as F

from qatbench.analysis import directions as dirs
from qatbench.analysis.landscape import SurfaceEvaluator, compute_surface
from qatbench.analysis.operator import curvature_parameters

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def axes_of(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    """The centre weights and two filter-normalised Gaussian directions, as `qatbench.landscape` makes them."""
    weights = {name: p.detach() for name, p in curvature_parameters(model).items()}
    axes = [dirs.normalize(dirs.gaussian(weights, seed), weights) for seed in (0, 1)]
    return weights, axes


@torch.no_grad()
def floor_point(model: nn.Module, batches: Batches) -> tuple[float, float]:
    """The floor: one evaluation of the subset at the model's own weights, nothing else."""
    loss = correct = 0.0
    for x, y in batches:
        logits = model(x)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += float((logits.argmax(-1) == y).sum())
    n = sum(len(y) for _, y in batches)
    return loss / n, correct / n


def naive_point(model: nn.Module, state: dict, axes: list[dict], point: tuple[float, float], batches: Batches):
    """The loop people write: copy the state_dict, add a*d1 + b*d2, load it, evaluate."""
    moved = copy.deepcopy(state)
    for axis, c in zip(axes, point):
        for name, d in axis.items():
            moved[name].add_(d, alpha=c)
    model.load_state_dict(moved)
    return floor_point(model, batches)


def loss_landscapes_metric(batches: Batches):
    """The floor's evaluation as a `loss_landscapes` Metric (its `Loss` takes one tensor, not batches)."""
    from loss_landscapes.metrics import Metric

    class SubsetLoss(Metric):
        def __call__(self, model_wrapper) -> float:
            return floor_point(model_wrapper.modules[0], batches)[0]

    return SubsetLoss()


def loss_landscapes_row(model: nn.Module, batches: Batches) -> Callable[[np.ndarray, float], None] | str:
    """loss-landscapes' per-point step (what `random_plane`'s loop does: `start_point.add_(dir)`,
    then the metric) on its wrapper of a deep copy, or the error it raises on this model."""
    import loss_landscapes
    from loss_landscapes.model_interface.model_parameters import rand_u_like
    from loss_landscapes.model_interface.model_wrapper import wrap_model

    metric = loss_landscapes_metric(batches)
    try:
        loss_landscapes.random_plane(model, metric, distance=1, steps=1, normalization="filter", deepcopy_model=True)
    except Exception as error:  # noqa: BLE001 - the peer's failure is the finding
        return f"{type(error).__name__}: {error}"
    wrapper = wrap_model(copy.deepcopy(model))
    start = wrapper.get_module_parameters()
    direction = rand_u_like(start)
    direction.filter_normalize_(start)
    direction.mul_(1e-3)

    def row(xs: np.ndarray, b: float) -> None:
        for _ in xs:
            start.add_(direction)
            metric(wrapper)

    return row


def loss_landscapes_setup(model: nn.Module, batches: Batches) -> float:
    """Seconds of `random_plane(steps=1)` (deep copy, directions, filter normalisation, one point) less one point."""
    import loss_landscapes

    metric = loss_landscapes_metric(batches)
    t0 = time.perf_counter()
    loss_landscapes.random_plane(model, metric, distance=1, steps=1, normalization="filter", deepcopy_model=True)
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    floor_point(model, batches)
    return max(total - (time.perf_counter() - t0), 0.0)


def variants(model: nn.Module, batches: Batches, grid: int) -> dict[str, Callable[[np.ndarray, float], None]]:
    """name -> a function evaluating the points (a, b) for every a in `xs`, at one b (part of a grid row)."""
    weights, axes = axes_of(model)
    evaluator = SurfaceEvaluator(model, batches, weights, axes, bn="eval")
    naive_model = copy.deepcopy(model).eval()
    state = copy.deepcopy(naive_model.state_dict())

    def floor(xs: np.ndarray, b: float) -> None:
        for _ in xs:
            floor_point(model, batches)

    def naive(xs: np.ndarray, b: float) -> None:
        for a in xs:
            naive_point(naive_model, state, axes, (float(a), b), batches)

    def surface(points_per_forward: int) -> Callable[[np.ndarray, float], None]:
        return lambda xs, b: compute_surface(evaluator, [xs, np.array([b])], points_per_forward=points_per_forward)

    runs = {"floor": floor, "qatbench": surface(1), "naive load_state_dict": naive, "qatbench vmap x4": surface(4)}
    peer = loss_landscapes_row(model, batches)
    if callable(peer):
        runs["loss-landscapes"] = peer
    return runs


def setup_seconds(model: nn.Module, batches: Batches) -> float:
    """One-off cost of a qatbench surface before its first point: directions, normalisation, evaluator."""
    t0 = time.perf_counter()
    weights, axes = axes_of(model)
    SurfaceEvaluator(model, batches, weights, axes)
    return time.perf_counter() - t0


def time_rows(runs: dict[str, Callable[[np.ndarray, float], None]], grid: int, rounds: int) -> dict[str, float]:
    """Median seconds per grid point of each variant: per round, one whole row of the grid (rows
    spread over it) by each variant in turn, the order rotating from round to round, after a
    4-point warm-up of each."""
    coords = np.linspace(-1.0, 1.0, grid)
    for run in runs.values():
        run(coords[:4], 0.0)
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r, row in enumerate(np.linspace(0, grid - 1, rounds).round().astype(int)):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            runs[name](coords, float(coords[row]))
            times[name].append((time.perf_counter() - t0) / grid)
    return {name: statistics.median(values) for name, values in times.items()}


def check_agreement(model: nn.Module, batches: Batches) -> float:
    """Largest relative loss difference between qatbench's surface and the naive loop on a few points
    (float32 rounding; on a quantized model an add ordered differently can also flip a rounding)."""
    weights, axes = axes_of(model)
    evaluator = SurfaceEvaluator(model, batches, weights, axes)
    naive_model, points = copy.deepcopy(model).eval(), [(0.0, 0.0), (0.5, -0.3), (-1.0, 1.0)]
    state = copy.deepcopy(naive_model.state_dict())
    ours = [float(evaluator.evaluate([p])[0][0]) for p in points]
    theirs = [naive_point(naive_model, state, axes, p, batches)[0] for p in points]
    return max(abs(a - b) / abs(b) for a, b in zip(ours, theirs))


def peer_centre_gap(model: nn.Module, batches: Batches) -> float | None:
    """Relative difference between loss-landscapes' `point` (its wrapper, no move) and the floor's loss."""
    import loss_landscapes

    try:
        theirs = loss_landscapes.point(copy.deepcopy(model), loss_landscapes_metric(batches))
    except Exception:  # noqa: BLE001 - reported by loss_landscapes_row
        return None
    ours = floor_point(model, batches)[0]
    return abs(float(np.ravel(theirs)[0]) - ours) / abs(ours)


def bench(label: str, model: nn.Module, batches: Batches, grid: int, rounds: int) -> dict:
    gap = check_agreement(model, batches)
    peer_gap = peer_centre_gap(model, batches)
    setup = setup_seconds(model, batches)
    runs = variants(model, batches, grid)
    peer_error = None if "loss-landscapes" in runs else loss_landscapes_row(model, batches)
    peer_setup = loss_landscapes_setup(model, batches) if peer_error is None else 0.0
    # agreement first, seconds second
    print(f"\n{label}: largest relative loss difference, qatbench vs naive, on 3 points: {gap:.1e}")
    if peer_error is None:
        print(f"loss-landscapes at the centre vs the floor's loss: relative difference {peer_gap:.1e}")
    else:
        print(f"loss-landscapes fails on this model: {peer_error}")
    per_point = time_rows(runs, grid, rounds)
    floor = per_point["floor"]
    points = grid * grid
    setups = {"qatbench": setup, "qatbench vmap x4": setup, "loss-landscapes": peer_setup}
    print(f"seconds per grid point ({rounds} rounds of a {grid}-point row, variants in turn; set-up: qatbench "
          f"{setup:.2f} s, loss-landscapes {peer_setup:.2f} s)")  # fmt: skip
    print(f"{'variant':22s} {'s/point':>8s} {'x floor':>8s} {f'{grid}x{grid} grid s':>13s}")
    for name, s in per_point.items():
        total = s * points + setups.get(name, 0.0)
        print(f"{name:22s} {s:8.3f} {s / floor:8.2f} {total:13.1f}")
    grid_ratio = (per_point["qatbench"] * points + setup) / (floor * points)
    peer_ratio = (per_point["loss-landscapes"] * points + peer_setup) / (floor * points) if peer_error is None else None
    return {
        "label": label, "per_point": per_point, "setup": setup, "grid_vs_floor": grid_ratio, "gap": gap,
        "peer_grid_vs_floor": peer_ratio, "peer_error": peer_error,
    }  # fmt: skip


def summary(rows: list[dict], grid: int, subset: int, batch: int, what: str) -> str:
    lines = [
        f"{datetime.date.today()}, {platform.node()} ({torch.get_num_threads()} threads, torch {torch.__version__}); "
        f"{grid}x{grid} grid, evaluation subset {subset} images of {what} in batches of {batch}:",
        "",
        "| model | floor s/pt | qatbench s/pt | grid / floor (target <= 1.25) | loss-landscapes grid / floor | "
        "naive s/pt | naive / qatbench (target >= 1) | vmap x4 / floor |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        p = r["per_point"]
        peer = f"{r['peer_grid_vs_floor']:.2f}" if r["peer_error"] is None else f"fails ({r['peer_error']})"
        lines.append(
            f"| {r['label']} | {p['floor']:.3f} | {p['qatbench']:.3f} | {r['grid_vs_floor']:.2f} | {peer} | "
            f"{p['naive load_state_dict']:.3f} | {p['naive load_state_dict'] / p['qatbench']:.2f} | "
            f"{p['qatbench vmap x4'] / p['floor']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["float", "w4a4"], choices=["float", "w4a4"])
    parser.add_argument("--grid", type=int, default=21, help="points per axis")
    parser.add_argument("--rounds", type=int, default=3, help="timed rows of the grid per variant")
    parser.add_argument("--subset", type=int, default=512, help="evaluation images")
    parser.add_argument("--batch", type=int, default=256, help="evaluation batch size")
    parser.add_argument("--train-steps", type=int, default=300, help="SGD steps of the (cached) ResNet-20")
    parser.add_argument("--quick", action="store_true", help="small CNN, 5x5 grid, 64 images, one round: a smoke test")
    parser.add_argument("--model", default="resnet20", choices=["resnet20", "small_cnn"], help="--quick: small_cnn")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (1 on a machine others share)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.grid, args.subset, args.batch, args.rounds, args.train_steps = 5, 64, 32, 1, 20
    name = "small_cnn" if args.quick else args.model
    model, x, y, what = trained_model(name, 256 if args.quick else 4096, args.train_steps)
    batches = [(x[i : i + args.batch], y[i : i + args.batch]) for i in range(0, args.subset, args.batch)]
    rows = []
    for label in args.models:
        chosen = model if label == "float" else w4a4(model, batches[0][0])
        rows.append(bench(f"{name} {label}", chosen, batches, args.grid, args.rounds))
    print("\n" + summary(rows, args.grid, args.subset, args.batch, what))


if __name__ == "__main__":
    main()
