"""The Method interface and the two spine methods: erm (FP) and lsq (QAT)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn import functional as F

from qatbench.config import QuantSpec
from qatbench.methods import METHODS, Method
from qatbench.methods.optim import make_schedule
from qatbench.models import build_model
from qatbench.quant import calibrate, quantize_model, step_parameters


def _batches(seed: int = 0, n_envs: int = 2):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n_envs)]


def test_every_method_declares_frozen_hparams_with_defaults_and_a_kind():
    for name in METHODS:
        cls = METHODS.get(name)
        assert issubclass(cls, Method) and cls.kind in ("fp", "qat", "ptq", "checkpoint", "ensemble")
        hparams = cls.HParams()
        assert dataclasses.is_dataclass(hparams)
        with pytest.raises(dataclasses.FrozenInstanceError):
            hparams.lr = 1.0


def test_erm_update_is_one_step_of_cross_entropy_on_the_pooled_minibatches():
    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 28, 28), 10, {"width": 4})
    reference = build_model("small_cnn", (1, 28, 28), 10, {"width": 4})
    reference.load_state_dict(model.state_dict())
    method = METHODS.get("erm")(model, 10, {"optimizer": "sgd", "lr": 0.1, "momentum": 0.0}, total_steps=10)
    batches = _batches()
    losses = method.update(batches)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    expected = F.cross_entropy(reference(x), y)
    assert losses["loss"] == pytest.approx(expected.item(), rel=1e-6)
    expected.backward()
    with torch.no_grad():
        for p, q in zip(model.parameters(), reference.parameters()):
            assert torch.allclose(p, q - 0.1 * q.grad, atol=1e-6)


@pytest.mark.parametrize(
    "w_bits, lr, decay", [(2, 0.01, 0.25e-4), (3, 0.01, 0.5e-4), (4, 0.01, 1e-4), (8, 0.001, 1e-4)]
)
def test_lsq_lr_and_weight_decay_follow_the_lsq_paper_by_weight_bits(w_bits, lr, decay):
    model = quantize_model(build_model("small_cnn", (1, 28, 28), 10, {"width": 4}), QuantSpec(w_bits, 4))
    method = METHODS.get("lsq")(model, 10, {}, quant=QuantSpec(w_bits, 4), total_steps=10)
    assert method.effective_hparams()["weight_decay"] == decay and method.effective_hparams()["lr"] == lr
    assert method.optimizer.param_groups[0]["lr"] == lr
    groups = method.optimizer.param_groups
    assert groups[0]["weight_decay"] == decay and groups[1]["weight_decay"] == 0.0  # step sizes never decay
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in step_parameters(model)}
    explicit = METHODS.get("lsq")(model, 10, {"lr": 0.5, "weight_decay": 0.0}, quant=QuantSpec(w_bits, 4))
    assert explicit.effective_hparams()["lr"] == 0.5 and explicit.effective_hparams()["weight_decay"] == 0.0


def test_lsq_trains_weights_and_step_sizes_together():
    torch.manual_seed(0)
    model = quantize_model(build_model("small_cnn", (1, 28, 28), 10, {"width": 4}), QuantSpec(4, 4))
    calibrate(model, _batches()[0][0])
    steps_before = [p.detach().clone() for p in step_parameters(model)]
    weights_before = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("weight")}
    method = METHODS.get("lsq")(model, 10, {}, quant=QuantSpec(4, 4), total_steps=10)
    method.update(_batches(1))
    assert all(not torch.equal(b, p) for b, p in zip(steps_before, step_parameters(model)))
    weights = dict(model.named_parameters())
    assert all(not torch.equal(before, weights[n]) for n, before in weights_before.items())


def test_cosine_schedule_decays_to_zero_at_the_last_step():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    schedule = make_schedule(optimizer, "cosine", total_steps=4)
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs == pytest.approx([0.01, 0.01 * (1 + 2**-0.5) / 2, 0.005, 0.01 * (1 - 2**-0.5) / 2])
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)
