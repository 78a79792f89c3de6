"""Post-training quantization: observers, the `ptq` and `dnq` methods, and their runs.

Expected values are computed here from the tensors themselves (hooks on the float model, sorted
values, explicit noise), never with the library's own helpers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from qatbench.config import QuantSpec
from qatbench.methods import METHODS
from qatbench.models import build_model
from qatbench.quant import ObserverQuantizer, calibrate, layer_bits, quantize_model, quantizers
from qatbench.runner.api import expand, load_suite, run
from tests.conftest import run_cli, write_suite

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("small_cnn", (1, 28, 28), 10, {"width": 8}).double().eval()


def _inputs_of(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """What each Conv2d/Linear of the float model receives, batch by batch."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [
        m.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, []).append(args[0].detach()))
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        for x in batches:
            model(x)
    for handle in handles:
        handle.remove()
    return seen


# ------------------------------------------------------------------------------------ observers


def test_minmax_ranges_equal_the_observed_min_and_max_over_every_calibration_batch():
    model = _cnn()
    batches = [torch.randn(5, 1, 28, 28, dtype=F64) * (i + 1) for i in range(3)]
    quantized = quantize_model(model, QuantSpec(4, 4, quantizer="minmax", w_per_channel=True))
    calibrate(quantized, batches)
    inputs = _inputs_of(model, batches)
    for name, xs in inputs.items():
        layer = quantized.get_submodule(name)
        everything = torch.cat([x.reshape(-1) for x in xs])
        assert layer.a_quant.low.item() == everything.min().item()
        assert layer.a_quant.high.item() == everything.max().item()
        weight = model.get_submodule(name).weight.flatten(1)
        torch.testing.assert_close(layer.w_quant.low, weight.amin(dim=1), rtol=0, atol=0)
        torch.testing.assert_close(layer.w_quant.high, weight.amax(dim=1), rtol=0, atol=0)
    # the float image reaches layer 0 with negative values: 2^8 - 1 affine steps over [min, max]
    first = quantized.get_submodule(next(iter(inputs)))
    everything = torch.cat([x.reshape(-1) for x in inputs[next(iter(inputs))]])
    assert first.a_quant.step.item() == pytest.approx((everything.max() - everything.min()).item() / 255)


def test_percentile_range_is_the_size_weighted_mean_of_each_batchs_percentiles():
    observer = ObserverQuantizer(4, "activation", observe="percentile", percentile=90.0).double()
    batches = [torch.randn(4, 50, dtype=F64), torch.randn(2, 50, dtype=F64) + 3]
    observer.reset()
    for x in batches:
        observer(x)
    observer.finish()
    lows, highs = [], []
    for x in batches:
        values = np.sort(x.numpy().reshape(-1))
        n = len(values)
        k = math.ceil(0.9 * n)  # the 90th percentile: the k-th smallest, the low one mirrored
        highs.append(values[k - 1])
        lows.append(values[n - k])
    assert observer.high.item() == pytest.approx((4 * highs[0] + 2 * highs[1]) / 6, abs=1e-12)
    assert observer.low.item() == pytest.approx((4 * lows[0] + 2 * lows[1]) / 6, abs=1e-12)


def test_observer_output_lies_on_the_affine_grid_with_zero_exact():
    observer = ObserverQuantizer(3, "activation").double()
    x = torch.linspace(-1.0, 2.5, 101, dtype=F64)
    observer.reset()
    observer(x)
    observer.finish()
    step, zero = observer.step.item(), observer.zero_point.item()
    assert step == pytest.approx(3.5 / 7)
    assert zero == round(1.0 / step)
    codes = observer(x) / step + zero
    torch.testing.assert_close(codes, codes.round())
    assert codes.min().item() == 0 and codes.max().item() == 7
    assert observer(torch.zeros(1, dtype=F64)).item() == 0.0


def test_symmetric_weight_observer_uses_signed_levels_per_channel():
    weight = torch.tensor([[-1.0, 0.5, 0.25], [0.1, 0.2, -0.05]], dtype=F64)
    observer = ObserverQuantizer(4, "weight", per_channel=True, channels=2, symmetric=True).double()
    observer.reset()
    observer(weight)
    observer.finish()
    torch.testing.assert_close(observer.step, torch.tensor([1.0 / 7, 0.2 / 7], dtype=F64))
    out = observer(weight)
    codes = out / observer.step.view(-1, 1)
    torch.testing.assert_close(codes, codes.round())
    assert codes.min().item() >= -8 and codes.max().item() <= 7


def test_eight_bit_minmax_ptq_stays_close_to_the_float_model_and_two_bit_is_far_from_it():
    model = _cnn()
    x = torch.randn(16, 1, 28, 28, dtype=F64)
    errors = {}
    for bits in (8, 2):
        quantized = quantize_model(model, QuantSpec(bits, bits, quantizer="minmax", first_last="same"))
        calibrate(quantized, [x])
        with torch.no_grad():
            errors[bits] = (quantized(x) - model(x)).abs().max().item() / model(x).abs().max().item()
    assert errors[8] < 0.02 and errors[2] > 10 * errors[8]


def test_observer_state_survives_a_state_dict_round_trip():
    model = _cnn()
    spec = QuantSpec(4, 4, quantizer="percentile", percentile=99.0)
    quantized = quantize_model(model, spec)
    x = torch.randn(8, 1, 28, 28, dtype=F64)
    calibrate(quantized, [x])
    fresh = quantize_model(model, spec)
    fresh.load_state_dict(quantized.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), quantized(x), rtol=0, atol=0)
    assert all(not q.observing and q.initialized for q in quantizers(fresh))


def test_calibration_names_a_layer_that_saw_no_data_instead_of_quantizing_it_to_zero():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    model.unused = nn.Linear(2, 2).double()  # registered, never called in forward
    quantized = quantize_model(model, QuantSpec(4, 4, quantizer="minmax"))
    quantized.forward = lambda x: quantized[2](quantized[1](quantized[0](x)))  # noqa: PLW0108
    with pytest.raises(ValueError, match=r"^calibration: quantizer unused\.w_quant: no calibration data"):
        calibrate(quantized, [torch.randn(5, 3, dtype=F64)])


# ------------------------------------------------------------------------------------ dnq


def _dnq(model: nn.Module, spec: QuantSpec, **hparams):
    defaults = {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "schedule": "constant"}
    return METHODS.get("dnq")(model, 10, {**defaults, **hparams}, quant=spec, total_steps=10)


@pytest.mark.parametrize("bits, per_channel, symmetric", [(2, False, True), (4, True, True), (3, True, False)])
def test_dnq_weight_noise_variance_is_the_rounding_variance_of_the_target_bits(bits, per_channel, symmetric):
    model = _cnn()
    spec = QuantSpec(bits, bits, quantizer="minmax", w_per_channel=per_channel, w_symmetric=symmetric)
    method = _dnq(model, spec)
    name = "3"  # a middle conv: quantized at the target bits (first and last are 8-bit)
    assert layer_bits(model, spec)[name] == (bits, bits)
    weight = model.get_submodule(name).weight.detach().flatten(1)
    if symmetric:
        peak = weight.abs().amax(dim=1) if per_channel else weight.abs().max().expand(len(weight))
        delta = peak / (2 ** (bits - 1) - 1)
    else:
        low, high = weight.amin(dim=1).clamp_max(0), weight.amax(dim=1).clamp_min(0)
        delta = (high - low) / (2**bits - 1)
    torch.manual_seed(1)
    draws = torch.stack([method.weight_noise()[name].flatten(1) for _ in range(200)])  # (200, out, in)
    variance = draws.pow(2).mean(dim=(0, 2))  # zero-mean by construction: E[eps^2] per channel
    expected = delta.pow(2) / 12
    samples = draws.shape[0] * draws.shape[2]
    assert torch.all((variance / expected - 1).abs() < 5 * math.sqrt(2 / samples))
    assert draws.mean().abs().item() < 5 * expected.sqrt().max().item() / math.sqrt(draws.numel())


def test_dnq_activation_noise_std_follows_the_input_range_and_bits():
    model = _cnn()
    spec = QuantSpec(2, 2, quantizer="minmax", first_last="same")
    method = _dnq(model, spec, weight_noise=False, act_p=1.0, range_momentum=1.0)
    x = torch.rand(64, 1, 28, 28, dtype=F64) * 2 - 0.5  # range [-0.5, 1.5]: Delta = 2 / 3 at 2 bits
    received = []
    with method.activation_noise():  # the capturing hook comes after the noise hook
        handle = model.get_submodule("0").register_forward_pre_hook(lambda m, args: received.append(args[0]))
        model(x)
    handle.remove()
    noise = received[0] - x
    delta = (x.max() - x.min()).item() / 3
    assert noise.std().item() == pytest.approx(delta / math.sqrt(12), rel=0.02)
    assert not model.get_submodule("0")._forward_pre_hooks  # no hook left behind


def test_dnq_step_is_the_gradient_at_the_noisy_point_applied_to_the_clean_weights():
    model = _cnn()
    spec = QuantSpec(4, 4, quantizer="minmax")
    method = _dnq(model, spec, act_noise=False)
    torch.manual_seed(3)
    noise = method.weight_noise()
    method.weight_noise = lambda: noise
    x, y = torch.randn(8, 1, 28, 28, dtype=F64), torch.randint(0, 10, (8,))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    noisy = {n: before[n] + noise[n.rsplit(".", 1)[0]] if n.endswith("weight") and n.rsplit(".", 1)[0] in noise
             else before[n] for n in before}  # fmt: skip
    reference = _cnn()
    reference.train()
    reference.load_state_dict({**model.state_dict(), **noisy})
    grads = torch.autograd.grad(F.cross_entropy(reference(x), y), list(reference.parameters()))
    method.train()
    method.update([(x, y)])
    for (name, p), g in zip(model.named_parameters(), grads):
        torch.testing.assert_close(p.detach(), before[name] - 0.1 * g, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------ runs

PTQ_SUITE = """\
name: ptq
datasets:
  - name: RotatedMNIST
    test_envs: [0]
models:
  - {name: small_cnn, options: {width: 8}}
methods:
  - name: erm
    hparams: {lr: 0.01}
  - name: ptq
  - name: dnq
    steps: 6
bits: [W8A8, W2A2]
quant: {calib_images: 40, w_per_channel: true}
seeds: [0]
training: {steps: 120, batch_size: 32, eval_every: 60, eval_batch_size: 2048}
"""


@pytest.fixture(scope="module")
def ptq_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("ptq")
    path = write_suite(root, PTQ_SUITE)
    run(load_suite(path), root / "results", progress=False)
    records = [json.loads(p.read_text()) for p in (root / "results" / "ptq").glob("*/record.json")]
    return root, {(r["method"], r["bits"]): r for r in records}


def test_ptq_runs_train_nothing_and_quantize_the_parent_exactly(ptq_results):
    root, records = ptq_results
    parent = records[("erm", "FP")]
    for bits in ("W8A8", "W2A2"):
        record = records[("ptq", bits)]
        assert record["status"] == "done" and record["steps"] == 0
        assert record["quant.quantizer"] == "minmax" and record["quant.calib_images"] == 40
        assert record["float.id_acc"] == parent["id_acc"]  # the very parent, evaluated before PTQ
        assert record["float.ood_acc"] == parent["ood_acc"]
        curve = (root / "results" / "ptq" / record["run_id"] / "curve.jsonl").read_text().splitlines()
        assert len(curve) == 1 and json.loads(curve[0])["id_acc"] == record["id_acc"]
    assert abs(records[("ptq", "W8A8")]["id_acc"] - parent["id_acc"]) < 0.02
    assert records[("ptq", "W2A2")]["id_acc"] < parent["id_acc"] - 0.05


def test_dnq_runs_train_in_float_then_quantize(ptq_results):
    root, records = ptq_results
    record = records[("dnq", "W2A2")]
    assert record["status"] == "done" and record["steps"] == 6
    folder = root / "results" / "ptq" / record["run_id"]
    float_curve = [json.loads(line) for line in (folder / "curve_float.jsonl").read_text().splitlines()]
    assert [row["step"] for row in float_curve] == [6]
    assert float_curve[-1]["id_acc"] == record["float.id_acc"]
    assert len((folder / "curve.jsonl").read_text().splitlines()) == 1
    assert 0 < record["method_state.act_noise_rate"] <= 1


def test_a_ptq_model_file_reloads_to_the_same_accuracy(ptq_results):
    root, records = ptq_results
    record = records[("ptq", "W2A2")]
    folder = root / "results" / "ptq" / record["run_id"]
    result = run_cli("eval", str(folder / "model.pt"), "--dataset", "RotatedMNIST", "--test-envs", "0",
                     "--results", str(root / "eval"), cwd=root)  # fmt: skip
    assert result.returncode == 0, result.stderr
    evaluated = [json.loads(p.read_text()) for p in (root / "eval").rglob("record.json")]
    assert evaluated and evaluated[0]["id_acc"] == record["id_acc"]


def test_ptq_entries_get_an_observer_and_qat_entries_refuse_one(tmp_path):
    suite = PTQ_SUITE.replace("quant: {calib_images: 40, w_per_channel: true}", "quant: {quantizer: lsq}")
    specs = expand(load_suite(write_suite(tmp_path, suite)))
    assert {s.quant.quantizer for s in specs if s.method in ("ptq", "dnq")} == {"minmax"}
    bad = PTQ_SUITE.replace("  - name: ptq\n", "  - name: lsq\n    quant: {quantizer: minmax}\n")
    result = run_cli("run", str(write_suite(tmp_path, bad, "bad.yaml")), "--dry-run")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "methods[1].quant.quantizer" in result.stderr and "'minmax'" in result.stderr


@pytest.mark.parametrize(
    "change, key",
    [
        (("  - name: ptq\n", "  - name: ptq\n    steps: 5\n"), "methods[1].steps"),
        (("w_per_channel: true}", "w_per_channel: true, percentile: 99.0}"), "quant"),
        (("calib_images: 40", "calib_images: -1"), "quant.calib_images"),
    ],
)
def test_bad_ptq_settings_are_one_line_errors_naming_the_key(tmp_path, change, key):
    path = write_suite(tmp_path, PTQ_SUITE.replace(*change))
    result = run_cli("run", str(path), "--dry-run")
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert line.startswith(f"qatbench: error: {path}: {key}")
