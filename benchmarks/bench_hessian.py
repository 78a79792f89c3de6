"""Hessian trace and top eigenvalues by `qatbench.analysis` against PyHessian 0.1 (Yao et al. 2020)
at matched accuracy, on the same model, batch and machine, in one process: CIFAR ResNet-20 briefly
trained on PACS (32 px, 7 classes; cached in benchmarks/.cache/), float and LSQ W4A4, 2 threads.

    python benchmarks/bench_hessian.py [--models float w4a4] [--batch 128] [--ks 1 5] [--target 1e-4]
                                       [--probes 100] [--rounds 5] [--seeds 0 1 2] [--skip trace|eigen] [--quick]

The measure is Hessian-vector products and the error against a reference; seconds come second
(printed last, the sides taking turns so that a shared machine's load hits both alike). A product
costs the same on both sides (about 1.0x, timed in turn below): fewer products is the speed-up.

1. Trace to a given standard error. PyHessian's `trace(maxIter=N)` with its stop disabled runs
   exactly N Rademacher probes; their spread gives its standard error s_P. qatbench's
   `hessian(model, [batch], HessianConfig(top_k=1, rel_stderr=s_P/|trace|))` (Lanczos for the
   deflating Ritz pairs, then probes until the standard error is reached; every product counted)
   runs several times, each after a short chunk of PyHessian probes (timing only). Rows without
   deflation (plain Hutchinson, PyHessian's estimator) and with 3 pairs show where the gain comes
   from. Estimates must agree (z: difference over the combined standard error).
2. Top-1 and top-5 eigenvalues to a relative error of 1e-4 against ARPACK (scipy `eigsh` on a
   `LinearOperator` of the same product, to residual 1e-5). Each side with its own stop at a few
   settings: qatbench's Lanczos at residual tol 1e-3 and 1e-4 (tol 1e-4 certifies an eigenvalue
   within 1e-4), PyHessian's power iteration (deflated, for k = 5) at tol 1e-4, 1e-5, 1e-6 (its
   tol is the change between iterations: no certificate). The summary takes each side's cheapest
   setting that met the target on every seed. Oracle counts leave the stops aside: the products
   after which the estimates stay within the target (Lanczos: its top-k Ritz values at every step;
   PyHessian, k = 1: the Rayleigh quotient of each product's vector).

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from qatbench.analysis.hessian import rademacher, top_eigenvalues
from qatbench.analysis.lanczos import lanczos
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
    """Products and agreement first (the measure), seconds last (a shared machine's noise)."""
    base = rows[0].runs[0]
    print(f"\n{label}: trace at the standard error of {base.probes} PyHessian probes (qatbench: medians over runs; "
          "the estimate of its first run)")  # fmt: skip
    print(f"{'estimator':28s} {'runs':>4s} {'products':>8s} {'probes':>6s} {'trace +- stderr':>18s} {'max |z|':>7s} "
          f"{'P/Q products':>12s} {'s':>7s} {'P/Q time':>8s}")  # fmt: skip
    for row in rows:
        mean, stderr = row.runs[0].mean, row.runs[0].stderr
        print(
            f"{row.name:28s} {len(row.runs):4d} {row.median('products'):8.0f} {row.median('probes'):6.0f} "
            f"{mean:9.1f} +- {stderr:6.1f} {row.worst_z(base):7.2f} {base.products / row.median('products'):12.2f} "
            f"{row.median('seconds'):7.1f} {base.seconds / row.median('seconds'):8.2f}"
        )
    p, q = per_probe
    print(f"one probe, timed in turn: PyHessian {p:.3f} s, qatbench {q:.3f} s ({p / q:.2f}x)")
    spread = base.stderr * math.sqrt(base.probes)
    needed = (spread / (HessianConfig().rel_stderr * abs(base.mean))) ** 2
    print(f"(PyHessian's probe spread is {spread / abs(base.mean):.2f}x the trace: the default rel_stderr "
          f"{HessianConfig().rel_stderr} would take it about {needed:.0f} probes)")  # fmt: skip


# ---------------------------------------------------------------- 2. top-k eigenvalues at matched accuracy


def arpack_reference(op: HessianOperator, k: int) -> tuple[np.ndarray, int]:
    """ARPACK (scipy `eigsh`, implicitly restarted Lanczos) on the same product: the top k to a
    residual of 1e-5 |theta| (an eigenvalue within 1e-5, typically far closer: r^2 / gap; float32
    products leave about 1e-7 of noise, which a tighter tol would chase), and its product count."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    before = op.products

    def matvec(v: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(v).reshape(-1)).to(op.dtype)
        return op(x).double().numpy()

    operator = LinearOperator((op.dim, op.dim), matvec=matvec, dtype=np.float64)
    values = eigsh(operator, k=k, which="LA", tol=1e-5, ncv=4 * k + 4, v0=np.ones(op.dim), return_eigenvectors=False)
    return np.sort(values)[::-1], op.products - before


def first_within(history: list[np.ndarray], reference: np.ndarray, target: float) -> int | None:
    """Products after which every estimate stays within `target` relative error of the reference
    to the end of the run (None: never)."""
    inside = [bool(np.all(np.abs(h - reference[: len(h)]) <= target * np.abs(reference[: len(h)]))) for h in history]
    if not inside or not inside[-1]:
        return None
    last_out = max((i for i, ok in enumerate(inside) if not ok), default=-1)
    return last_out + 2  # history[i] is after i + 1 products


@dataclass
class EigenRun:
    side: str
    k: int
    seed: int
    products: int  # with the side's own stop
    errors: list[float]  # relative, per eigenvalue, against ARPACK
    seconds: float  # graph build included
    oracle: int | None = None  # products to the target error, the stop left aside (None: not measured)
    values: list[float] = field(default_factory=list)


def qatbench_eigen(model, batch, k: int, tol: float, seed: int, reference, target: float) -> EigenRun:
    t0 = time.perf_counter()
    op = HessianOperator(model, [batch])
    eigen = top_eigenvalues(op, k, tol=tol, seed=seed, max_steps=300)
    seconds = time.perf_counter() - t0
    op.release()
    errors = [abs(v - r) / abs(r) for v, r in zip(eigen.values[:k], reference)]
    return EigenRun(f"qatbench Lanczos tol={tol:g}", k, seed, eigen.products, errors, seconds, values=eigen.values[:k])


def lanczos_oracle(model, batch, k: int, seed: int, reference, target: float, steps: int = 150) -> int | None:
    """Products after which Lanczos's top k Ritz values are all within `target` (no stop: every step's Ritz values)."""
    op = HessianOperator(model, [batch])
    start = torch.randn(op.dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(op.dtype)
    history: list[np.ndarray] = []

    def record(tri) -> bool:
        theta = tri.ritz()[0][:k]
        history.append(np.pad(theta, (0, k - len(theta)), constant_values=np.nan))
        # Ritz values only grow towards their eigenvalues as the Krylov space grows (Cauchy
        # interlacing), so the first step within the target is the last one needed
        return tri.steps >= k and bool(np.all(np.abs(theta - reference[:k]) <= target * np.abs(reference[:k])))

    tri = lanczos(op, start, steps, converged=record)
    op.release()
    if len(history) < tri.steps:
        record(tri)
    return first_within(history, reference, target)


@contextlib.contextmanager
def pyhessian_rayleigh():
    """PyHessian's products, each with the Rayleigh quotient v^T H v of its (unit) vector: the
    eigenvalue estimate of its power iteration at that product."""
    module = sys.modules["pyhessian.hessian"]
    original, quotients = module.hessian_vector_product, []

    def recorded(gradsH, params, v):
        hv = original(gradsH, params, v)
        quotients.append(float(sum((h * x).sum() for h, x in zip(hv, v))))
        return hv

    module.hessian_vector_product = recorded
    try:
        yield quotients
    finally:
        module.hessian_vector_product = original


def pyhessian_eigen(model, batch, k: int, tol: float, seed: int, reference, target: float) -> EigenRun:
    """PyHessian's (deflated, for k > 1) power iteration with its own stop: the relative change of
    the estimate between iterations below `tol`. For k = 1 also the oracle: the products after
    which its Rayleigh quotients stay within `target`."""
    with only_weights_trainable(model):
        torch.manual_seed(seed)  # its start vectors
        t0 = time.perf_counter()
        reference_object = pyhessian_reference(model, batch)
        with pyhessian_rayleigh() as quotients:
            values, _ = reference_object.eigenvalues(maxIter=100, tol=tol, top_n=k)  # its default cap
        seconds = time.perf_counter() - t0
        del reference_object
    errors = [abs(v - r) / abs(r) for v, r in zip(values, reference)]
    oracle = first_within([np.array([q]) for q in quotients], reference, target) if k == 1 else None
    # power iteration converges to the largest |eigenvalue|: a negative one can enter its "top k"
    return EigenRun(f"PyHessian power tol={tol:g}", k, seed, len(quotients), errors, seconds, oracle, list(values))


def bench_matched(label: str, model: nn.Module, batch: Batch, ks: list[int], seeds: list[int], target: float) -> dict:
    """Per k and seed: qatbench (Lanczos at residual tol 1e-3 and 1e-4) and PyHessian (power
    iteration at tol 1e-4, 1e-5, 1e-6), the sides alternating which goes first; errors against
    ARPACK. The oracle rows count products to the target error with the stop left aside. Each run
    is printed as it ends: products and errors first, seconds last."""
    op = HessianOperator(model, [batch])
    t0 = time.perf_counter()
    reference, reference_products = arpack_reference(op, max(ks))
    op.release()
    print(f"(ARPACK: {time.perf_counter() - t0:.0f} s)")
    print(
        f"\n{label}: top eigenvalues against ARPACK {np.array2string(reference, precision=4)} "
        f"({reference_products} products); target relative error {target:g}"
    )
    print(f"{'side':30s} {'k':>2s} {'seed':>4s} {'products':>8s} {'max rel. error':>14s} {'met':>4s} {'oracle':>6s} "
          f"{'s':>7s}  eigenvalues")  # fmt: skip
    runs: list[EigenRun] = []

    def done(run: EigenRun) -> None:
        runs.append(run)
        worst = max(run.errors) if run.errors else float("nan")
        met = "-" if not run.errors else ("yes" if worst <= target else "no")
        oracle = "-" if run.oracle is None else str(run.oracle)
        values = " ".join(f"{v:.4g}" for v in run.values)
        print(
            f"{run.side:30s} {run.k:2d} {run.seed:4d} {run.products:8d} {worst:14.1e} {met:>4s} {oracle:>6s} "
            f"{run.seconds:7.2f}  {values}"
        )

    for k in ks:
        for i, seed in enumerate(seeds):
            sides = [
                lambda: qatbench_eigen(model, batch, k, 1e-3, seed, reference, target),
                lambda: pyhessian_eigen(model, batch, k, 1e-4, seed, reference, target),
                lambda: qatbench_eigen(model, batch, k, 1e-4, seed, reference, target),
                lambda: pyhessian_eigen(model, batch, k, 1e-5, seed, reference, target),
                lambda: pyhessian_eigen(model, batch, k, 1e-6, seed, reference, target),
            ]
            for side in sides[i % 2 :] + sides[: i % 2]:  # who goes first alternates
                done(side())
            oracle = lanczos_oracle(model, batch, k, seed, reference, target)
            done(EigenRun("qatbench Lanczos (oracle)", k, seed, oracle or -1, [], 0.0, oracle))
    return {"reference": reference, "reference_products": reference_products, "runs": runs, "target": target}


def matched_summary(label: str, result: dict) -> list[str]:
    """Per k: the cheapest setting of each side that met the target on every seed (median products),
    and the oracle counts (median over seeds)."""
    target, lines = result["target"], []
    by: dict[tuple[str, int], list[EigenRun]] = {}
    for r in result["runs"]:
        by.setdefault((r.side, r.k), []).append(r)
    for k in sorted({r.k for r in result["runs"]}):
        best: dict[str, tuple[float, float, str]] = {}
        for (side, kk), rs in by.items():
            if kk != k or not rs[0].errors:
                continue
            name = side.split()[0]
            if all(max(r.errors) <= target for r in rs):
                products = statistics.median(r.products for r in rs)
                seconds = statistics.median(r.seconds for r in rs)
                if name not in best or products < best[name][0]:
                    best[name] = (products, seconds, side)
        oracles = {
            side.split()[0]: [r.oracle for r in rs]
            for (side, kk), rs in by.items()
            if kk == k and all(r.oracle is not None for r in rs) and rs
        }
        q, p = best.get("qatbench"), best.get("PyHessian")
        ratio = f"{p[0] / q[0]:.1f}x products, {p[1] / q[1]:.2f}x time" if p and q else "n/a (a side never met it)"
        describe = lambda b: f"{b[2]}: {b[0]:.0f} products, {b[1]:.1f} s" if b else "never met"  # noqa: E731
        oracle = "; ".join(f"{n} oracle {statistics.median(v):.0f} ({min(v)}-{max(v)})" for n, v in oracles.items())
        measure = f"top-{k} to rel. error {target:g} (every seed)"
        lines.append(f"| {label} | {measure} | {describe(p)} | {describe(q)} | {ratio} | {oracle} |")
    return lines


# ---------------------------------------------------------------- summary


def summary_table(trace_rows: dict[str, list[TraceRow]], matched: dict[str, dict], header: str) -> str:
    lines = [
        header,
        "",
        "| model | measure | PyHessian | qatbench | PyHessian / qatbench | notes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label, rows in trace_rows.items():
        base = rows[0].runs[0]
        for row in rows[1:]:
            r, z = row.runs[0], row.worst_z(base)
            products, seconds = row.median("products"), row.median("seconds")
            lines.append(
                f"| {label} | trace to PyHessian's standard error ({base.probes} probes), "
                f"{row.name.removeprefix('qatbench ')} | {base.products} products, {base.mean:.0f} +- {base.stderr:.0f}, "
                f"{base.seconds:.1f} s | {products:.0f} products, {r.mean:.0f} +- {r.stderr:.0f}, {seconds:.1f} s | "
                f"{base.products / products:.1f}x products, {base.seconds / seconds:.2f}x time"
                f" | max abs z {z:.1f}, {len(row.runs)} runs |"
            )
    for label, result in matched.items():
        lines += matched_summary(label, result)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["float", "w4a4"], choices=["float", "w4a4"])
    parser.add_argument("--probes", type=int, default=100, help="PyHessian's probes N (sets the standard error)")
    parser.add_argument("--rounds", type=int, default=5, help="chunks of PyHessian's probes; qatbench runs per row")
    parser.add_argument("--deflate", type=int, nargs="+", default=[10, 3, 0], help="qatbench rows: Ritz pairs deflated")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="eigenvalue runs per side")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5], help="top-k eigenvalues to match")
    parser.add_argument("--target", type=float, default=1e-4, help="relative eigenvalue error to reach (vs ARPACK)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=300, help="SGD steps of the (cached) ResNet-20")
    parser.add_argument("--skip", nargs="*", default=[], choices=["trace", "eigen"])
    parser.add_argument("--quick", action="store_true", help="small CNN, batch 32, 12 probes: a smoke test")
    parser.add_argument("--model", default="resnet20", choices=["resnet20", "small_cnn"], help="--quick: small_cnn")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (1 on a machine others share)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=r"Using backward\(\) with create_graph=True")  # PyHessian's
    if args.quick:
        args.probes, args.rounds, args.seeds, args.batch, args.train_steps = 12, 2, [0, 1], 32, 20
        args.deflate = [3, 0]
    name = "small_cnn" if args.quick else args.model
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
            eigen[label] = bench_matched(label, chosen, batch, args.ks, args.seeds, args.target)
    header = (
        f"{datetime.date.today()}, {platform.node()} ({torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"qatbench/analysis {source_digest()}); {name} on {what}, batch {args.batch}; trace at the standard error "
        f"of {args.probes} PyHessian probes ({args.rounds} rounds); eigenvalues over seeds {args.seeds}:"
    )
    print("\n" + summary_table(trace_rows, eigen, header))


if __name__ == "__main__":
    main()
