"""Hessian trace and top eigenvalue by `qatbench.analysis` against PyHessian 0.1 (Yao et al. 2020),
on the same model, batch and machine, in one process: CIFAR ResNet-20 briefly trained on PACS
(32 px, 7 classes; cached in benchmarks/.cache/), float and LSQ W4A4, batch 128, 2 threads.

    python benchmarks/bench_hessian.py [--models float w4a4] [--probes 100] [--seeds 0 1 2] [--quick]

Targets (sharpness-analysis issue) and how they are measured:

1. Trace at the same standard error at least 3x faster. PyHessian's `trace(maxIter=N)` with its
   stop disabled runs exactly N Rademacher probes (time T_P, including its constructor, which
   builds the first-order graph); their spread gives its standard error s_P. qatbench's
   `hessian(model, [batch], HessianConfig(top_k=1, rel_stderr=s_P/|trace|))` (Lanczos for the
   deflating Ritz pairs, then probes until the standard error is reached; every product and the
   graph build counted) gives T_Q. PyHessian's probes are run in two halves around qatbench's rows
   so that a change of the machine's load hits both sides; the target s_P comes from the first
   half's spread. Rows without deflation (plain Hutchinson, same estimator as PyHessian) and with
   3 pairs show where the gain comes from. Both estimates must agree (z = difference / combined
   standard error).
2. Top eigenvalue to the same tolerance (1e-3) at least 2x faster, and no less accurate: PyHessian's
   power iteration `eigenvalues(maxIter=100, tol=1e-3, top_n=1)` against `top_eigenvalues(op, 1,
   tol=1e-3)` (Lanczos, residual-based stop), each including its graph build; errors relative to a
   long Lanczos run (tol 1e-10); medians over seeds, the two sides alternating first.

Products are Hessian-vector products (PyHessian's counted by wrapping its `hessian_vector_product`).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
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

from qatbench.analysis import hessian
from qatbench.analysis.hessian import top_eigenvalues
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


# ---------------------------------------------------------------- timing helpers


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def mean_stderr(samples: list[float]) -> tuple[float, float]:
    return statistics.fmean(samples), statistics.stdev(samples) / math.sqrt(len(samples))


# ---------------------------------------------------------------- 1. trace


@dataclass
class TraceRow:
    name: str
    seconds: float
    products: int
    probes: int
    mean: float
    stderr: float


def bench_trace(model: nn.Module, batch: Batch, probes: int, deflations: list[int], seed: int = 0) -> list[TraceRow]:
    """PyHessian's N probes (in two halves) around qatbench's trace at PyHessian's standard error."""
    rows = []
    with only_weights_trainable(model):
        torch.manual_seed(seed)
        reference, build = timed(pyhessian_reference, model, batch)
        first, t_first = timed(pyhessian_probes, reference, probes // 2)
        spread_mean, spread_err = mean_stderr(first)
        target = spread_err * math.sqrt(len(first) / probes)  # s_P expected after all N probes
        for deflate in deflations:
            config = HessianConfig(top_k=1, deflate=deflate, rel_stderr=target / abs(spread_mean))
            result, seconds = timed(hessian, model, [batch], config, seed=seed)
            products = result.eigen_products + result.trace_products
            name = f"qatbench deflate={deflate}" + (" (default)" if deflate == HessianConfig().deflate else "")
            rows.append(TraceRow(name, seconds, products, result.trace_probes, result.trace, result.trace_stderr))
        second, t_second = timed(pyhessian_probes, reference, probes - probes // 2)
        del reference
    mean, stderr = mean_stderr(first + second)
    rows.insert(0, TraceRow("PyHessian", build + t_first + t_second, probes, probes, mean, stderr))
    return rows


def print_trace(label: str, rows: list[TraceRow]) -> None:
    base = rows[0]
    print(f"\n{label}: trace at PyHessian's standard error ({base.probes} probes)")
    print(f"{'estimator':28s} {'s':>7s} {'products':>8s} {'probes':>6s} {'s/product':>9s} "
          f"{'trace +- stderr':>19s} {'z':>5s} {'P/Q time':>8s}")  # fmt: skip
    for r in rows:
        z = (r.mean - base.mean) / math.hypot(r.stderr, base.stderr)
        print(
            f"{r.name:28s} {r.seconds:7.1f} {r.products:8d} {r.probes:6d} {r.seconds / r.products:9.2f} "
            f"{r.mean:10.1f} +- {r.stderr:6.1f} {z:5.2f} {base.seconds / r.seconds:8.2f}"
        )


# ---------------------------------------------------------------- 2. top eigenvalue


@dataclass
class EigenRun:
    seconds: float
    products: int
    value: float


def pyhessian_top(model: nn.Module, batch: Batch, seed: int) -> EigenRun:
    with only_weights_trainable(model):
        torch.manual_seed(seed)  # its start vector
        t0 = time.perf_counter()
        reference = pyhessian_reference(model, batch)
        with pyhessian_products() as counter:
            values, _ = reference.eigenvalues(maxIter=100, tol=1e-3, top_n=1)
        seconds = time.perf_counter() - t0
        del reference
    return EigenRun(seconds, counter["products"], float(values[0]))


def qatbench_top(model: nn.Module, batch: Batch, seed: int) -> EigenRun:
    t0 = time.perf_counter()
    op = HessianOperator(model, [batch])
    eigen = top_eigenvalues(op, 1, tol=1e-3, seed=seed)
    seconds = time.perf_counter() - t0
    op.release()
    return EigenRun(seconds, eigen.products, eigen.values[0])


def bench_eigen(model: nn.Module, batch: Batch, seeds: list[int], max_steps: int) -> dict:
    op = HessianOperator(model, [batch])
    exact, seconds = timed(top_eigenvalues, op, 1, tol=1e-10, max_steps=max_steps)
    op.release()
    runs: dict[str, list[EigenRun]] = {"PyHessian": [], "qatbench": []}
    for seed in seeds:  # alternate who goes first
        order = ["PyHessian", "qatbench"] if seed % 2 == 0 else ["qatbench", "PyHessian"]
        for name in order:
            runs[name].append((pyhessian_top if name == "PyHessian" else qatbench_top)(model, batch, seed))
    top = exact.values[0]
    summary = {
        name: {
            "seconds": statistics.median(r.seconds for r in rs),
            "products": statistics.median(r.products for r in rs),
            "error": statistics.median(abs(r.value - top) / abs(top) for r in rs),
            "worst": max(abs(r.value - top) / abs(top) for r in rs),
            "runs": rs,
        }
        for name, rs in runs.items()
    }
    return {"exact": top, "exact_products": exact.products, "exact_converged": exact.converged,
            "exact_seconds": seconds, **summary}  # fmt: skip


def print_eigen(label: str, result: dict, seeds: list[int]) -> None:
    print(
        f"\n{label}: top eigenvalue, tol 1e-3; reference {result['exact']:.6f} (Lanczos tol 1e-10: "
        f"{result['exact_products']} products, converged {result['exact_converged']}, {result['exact_seconds']:.1f} s)"
    )
    print(f"{'':10s} {'seed':>4s} {'s':>7s} {'products':>8s} {'eigenvalue':>12s} {'rel. error':>10s}")
    for name in ("PyHessian", "qatbench"):
        for seed, run in zip(seeds, result[name]["runs"]):
            error = abs(run.value - result["exact"]) / abs(result["exact"])
            print(f"{name:10s} {seed:4d} {run.seconds:7.2f} {run.products:8d} {run.value:12.4f} {error:10.2e}")
    p, q = result["PyHessian"], result["qatbench"]
    print(
        f"medians: PyHessian {p['seconds']:.2f} s, {p['products']:.0f} products, error {p['error']:.1e}; "
        f"qatbench {q['seconds']:.2f} s, {q['products']:.0f} products, error {q['error']:.1e}; "
        f"time ratio {p['seconds'] / q['seconds']:.2f}x"
    )


# ---------------------------------------------------------------- summary


def summary_table(trace_rows: dict[str, list[TraceRow]], eigen: dict[str, dict], header: str) -> str:
    lines = [
        header,
        "",
        "| model | measure | PyHessian s (products) | qatbench s (products) | PyHessian / qatbench | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, rows in trace_rows.items():
        base = rows[0]
        for r in rows[1:]:
            ratio = base.seconds / r.seconds
            z = (r.mean - base.mean) / math.hypot(r.stderr, base.stderr)
            met = "yes" if ratio >= 3 and abs(z) < 2 else "no"
            lines.append(
                f"| {label} | trace, {r.name.removeprefix('qatbench ')}: {r.mean:.0f} +- {r.stderr:.0f} vs "
                f"{base.mean:.0f} +- {base.stderr:.0f} (z {z:+.1f}) | {base.seconds:.1f} ({base.products}) | "
                f"{r.seconds:.1f} ({r.products}) | {ratio:.2f}x | 3x | {met if 'default' in r.name else '-'} |"
            )
    for label, e in eigen.items():
        p, q = e["PyHessian"], e["qatbench"]
        ratio = p["seconds"] / q["seconds"]
        met = "yes" if ratio >= 2 and q["error"] <= p["error"] else "no"
        lines.append(
            f"| {label} | top eigenvalue, median rel. error {p['error']:.1e} (PyHessian) vs {q['error']:.1e} | "
            f"{p['seconds']:.2f} ({p['products']:.0f}) | {q['seconds']:.2f} ({q['products']:.0f}) | "
            f"{ratio:.2f}x | 2x | {met} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["float", "w4a4"], choices=["float", "w4a4"])
    parser.add_argument("--probes", type=int, default=100, help="PyHessian's probes N (sets the standard error)")
    parser.add_argument("--deflate", type=int, nargs="+", default=[10, 3, 0], help="qatbench rows: Ritz pairs deflated")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="eigenvalue runs per side")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=300, help="SGD steps of the (cached) ResNet-20")
    parser.add_argument("--skip", nargs="*", default=[], choices=["trace", "eigen"])
    parser.add_argument("--quick", action="store_true", help="small CNN, 20 probes, 2 seeds: a smoke test")
    args = parser.parse_args()
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")  # PyHessian's
    if args.quick:
        args.probes, args.seeds, args.batch, args.train_steps = 20, [0, 1], 64, 20
    name = "small_cnn" if args.quick else "resnet20"
    model, x, y, what = trained_model(name, 256 if args.quick else 4096, args.train_steps)
    batch = (x[: args.batch], y[: args.batch])
    trace_rows, eigen = {}, {}
    for label in args.models:
        chosen = model if label == "float" else w4a4(model, batch[0])
        label = f"{name} {label}"
        if "trace" not in args.skip:
            trace_rows[label] = bench_trace(chosen, batch, args.probes, args.deflate)
            print_trace(label, trace_rows[label])
        if "eigen" not in args.skip:
            eigen[label] = bench_eigen(chosen, batch, args.seeds, max_steps=50 if args.quick else 200)
            print_eigen(label, eigen[label], args.seeds)
    header = (
        f"{datetime.date.today()}, {platform.node()} ({torch.get_num_threads()} threads, torch {torch.__version__}); "
        f"{name} on {what}, batch {args.batch}; trace at the standard error of {args.probes} PyHessian probes; "
        f"eigenvalue medians over seeds {args.seeds}:"
    )
    print("\n" + summary_table(trace_rows, eigen, header))


if __name__ == "__main__":
    main()
