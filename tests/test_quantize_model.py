"""Claims about turning a float model into a quantized one: layer policy, calibration, and the
accuracy of 8-bit models (LSQ, Esser et al., ICLR 2020, arXiv:1902.08153)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from qatbench.config.spec import QuantSpec
from qatbench.data import build_dataset, infinite_batches, split_environments
from qatbench.methods import METHODS
from qatbench.models import build_model
from qatbench.quant import QuantConv2d, QuantLinear, calibrate, quantize_model, quantizers

# the small CNN's Conv2d/Linear layers by their Sequential index: stem, three middle convs, classifier
STEM, MIDDLE, CLASSIFIER = "0", ("3", "6", "9"), "14"


def small_cnn() -> nn.Module:
    return build_model("small_cnn", (1, 28, 28), 10)


# --- quantize_model -----------------------------------------------------------------------------------


def _bits(layer: nn.Module) -> tuple[int, int]:
    return layer.w_quant.bits, layer.a_quant.bits


def test_quantize_model_puts_first_and_last_layers_at_8_bits():
    model = quantize_model(small_cnn(), QuantSpec(w_bits=4, a_bits=4, first_last="8bit"))
    assert type(model.get_submodule(STEM)) is QuantConv2d and _bits(model.get_submodule(STEM)) == (8, 8)
    assert type(model.get_submodule(CLASSIFIER)) is QuantLinear and _bits(model.get_submodule(CLASSIFIER)) == (8, 8)
    for name in MIDDLE:
        assert type(model.get_submodule(name)) is QuantConv2d and _bits(model.get_submodule(name)) == (4, 4)


def test_quantize_model_keeps_first_and_last_layers_float():
    model = quantize_model(small_cnn(), QuantSpec(w_bits=4, a_bits=4, first_last="fp"))
    assert type(model.get_submodule(STEM)) is nn.Conv2d
    assert type(model.get_submodule(CLASSIFIER)) is nn.Linear
    for name in MIDDLE:
        assert type(model.get_submodule(name)) is QuantConv2d and _bits(model.get_submodule(name)) == (4, 4)
    assert len(quantizers(model)) == 2 * len(MIDDLE)


def test_quantize_model_same_quantizes_every_layer_alike():
    model = quantize_model(small_cnn(), QuantSpec(w_bits=4, a_bits=4, first_last="same"))
    for name in (STEM, *MIDDLE, CLASSIFIER):
        assert isinstance(model.get_submodule(name), (QuantConv2d, QuantLinear))
        assert _bits(model.get_submodule(name)) == (4, 4)


def test_quantize_model_per_channel_gives_one_step_per_output_channel():
    model = quantize_model(small_cnn(), QuantSpec(w_bits=4, a_bits=4, w_per_channel=True))
    assert model.get_submodule(STEM).w_quant.step.shape == (16,)
    assert model.get_submodule(CLASSIFIER).w_quant.step.shape == (10,)
    assert model.get_submodule(CLASSIFIER).a_quant.step.shape == ()


def test_quantize_model_leaves_the_float_model_untouched():
    torch.manual_seed(0)
    model = small_cnn()
    before = copy.deepcopy(model.state_dict())
    types_before = [type(m) for m in model.modules()]
    quantized = quantize_model(model, QuantSpec(w_bits=4, a_bits=4))
    assert [type(m) for m in model.modules()] == types_before
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
    with torch.no_grad():
        quantized.get_submodule(STEM).weight.add_(1.0)
    assert torch.equal(model.get_submodule(STEM).weight, before[f"{STEM}.weight"])


def test_quantize_model_copies_weights_exactly():
    torch.manual_seed(0)
    model = small_cnn()
    quantized = quantize_model(model, QuantSpec(w_bits=4, a_bits=4))
    float_state, quant_state = model.state_dict(), quantized.state_dict()
    for name in (STEM, *MIDDLE, CLASSIFIER):
        assert torch.equal(quant_state[f"{name}.weight"], float_state[f"{name}.weight"])
    assert torch.equal(quant_state[f"{CLASSIFIER}.bias"], float_state[f"{CLASSIFIER}.bias"])
    assert all(torch.equal(quant_state[k], v) for k, v in float_state.items())  # BN too


def test_quantize_model_keeps_the_models_dtype():
    model = small_cnn().double()
    quantized = quantize_model(model, QuantSpec(w_bits=4, a_bits=4, w_per_channel=True))
    assert {p.dtype for p in quantized.parameters()} == {torch.float64}


# --- calibrate ----------------------------------------------------------------------------------------


def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: v.clone()
        for k, v in model.state_dict().items()
        if k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }


@pytest.mark.parametrize("training", [True, False])
def test_calibrate_leaves_bn_statistics_and_mode_unchanged(training):
    torch.manual_seed(0)
    model = quantize_model(small_cnn(), QuantSpec(w_bits=4, a_bits=4)).train(training)
    before = _bn_state(model)
    calibrate(model, torch.rand(16, 1, 28, 28))
    assert model.training is training
    assert all(m.training is training for m in model.modules())
    after = _bn_state(model)
    assert len(before) == 12 and all(torch.equal(after[k], before[k]) for k in before)
    assert all(q.initialized for q in quantizers(model))


def test_calibrate_reinitialises_steps_from_the_new_batch():
    torch.manual_seed(0)
    model = quantize_model(small_cnn(), QuantSpec(w_bits=4, a_bits=4))
    x = torch.rand(16, 1, 28, 28)
    calibrate(model, x)
    stem = model.get_submodule(STEM).a_quant
    torch.testing.assert_close(stem.step.detach(), 2 * x.mean() / math.sqrt(255))  # 8-bit unsigned stem
    calibrate(model, -10 * x)
    assert stem.signed is True
    torch.testing.assert_close(stem.step.detach(), 2 * 10 * x.mean() / math.sqrt(127))


def test_calibrate_restores_the_mode_of_every_submodule():
    torch.manual_seed(0)
    model = quantize_model(small_cnn(), QuantSpec(w_bits=4, a_bits=4)).train()
    model.get_submodule("1").eval()  # a frozen BatchNorm, as in fine-tuning recipes
    calibrate(model, torch.rand(16, 1, 28, 28))
    assert model.training and not model.get_submodule("1").training


# --- 8-bit models keep the accuracy of their FP parent ------------------------------------------------

FP_STEPS, EPOCH_STEPS, BATCH_SIZE = 400, 62, 64  # 62 batches of 64 = one epoch of the 3,998 training digits


@pytest.fixture(scope="module")
def rotated_mnist_fp():
    """The small CNN trained to convergence in float (Adam, cosine decay) on every RotatedMNIST
    domain's `in` split; held-out data: every domain's `out` split (996 digits)."""
    splits = split_environments(build_dataset("RotatedMNIST", None, 0), 0.2, 0)
    train = TensorDataset(*(torch.cat(t) for t in zip(*(s.in_split.tensors for s in splits))))
    held_out = tuple(torch.cat(t) for t in zip(*(s.out_split.tensors for s in splits)))
    torch.manual_seed(0)
    model = small_cnn()
    erm = METHODS.get("erm")(model, 10, {"lr": 3e-3, "schedule": "cosine"}, total_steps=FP_STEPS)
    batches = infinite_batches(train, BATCH_SIZE, seed=0)
    for _ in range(FP_STEPS):
        erm.update([next(batches)])
    calibration_x = next(infinite_batches(train, BATCH_SIZE, seed=1))[0]
    return model.eval(), train, calibration_x, held_out


@torch.no_grad()
def _accuracy(model: nn.Module, tensors) -> float:
    x, y = tensors
    return (model.eval()(x).argmax(dim=1) == y).double().mean().item()


def _ptq(model: nn.Module, bits: int, calibration_x: torch.Tensor) -> nn.Module:
    quantized = quantize_model(model, QuantSpec(w_bits=bits, a_bits=bits, first_last="same"))
    return calibrate(quantized, calibration_x).eval()


def test_fp_small_cnn_learns_rotated_mnist(rotated_mnist_fp):
    model, _, _, held_out = rotated_mnist_fp
    assert _accuracy(model, held_out) > 0.85  # chance is 0.1


def test_w8a8_scores_within_one_point_of_fp_parent(rotated_mnist_fp):
    """LSQ's 8-bit protocol (Sec. 3): LSQ init, then one epoch of `lsq` at its 8-bit lr 0.001."""
    model, train, calibration_x, held_out = rotated_mnist_fp
    spec = QuantSpec(w_bits=8, a_bits=8, first_last="same")
    w8a8 = calibrate(quantize_model(model, spec), calibration_x)
    lsq = METHODS.get("lsq")(w8a8.train(), 10, {}, quant=spec, total_steps=EPOCH_STEPS)
    assert lsq.effective_hparams()["lr"] == 0.001
    batches = infinite_batches(train, BATCH_SIZE, seed=2)
    for _ in range(EPOCH_STEPS):
        lsq.update([next(batches)])
    fp_acc, w8a8_acc = _accuracy(model, held_out), _accuracy(w8a8, held_out)
    assert abs(fp_acc - w8a8_acc) <= 0.01, (fp_acc, w8a8_acc)


def test_w2a2_without_fine_tuning_loses_accuracy(rotated_mnist_fp):
    model, _, calibration_x, held_out = rotated_mnist_fp
    fp_acc = _accuracy(model, held_out)
    w2a2_acc = _accuracy(_ptq(model, 2, calibration_x), held_out)
    assert fp_acc - w2a2_acc > 0.3, (fp_acc, w2a2_acc)
