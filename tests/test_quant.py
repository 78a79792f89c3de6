"""Claims about LSQ fake quantization (qatbench.quant), checked against hand-computed numbers.

Reference: Esser et al., "Learned Step Size Quantization", ICLR 2020 (arXiv:1902.08153).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qatbench.config.spec import QuantSpec
from qatbench.models import build_model
from qatbench.quant import (
    LsqQuantizer,
    calibrate,
    levels,
    lsq_quantize,
    quantize_model,
    quantizers,
)

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
    w = torch.tensor(
        [
            [[[0.04, -0.26], [0.93, -0.95]]],  # /0.1 = 0.4, -2.6, 9.3, -9.5
            [[[0.04, -0.26], [0.93, -0.95]]],  # /0.5 = 0.08, -0.52, 1.86, -1.9
            [[[3.1, -20.0], [14.9, 5.2]]],
        ]
    )  # /2.0 = 1.55, -10, 7.45, 2.6
    step = torch.tensor([0.1, 0.5, 2.0]).view(3, 1, 1, 1)
    expected = torch.tensor([[[[0.0, -0.3], [0.7, -0.8]]], [[[0.0, -0.5], [1.0, -1.0]]], [[[4.0, -16.0], [14.0, 6.0]]]])
    torch.testing.assert_close(lsq_quantize(w, step, 8, 7, 1.0), expected)


def test_gradient_scale_leaves_quantized_values_unchanged():
    v = torch.linspace(-3, 3, 41)
    torch.testing.assert_close(
        lsq_quantize(v, torch.tensor(0.3), 8, 7, 1 / math.sqrt(41 * 7)), lsq_quantize(v, torch.tensor(0.3), 8, 7, 1.0)
    )


@pytest.mark.parametrize(
    "bits, signed, expected",
    [
        (2, True, (2.0, 1.0)),
        (3, True, (4.0, 3.0)),
        (4, True, (8.0, 7.0)),
        (8, True, (128.0, 127.0)),
        (2, False, (0.0, 3.0)),
        (3, False, (0.0, 7.0)),
        (4, False, (0.0, 15.0)),
        (8, False, (0.0, 255.0)),
    ],
)
def test_levels_are_lsq_qn_qp(bits, signed, expected):
    assert levels(bits, signed) == expected


# --- lsq_quantize: gradients (LSQ Eq. 3 and the straight-through estimator) --------------------------

# (v, s, Q_N, Q_P, d v_hat / d s by Eq. 3 per element, d v_hat / d v per element)
GRADIENT_CASES = {
    "signed_4bit": (
        # v/s = -10, -8.4 (below) | -2.6, -0.4, 0.6, 1.8, 5.2, 6.8 (inside) | 8 (above)
        [-5.0, -4.2, -1.3, -0.2, 0.3, 0.9, 2.6, 3.4, 4.0],
        0.5,
        8.0,
        7.0,
        [-8.0, -8.0, -0.4, 0.4, 0.4, 0.2, -0.2, 0.2, 7.0],
        [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    ),
    "on_the_bounds": (
        # v/s = -8 and 7, exactly Q_N and Q_P: clipped (Eq. 3 and its STE: inside is -Q_N < v/s < Q_P)
        [-4.0, 3.5, 1.2],
        0.5,
        8.0,
        7.0,
        [-8.0, 7.0, -0.4],
        [0.0, 0.0, 1.0],
    ),
    "unsigned_2bit": (
        # v/s = -1 (below) | 0.3, 1.6, 2.2 (inside) | 5 (above)
        [-1.0, 0.3, 1.6, 2.2, 5.0],
        1.0,
        0.0,
        3.0,
        [0.0, -0.3, 0.4, -0.2, 3.0],
        [0.0, 1.0, 1.0, 1.0, 0.0],
    ),
}


@pytest.mark.parametrize("case", GRADIENT_CASES)
def test_lsq_step_gradient_matches_formula(case):
    values, s, q_n, q_p, dvhat_ds, _ = GRADIENT_CASES[case]
    v = torch.tensor(values, dtype=torch.float64)
    step = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    g = 1 / math.sqrt(v.numel() * q_p)
    per_element = torch.stack(
        [torch.autograd.grad(lsq_quantize(v, step, q_n, q_p, g)[i], step)[0] for i in range(v.numel())]
    )
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


def test_a_collapsed_step_gets_lsqs_finite_gradient_not_nan():
    """A per-channel step of a dead depthwise channel (weights ~1e-7) that SGD drove below ~1e-23:
    the plain formula's gradient was 0 * inf = NaN (fpq on PACS art_painting diverged from it)."""
    v = torch.tensor([1e-7, 0.0, -3e-8], requires_grad=True)
    for collapsed in (1e-25, 1e-35):  # above the floor at float32 tiny, which passes no gradient
        step = torch.tensor(collapsed, requires_grad=True)
        out = lsq_quantize(v, step, 8.0, 7.0, 0.1)
        step_grad, v_grad = torch.autograd.grad(out.sum(), (step, v))
        assert torch.equal(step_grad, torch.tensor(0.1 * (7.0 + 0.0 - 8.0)))  # Eq. 3: Q_P, 0, -Q_N
        assert torch.equal(v_grad, torch.tensor([0.0, 1.0, 0.0]))


@pytest.mark.parametrize("divisor", [7, 9])  # 7: each channel's largest |w| sits on a bound; 9: clipped
@pytest.mark.parametrize("symmetric", [True, False])
def test_lsq_quantize_is_eq3_on_per_channel_weights(symmetric, divisor):
    """Away from collapsed steps the NaN guard changes nothing: the values of round(clamp(v/s)) * s
    bit for bit, the STE's gradient for v, and Eq. 3's for each channel's step, on conv weights with
    per-channel steps (asymmetric: per-channel bounds from a zero point). Not compared with autograd
    through torch.clamp: torch 2.14 gives an entry on a bound no gradient for number bounds, half of
    it for tensor bounds."""
    torch.manual_seed(0)
    weight = torch.randn(8, 3, 3, 3)
    step0 = weight.abs().amax(dim=(1, 2, 3), keepdim=True) / divisor
    q_n = torch.full((8, 1, 1, 1), 8.0) if symmetric else torch.randint(0, 15, (8, 1, 1, 1)).float()
    q_p = 15.0 - q_n
    v, step = weight.clone().requires_grad_(), step0.clone().requires_grad_()
    out = lsq_quantize(v, step, q_n, q_p, 1.0)
    upstream = torch.linspace(-1, 1, out.numel()).view_as(out)
    out.mul(upstream).sum().backward()

    ratio = weight / step0
    inside = (ratio > -q_n) & (ratio < q_p)
    assert not inside.all()  # entries on (divisor 7) or beyond (9) a bound are part of the check
    assert torch.equal(out.detach(), torch.round(torch.clamp(ratio, -q_n, q_p)) * step0)
    torch.testing.assert_close(v.grad, upstream * inside)  # (upstream * s) / s: equal up to rounding
    per_entry = torch.where(inside, torch.round(ratio) - ratio, torch.where(ratio <= -q_n, -q_n, q_p))
    torch.testing.assert_close(step.grad, (upstream * per_entry).sum(dim=(1, 2, 3), keepdim=True))


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
    assert state[f"{STEM}.a_quant._extra_state"] == {"bits": 8, "signed": True, "auto_sign": True, "initialized": True}
    assert state["3.a_quant._extra_state"] == {"bits": 4, "signed": False, "auto_sign": True, "initialized": True}

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
