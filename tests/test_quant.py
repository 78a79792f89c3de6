"""Claims about LSQ fake quantization (qatbench.quant), checked against hand-computed numbers.

Reference: Esser et al., "Learned Step Size Quantization", ICLR 2020 (arXiv:1902.08153).
"""
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
from qatbench.quant import (LsqQuantizer, QuantConv2d, QuantLinear, calibrate, levels, lsq_quantize,
                            quantize_model, quantizers)

# the small CNN's Conv2d/Linear layers by their Sequential index: stem, three middle convs, classifier
STEM, MIDDLE, CLASSIFIER = "0", ("3", "6", "9"), "14"


def small_cnn() -> nn.Module:
    return build_model("small_cnn", (1, 28, 28), 10)


# --- lsq_quantize: values ---------------------------------------------------------------------------

def test_lsq_quantize_signed_4bit_values():
    # s = 0.5, Q_N = 8, Q_P = 7: v/s = -10, -8.4, -2.6, -0.4, 0, 0.6, 1.8, 5.2, 6.8, 8
    v = torch.tensor([-5.0, -4.2, -1.3, -0.2, 0.0, 0.3, 0.9, 2.6, 3.4, 4.0])
    expected = torch.tensor([-4.0, -4.0, -1.5, 0.0, 0.0, 0.5, 1.0, 2.5, 3.5, 3.5])
    torch.testing.assert_close(lsq_quantize(v, torch.tensor(0.5), 8, 7, 1.0), expected)


def test_lsq_quantize_unsigned_4bit_values():
    # s = 0.25, Q_N = 0, Q_P = 15: v/s = -2.8, -0.4, 0, 0.4, 1.48, 4, 8.8, 14.96, 15.6, 40
    v = torch.tensor([-0.7, -0.1, 0.0, 0.1, 0.37, 1.0, 2.2, 3.74, 3.9, 10.0])
    expected = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.25, 1.0, 2.25, 3.75, 3.75, 3.75])
    torch.testing.assert_close(lsq_quantize(v, torch.tensor(0.25), 0, 15, 1.0), expected)


def test_lsq_quantize_clips_to_minus_qn_and_qp_steps():
    # signed 2 bits, s = 1: the grid is {-2, -1, 0, 1}; everything beyond lands on its ends
    v = torch.tensor([-1e6, -2.6, -2.4, -1.6, 0.4, 0.6, 1.4, 1e6])
    expected = torch.tensor([-2.0, -2.0, -2.0, -2.0, 0.0, 1.0, 1.0, 1.0])
    torch.testing.assert_close(lsq_quantize(v, torch.tensor(1.0), 2, 1, 1.0), expected)


def test_lsq_quantize_per_channel_steps_broadcast_over_conv_weight():
    # a (3, 1, 2, 2) conv weight, one step per output channel: 0.1, 0.5, 2.0 (signed 4 bits)
    w = torch.tensor([[[[0.04, -0.26], [0.93, -0.95]]],   # /0.1 = 0.4, -2.6, 9.3, -9.5
                      [[[0.04, -0.26], [0.93, -0.95]]],   # /0.5 = 0.08, -0.52, 1.86, -1.9
                      [[[3.1, -20.0], [14.9, 5.2]]]])     # /2.0 = 1.55, -10, 7.45, 2.6
    step = torch.tensor([0.1, 0.5, 2.0]).view(3, 1, 1, 1)
    expected = torch.tensor([[[[0.0, -0.3], [0.7, -0.8]]],
                             [[[0.0, -0.5], [1.0, -1.0]]],
                             [[[4.0, -16.0], [14.0, 6.0]]]])
    torch.testing.assert_close(lsq_quantize(w, step, 8, 7, 1.0), expected)


def test_gradient_scale_leaves_quantized_values_unchanged():
    v = torch.linspace(-3, 3, 41)
    torch.testing.assert_close(lsq_quantize(v, torch.tensor(0.3), 8, 7, 1 / math.sqrt(41 * 7)),
                               lsq_quantize(v, torch.tensor(0.3), 8, 7, 1.0))


@pytest.mark.parametrize("bits, signed, expected", [
    (2, True, (2.0, 1.0)), (3, True, (4.0, 3.0)), (4, True, (8.0, 7.0)), (8, True, (128.0, 127.0)),
    (2, False, (0.0, 3.0)), (3, False, (0.0, 7.0)), (4, False, (0.0, 15.0)), (8, False, (0.0, 255.0)),
])
def test_levels_are_lsq_qn_qp(bits, signed, expected):
    assert levels(bits, signed) == expected


# --- lsq_quantize: gradients (LSQ Eq. 3 and the straight-through estimator) --------------------------

# (v, s, Q_N, Q_P, d v_hat / d s by Eq. 3 per element, d v_hat / d v per element)
GRADIENT_CASES = {
    "signed_4bit": (
        # v/s = -10, -8.4 (below) | -2.6, -0.4, 0.6, 1.8, 5.2, 6.8 (inside) | 8 (above)
        [-5.0, -4.2, -1.3, -0.2, 0.3, 0.9, 2.6, 3.4, 4.0], 0.5, 8.0, 7.0,
        [-8.0, -8.0, -0.4, 0.4, 0.4, 0.2, -0.2, 0.2, 7.0],
        [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]),
    "unsigned_2bit": (
        # v/s = -1 (below) | 0.3, 1.6, 2.2 (inside) | 5 (above)
        [-1.0, 0.3, 1.6, 2.2, 5.0], 1.0, 0.0, 3.0,
        [0.0, -0.3, 0.4, -0.2, 3.0],
        [0.0, 1.0, 1.0, 1.0, 0.0]),
}


@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_lsq_step_gradient_matches_formula(case):
    values, s, q_n, q_p, dvhat_ds, _ = GRADIENT_CASES[case]
    v = torch.tensor(values, dtype=torch.float64)
    step = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    g = 1 / math.sqrt(v.numel() * q_p)
    per_element = torch.stack([torch.autograd.grad(lsq_quantize(v, step, q_n, q_p, g)[i], step)[0]
                               for i in range(v.numel())])
    torch.testing.assert_close(per_element, g * torch.tensor(dvhat_ds, dtype=torch.float64))
    (total,) = torch.autograd.grad(lsq_quantize(v, step, q_n, q_p, g).sum(), step)
    torch.testing.assert_close(total, g * torch.tensor(sum(dvhat_ds), dtype=torch.float64))


@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_lsq_input_gradient_is_straight_through_inside_range_and_zero_outside(case):
    values, s, q_n, q_p, _, dvhat_dv = GRADIENT_CASES[case]
    v = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    step = torch.tensor(s, dtype=torch.float64)
    (grad,) = torch.autograd.grad(lsq_quantize(v, step, q_n, q_p, 0.1).sum(), v)
    torch.testing.assert_close(grad, torch.tensor(dvhat_dv, dtype=torch.float64))


# --- LsqQuantizer: initialisation and gradient-scale count ------------------------------------------

# a (2, 1, 2, 2) weight; mean |w| = 1.25 overall, 2.0 in channel 0 and 0.5 in channel 1
INIT_WEIGHT = torch.tensor([[[[1.0, -2.0], [3.0, -2.0]]], [[[0.5, -0.5], [0.25, 0.75]]]])


def test_weight_step_initialises_to_two_mean_abs_over_sqrt_qp_per_tensor():
    quantizer = LsqQuantizer(4, "weight")
    quantizer(INIT_WEIGHT)
    assert quantizer.initialized and quantizer.signed is True
    torch.testing.assert_close(quantizer.step.detach(), torch.tensor(2 * 1.25 / math.sqrt(7)))


def test_weight_step_initialises_to_two_mean_abs_over_sqrt_qp_per_channel():
    quantizer = LsqQuantizer(4, "weight", per_channel=True, channels=2)
    quantizer(INIT_WEIGHT)
    torch.testing.assert_close(quantizer.step.detach(), torch.tensor([2 * 2.0, 2 * 0.5]) / math.sqrt(7))


def _with_step_one(quantizer: LsqQuantizer) -> LsqQuantizer:
    with torch.no_grad():
        quantizer.step.fill_(1.0)
    quantizer.initialized = True
    return quantizer


def test_weight_gradient_scale_counts_every_element_of_the_weight():
    # s = 1, signed 4 bits; Eq. 3 per element: 7, -8, -0.25, 0.25, 7, 0.4, -0.3, 0 -> sum 6.1
    w = torch.tensor([[[[9.0, -9.0], [0.25, 2.75]]], [[[20.0, -0.4], [1.3, 3.0]]]])
    quantizer = _with_step_one(LsqQuantizer(4, "weight"))
    (grad,) = torch.autograd.grad(quantizer(w).sum(), quantizer.step)
    torch.testing.assert_close(grad, torch.tensor(6.1 / math.sqrt(8 * 7)))  # N = 8 elements, Q_P = 7


def test_weight_gradient_scale_counts_every_element_per_channel_too():
    w = torch.tensor([[[[9.0, -9.0], [0.25, 2.75]]], [[[20.0, -0.4], [1.3, 3.0]]]])
    quantizer = _with_step_one(LsqQuantizer(4, "weight", per_channel=True, channels=2))
    (grad,) = torch.autograd.grad(quantizer(w).sum(), quantizer.step)
    # channel sums of Eq. 3: 7 - 8 - 0.25 + 0.25 = -1, 7 + 0.4 - 0.3 + 0 = 7.1; N = all 8 weights
    torch.testing.assert_close(grad, torch.tensor([-1.0, 7.1]) / math.sqrt(8 * 7))


# three samples of four nonnegative features: mean = 76.1 / 12
ACTIVATION = torch.tensor([[0.25, 20.0, 3.0, 1.3], [16.0, 0.0, 2.75, 0.4], [7.6, 15.5, 0.1, 9.2]])


def test_activation_step_initialises_from_first_batch():
    quantizer = LsqQuantizer(4, "activation")
    quantizer(ACTIVATION)
    assert quantizer.signed is False
    torch.testing.assert_close(quantizer.step.detach(), torch.tensor(2 * (76.1 / 12) / math.sqrt(15)))


def test_activation_gradient_scale_counts_features_per_sample():
    quantizer = LsqQuantizer(4, "activation")
    quantizer(ACTIVATION)  # decides unsigned: Q_N = 0, Q_P = 15
    _with_step_one(quantizer)
    # Eq. 3 at s = 1: -0.25, 15, 0, -0.3 | 15, 0, 0.25, -0.4 | 0.4, 15, -0.1, -0.2 -> sum 44.4
    (grad,) = torch.autograd.grad(quantizer(ACTIVATION).sum(), quantizer.step)
    torch.testing.assert_close(grad, torch.tensor(44.4 / math.sqrt(4 * 15)))  # N = 4 features, not 12


# --- LsqQuantizer: sign of activations ----------------------------------------------------------------

def test_activation_quantizer_is_unsigned_after_nonnegative_data():
    quantizer = LsqQuantizer(4, "activation")
    assert quantizer.signed is None
    quantizer(torch.tensor([[0.0, 1.0, 2.0]]))
    assert quantizer.signed is False and (quantizer.q_n, quantizer.q_p) == (0.0, 15.0)


def test_activation_quantizer_is_signed_after_a_negative_value():
    quantizer = LsqQuantizer(4, "activation")
    quantizer(torch.tensor([[1.0, -0.01, 2.0]]))
    assert quantizer.signed is True and (quantizer.q_n, quantizer.q_p) == (8.0, 7.0)


def test_activation_sign_is_fixed_by_the_first_batch():
    quantizer = LsqQuantizer(4, "activation")
    quantizer(torch.tensor([[0.0, 1.0, 2.0]]))
    out = quantizer(torch.tensor([[-3.0, -0.5, 1.0]]))
    assert quantizer.signed is False
    assert out[0, 0] == 0 and out[0, 1] == 0  # negative values clip at zero


def test_reset_forgets_the_detected_sign():
    quantizer = LsqQuantizer(4, "activation")
    quantizer(torch.tensor([[0.0, 1.0, 2.0]]))
    quantizer.reset()
    assert quantizer.signed is None and not quantizer.initialized
    quantizer(torch.tensor([[-1.0, 1.0, 2.0]]))
    assert quantizer.signed is True


def test_reset_keeps_an_explicit_sign():
    quantizer = LsqQuantizer(4, "activation", signed=False)
    quantizer(torch.tensor([[0.0, 1.0, 2.0]]))
    quantizer.reset()
    quantizer(torch.tensor([[-1.0, 1.0, 2.0]]))
    assert quantizer.signed is False


def test_quantizer_state_survives_state_dict_into_a_fresh_model():
    torch.manual_seed(0)
    spec = QuantSpec(w_bits=4, a_bits=4)
    trained = quantize_model(small_cnn(), spec)
    x = torch.randn(8, 1, 28, 28)  # a signed stem input; every later input follows a ReLU
    calibrate(trained, x)
    state = trained.state_dict()
    assert state[f"{STEM}.a_quant._extra_state"] == {"bits": 8, "signed": True, "auto_sign": True,
                                                     "initialized": True}
    assert state["3.a_quant._extra_state"] == {"bits": 4, "signed": False, "auto_sign": True,
                                               "initialized": True}

    fresh = quantize_model(small_cnn(), spec)
    assert not any(q.initialized for q in quantizers(fresh))
    fresh.load_state_dict(state)
    for source, loaded in zip(quantizers(trained), quantizers(fresh), strict=True):
        assert (loaded.bits, loaded.signed, loaded.initialized) == (source.bits, source.signed, True)
        assert torch.equal(loaded.step, source.step)
    trained.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), trained(x))


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
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


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
