"""Cost of LSQ fake quantization: time per training step of `lsq` relative to FP `erm`,
same model, same batch, measured in one process (a ratio, so machine noise mostly cancels).

    python benchmarks/bench_fake_quant.py [--models small_cnn resnet20] [--batch 128] [--steps 20]

shared/MEASURED.md reports 2.1-2.2x for eager LSQ W4A4 on CIFAR ResNet-20 at batch 128 on this
2-core machine; the method-zoo issue targets at most 1.5x with compilation.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from qatbench.config import QuantSpec
from qatbench.methods import METHODS
from qatbench.models import build_model
from qatbench.quant import calibrate, quantize_model

INPUT_SHAPES = {"small_cnn": (1, 28, 28), "resnet20": (3, 32, 32), "resnet18": (3, 64, 64)}


def time_steps(method, batches, steps: int) -> float:
    """Median seconds per `update`, after two warm-up steps."""
    for _ in range(2):
        method.update(batches)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        method.update(batches)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(model_name: str, batch: int, steps: int, bits: tuple[int, int]) -> tuple[float, float]:
    torch.manual_seed(0)
    shape = INPUT_SHAPES[model_name]
    batches = [(torch.randn(batch, *shape), torch.randint(0, 10, (batch,)))]
    fp_model = build_model(model_name, shape, 10)
    fp = time_steps(METHODS.get("erm")(fp_model, 10, {}, total_steps=steps + 2), batches, steps)
    spec = QuantSpec(*bits)
    q_model = calibrate(quantize_model(fp_model, spec), batches[0][0])
    lsq = time_steps(METHODS.get("lsq")(q_model, 10, {}, quant=spec, total_steps=steps + 2), batches, steps)
    return fp, lsq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["small_cnn", "resnet20"], choices=sorted(INPUT_SHAPES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    print(f"{'model':10s} {'bits':5s} {'erm s/step':>10s} {'lsq s/step':>10s} {'ratio':>6s}")
    for name in args.models:
        fp, lsq = bench(name, args.batch, args.steps, (4, 4))
        print(f"{name:10s} W4A4  {fp:10.4f} {lsq:10.4f} {lsq / fp:6.2f}")


if __name__ == "__main__":
    main()
