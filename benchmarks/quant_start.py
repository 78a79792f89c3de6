"""Accuracy of a finished FP run at the moment QAT would start: its weights fake-quantized and the
step sizes initialised (calibrated) as a run's are, before any training step, under several specs.

    QATBENCH_DATA=../shared/data python benchmarks/quant_start.py suites/pacs64_lite0.yaml \
        --label lsq_from_fp --test-env sketch --seed 0

A QAT run can only recover what survives its first step. This names which part of a spec (weight or
activation bits, per-channel weights, the quantizer's initialisation) destroys the trained network,
measured against the same weights in float (the baseline), on the held-out `out` splits of the
training domains (I.D.) and of the test domain. `--label` names a `from_fp_run` entry of the suite:
its FP parent's finished weights are the ones quantized (`model.pt` under --results, which git does
not keep: run it where the parent trained).

Measured 2026-12-03 (pacs64_lite0, erm seed 0, sketch held out; one thread; I.D. / sketch `out` %):
FP 76.2 / 45.1; the suite's W4A4 (LSQ init; per-tensor weights, per-channel depthwise) 17.5 / 16.9;
W4A32 16.7 / 20.1; W8A4 42.5 / 28.4; W8A8 67.5 / 31.5; W6A32 63.2 / 29.9; W4A4 LSQ per-channel
17.0 / 24.3; W4A32 LSQ+ 25.4 / 31.3; W4A32 min/max per-channel 45.7 / 43.7 (per-tensor 9.0 / 18.9);
W4A4 min/max per-channel 37.3 / 45.9; LSQ with `step_init: minmax` and per-channel weights (the
suite's since) 38.2 / 38.7 at W4A4 and 45.7 / 43.7 at W4A32, per tensor 8.9 / 15.5 at W4A4. So
4-bit weights under LSQ's initialisation start the EfficientNet-Lite0 at chance (7 classes), where
per-channel min/max ranges keep about half of its accuracy.

Measured 2026-12-04, `--bits W3A3` on the same parent trained again (FP 75.6 / 47.4; W4A4 suite
38.2 / 41.5): no start survives 3 bits. The suite's W3A3 14.7 / 14.6; W3A32 18.4 / 2.9; W8A3 18.2 /
18.9; `step_init lsq` 8.8 / 17.1; `lsq_plus` 10.6 / 17.7; `percentile per-channel` 13.7 / 10.2
(chance is 14.3). The lsq W3A3 run from it stayed at chance for all 600 steps (21.3 / 4.6).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
from pathlib import Path

import torch

from qatbench.data import build_dataset, split_environments
from qatbench.models import build_model
from qatbench.quant import calibrate, quantize_model
from qatbench.runner import api
from qatbench.runner.evaluate import count_correct
from qatbench.runner.train import _parent_weights, calibration_data, seed_everything

VARIANTS = {  # name -> changes to the suite's QuantSpec
    "suite": {},
    "W8A8": {"w_bits": 8, "a_bits": 8},
    "W4A32": {"a_bits": 32},
    "W8A4": {"w_bits": 8},
    "W6A32": {"w_bits": 6, "a_bits": 32},
    "per-channel": {"w_per_channel": True},
    "W4A32 lsq_plus": {"a_bits": 32, "quantizer": "lsq_plus"},
    "W4A32 minmax per-channel": {"a_bits": 32, "quantizer": "minmax", "w_per_channel": True},
    "W4A32 minmax per-tensor": {"a_bits": 32, "quantizer": "minmax"},
    "minmax per-channel": {"quantizer": "minmax", "w_per_channel": True},
    "W4A32 lsq step_init minmax per-channel": {"a_bits": 32, "w_per_channel": True, "step_init": "minmax"},
    "step_init minmax per-channel": {"w_per_channel": True, "step_init": "minmax"},
    "step_init minmax": {"step_init": "minmax"},
    "step_init lsq": {"step_init": "lsq"},
    "lsq_plus": {"quantizer": "lsq_plus", "step_init": "lsq"},
    "percentile per-channel": {"quantizer": "percentile", "w_per_channel": True, "step_init": "lsq"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite")
    parser.add_argument("--label", required=True, help="a from_fp_run entry of the suite")
    parser.add_argument("--test-env", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bits", default="W4A4")
    parser.add_argument("--results", default="results")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(1)  # as every run
    overrides = [f"bits=[{args.bits}]", f"datasets[0].test_envs=[{args.test_env}]", f"seeds=[{args.seed}]"]
    suite = api.load_suite(args.suite, overrides)
    specs = [s for s in api.expand(suite, [args.label]) if s.label == args.label and s.parent is not None]
    if not specs:
        raise SystemExit(f"{args.suite}: no from_fp_run entry labelled '{args.label}' at {args.bits}")
    spec, device = specs[0], torch.device("cpu")
    seed_everything(spec.seed)  # the calibration minibatch is augmented, as a run's
    dataset = build_dataset(spec.dataset, Path(os.environ["QATBENCH_DATA"]), spec.data_seed, dict(spec.dataset_options))
    splits = split_environments(dataset, spec.holdout_fraction, spec.data_seed)
    train_envs = dataset.train_envs(spec.test_envs)
    float_model = build_model(spec.model, dataset.input_shape, dataset.num_classes, dict(spec.model_options))
    float_model.load_state_dict(_parent_weights(spec.parent, Path(args.results)))
    calibration = calibration_data(dataset, splits, train_envs, spec, device)

    def accuracy(model: torch.nn.Module, envs: list[int]) -> float:
        model.eval()
        counts = [count_correct(model, splits[i].out_split, 256, device, dataset.eval_transform) for i in envs]
        return 100 * sum(c for c, _ in counts) / sum(n for _, n in counts)

    print(f"{'spec':40s} {'I.D.':>6s} {'test':>6s}  (% on the out splits; parent {spec.parent.run_id})")
    baseline = accuracy(float_model, train_envs), accuracy(float_model, spec.test_envs)
    print(f"{'FP (baseline)':40s} {baseline[0]:6.1f} {baseline[1]:6.1f}")
    for name in args.variants:
        quant = dataclasses.replace(spec.quant, **VARIANTS[name])
        model = quantize_model(copy.deepcopy(float_model), quant)
        calibrate(model, calibration)
        label = name if name.startswith("W") else f"{name} ({quant.label})"  # every name not naming its bits
        print(f"{label:40s} {accuracy(model, train_envs):6.1f} {accuracy(model, spec.test_envs):6.1f}", flush=True)


if __name__ == "__main__":
    main()
