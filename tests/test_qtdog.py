"""QT-DoG (`qtdog`) and weight-only quantization: the official code's settings (7-bit per-channel
LSQ weights of every Conv2d, float inputs, float Linear layers) checked on the model, trained
weights on the per-channel grid, and the `W7A32` bit label through suites."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import qatbench
from qatbench.config import QuantSpec, parse_bits
from qatbench.errors import UserError
from qatbench.methods import METHODS
from qatbench.models import build_model
from qatbench.quant import calibrate, quantize_model
from qatbench.quant.layers import QuantConv2d
from qatbench.runner import run_one
from qatbench.runner.analyze import load_weights
from qatbench.runner.api import expand
from tests.conftest import write_suite

QTDOG_SUITE = """\
name: qt
datasets:
  - {{name: RotatedMNIST, test_envs: [5], data_seed: 0}}
models:
  - {{name: small_cnn, options: {{width: 4}}}}
methods:
  - {{name: erm, hparams: {{lr: 0.01}}}}
  - {{name: qtdog{extra}}}
  - {{name: eoq}}
bits: [{bits}]
seeds: [0]
training: {{steps: {steps}, batch_size: 8, eval_every: 4, eval_batch_size: 4096}}
"""


def _qtdog_spec(tmp_path, bits="W7A32", extra="", steps=2400):
    suite = qatbench.load_suite(write_suite(tmp_path, QTDOG_SUITE.format(bits=bits, extra=extra, steps=steps)))
    return next(s for s in expand(suite) if s.method == "qtdog")


def test_w7a32_is_weight_only_and_parses_like_every_bit_label():
    assert parse_bits("w7a32") == (7, 32)
    spec = QuantSpec(7, 32)
    assert spec.weight_only and spec.label == "W7A32" and not QuantSpec(4, 4).weight_only
    with pytest.raises(ValueError, match="a_bits must be an integer from 2 to 8, or 32"):
        QuantSpec(7, 16)


def test_a_bit_label_other_than_a32_beyond_8_bits_is_a_one_line_suite_error(tmp_path):
    with pytest.raises(UserError, match=r"bits\[0\]: .*activations also A32.*'W7A16'"):
        _qtdog_spec(tmp_path, bits="W7A16")


def test_qtdog_takes_the_official_quantizer_settings(tmp_path):
    spec = _qtdog_spec(tmp_path)
    assert spec.quant == QuantSpec(
        7, 32, quantizer="lsq", w_per_channel=True, w_symmetric=True, first_last="same", layers="conv"
    )
    assert spec.bits_label == "W7A32"
    assert dict(spec.hparams) == {
        "q_steps": 2000, "optimizer": "adam", "lr": 5e-5, "weight_decay": 0.0, "momentum": 0.9, "schedule": "constant"
    }  # fmt: skip
    with pytest.raises(UserError, match=r"methods\[1\]\.quant\.layers: method 'qtdog' needs layers 'conv', got 'all'"):
        _qtdog_spec(tmp_path, extra=", quant: {layers: all}")
    assert _qtdog_spec(tmp_path, bits="W4A32").quant.w_bits == 4  # any weight bit width of the suite


def test_qtdog_leaves_activations_and_linear_layers_in_full_precision(tmp_path):
    spec = _qtdog_spec(tmp_path)
    torch.manual_seed(0)
    model = build_model("resnet18", (3, 32, 32), 7, {}).eval()
    quantized = quantize_model(model, spec.quant).eval()
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20  # stem, 16 block convs, 3 downsample convs: every one quantized
    for name in convs:
        layer = quantized.get_submodule(name)
        assert type(layer) is QuantConv2d and type(layer.a_quant) is nn.Identity
        assert layer.w_quant.bits == 7 and layer.w_quant.per_channel and layer.w_quant.step.shape == (layer.out_channels,)
    assert type(quantized.fc) is nn.Linear  # exactly the float class: no quantizer at all
    x = torch.randn(4, 3, 32, 32)
    calibrate(quantized, x)
    # the quantized model is the float model with its conv weights replaced by their 7-bit values:
    # inputs reach every conv unchanged and the classifier computes in float
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for name in convs:
            layer = quantized.get_submodule(name)
            reference.get_submodule(name).weight.copy_(layer.w_quant(layer.weight))
    torch.testing.assert_close(quantized(x), reference(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(quantized(x), model(x), atol=1e-4)  # the weights did change
    stem = quantized.get_submodule(convs[0])
    torch.testing.assert_close(
        stem(x), F.conv2d(x, stem.w_quant(stem.weight), stem.bias, stem.stride, stem.padding), rtol=0, atol=0
    )


def _per_channel_levels(layer: QuantConv2d) -> torch.Tensor:
    step = layer.w_quant.step.detach().view(-1, 1, 1, 1)
    zero = layer.w_quant.zero_point.view(-1, 1, 1, 1) if not layer.w_quant.symmetric else 0
    return layer.w_quant(layer.weight).detach() / step + zero


def test_qtdog_trained_weights_lie_on_the_per_channel_grid(tmp_path):
    spec = _qtdog_spec(tmp_path)
    torch.manual_seed(0)
    model = quantize_model(build_model("small_cnn", (1, 28, 28), 10, {"width": 4}), spec.quant)
    batches = [(torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))) for _ in range(2)]
    calibrate(model, batches[0][0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = METHODS.get("qtdog")(model, 10, dict(spec.hparams), quant=spec.quant, total_steps=5)
    for _ in range(5):
        method.update(batches)
    convs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    assert convs and all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    for layer in convs:
        levels = _per_channel_levels(layer)
        torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
        assert levels.round().min() >= -64 and levels.round().max() <= 63  # 7-bit signed: [-2^6, 2^6 - 1]
        assert layer.w_quant.step.unique().numel() == layer.out_channels  # one step per output channel
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.endswith("w_quant.step") for n in moved) and any(n.endswith(".weight") for n in moved)


def test_weight_only_composes_with_per_channel_zero_point_weights():
    spec = QuantSpec(4, 32, w_per_channel=True, w_symmetric=False, layers="conv", first_last="same")
    torch.manual_seed(0)
    model = quantize_model(build_model("small_cnn", (1, 28, 28), 10, {"width": 4}), spec)
    calibrate(model, torch.randn(4, 1, 28, 28))
    for layer in (m for m in model.modules() if isinstance(m, QuantConv2d)):
        assert type(layer.a_quant) is nn.Identity
        levels = _per_channel_levels(layer)
        torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
        assert levels.round().min() >= 0 and levels.round().max() <= 15  # unsigned levels around a per-channel zero point


def test_qtdog_is_erm_bit_for_bit_until_q_steps_then_quantized_on_the_grid(tmp_path):
    suite = qatbench.load_suite(
        write_suite(tmp_path, QTDOG_SUITE.format(bits="W7A32", extra=", hparams: {lr: 0.01, q_steps: 8}", steps=12))
    )
    erm, qtdog, eoq = (next(s for s in expand(suite) if s.method == m) for m in ("erm", "qtdog", "eoq"))
    assert qtdog.parent is None and (qtdog.protocol.name, qtdog.protocol.switch_at) == ("switch_at", 8)
    assert qtdog.protocol.fp_method == "erm" and dict(qtdog.protocol.fp_hparams) == dict(erm.hparams)
    results = tmp_path / "results"
    records = {spec.method: run_one(spec, results, progress=False) for spec in (erm, qtdog)}
    assert all(r["status"] == "done" for r in records.values()), records
    assert records["qtdog"]["switched_at_step"] == 8 and records["qtdog"]["bits"] == "W7A32"
    curves = {
        method: [json.loads(line) for line in (results / "qt" / spec.run_id / "curve.jsonl").read_text().splitlines()]
        for method, spec in (("erm", erm), ("qtdog", qtdog))
    }
    assert [row["step"] for row in curves["qtdog"]] == [4, 8, 12]
    assert curves["qtdog"][:2] == curves["erm"][:2]  # float steps 1..8: erm's, every number equal
    assert curves["qtdog"][2] != curves["erm"][2]  # steps 9..12: quantized
    model = quantize_model(build_model("small_cnn", (1, 28, 28), 10, {"width": 4}), qtdog.quant)
    load_weights(model, results / "qt" / qtdog.run_id / "model.pt")
    convs = [m for m in model.modules() if isinstance(m, QuantConv2d)]
    assert convs and all(type(m.a_quant) is nn.Identity for m in convs)
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    for layer in convs:
        levels = _per_channel_levels(layer)
        torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)
        assert levels.round().min() >= -64 and levels.round().max() <= 63
    # EoQ of this one member: its model.pt rebuilt weight-only and conv-only, the member's accuracies
    assert eoq.members == (qtdog,) and eoq.bits_label == "W7A32" and eoq.protocol.name == "from_fp_run"
    ensemble = run_one(eoq, results, progress=False)
    accuracies = [k for k, v in records["qtdog"].items() if k.endswith("_acc") and v is not None]
    assert ensemble["status"] == "done" and len(accuracies) >= 20
    assert {k: ensemble[k] for k in accuracies} == {k: records["qtdog"][k] for k in accuracies}


def test_qtdog_switch_step_is_its_hparam_not_a_protocol(tmp_path):
    with pytest.raises(UserError, match=r"methods\[1\]\.protocol: method 'qtdog' switches quantization on at its hparam `q_steps`"):
        _qtdog_spec(tmp_path, extra=", protocol: {switch_at: 4}")
    with pytest.raises(UserError, match=r"methods\[1\]\.hparams\.q_steps: q_steps 2000 leaves no quantized steps"):
        _qtdog_spec(tmp_path, steps=12)  # the default 2,000 in a run of 12 steps
