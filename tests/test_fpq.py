"""FPQ (Pang & Cai 2025): stochastic feature perturbation and channel-wise standardized distillation.

Expected values are computed here with plain torch on hook-free copies of the models; the noise the
method drew is read off with the test's own hooks (registered before the method's, so they see the
clean tensors) and replayed as a constant. SGD with momentum 0, no weight decay and a constant
schedule makes one step w <- w - lr * d exactly, so d = (w_before - w_after) / lr.
"""

from __future__ import annotations

import copy
import io
import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import qatbench.methods.fpq  # noqa: F401  (registers fpq)
from qatbench.config import QuantSpec
from qatbench.methods import METHODS
from qatbench.methods.fpq import FpqHParams, csd_loss
from qatbench.quant import QuantConv2d, calibrate, quantize_model
from tests.conftest import write_suite

pytestmark = pytest.mark.usefixtures("one_thread")

LR = 0.1
SGD = {"optimizer": "sgd", "lr": LR, "momentum": 0.0, "schedule": "constant", "weight_decay": 0.0}


def _net(seed: int = 0, bn: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    norm = nn.BatchNorm2d if bn else (lambda c: nn.Identity())
    layers = [nn.Conv2d(1, 3, 3, padding=1), norm(3), nn.ReLU(), nn.Conv2d(3, 4, 3), norm(4), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double()


def _data(seed: int = 1, n: int = 8, size: int = 6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=g)


def _student(teacher: nn.Module, spec: QuantSpec | None = None) -> nn.Module:
    model = quantize_model(teacher, spec or QuantSpec(4, 4))  # convs: 8-bit first, 4-bit second
    return calibrate(model, _data(seed=9, n=16)[0])


def _fpq(model: nn.Module, teacher: nn.Module, spec: QuantSpec | None = None, **hparams):
    frozen = copy.deepcopy(teacher).eval().requires_grad_(False)  # as the runner hands it over
    return METHODS.get("fpq")(model, 3, {**SGD, **hparams}, teacher=frozen, quant=spec or QuantSpec(4, 4))


def _convs(model: nn.Module) -> list[QuantConv2d]:
    return [m for m in model.modules() if isinstance(m, QuantConv2d)]


class Tap:
    """The test's view of every quantized conv, recorded on each forward: its input, its input
    quantizer's input and output, and the operand the convolution multiplies. Installed before the
    method, its hooks run first and see clean tensors where the method's come later."""

    def __init__(self, model: nn.Module):
        self.records: list[dict[str, list[torch.Tensor]]] = []
        for layer in _convs(model):
            record: dict[str, list[torch.Tensor]] = {"input": [], "q_in": [], "q_out": [], "operand": []}
            layer.register_forward_pre_hook(lambda m, a, r=record: r["input"].append(a[0].detach()))
            layer.a_quant.register_forward_pre_hook(lambda m, a, r=record: r["q_in"].append(a[0].detach()))
            layer.a_quant.register_forward_hook(lambda m, a, out, r=record: r["q_out"].append(out.detach()))
            layer._conv_forward = self._operand(layer._conv_forward, record)
            self.records.append(record)

    @staticmethod
    def _operand(conv_forward, record):
        def forward(x, weight, bias):
            record["operand"].append(x.detach())
            return conv_forward(x, weight, bias)

        return forward

    def noise(self, noise_at: str, call: int = -1) -> list[torch.Tensor]:
        """delta of each layer at one forward: before the quantizer (input) or after it (quantized)."""
        if noise_at == "input":
            return [r["q_in"][call] - r["input"][call] for r in self.records]
        return [r["operand"][call] - r["q_out"][call] for r in self.records]


def _steps(model: nn.Module) -> list[float]:
    return [float(layer.a_quant.step.detach()) for layer in _convs(model)]


def _hand_norm(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Channel by channel: (v - mean) / sqrt(biased variance + eps) over the batch and the pixels."""
    channels = []
    for c in range(z.shape[1]):
        v = z[:, c]
        mean = v.sum() / v.numel()
        var = ((v - mean) ** 2).sum() / v.numel()
        channels.append((v - mean) / torch.sqrt(var + eps))
    return torch.stack(channels, dim=1)


def _hand_csd(zs, zt, reduction: str, eps: float = 1e-5) -> torch.Tensor:
    total = zs[0].new_zeros(())
    for a, b in zip(zs, zt):
        sq = (_hand_norm(b, eps) - _hand_norm(a, eps)) ** 2
        total = total + (sq.sum() / sq.numel() if reduction == "mean" else sq.sum())
    return total / zs[0].shape[0] if reduction == "batch_mean" else total


# ----------------------------------------------------------------------------------- SFP


@pytest.mark.parametrize("noise_at", ["input", "quantized"])
def test_sfp_noise_is_uniform_on_plus_minus_half_the_input_step_and_zero_mean(noise_at):
    teacher = _net()
    model = _student(teacher)
    tap = Tap(model)
    method = _fpq(model, teacher, p=1.0, noise_at=noise_at, csd=False)
    steps = _steps(model)
    method.update([_data(n=128, size=12)])  # 18,432 and 55,296 noise values
    for delta, s in zip(tap.noise(noise_at), steps):
        n = delta.numel()
        assert delta.abs().max() <= s / 2 * (1 + 1e-12)
        assert delta.abs().max() >= s / 2 * (1 - 1e-3)  # P(all n below) = 0.999^n < 1e-8
        assert abs(float(delta.mean())) < 4 * s / math.sqrt(12 * n)
        assert float(delta.std()) == pytest.approx(s / math.sqrt(12), rel=0.02)


def test_p_one_perturbs_every_conv_p_zero_none_and_the_measured_rate_is_p():
    teacher = _net()
    for p, expected in ((1.0, [True, True]), (0.0, [False, False])):
        model = _student(teacher)
        tap = Tap(model)
        method = _fpq(model, teacher, p=p, csd=False)
        for _ in range(3):
            method.update([_data(n=2, size=4)])
            assert [bool(d.abs().max() > 0) for d in tap.noise("input")] == expected
        assert method.summary()["sfp_rate"] == p

    model = _student(teacher)
    tap = Tap(model)
    method = _fpq(model, teacher, p=0.3, csd=False, lr=0.0)
    n_steps = 1000  # 2,000 draws
    seen, both = torch.zeros(2), 0
    for _ in range(n_steps):
        method.update([_data(n=2, size=4)])
        hit = torch.tensor([float(d.abs().max() > 0) for d in tap.noise("input")])
        seen, both = seen + hit, both + int(hit.all())
    assert seen.tolist() == method.perturbed.tolist()  # what the record says is what was done
    binomial_std = math.sqrt(n_steps * 0.3 * 0.7)
    assert all(abs(k - 0.3 * n_steps) < 3 * binomial_std for k in seen.tolist())  # per layer
    assert abs(float(seen.sum()) - 0.3 * 2 * n_steps) < 3 * math.sqrt(2) * binomial_std  # all draws
    assert abs(both - 0.09 * n_steps) < 3 * math.sqrt(n_steps * 0.09 * 0.91)  # layers drawn independently
    summary = method.summary()
    assert summary["sfp_layers"] == 2 and summary["csd_layers"] == 2
    assert summary["sfp_rate"] == pytest.approx(float(seen.sum()) / (2 * n_steps))
    assert list(summary["sfp_rate_per_layer"]) == ["0", "3"]


def test_noise_at_input_is_added_before_the_quantizer_and_moves_the_operand_by_at_most_one_level():
    teacher = _net()
    model = _student(teacher)
    tap = Tap(model)
    method = _fpq(model, teacher, p=1.0, noise_at="input", csd=False, lr=0.0)  # lr 0: the steps stay put
    steps = _steps(model)
    method.update([_data(n=16)])
    for layer, r, s in zip(_convs(model), tap.records, steps):
        clean, delta, operand = r["input"][-1], r["q_in"][-1] - r["input"][-1], r["operand"][-1]
        assert 0.4 * s < delta.abs().max() <= s / 2 * (1 + 1e-12)  # the quantizer's input is perturbed ...
        assert torch.equal(operand, r["q_out"][-1])  # ... and nothing is added after it
        levels = operand / s
        assert torch.allclose(levels, levels.round(), atol=1e-9)  # the conv sees grid values
        with torch.no_grad():
            moved = (operand - layer.a_quant(clean)) / s  # half a step of noise: at most one level
        assert torch.allclose(moved, moved.round(), atol=1e-9) and moved.abs().max() == pytest.approx(1.0)


def test_noise_at_input_is_stochastic_rounding_whose_mean_is_the_unquantized_input():
    teacher = _net()
    model = _student(teacher)
    tap = Tap(model)
    method = _fpq(model, teacher, p=1.0, noise_at="input", csd=False, lr=0.0)
    s = _steps(model)[0]
    value = 2.3 * s  # between two levels, 0.3 of the way up
    method.update([(torch.full((64, 1, 12, 12), value, dtype=torch.float64), torch.zeros(64, dtype=torch.long))])
    operand = tap.records[0]["operand"][-1]
    assert set((operand / s).round().unique().tolist()) == {2.0, 3.0}
    n = operand.numel()
    assert abs(float(operand.mean()) - value) < 4 * math.sqrt(0.3 * 0.7 / n) * s  # round() alone: 2 s
    assert float((operand / s).round().eq(3).double().mean()) == pytest.approx(0.3, abs=4 * math.sqrt(0.21 / n))


def test_noise_at_quantized_is_added_to_the_quantizer_output_the_conv_multiplies():
    teacher = _net()
    model = _student(teacher)
    tap = Tap(model)
    method = _fpq(model, teacher, p=1.0, noise_at="quantized", csd=False)
    steps = _steps(model)
    method.update([_data(n=16)])
    for r, s in zip(tap.records, steps):
        assert torch.equal(r["q_in"][-1], r["input"][-1])  # the quantizer sees the clean input
        delta = r["operand"][-1] - r["q_out"][-1]  # the conv sees its output plus delta, exactly
        assert 0.4 * s < delta.abs().max() <= s / 2 * (1 + 1e-12)
        levels = r["operand"][-1] / s
        assert (levels - levels.round()).abs().max() > 0.1  # off the grid


def test_no_noise_and_no_capture_outside_update_in_eval_or_train_mode():
    teacher = _net()
    model = _student(teacher)
    method = _fpq(model, teacher, p=1.0)
    method.update([_data()])
    plain = copy.deepcopy(model)
    for m in plain.modules():
        m._forward_hooks.clear(), m._forward_pre_hooks.clear()
    x, _ = _data(seed=3)
    method.eval()
    with torch.no_grad():
        first, second = method.predict(x), method.predict(x)
        assert torch.equal(first, second) and torch.equal(first, plain.eval()(x))
        method.train()  # a training-mode forward outside update is the plain model's too
        assert torch.equal(model(x), plain.train()(x))
    assert method.switch.features == {"student": {}, "teacher": {}}  # no feature kept alive


# ----------------------------------------------------------------------------------- CSD


@pytest.mark.parametrize("reduction", ["sum", "batch_mean", "mean"])
def test_csd_is_the_squared_difference_of_per_channel_standardized_features(reduction):
    g = torch.Generator().manual_seed(0)
    zs = [torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64), torch.randn(4, 2, 3, 3, generator=g).double()]
    zt = [2.0 * z + 1.0 + 0.5 * torch.randn(z.shape, generator=g, dtype=torch.float64) for z in zs]
    got = csd_loss(zs, zt, reduction, eps=1e-5)
    assert got.item() == pytest.approx(_hand_csd(zs, zt, reduction).item(), rel=1e-12)
    assert csd_loss(zs, [z.clone() for z in zs], reduction).item() == 0.0
    # an affine map per channel is invisible to CSD (what it is for: distributions, not values) ...
    scaled = [3.0 * z - 7.0 for z in zs]
    assert csd_loss(zs, scaled, reduction, eps=1e-12).item() == pytest.approx(0.0, abs=1e-12)
    # ... and the unbiased variance would give another number
    unbiased = sum(
        ((b - b.mean((0, 2, 3), keepdim=True)) / b.std((0, 2, 3), keepdim=True)
         - (a - a.mean((0, 2, 3), keepdim=True)) / a.std((0, 2, 3), keepdim=True)).square().sum()
        for a, b in zip(zs, zt)
    )  # fmt: skip
    assert reduction != "sum" or abs(unbiased.item() - got.item()) > 1e-3


def test_csd_of_a_run_is_zero_for_an_identical_teacher_and_grows_as_bits_drop():
    teacher = _net(bn=False)  # no BN: the eval-mode teacher and the training student compute alike
    x, y = _data()
    csd = {}
    for label, spec in (("w8a8", QuantSpec(8, 8)), ("w4a4", QuantSpec(4, 4)), ("w2a2", QuantSpec(2, 2))):
        csd[label] = _fpq(_student(teacher, spec), teacher, spec, sfp=False, csd_reduction="sum").update([(x, y)])[
            "csd"
        ]
    model = _student(teacher, QuantSpec(8, 8))
    csd["same"] = _fpq(model, copy.deepcopy(model), sfp=False).update([(x, y)])["csd"]  # its own teacher
    elements = 8 * 3 * 6 * 6 + 8 * 4 * 4 * 4  # of the conv outputs
    assert csd["same"] == 0.0
    # per element, CSD is 2 (1 - the channel's correlation with the teacher): above 0.99 at 8 bits
    assert 0.0 < csd["w8a8"] < 0.01 * 2 * elements
    assert csd["w8a8"] < csd["w4a4"] < csd["w2a2"]


# ----------------------------------------------------------------------------------- the update


@pytest.mark.parametrize(
    "hparams",
    [
        {"sfp": False},
        {"p": 1.0, "noise_at": "input"},
        {"p": 1.0, "noise_at": "quantized", "csd_reduction": "batch_mean"},
        {"p": 1.0, "csd_reduction": "mean", "csd_weight": 2.5, "eps": 1e-3},
    ],
)
def test_one_update_steps_weights_and_step_sizes_along_the_gradient_of_ce_plus_csd(hparams):
    teacher = _net()
    model = _student(teacher)
    reference = copy.deepcopy(model)  # hook-free, the same parameters
    tap = Tap(model)
    method = _fpq(model, teacher, **hparams)
    hp = FpqHParams(**{**SGD, **hparams})
    x, y = _data()
    before = [p.detach().clone() for p in model.parameters()]
    losses = method.update([(x[:4], y[:4]), (x[4:], y[4:])])

    noise = tap.noise(hp.noise_at) if hp.sfp else [None, None]
    features = {"student": [], "teacher": []}
    for layer, delta in zip(_convs(reference), noise):
        if delta is not None and hp.noise_at == "input":
            layer.register_forward_pre_hook(lambda m, a, d=delta: (a[0] + d,))
        elif delta is not None:
            layer.a_quant.register_forward_hook(lambda m, a, out, d=delta: out + d)
        layer.register_forward_hook(lambda m, a, out: features["student"].append(out))
    frozen = copy.deepcopy(teacher).eval()
    for name in ("0", "3"):
        frozen.get_submodule(name).register_forward_hook(lambda m, a, out: features["teacher"].append(out))
    params = list(reference.parameters())
    logits = reference(x)
    with torch.no_grad():
        frozen(x)
    ce = F.cross_entropy(logits, y)
    csd = _hand_csd(features["student"], features["teacher"], hp.csd_reduction, hp.eps)
    grads = torch.autograd.grad(ce + hp.csd_weight * csd, params)

    assert losses["ce"] == pytest.approx(ce.item(), rel=1e-10)
    assert losses["csd"] == pytest.approx(csd.item(), rel=1e-10) and csd.item() > 0
    assert losses["loss"] == pytest.approx(ce.item() + hp.csd_weight * csd.item(), rel=1e-10)
    directions = [(b - p.detach()) / LR for b, p in zip(before, model.parameters())]
    for d, g in zip(directions, grads):
        assert torch.allclose(d, g, rtol=1e-7, atol=1e-10)
    steps = {id(layer.a_quant.step) for layer in _convs(model)}
    assert all(d.abs() > 0 for d, p in zip(directions, model.parameters()) if id(p) in steps)  # steps learn


def test_the_teacher_stays_frozen_in_eval_mode_and_sees_the_clean_batch():
    teacher = _net()
    model = _student(teacher)
    method = _fpq(model, teacher, p=1.0)
    state = copy.deepcopy(method.teacher.state_dict())
    inputs = []
    method.teacher.get_submodule("0").register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    method.teacher.train()
    method.train()
    x, y = _data()
    method.update([(x, y)])
    assert not method.teacher.training and model.training
    assert len(inputs) == 1 and torch.equal(inputs[0], x)
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert all(torch.equal(v, method.teacher.state_dict()[k]) for k, v in state.items())  # BN statistics too


def test_csd_off_skips_the_teacher_and_sfp_off_perturbs_nothing():
    teacher = _net()
    model = _student(teacher)
    tap = Tap(model)
    method = _fpq(model, teacher, sfp=False, p=1.0)
    calls = []
    method.teacher.register_forward_hook(lambda m, a, out: calls.append(1))
    losses = method.update([_data()])
    assert all(d.abs().max() == 0 for d in tap.noise("input")) and losses["csd"] > 0 and len(calls) == 1
    assert method.summary()["sfp_rate"] == 0.0

    model = _student(teacher)
    method = _fpq(model, teacher, csd=False)
    calls.clear()
    method.teacher.register_forward_hook(lambda m, a, out: calls.append(1))
    losses = method.update([_data()])
    assert losses["csd"] == 0.0 and losses["loss"] == losses["ce"] and not calls


# ----------------------------------------------------------------------------------- construction


def test_hparams_defaults_are_the_papers_and_out_of_range_values_are_refused():
    hp = FpqHParams()
    assert (hp.optimizer, hp.lr, hp.momentum, hp.schedule, hp.weight_decay) == ("sgd", 0.01, 0.9, "cosine", 5e-4)
    assert (hp.p, hp.noise_at, hp.layers, hp.csd_weight, hp.csd_reduction, hp.eps) == (
        0.1, "input", "conv", 1.0, "mean", 1e-5
    )  # fmt: skip
    assert hp.sfp and hp.csd
    for bad, message in (
        ({"p": 1.5}, "p must be >= 0.0 and <= 1.0"),
        ({"p": -0.1}, "p must be >= 0.0"),
        ({"csd_weight": -1.0}, "csd_weight must be >= 0.0"),
        ({"eps": 0.0}, "eps must be > 0"),
    ):
        with pytest.raises(ValueError, match=message):
            FpqHParams(**bad)
    teacher = _net()
    spec = QuantSpec(8, 8)
    method = METHODS.get("fpq")(_student(teacher, spec), 3, {}, teacher=teacher, quant=spec)
    assert method.effective_hparams()["lr"] == 0.01  # FPQ's lr at any width, not LSQ's 0.001 at 8 bits


@pytest.mark.parametrize("quantizer, name", [("pact", "PactQuantizer"), ("dorefa", "DorefaQuantizer")])
def test_fpq_needs_a_teacher_and_input_quantizers_with_a_step_size(quantizer, name):
    teacher = _net()
    with pytest.raises(ValueError, match="teacher"):
        METHODS.get("fpq")(_student(teacher), 3, {})
    spec = QuantSpec(4, 4, quantizer=quantizer)
    with pytest.raises(ValueError, match=f"layer 0's input quantizer {name} has none"):
        _fpq(_student(teacher, spec), teacher, spec)
    assert METHODS.get("fpq").quantizers_allowed == ("lsq", "lsq_plus")


def test_the_model_stays_copyable_its_state_dict_keys_unchanged_and_copies_unperturbed():
    teacher = _net()
    model = _student(teacher)
    keys = list(model.state_dict())
    method = _fpq(model, teacher, p=1.0)
    method.update([_data()])
    assert list(model.state_dict()) == keys
    fresh = _student(teacher)
    fresh.load_state_dict(model.state_dict())  # strict: a saved FPQ model loads into a plain one
    twin = copy.deepcopy(model)
    buffer = io.BytesIO()
    torch.save(model, buffer)  # the whole module pickles, hooks included
    buffer.seek(0)
    pickled = torch.load(buffer, weights_only=False)
    x, _ = _data(seed=4)
    with torch.no_grad():
        for other in (twin, pickled):
            assert torch.equal(other(x), fresh.train()(x))  # their hooks are off
    hooks = [h for h in twin.get_submodule("3")._forward_pre_hooks.values()]
    assert len(hooks) == 1 and hooks[0].switch is not method.switch  # training the original never turns them on


# ----------------------------------------------------------------------------------- through the runner

FPQ_SUITE = """\
name: fpq
datasets:
  - name: RotatedMNIST
    test_envs: [0]
models:
  - {name: small_cnn, options: {width: 2}}
methods:
  - name: erm
    steps: 4
  - name: fpq
    hparams: {p: 0.5}
bits: [W4A4]
seeds: [0]
training:
  steps: 3
  batch_size: 8
  eval_every: 100
  eval_batch_size: 4096
"""


def test_fpq_runs_through_the_runner_from_its_erm_parent(tmp_path):
    # in-process (qatbench.runner.api.run): `run_cli` starts a fresh interpreter, where fpq is
    # registered only once qatbench.methods imports it
    from qatbench.runner import api

    summary = api.run(write_suite(tmp_path, FPQ_SUITE), tmp_path / "results", device="cpu", progress=False)
    records = {r["method"]: r for r in (json.loads(p.read_text()) for p in tmp_path.rglob("record.json"))}
    assert set(records) == {"erm", "fpq"} and all(r["status"] == "done" for r in records.values())
    fpq = records["fpq"]
    assert fpq["quant.quantizer"] == "lsq" and fpq["effective_hparams.p"] == 0.5
    assert fpq["method_state.sfp_layers"] == fpq["method_state.csd_layers"] == 4
    assert fpq["method_state.sfp_rate"] in {k / 12 for k in range(13)}  # 4 layers x 3 steps
    assert len(summary.records) == 2
