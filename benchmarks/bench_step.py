"""Time per training step of every method relative to FP `erm`, same model and batch, one process.

    python benchmarks/bench_step.py [--models resnet20 resnet18] [--batch 128] [--steps 10]
                                    [--methods ...] [--no-compile | --compiled erm lsq ...] [--sizes 64 96 128]

`--models efficientnet_lite0 --sizes 64` is the CPU-scale PACS suite's step (suites/pacs64_lite0.yaml:
W4A4 with per-channel depthwise weights); several sizes are timed in the same round robin. Measured
(batch 48, eager, load average 17 from other jobs): lsq 1.07x erm, 19.5 vs 18.1 s per step.
`--methods lsq_sagm gaqat --compiled lsq_sagm gaqat --batch 96 --sizes 64 --steps 4`, one thread
(OMP_NUM_THREADS=1), two PACS runs on the same 2 cores: compiled lsq_sagm 0.61x and gaqat 0.63x of
their eager steps (4.27 vs 6.98, 4.41 vs 6.97 s), so suites/pacs64_lite0.yaml compiles.

Targets (method-zoo issue): `lsq` W4A4 at most 1.5x an FP step (reached with torch.compile, which
`training.compile` turns on for long runs); SAM-family methods near 2x their base (two passes;
GAM four); GAQAT and FQAT bookkeeping under 10% on top of `lsq_sagm`, their base update. FPQ
(a teacher forward and per-conv standardization), CR (two views, an EMA teacher forward) and MEC
(a coding length) against `lsq`; DNQ's noise against `erm`.
Printed: seconds per step, the ratio to eager `erm`, and the ratio to each method's base.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from qatbench.config import QuantSpec
from qatbench.methods import METHODS
from qatbench.models import build_model
from qatbench.quant import calibrate, quantize_model

INPUT_SHAPES = {
    "small_cnn": (1, 28, 28), "resnet20": (3, 32, 32), "resnet18": (3, 64, 64), "efficientnet_lite0": (3, 64, 64)
}  # fmt: skip
BASE = {  # what each method adds its cost to
    "sam": "erm", "asam": "erm", "sagm": "erm", "gam": "erm",
    "lsq": "erm", "lsq_plus": "lsq", "pact": "lsq", "dorefa": "lsq", "kd": "lsq",
    "lsq_sam": "lsq", "lsq_sagm": "lsq", "gaqat": "lsq_sagm", "fqat": "lsq_sagm",
    "fpq": "lsq", "cr": "lsq", "mec": "lsq", "dnq": "erm",
}  # fmt: skip


def time_round_robin(methods: dict, batches: dict, rounds: int, warmup: int = 2) -> dict:
    """Median seconds per `update` of each method on its own batch, timed one step each in turn for
    `rounds` rounds, so that a change of machine load hits every method alike."""
    for key, method in methods.items():
        for _ in range(warmup):  # compilation happens here
            method.update(batches[key])
    times: dict = {key: [] for key in methods}
    for _ in range(rounds):
        for key, method in methods.items():
            t0 = time.perf_counter()
            method.update(batches[key])
            times[key].append(time.perf_counter() - t0)
    return {key: statistics.median(values) for key, values in times.items()}


def build(name: str, fp_model, batches, spec: QuantSpec, compiled: bool):
    method_class = METHODS.get(name)
    model = copy.deepcopy(fp_model)
    teacher = copy.deepcopy(fp_model).eval() if method_class.needs_teacher else None
    if method_class.kind == "qat":
        fixed = dict(method_class.quant_fixed)
        spec = QuantSpec(spec.w_bits, spec.a_bits, **fixed) if fixed else spec
        model = calibrate(quantize_model(model, spec), batches[0][0])
    elif method_class.kind == "ptq":  # trains the float model with noise sized for the target bits
        spec = QuantSpec(spec.w_bits, spec.a_bits, quantizer="minmax")
    else:
        spec = None
    method = method_class(model, 10, {}, teacher=teacher, quant=spec, total_steps=10_000)
    if compiled:
        model.compile()
    method.train()
    return method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20"], choices=sorted(INPUT_SHAPES))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed rounds (one step of each method per round)")
    parser.add_argument("--methods", nargs="+", default=["erm", *BASE], choices=["erm", *BASE])
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled methods (a minute each)")
    parser.add_argument(
        "--compiled", nargs="+", default=["erm", "lsq"], choices=["erm", *BASE], help="methods also timed compiled"
    )
    parser.add_argument("--sizes", nargs="+", type=int, help="image sides, timed in one round robin")
    args = parser.parse_args()
    for model_name in args.models:
        spec = QuantSpec(4, 4, depthwise_per_channel=model_name.startswith("efficientnet"))
        for size, seconds in time_sizes(model_name, args, spec).items():
            report(model_name, size, args.batch, seconds)


def time_sizes(model_name: str, args, spec: QuantSpec) -> dict[int, dict[str, float]]:
    """Every method at every image size, all in one round robin."""
    channels, *default = INPUT_SHAPES[model_name]
    methods, batches = {}, {}
    for size in args.sizes or [default[0]]:
        torch.manual_seed(0)
        shape = (channels, size, size)
        batch = [(torch.randn(args.batch, *shape), torch.randint(0, 10, (args.batch,)))]
        fp_model = build_model(model_name, shape, 10)
        names = [*dict.fromkeys(["erm", *args.methods])]
        compiled = [] if args.no_compile else args.compiled
        for name in names + [f"{n} compiled" for n in compiled]:
            method = build(name.removesuffix(" compiled"), fp_model, batch, spec, name.endswith("compiled"))
            methods[(size, name)] = method
            batches[(size, name)] = batch
    by_size: dict[int, dict[str, float]] = {}
    for (size, name), seconds in time_round_robin(methods, batches, args.steps).items():
        by_size.setdefault(size, {})[name] = seconds
    return by_size


def report(model_name: str, size: int, batch: int, seconds: dict[str, float]) -> None:
    erm = seconds["erm"]
    print(f"\n{model_name}, {size} px, batch {batch}, W4A4, {torch.get_num_threads()} threads")
    print(f"{'method':14s} {'s/step':>8s} {'x erm':>6s}  vs base")
    for name, s in seconds.items():
        base = BASE.get(name)
        versus = f"{s / seconds[base]:5.2f}x {base}" if base in seconds else ""
        print(f"{name:14s} {s:8.4f} {s / erm:6.2f}  {versus}")
    for name in seconds:
        if name.endswith(" compiled") and name.removesuffix(" compiled") in seconds:
            print(f"{name:14s} {seconds[name] / seconds[name.removesuffix(' compiled')]:.2f}x of its eager step")
    if "lsq compiled" in seconds:
        print(
            f"lsq compiled / erm eager {seconds['lsq compiled'] / erm:.2f}x (target <= 1.5x); "
            f"/ erm compiled {seconds['lsq compiled'] / seconds['erm compiled']:.2f}x"
        )


if __name__ == "__main__":
    main()
