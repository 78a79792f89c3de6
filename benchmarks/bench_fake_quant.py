"""Cost of LSQ fake quantization: time per training step of `lsq` relative to FP `erm`,
same model, same batch, measured in one process (a ratio, so machine noise mostly cancels).

    python benchmarks/bench_fake_quant.py [--models small_cnn resnet20] [--batch 128] [--steps 20]
    python benchmarks/bench_fake_quant.py --guard --models efficientnet_lite0 --batch 96 --steps 10

`--guard` times, instead, the NaN guard of `lsq_quantize` (clipped entries divide by 1): an eager
`lsq` step with it against the same step with the plain round(clamp(v / s)) * s, alternating
step by step in one process.

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
from qatbench.quant import calibrate, lsq, quantize_model

INPUT_SHAPES = {
    "small_cnn": (1, 28, 28), "resnet20": (3, 32, 32), "resnet18": (3, 64, 64), "efficientnet_lite0": (3, 64, 64)
}  # fmt: skip


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


def plain_lsq_quantize(v, step, q_n, q_p, g):
    """lsq_quantize without its NaN guard: the formula as LSQ writes it."""
    step = lsq.step_magnitude(step, g, v.dtype)
    return lsq.round_ste(torch.clamp(v / step, -q_n, q_p)) * step


def guard_cost(model_name: str, batch: int, steps: int) -> tuple[float, float]:
    """Median seconds per eager `lsq` W4A4 step with the guarded and the plain formula, alternating."""
    torch.manual_seed(0)
    shape = INPUT_SHAPES[model_name]
    batches = [(torch.randn(batch, *shape), torch.randint(0, 10, (batch,)))]
    spec = QuantSpec(4, 4, w_per_channel=True, step_init="minmax")
    model = calibrate(quantize_model(build_model(model_name, shape, 10), spec), batches[0][0])
    method = METHODS.get("lsq")(model, 10, {}, quant=spec, total_steps=2 * steps + 2)
    guarded = lsq.lsq_quantize
    times: dict = {"guarded": [], "plain": []}
    method.update(batches)  # warm-up
    try:
        for _ in range(steps):
            for side, formula in (("guarded", guarded), ("plain", plain_lsq_quantize)):
                lsq.lsq_quantize = formula
                t0 = time.perf_counter()
                method.update(batches)
                times[side].append(time.perf_counter() - t0)
    finally:
        lsq.lsq_quantize = guarded
    return statistics.median(times["guarded"]), statistics.median(times["plain"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["small_cnn", "resnet20"], choices=sorted(INPUT_SHAPES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guard", action="store_true", help="time lsq_quantize's NaN guard instead")
    args = parser.parse_args()
    if args.guard:
        print(f"{'model':18s} {'guarded s/step':>14s} {'plain s/step':>12s} {'ratio':>6s}")
        for name in args.models:
            guarded, plain = guard_cost(name, args.batch, args.steps)
            print(f"{name:18s} {guarded:14.4f} {plain:12.4f} {guarded / plain:6.2f}")
        return
    print(f"{'model':10s} {'bits':5s} {'erm s/step':>10s} {'lsq s/step':>10s} {'ratio':>6s}")
    for name in args.models:
        fp, lsq = bench(name, args.batch, args.steps, (4, 4))
        print(f"{name:10s} W4A4  {fp:10.4f} {lsq:10.4f} {lsq / fp:6.2f}")


if __name__ == "__main__":
    main()
