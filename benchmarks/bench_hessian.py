"""Hessian trace and top eigenvalue by `qatbench.analysis` against PyHessian 0.1 (Yao et al. 2020),
on the same model, batch and machine, in one process: CIFAR ResNet-20 briefly trained on PACS
(32 px, 7 classes; cached in benchmarks/.cache/), float and LSQ W4A4, batch 128, 2 threads.

    python benchmarks/bench_hessian.py [--models float w4a4] [--probes 100] [--rounds 5] [--seeds 0 1 2] [--quick]

Targets (sharpness-analysis issue) and how they are measured:

1. Trace at the same standard error at least 3x faster. PyHessian's `trace(maxIter=N)` with its
   stop disabled runs exactly N Rademacher probes; their spread gives its standard error s_P.
   qatbench's `hessian(model, [batch], HessianConfig(top_k=1, rel_stderr=s_P/|trace|))` (Lanczos
   for the deflating Ritz pairs, then probes until the standard error is reached; the graph build
   and every product counted) gives T_Q, the median of several runs, each run following a short
   chunk of PyHessian probes (timing only) so that a change of the machine's load hits both
   sides; T_P is PyHessian's constructor plus N times its median seconds per probe. Rows without
   deflation (plain Hutchinson, PyHessian's estimator) and with 3 pairs show where the gain comes
   from, and one probe of each, timed in turn, the cost of a product. Estimates must agree (z:
   difference over the combined standard error).
2. Top eigenvalue to the same tolerance (1e-3) at least 2x faster, and no less accurate: PyHessian's
   power iteration `eigenvalues(maxIter=100, tol=1e-3, top_n=1)` against `top_eigenvalues(op, 1,
   tol=1e-3)` (Lanczos, residual-based stop), each including its graph build; errors relative to a
   long Lanczos run; medians over seeds, the sides taking turns to go first. Two more rows put the
   sides at about equal accuracy: qatbench at tol 1e-2 (still below PyHessian's error at 1e-3) and
   PyHessian at tol 1e-5 (about qatbench's error at 1e-3: its residual stop overshoots).

Products are Hessian-vector products (PyHessian's counted by wrapping its `hessian_vector_product`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import hashlib
import math
import platform
import random
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from qatbench.analysis.hessian import rademacher, top_eigenvalues
from qatbench.analysis.measure import hessian
from qatbench.analysis.operator import HessianOperator
from qatbench.analysis.pyhessian_backend import only_weights_trainable
from qatbench.config import QuantSpec
from qatbench.config.analysis import HessianConfig
from qatbench.models import build_model
from qatbench.quant import calibrate, quantize_model

Batch = tuple[torch.Tensor, torch.Tensor]
PACS = Path("/work/shared/data/PACS-64")
CACHE = Path(__file__).resolve().parent / ".cache"
CLASSES = 7  # PACS: dog, elephant, giraffe, guitar, horse, house, person
SIZE = 32  # CIFAR ResNet-20's input


def load_images(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
    """`count` PACS images (all four domains, shuffled), resized to 32x32 and standardised; random
    tensors when the folder is missing. Returns (x, y, what the data is)."""
    files = sorted(PACS.glob("*/*/*")) if PACS.is_dir() else []
    if not files:
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(count, 3, SIZE, SIZE, generator=generator)
        return x, torch.randint(0, CLASSES, (count,), generator=generator), "random tensors"
    classes = sorted({f.parent.name for f in files})
    random.Random(seed).shuffle(files)
    files = files[:count]
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    y = torch.tensor([classes.index(f.parent.name) for f in files])
    return x, y, f"PACS-64 ({len(files)} images, 32 px)"


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, seed: int = 0) -> nn.Module:
    """Plain SGD with momentum and a cosine schedule: enough to leave the random initialisation
    (whose Hessian is not that of a trained network)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(y), (batch,), generator=generator)
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def trained_model(name: str, images: int, steps: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, str]:
    """`name` trained for `steps` SGD steps on `images` images (read from benchmarks/.cache/ when
    there), with those images: (model in eval mode, x, y, what the data is)."""
    x, y, what = load_images(images)
    model = build_model(name, (3, SIZE, SIZE), CLASSES, {})
    path = CACHE / f"{name}-{'pacs' if what.startswith('PACS') else 'random'}{images}-{steps}steps.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), x, y, what
    torch.manual_seed(0)
    train(model, x, y, steps, batch=128)
    CACHE.mkdir(exist_ok=True)
    (CACHE / ".gitignore").write_text("*\n")  # the cache ignores itself (the repository's .gitignore does not)
    torch.save(model.state_dict(), path)
    return model, x, y, what


def w4a4(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The model with LSQ 4-bit weights and activations, calibrated on `x`."""
    return calibrate(quantize_model(copy.deepcopy(model), QuantSpec(4, 4)), x).eval()


# ---------------------------------------------------------------- PyHessian


@contextlib.contextmanager
def pyhessian_products():
    """Counts PyHessian's Hessian-vector products (single-batch path: its module-level function)."""
    module = sys.modules["pyhessian.hessian"]  # `pyhessian.hessian` the attribute is the class
    original, counter = module.hessian_vector_product, {"products": 0}

    def counted(*args, **kwargs):
        counter["products"] += 1
        return original(*args, **kwargs)

    module.hessian_vector_product = counted
    try:
        yield counter
    finally:
        module.hessian_vector_product = original


def pyhessian_reference(model: nn.Module, batch: Batch):
    """PyHessian's `hessian` object: its constructor runs forward and backward(create_graph=True).
    Call inside `only_weights_trainable(model)` (it adds into .grad and takes every trainable parameter)."""
    import pyhessian

    return pyhessian.hessian(model, F.cross_entropy, data=batch, cuda=False)


def pyhessian_probes(reference, probes: int) -> list[float]:
    """Exactly `probes` Hutchinson probes: tol=-inf disables PyHessian's stop (tol=-1 would too
    while its running mean is positive)."""
    return reference.trace(maxIter=probes, tol=-math.inf)


# ---------------------------------------------------------------- helpers


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def mean_stderr(samples: list[float]) -> tuple[float, float]:
    return statistics.fmean(samples), statistics.stdev(samples) / math.sqrt(len(samples))


def source_digest() -> str:
    """Short hash of qatbench/analysis/*.py: the code is edited concurrently, so say which one ran."""
    folder = Path(__import__("qatbench.analysis").__file__).parent / "analysis"
    text = b"".join(p.read_bytes() for p in sorted(folder.glob("*.py")))
    return hashlib.sha256(text).hexdigest()[:10]


# ---------------------------------------------------------------- per-product cost


def qatbench_probe(op: HessianOperator, generator: torch.Generator) -> float:
    z = rademacher(op.dim, generator, op.dtype, op.device)
    return float(z @ op(z))


def bench_products(model: nn.Module, batch: Batch, rounds: int) -> tuple[float, float]:
    """Median seconds of one Hutchinson probe, PyHessian's and qatbench's, timed in turn: the
    cost of one product on each side, whatever the estimator around it."""
    generator = torch.Generator().manual_seed(0)
    with only_weights_trainable(model):
        reference = pyhessian_reference(model, batch)
        op = HessianOperator(model, [batch])
        times: dict[str, list[float]] = {"PyHessian": [], "qatbench": []}
        for _ in range(rounds + 1):  # the first round warms up
            times["PyHessian"].append(timed(pyhessian_probes, reference, 1)[1])
            times["qatbench"].append(timed(qatbench_probe, op, generator)[1])
        op.release()
        del reference
    return statistics.median(times["PyHessian"][1:]), statistics.median(times["qatbench"][1:])


# ---------------------------------------------------------------- 1. trace


@dataclass
class TraceRun:
    seconds: float
    products: int
    probes: int
    mean: float
    stderr: float


@dataclass
class TraceRow:
    name: str
    runs: list[TraceRun]

    def median(self, field: str) -> float:
        return statistics.median(getattr(r, field) for r in self.runs)

    def worst_z(self, base: TraceRun) -> float:
        return max((abs(r.mean - base.mean) / math.hypot(r.stderr, base.stderr) for r in self.runs), default=0.0)


def row_name(deflate: int) -> str:
    return f"qatbench deflate={deflate}" + (" (default)" if deflate == HessianConfig().deflate else "")


def bench_trace(model: nn.Module, batch: Batch, probes: int, deflations: list[int], rounds: int) -> list[TraceRow]:
    """PyHessian's N probes (their spread sets the target: the standard error s_P), then `rounds`
    rounds of a short chunk of PyHessian probes (timing only) and one qatbench trace per deflation
    aiming at s_P (plain Hutchinson, which costs as much as PyHessian, in one round only).
    PyHessian's time: its constructor plus N times its median seconds per probe over the N probes
    and the chunks; qatbench's: the median over its runs."""
    rows = {d: TraceRow(row_name(d), []) for d in deflations}
    chunk = max(probes // 10, 1)
    with only_weights_trainable(model):
        torch.manual_seed(0)
        reference, build = timed(pyhessian_reference, model, batch)
        samples, t = timed(pyhessian_probes, reference, probes)
        mean, stderr = mean_stderr(samples)
        rates = [t / probes]  # PyHessian's seconds per probe
        for r in range(rounds):
            rates.append(timed(pyhessian_probes, reference, chunk)[1] / chunk)
            for deflate, row in rows.items():
                if deflate == 0 and r != rounds // 2:
                    continue
                config = HessianConfig(top_k=1, deflate=deflate, rel_stderr=stderr / abs(mean))
                result, t = timed(hessian, model, [batch], config, seed=r)
                products = result.eigen_products + result.trace_products
                row.runs.append(TraceRun(t, products, result.trace_probes, result.trace, result.trace_stderr))
        del reference
    base = TraceRow("PyHessian", [TraceRun(build + probes * statistics.median(rates), probes, probes, mean, stderr)])
    print(f"(PyHessian: constructor {build:.2f} s; seconds per probe over all {probes} probes, then per chunk of "
          f"{chunk}: {' '.join(f'{r:.2f}' for r in rates)})")  # fmt: skip
    return [base, *rows.values()]


def print_trace(label: str, rows: list[TraceRow], per_probe: tuple[float, float]) -> None:
    base = rows[0].runs[0]
    print(f"\n{label}: trace at the standard error of {base.probes} PyHessian probes (qatbench: medians over runs; "
          "the estimate of its first run)")  # fmt: skip
    print(f"{'estimator':28s} {'runs':>4s} {'s':>7s} {'products':>8s} {'probes':>6s} {'trace +- stderr':>18s} "
          f"{'max |z|':>7s} {'P/Q time':>8s} {'P/Q products':>12s}")  # fmt: skip
    for row in rows:
        mean, stderr = row.runs[0].mean, row.runs[0].stderr
        print(
            f"{row.name:28s} {len(row.runs):4d} {row.median('seconds'):7.1f} {row.median('products'):8.0f} "
            f"{row.median('probes'):6.0f} {mean:9.1f} +- {stderr:6.1f} {row.worst_z(base):7.2f} "
            f"{base.seconds / row.median('seconds'):8.2f} {base.products / row.median('products'):12.2f}"
        )
    p, q = per_probe
    print(f"one probe, timed in turn: PyHessian {p:.3f} s, qatbench {q:.3f} s ({p / q:.2f}x)")
    spread = base.stderr * math.sqrt(base.probes)
    needed = (spread / (HessianConfig().rel_stderr * abs(base.mean))) ** 2
    print(f"(PyHessian's probe spread is {spread / abs(base.mean):.2f}x the trace: the default rel_stderr "
          f"{HessianConfig().rel_stderr} would take it about {needed:.0f} probes)")  # fmt: skip


# ---------------------------------------------------------------- 2. top eigenvalue


@dataclass
class EigenRun:
    seconds: float
    products: int
    value: float


def pyhessian_top(model: nn.Module, batch: Batch, seed: int, tol: float) -> EigenRun:
    with only_weights_trainable(model):
        torch.manual_seed(seed)  # its start vector
        t0 = time.perf_counter()
        reference = pyhessian_reference(model, batch)
        with pyhessian_products() as counter:
            values, _ = reference.eigenvalues(maxIter=100, tol=tol, top_n=1)
        seconds = time.perf_counter() - t0
        del reference
    return EigenRun(seconds, counter["products"], float(values[0]))


def qatbench_top(model: nn.Module, batch: Batch, seed: int, tol: float) -> EigenRun:
    t0 = time.perf_counter()
    op = HessianOperator(model, [batch])
    eigen = top_eigenvalues(op, 1, tol=tol, seed=seed)
    seconds = time.perf_counter() - t0
    op.release()
    return EigenRun(seconds, eigen.products, eigen.values[0])


EIGEN_SIDES = {  # name -> (function, tol): the first two are the target's comparison
    "PyHessian tol=1e-3": (pyhessian_top, 1e-3),
    "qatbench tol=1e-3": (qatbench_top, 1e-3),
    "qatbench tol=1e-2": (qatbench_top, 1e-2),  # still more accurate than PyHessian at 1e-3
    "PyHessian tol=1e-5": (pyhessian_top, 1e-5),  # about as accurate as qatbench at 1e-3
}
EIGEN_PAIRS = [  # (PyHessian side, qatbench side, is the target's comparison)
    ("PyHessian tol=1e-3", "qatbench tol=1e-3", True),
    ("PyHessian tol=1e-3", "qatbench tol=1e-2", False),
    ("PyHessian tol=1e-5", "qatbench tol=1e-3", False),
]


def exact_top(model: nn.Module, batch: Batch, seeds: list[int]) -> tuple[float, float, list[int]]:
    """The reference: Lanczos to a residual of 1e-5 |theta| (eigenvalue error ~ r^2 / gap, far below
    1e-3; 1e-10 is under float32's floor and would run to max_steps), from each seed. Returns the
    median value, the relative spread between seeds (the float32 floor) and the products per run."""
    op = HessianOperator(model, [batch])
    runs = [top_eigenvalues(op, 1, tol=1e-5, max_steps=200, seed=seed) for seed in seeds]
    op.release()
    values = [e.values[0] for e in runs]
    top = statistics.median(values)
    return top, (max(values) - min(values)) / abs(top), [e.products for e in runs]


def bench_eigen(model: nn.Module, batch: Batch, seeds: list[int]) -> dict:
    exact, floor, exact_products = exact_top(model, batch, seeds[:2])
    runs: dict[str, list[EigenRun]] = {name: [] for name in EIGEN_SIDES}
    for i, seed in enumerate(seeds):  # rotate who goes first
        names = list(EIGEN_SIDES)
        for name in names[i % len(names) :] + names[: i % len(names)]:
            function, tol = EIGEN_SIDES[name]
            runs[name].append(function(model, batch, seed, tol))
    sides = {
        name: {
            "seconds": statistics.median(r.seconds for r in rs),
            "products": statistics.median(r.products for r in rs),
            "error": statistics.median(abs(r.value - exact) / abs(exact) for r in rs),
            "runs": rs,
        }
        for name, rs in runs.items()
    }
    return {"exact": exact, "floor": floor, "exact_products": exact_products, "sides": sides}


def print_eigen(label: str, result: dict, seeds: list[int]) -> None:
    print(
        f"\n{label}: top eigenvalue; reference {result['exact']:.4f} (Lanczos to residual 1e-5: products "
        f"{result['exact_products']}, relative spread between seeds {result['floor']:.1e})"
    )
    print(f"{'':20s} {'seed':>4s} {'s':>7s} {'products':>8s} {'eigenvalue':>12s} {'rel. error':>10s}")
    for name, side in result["sides"].items():
        for seed, run in zip(seeds, side["runs"]):
            error = abs(run.value - result["exact"]) / abs(result["exact"])
            print(f"{name:20s} {seed:4d} {run.seconds:7.2f} {run.products:8d} {run.value:12.4f} {error:10.2e}")
    base = result["sides"]["PyHessian tol=1e-3"]
    for name, side in result["sides"].items():
        print(
            f"median {name:20s} {side['seconds']:6.2f} s {side['products']:4.0f} products, error "
            f"{side['error']:.1e}; PyHessian / this: {base['seconds'] / side['seconds']:.2f}x"
        )


# ---------------------------------------------------------------- summary


def summary_table(trace_rows: dict[str, list[TraceRow]], eigen: dict[str, dict], header: str) -> str:
    lines = [
        header,
        "",
        "| model | measure | PyHessian s (products) | qatbench s (products) | time ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, rows in trace_rows.items():
        base = rows[0].runs[0]
        for row in rows[1:]:
            ratio, z = base.seconds / row.median("seconds"), row.worst_z(base)
            met = ("yes" if ratio >= 3 and z < 2 else "no") if "default" in row.name else "-"
            r = row.runs[0]
            lines.append(
                f"| {label} | trace, {row.name.removeprefix('qatbench ')}: {r.mean:.0f} +- {r.stderr:.0f} vs "
                f"{base.mean:.0f} +- {base.stderr:.0f} (max abs z {z:.1f}, {len(row.runs)} runs) | {base.seconds:.1f} "
                f"({base.products}) | {row.median('seconds'):.1f} ({row.median('products'):.0f}) | {ratio:.2f}x | "
                f"3x | {met} |"
            )
    for label, e in eigen.items():
        for p_name, q_name, target in EIGEN_PAIRS:
            p, q = e["sides"][p_name], e["sides"][q_name]
            ratio = p["seconds"] / q["seconds"]
            met = ("yes" if ratio >= 2 and q["error"] <= p["error"] else "no") if target else "-"
            lines.append(
                f"| {label} | top eigenvalue, {q_name.removeprefix('qatbench ')} vs {p_name.removeprefix('PyHessian ')}"
                f": median rel. error {q['error']:.1e} vs {p['error']:.1e} | {p['seconds']:.2f} "
                f"({p['products']:.0f}) | {q['seconds']:.2f} ({q['products']:.0f}) | {ratio:.2f}x | "
                f"{'2x' if target else '-'} | {met} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["float", "w4a4"], choices=["float", "w4a4"])
    parser.add_argument("--probes", type=int, default=100, help="PyHessian's probes N (sets the standard error)")
    parser.add_argument("--rounds", type=int, default=5, help="chunks of PyHessian's probes; qatbench runs per row")
    parser.add_argument("--deflate", type=int, nargs="+", default=[10, 3, 0], help="qatbench rows: Ritz pairs deflated")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="eigenvalue runs per side")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=300, help="SGD steps of the (cached) ResNet-20")
    parser.add_argument("--skip", nargs="*", default=[], choices=["trace", "eigen"])
    parser.add_argument("--quick", action="store_true", help="small CNN, batch 32, 12 probes: a smoke test")
    args = parser.parse_args()
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", message=r"Using backward\(\) with create_graph=True")  # PyHessian's
    if args.quick:
        args.probes, args.rounds, args.seeds, args.batch, args.train_steps = 12, 2, [0], 32, 20
        args.deflate = [3, 0]
    name = "small_cnn" if args.quick else "resnet20"
    model, x, y, what = trained_model(name, 256 if args.quick else 4096, args.train_steps)
    batch = (x[: args.batch], y[: args.batch])
    trace_rows, eigen = {}, {}
    for label in args.models:
        chosen = model if label == "float" else w4a4(model, batch[0])
        label = f"{name} {label}"
        if "trace" not in args.skip:
            per_probe = bench_products(chosen, batch, rounds=2 if args.quick else 6)
            trace_rows[label] = bench_trace(chosen, batch, args.probes, args.deflate, args.rounds)
            print_trace(label, trace_rows[label], per_probe)
        if "eigen" not in args.skip:
            eigen[label] = bench_eigen(chosen, batch, args.seeds)
            print_eigen(label, eigen[label], args.seeds)
    header = (
        f"{datetime.date.today()}, {platform.node()} ({torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"qatbench/analysis {source_digest()}); {name} on {what}, batch {args.batch}; trace at the standard error "
        f"of {args.probes} PyHessian probes ({args.rounds} rounds); eigenvalue medians over seeds {args.seeds}:"
    )
    print("\n" + summary_table(trace_rows, eigen, header))


if __name__ == "__main__":
    main()
