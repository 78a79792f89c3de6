"""The CIFAR reproduction suites run end to end as committed, scaled down only through `--set`
(the CPU-scale variant's own keys), on CIFAR files in the official formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tests.test_cifar_imagenet import C_CORRUPTIONS, make_cifar10, make_cifar10c

TINY = [  # the CPU-scale variant's keys (suites/cifar10_fpq_table4.yaml), smaller still
    "--set", "models=[resnet20]", "--set", "seeds=[0]", "--set", "training.steps=2",
    "--set", "training.batch_size=4", "--set", "training.eval_every=2", "--set", "training.eval_batch_size=64",
    "--set", "quant.calib_images=8", "--set", "analysis.subset=8", "--set", "analysis.batch_size=8",
    "--set", "analysis.hessian.min_probes=2", "--set", "analysis.hessian.max_probes=4",  # untrained: no 5% in reach
]  # fmt: skip


def _records(results: Path, suite: str) -> dict[tuple[str, str], dict]:
    records = [json.loads(p.read_text()) for p in (results / suite).glob("*/record.json")]
    return {(r["method"], r["bits"]): r for r in records}


def test_fpq_table4_suite_runs_every_method_with_fpqs_protocol(tmp_path):
    data = make_cifar10(tmp_path / "data")
    result = run_cli(
        "run", str(ROOT / "suites" / "cifar10_fpq_table4.yaml"), "--data-root", str(data),
        "--results", str(tmp_path / "results"), "--set", "bits=[W2A4]", *TINY, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    records = _records(tmp_path / "results", "cifar10_fpq_table4")
    methods = {"erm", "pact", "lsq", "lsq_plus", "kd", "fpq", "cr", "mec", "ptq"}
    assert {m for m, _ in records} == methods
    assert all(r["status"] == "done" for r in records.values()), {k: r.get("error") for k, r in records.items()}
    quantized = {m: records[(m, "W2A4")] for m in methods - {"erm"}}
    for record in quantized.values():
        assert (record["w_bits"], record["a_bits"]) == (2, 4)
        assert record["quant.w_per_channel"] is True and record["quant.first_last"] == "8bit"
        assert record["quant.calib_images"] == 8
        assert record["parent_run_id"] == records[("erm", "FP")]["run_id"]
        assert record["hessian.trace"] is not None  # the suite's analysis ran on every run
    # asymmetric weights where the quantizer has the switch; PACT and LSQ+ keep their own
    assert {m for m, r in quantized.items() if r["quant.w_symmetric"] is False} == {
        "lsq",
        "kd",
        "fpq",
        "cr",
        "mec",
        "ptq",
    }
    # asymmetric activations (FPQ: zero point, min/max start) on the LSQ methods; LSQ+ has its own offset
    assert {m for m, r in quantized.items() if r["quant.a_symmetric"] is False} == {"lsq", "kd", "fpq", "cr", "mec"}
    assert quantized["pact"]["quant.quantizer"] == "pact" and quantized["lsq_plus"]["quant.quantizer"] == "lsq_plus"
    assert quantized["ptq"]["quant.quantizer"] == "minmax" and quantized["ptq"]["steps"] == 0
    # FPQ's optimiser protocol reached every QAT baseline (lsq's own default wd at 2 bits is 0.25e-4)
    for method in ("pact", "lsq", "lsq_plus", "kd", "fpq", "cr", "mec"):
        assert quantized[method]["effective_hparams.lr"] == 0.01
        assert quantized[method]["effective_hparams.weight_decay"] == 5e-4
    assert records[("erm", "FP")]["effective_hparams.lr"] == 0.1


def test_cifar10c_suite_measures_ood_accuracy_over_the_corruptions(tmp_path):
    data = make_cifar10c(tmp_path / "data")
    result = run_cli(
        "run", str(ROOT / "suites" / "cifar10c_w4a4.yaml"), "--data-root", str(data),
        "--results", str(tmp_path / "results"), "--only", "erm,fpq,ptq",
        "--set", f"datasets[0].options.corruptions=[{','.join(C_CORRUPTIONS)}]",
        "--set", "analysis.landscape=[{kind: 1d, grid: 3, subset: 8}]", *TINY, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    records = _records(tmp_path / "results", "cifar10c_w4a4")
    assert set(records) == {("erm", "FP"), ("fpq", "W4A4"), ("ptq", "W4A4")}
    for record in records.values():
        assert record["status"] == "done", record.get("error")
        assert record["environments"][0] == "clean" and len(record["environments"]) == 1 + 5 * len(C_CORRUPTIONS)
        corrupted = [record[f"env{i}_acc"] for i in range(1, len(record["environments"]))]
        assert record["ood_acc"] == pytest.approx(sum(corrupted) / len(corrupted))
        assert len(record["landscape.files"]) == 1
