"""Claims about the quantizer variants (LSQ switches, LSQ+, PACT, DoReFa) and how specs and suites
select them, checked against hand-computed numbers.

References: LSQ (Esser et al., ICLR 2020, arXiv:1902.08153), LSQ+ (Bhalgat et al., CVPR-W 2020,
arXiv:2004.09576), PACT (Choi et al., arXiv:1805.06085), DoReFa-Net (Zhou et al., arXiv:1606.06160).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from qatbench.cli import main
from qatbench.config import QuantSpec, RunSpec
from qatbench.methods import METHODS
from qatbench.methods.optim import param_groups
from qatbench.models import build_model
from qatbench.quant import (
    DorefaQuantizer,
    LsqPlusQuantizer,
    LsqQuantizer,
    PactQuantizer,
    QuantConv2d,
    QuantLinear,
    calibrate,
    quantize_model,
    quantizers,
    step_parameters,
)
from tests.conftest import TINY_SUITE, run_cli, write_suite
from tests.test_config import _spec

# the small CNN's Conv2d/Linear layers by their Sequential index: stem, three middle convs, classifier
STEM, MIDDLE, CLASSIFIER = "0", ("3", "6", "9"), "14"
F64 = torch.float64


def small_cnn() -> nn.Module:
    return build_model("small_cnn", (1, 28, 28), 10, {"width": 8})


def _initialised(quantizer, **values):
    """Mark `quantizer` initialised and set its parameters/buffers by hand (float64)."""
    quantizer.double()
    with torch.no_grad():
        for name, value in values.items():
            getattr(quantizer, name).copy_(torch.as_tensor(value, dtype=F64))
    quantizer.initialized = True
    return quantizer


# ==================================================================================================
# 1. LsqQuantizer grad_count="tensor": N counts the batch too
# ==================================================================================================

# three samples of four nonnegative features (the same batch as test_quant.py's layer-count test)
ACTIVATION = torch.tensor([[0.25, 20.0, 3.0, 1.3], [16.0, 0.0, 2.75, 0.4], [7.6, 15.5, 0.1, 9.2]], dtype=F64)
# Eq. 3 at s = 1, unsigned 4 bits (Q_P = 15), element by element:
#   0.25 -> 0 - 0.25 = -0.25 | 20 -> above: 15 | 3 -> 0 | 1.3 -> 1 - 1.3 = -0.3
#   16 -> above: 15 | 0 -> 0 | 2.75 -> 3 - 2.75 = 0.25 | 0.4 -> 0 - 0.4 = -0.4
#   7.6 -> 8 - 7.6 = 0.4 | 15.5 -> above: 15 | 0.1 -> -0.1 | 9.2 -> 9 - 9.2 = -0.2      sum = 44.4
EQ3_SUM = 44.4


def _activation_step_grad(grad_count: str) -> torch.Tensor:
    quantizer = LsqQuantizer(4, "activation", grad_count=grad_count).double()
    quantizer(ACTIVATION)  # decides unsigned: Q_N = 0, Q_P = 15
    _initialised(quantizer, step=1.0)
    (grad,) = torch.autograd.grad(quantizer(ACTIVATION).sum(), quantizer.step)
    return grad


def test_tensor_grad_count_scales_activation_step_gradient_by_every_element():
    # "tensor": N = 3 samples x 4 features = 12, g = 1 / sqrt(12 * 15)
    torch.testing.assert_close(_activation_step_grad("tensor"), torch.tensor(EQ3_SUM / math.sqrt(12 * 15), dtype=F64))


def test_tensor_grad_count_is_layer_count_over_sqrt_batch():
    # "layer": N = 4 features, g = 1 / sqrt(4 * 15); the two differ by sqrt(12 / 4) = sqrt(3)
    layer = _activation_step_grad("layer")
    torch.testing.assert_close(layer, torch.tensor(EQ3_SUM / math.sqrt(4 * 15), dtype=F64))
    torch.testing.assert_close(_activation_step_grad("tensor") * math.sqrt(3), layer)


def test_tensor_grad_count_leaves_weight_gradient_scale_unchanged():
    # weights count every element in both modes; Eq. 3 at s = 1, signed 4 bits (Q_N = 8, Q_P = 7):
    # 9 -> 7, -9 -> -8, 0.25 -> -0.25, 2.75 -> 0.25                                   sum = -1
    w = torch.tensor([9.0, -9.0, 0.25, 2.75], dtype=F64)
    for mode in ("layer", "tensor"):
        quantizer = _initialised(LsqQuantizer(4, "weight", grad_count=mode), step=1.0)
        (grad,) = torch.autograd.grad(quantizer(w).sum(), quantizer.step)
        torch.testing.assert_close(grad, torch.tensor(-1.0 / math.sqrt(4 * 7), dtype=F64))


# ==================================================================================================
# 2. LsqQuantizer init="one"
# ==================================================================================================


def test_init_one_sets_activation_step_to_one_and_detects_unsigned():
    quantizer = LsqQuantizer(4, "activation", init="one")
    # LSQ's init would give 2 * mean / sqrt(15) = 2 * 7.6 / sqrt(15) = 3.92...; "one" gives 1.0
    out = quantizer(torch.tensor([[0.4, 2.6, 20.0]]))
    assert quantizer.signed is False
    assert quantizer.step.item() == 1.0
    # s = 1, levels 0..15: 0.4 -> 0, 2.6 -> 3, 20 -> 15
    torch.testing.assert_close(out, torch.tensor([[0.0, 3.0, 15.0]]))


def test_init_one_sets_activation_step_to_one_and_detects_signed():
    quantizer = LsqQuantizer(4, "activation", init="one")
    # s = 1, levels -8..7: -20 -> -8, -1.4 -> -1, 0.6 -> 1, 9 -> 7
    out = quantizer(torch.tensor([[-20.0, -1.4, 0.6, 9.0]]))
    assert quantizer.signed is True and (quantizer.q_n, quantizer.q_p) == (8.0, 7.0)
    assert quantizer.step.item() == 1.0
    torch.testing.assert_close(out, torch.tensor([[-8.0, -1.0, 1.0, 7.0]]))


def test_a_init_one_via_quantize_model_gives_unit_activation_steps_only():
    torch.manual_seed(0)
    model = calibrate(quantize_model(small_cnn(), QuantSpec(4, 4, a_init="one")), torch.randn(4, 1, 28, 28))
    layers = [model.get_submodule(name) for name in (STEM, *MIDDLE, CLASSIFIER)]
    assert all(layer.a_quant.init_mode == "one" and layer.a_quant.step.item() == 1.0 for layer in layers)
    assert layers[0].a_quant.signed is True and layers[1].a_quant.signed is False
    assert all(layer.w_quant.step.item() != 1.0 for layer in layers)  # weights keep LSQ's init


def test_a_step_carried_below_zero_quantizes_on_its_magnitude():
    # s = -0.3 quantizes like s = 0.3 (LSQ leaves s unconstrained; a negative s would clip every
    # unsigned input to 0 and every signed one to an end of the range), and its gradient flips sign
    x = torch.tensor([0.1, 0.5, 2.0, 9.0])
    grads = []
    for value in (0.3, -0.3):
        quantizer = LsqQuantizer(4, "activation", signed=False)
        quantizer(x)  # initialises from x, then set the step by hand
        quantizer.step.data.fill_(value)
        out = quantizer(x)
        torch.testing.assert_close(out, torch.tensor([0.0, 0.6, 2.1, 4.5]))  # levels 0..15 of 0.3
        out.sum().backward()
        grads.append(quantizer.step.grad.item())
    assert grads[0] == pytest.approx(-grads[1]) and grads[0] != 0


def test_step_init_minmax_starts_at_the_range_and_clips_nothing():
    # per channel, 4 bits signed (Q_P = 7): channel 0 max|w| = 2.1 -> s = 0.3; channel 1 max|w| = 0.7 -> 0.1
    weight = torch.tensor([[-2.1, 0.4, 1.0, -0.05], [0.7, -0.3, 0.16, 0.0]])
    quantizer = LsqQuantizer(4, "weight", per_channel=True, channels=2, init="minmax")
    out = quantizer(weight)
    torch.testing.assert_close(quantizer.step.detach(), torch.tensor([0.3, 0.1]))
    torch.testing.assert_close(out, torch.tensor([[-2.1, 0.3, 0.9, 0.0], [0.7, -0.3, 0.2, 0.0]]))
    # one outlier among 15 small weights: LSQ's start, 2 mean|w| / sqrt(7) = 2 (2.1 + 15 * 0.05) / 16 /
    # sqrt(7) = 0.13465, clips -2.1 to -8 s = -1.0772; min/max's (s = 0.3) keeps it
    outlier = torch.tensor([-2.1] + [0.05] * 15)
    torch.testing.assert_close(LsqQuantizer(4, "weight")(outlier)[0], torch.tensor(-1.0772), atol=1e-4, rtol=0)
    torch.testing.assert_close(LsqQuantizer(4, "weight", init="minmax")(outlier)[0], torch.tensor(-2.1))


def test_step_init_minmax_via_quantize_model_sets_weights_and_activations_from_their_maxima():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 28, 28)
    model = calibrate(quantize_model(small_cnn(), QuantSpec(4, 4, step_init="minmax")), x)
    stem = model.get_submodule(STEM)  # 8-bit weights and inputs: Q_P = 127 for signed levels
    torch.testing.assert_close(stem.w_quant.step.detach(), stem.weight.detach().abs().max() / 127)
    torch.testing.assert_close(stem.a_quant.step.detach(), x.abs().max() / 127)
    middle = model.get_submodule(MIDDLE[0])  # 4-bit weights (Q_P 7), unsigned 4-bit inputs after a ReLU (15)
    torch.testing.assert_close(middle.w_quant.step.detach(), middle.weight.detach().abs().max() / 7)
    assert middle.a_quant.signed is False and middle.a_quant.init_mode == "minmax"
    fork = calibrate(quantize_model(small_cnn(), QuantSpec(4, 4, step_init="minmax", a_init="one")), x)
    assert fork.get_submodule(MIDDLE[0]).a_quant.step.item() == 1.0  # a_init "one" keeps the fork's activations


# ==================================================================================================
# 3. LsqQuantizer symmetric=False (weights with a zero point)
# ==================================================================================================

# (2, 1, 2, 2), 4 bits: 2^b - 1 = 15
# (-min / s lands on .75 in both channels, so rounding the zero point differs from flooring it)
ASYM_WEIGHT = torch.tensor([[-0.95, 0.55, 2.05, 0.2], [-0.14, 0.0, 0.45, 1.06]]).view(2, 1, 2, 2)


def test_asymmetric_weight_init_per_tensor():
    # min = -0.95, max = 2.05: s = 3 / 15 = 0.2, z = round(0.95 / 0.2) = round(4.75) = 5, levels -5..10 (times s)
    quantizer = LsqQuantizer(4, "weight", symmetric=False)
    out = quantizer(ASYM_WEIGHT)
    torch.testing.assert_close(quantizer.step.detach(), torch.tensor(0.2))
    assert quantizer.zero_point.item() == 5.0
    # v / s: -4.75, 2.75, 10.25 (clips to 10), 1 | -0.7, 0, 2.25, 5.3 -> rounded -5, 3, 10, 1 | -1, 0, 2, 5
    expected = torch.tensor([[-1.0, 0.6, 2.0, 0.2], [-0.2, 0.0, 0.4, 1.0]]).view(2, 1, 2, 2)
    torch.testing.assert_close(out, expected)


def test_asymmetric_weight_init_per_channel():
    # channel 0: min -0.95, max 2.05 -> s = 0.2, z = 5 (levels -5..10), values as per tensor
    # channel 1: min -0.14, max 1.06 -> s = 1.2 / 15 = 0.08, z = round(0.14 / 0.08) = round(1.75) = 2 (levels -2..13)
    quantizer = LsqQuantizer(4, "weight", symmetric=False, per_channel=True, channels=2)
    out = quantizer(ASYM_WEIGHT)
    torch.testing.assert_close(quantizer.step.detach(), torch.tensor([0.2, 0.08]))
    assert quantizer.zero_point.tolist() == [5.0, 2.0]
    # channel 1, v / s: -1.75, 0, 5.625, 13.25 (clips to 13) -> -2, 0, 6, 13 -> -0.16, 0, 0.48, 1.04
    expected = torch.tensor([[-1.0, 0.6, 2.0, 0.2], [-0.16, 0.0, 0.48, 1.04]]).view(2, 1, 2, 2)
    torch.testing.assert_close(out, expected)


def test_asymmetric_forward_clips_to_minus_z_and_top_minus_z():
    # 3 bits (2^b - 1 = 7), s = 0.5, z = 3: levels -3..4, i.e. values -1.5 .. 2.0
    # v / s: -4 (-> -3), -2.6 (-> -3), -0.4 (-> 0), 0.6 (-> 1), 1.8 (-> 2), 3.4 (-> 3), 4.4 (-> 4), 10 (-> 4)
    quantizer = _initialised(LsqQuantizer(3, "weight", symmetric=False), step=0.5, zero_point=3.0)
    v = torch.tensor([-2.0, -1.3, -0.2, 0.3, 0.9, 1.7, 2.2, 5.0], dtype=F64)
    expected = torch.tensor([-1.5, -1.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.0], dtype=F64)
    torch.testing.assert_close(quantizer(v), expected)


def test_asymmetric_step_gradient_is_eq3_with_zero_point_bounds():
    # same quantizer: bounds -z = -3 and 2^b - 1 - z = 4; Eq. 3 per element:
    # -4 below -> -3 | -2.6 -> -3 + 2.6 = -0.4 | -0.4 -> 0.4 | 0.6 -> 0.4 | 1.8 -> 0.2 | 3.4 -> -0.4
    # | 4.4 above -> 4 | 10 above -> 4                                                    sum = 5.2
    # g = 1 / sqrt(N (2^b - 1)) = 1 / sqrt(8 * 7)
    quantizer = _initialised(LsqQuantizer(3, "weight", symmetric=False), step=0.5, zero_point=3.0)
    v = torch.tensor([-2.0, -1.3, -0.2, 0.3, 0.9, 1.7, 2.2, 5.0], dtype=F64)
    (grad,) = torch.autograd.grad(quantizer(v).sum(), quantizer.step)
    torch.testing.assert_close(grad, torch.tensor(5.2 / math.sqrt(8 * 7), dtype=F64))


def test_asymmetric_step_gradient_per_channel():
    # 3 bits; channel 0: s = 0.5, z = 3 (bounds -3..4); channel 1: s = 1, z = 1 (bounds -1..6)
    # channel 0, v / s = -4, -2.6, 0.6, 4.4 -> Eq. 3: -3, -0.4, 0.4, 4           sum = 1.0
    # channel 1, v / s = -1.5, 0.3, 2.6, 9 -> Eq. 3: -1, -0.3, 0.4, 6             sum = 5.1
    # g = 1 / sqrt(8 * 7): N is every weight of the layer
    quantizer = LsqQuantizer(3, "weight", symmetric=False, per_channel=True, channels=2)
    _initialised(quantizer, step=[0.5, 1.0], zero_point=[3.0, 1.0])
    w = torch.tensor([[-2.0, -1.3, 0.3, 2.2], [-1.5, 0.3, 2.6, 9.0]], dtype=F64).view(2, 1, 2, 2)
    (grad,) = torch.autograd.grad(quantizer(w).sum(), quantizer.step)
    torch.testing.assert_close(grad, torch.tensor([1.0, 5.1], dtype=F64) / math.sqrt(8 * 7))


def test_asymmetric_activations_start_from_the_first_batch_min_max_as_fpq_quantizes_them():
    # the weight example's values as a batch of 2 samples: min -0.95, max 2.05 -> s = 0.2, z = 5, levels -5..10
    quantizer = LsqQuantizer(4, "activation", symmetric=False)
    out = quantizer(ASYM_WEIGHT.view(2, 4))
    torch.testing.assert_close(quantizer.step.detach(), torch.tensor(0.2))
    assert quantizer.zero_point.item() == 5.0
    expected = torch.tensor([[-1.0, 0.6, 2.0, 0.2], [-0.2, 0.0, 0.4, 1.0]])
    torch.testing.assert_close(out, expected)
    model = quantize_model(build_model("small_cnn", (1, 28, 28), 10, {}), QuantSpec(4, 4, a_symmetric=False))
    assert any(key.endswith("a_quant.zero_point") for key in model.state_dict())
    with pytest.raises(ValueError, match="a_symmetric applies to the lsq quantizer only"):
        QuantSpec(4, 4, quantizer="pact", a_symmetric=False)


@pytest.mark.parametrize("per_channel", [False, True])
def test_zero_point_survives_state_dict_into_a_fresh_model(per_channel):
    torch.manual_seed(0)
    spec = QuantSpec(4, 4, w_symmetric=False, w_per_channel=per_channel)
    x = torch.randn(4, 1, 28, 28)
    trained = calibrate(quantize_model(small_cnn(), spec), x)
    weight_quantizers = [m.w_quant for m in trained.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert all(not q.symmetric for q in weight_quantizers)
    # zero points are integers in 0 .. 2^b - 1 (15, or 255 at the 8-bit edges); random weights of both signs make
    # them nonzero (a 9-weight stem channel may be all negative: z = 255), so the copy below is not of zeros
    for q in weight_quantizers:
        z = q.zero_point
        assert torch.equal(z, z.round()) and z.min() >= 0 and z.max() <= 2**q.bits - 1 and (z > 0).any()
    assert [q.bits for q in weight_quantizers] == [8, 4, 4, 4, 8]
    state = trained.state_dict()
    assert f"{STEM}.w_quant.zero_point" in state

    fresh = quantize_model(small_cnn(), spec)
    assert all((m.w_quant.zero_point == 0).all() for m in fresh.modules() if isinstance(m, (QuantConv2d, QuantLinear)))
    fresh.load_state_dict(state)
    for source, loaded in zip(trained.modules(), fresh.modules(), strict=True):
        if isinstance(source, (QuantConv2d, QuantLinear)):
            assert torch.equal(loaded.w_quant.zero_point, source.w_quant.zero_point)
            assert torch.equal(loaded.w_quant.step, source.w_quant.step)
    trained.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), trained(x))


# ==================================================================================================
# 4. LsqPlusQuantizer
# ==================================================================================================

# (2, 1, 2, 2): channel 0 = 1, 3, 1, 3 (mean 2, population std 1); channel 1 = -2, 0, -2, 0 (mean -1, std 1)
LSQP_WEIGHT = torch.tensor([[1.0, 3.0, 1.0, 3.0], [-2.0, 0.0, -2.0, 0.0]]).view(2, 1, 2, 2)


def test_lsq_plus_weight_init_per_tensor_is_three_sigma_over_half_range():
    # all 8: mean = (8 - 4) / 8 = 0.5; E[w^2] = (1+9+1+9+4+0+4+0) / 8 = 3.5; var = 3.5 - 0.25 = 3.25
    # s = max(|0.5 - 3 sqrt(3.25)|, |0.5 + 3 sqrt(3.25)|) / 2^3 = (0.5 + 3 sqrt(3.25)) / 8 = 0.73854...
    # (the sample std, sqrt(26/7), would give 0.77...; the population std is the rule)
    quantizer = LsqPlusQuantizer(4, "weight")
    quantizer(LSQP_WEIGHT)
    torch.testing.assert_close(quantizer.step.detach(), torch.tensor((0.5 + 3 * math.sqrt(3.25)) / 8))
    assert quantizer.offset is None and quantizer.range_parameters() == [quantizer.step]


def test_lsq_plus_weight_init_per_channel():
    # channel 0: max(|2 - 3|, |2 + 3|) / 8 = 5/8; channel 1: max(|-1 - 3|, |-1 + 3|) / 8 = 4/8
    quantizer = LsqPlusQuantizer(4, "weight", per_channel=True, channels=2)
    out = quantizer(LSQP_WEIGHT)
    torch.testing.assert_close(quantizer.step.detach(), torch.tensor([0.625, 0.5]))
    # channel 0 / 0.625: 1.6, 4.8 -> 2, 5 -> 1.25, 3.125; channel 1 / 0.5: -4, 0 -> -2, 0
    expected = torch.tensor([[1.25, 3.125, 1.25, 3.125], [-2.0, 0.0, -2.0, 0.0]]).view(2, 1, 2, 2)
    torch.testing.assert_close(out, expected)


def test_lsq_plus_activation_init_is_min_max_and_forward_uses_the_offset():
    # 4 bits: min = -1, max = 2: s = 3 / 15 = 0.2, beta = min = -1
    quantizer = LsqPlusQuantizer(4, "activation")
    x = torch.tensor([[-1.0, 0.53, 2.0], [0.21, -0.62, 1.07]])
    out = quantizer(x)
    torch.testing.assert_close(quantizer.step.detach(), torch.tensor(0.2))
    torch.testing.assert_close(quantizer.offset.detach(), torch.tensor(-1.0))
    # (x - beta) / s = 0, 7.65, 15 | 6.05, 1.9, 10.35 -> rounded 0, 8, 15 | 6, 2, 10 -> * 0.2 - 1
    torch.testing.assert_close(out, torch.tensor([[-1.0, 0.6, 2.0], [0.2, -0.6, 1.0]]))
    # a later batch clips to [beta, beta + 15 s] = [-1, 2]: (3 + 1) / 0.2 = 20 -> 15; (-2 + 1) / 0.2 = -5 -> 0
    torch.testing.assert_close(quantizer(torch.tensor([[3.0, -2.0]])), torch.tensor([[2.0, -1.0]]))


def test_lsq_plus_activation_gradients_to_step_and_offset():
    # 2 bits (levels 0..3), s = 0.5, beta = -1: u = (x - beta) / s
    # x:                    -1.6   -0.8        0.3         0.55   1.0    4.0
    # u:                    -1.2    0.4        2.6         3.1    4      10
    # region:               below   inside     inside      above  above  above
    # d x_hat / d s:        0       0 - 0.4    3 - 2.6     3      3      3      -> sum 9
    # d x_hat / d beta:     1       0          0           1      1      1      -> sum 4
    # g = 1 / sqrt(features per sample * Q_P) = 1 / sqrt(3 * 3) = 1/3
    quantizer = _initialised(LsqPlusQuantizer(2, "activation"), step=0.5, offset=-1.0)
    x = torch.tensor([[-1.6, -0.8, 0.3], [0.55, 1.0, 4.0]], dtype=F64)
    out = quantizer(x)
    # values: round(clip(u, 0, 3)) * 0.5 - 1 = 0, 0, 3, 3, 3, 3 -> -1, -1, 0.5, 0.5, 0.5, 0.5
    torch.testing.assert_close(out, torch.tensor([[-1.0, -1.0, 0.5], [0.5, 0.5, 0.5]], dtype=F64))
    d_step, d_offset = torch.autograd.grad(out.sum(), [quantizer.step, quantizer.offset])
    torch.testing.assert_close(d_step, torch.tensor(9.0 / 3, dtype=F64))
    torch.testing.assert_close(d_offset, torch.tensor(4.0 / 3, dtype=F64))


def test_lsq_plus_offset_is_a_range_parameter_never_decayed():
    model = quantize_model(small_cnn(), QuantSpec(4, 4, quantizer="lsq_plus"))
    offsets = [q.offset for q in quantizers(model) if q.kind == "activation"]
    steps = {id(p) for p in step_parameters(model)}
    assert len(offsets) == 5 and all(id(p) in steps for p in offsets)
    assert len(steps) == 5 + 5 + 5  # a step per weight, a step and an offset per input
    decayed, undecayed = param_groups(model, 1e-4)
    assert undecayed["weight_decay"] == 0.0 and {id(p) for p in undecayed["params"]} == steps
    assert not steps & {id(p) for p in decayed["params"]}


# ==================================================================================================
# 5. PactQuantizer
# ==================================================================================================

# 2 bits, alpha = 2: grid (2^2 - 1) / alpha = 1.5 levels per unit, i.e. values {0, 2/3, 4/3, 2}
PACT_X = [-1.0, 0.0, 0.3, 0.5, 1.1, 1.9, 2.5, 10.0]


def _pact(bits: int, alpha: float, signed: bool | None = False) -> PactQuantizer:
    quantizer = PactQuantizer(bits, alpha=alpha).double()
    quantizer.signed = signed
    quantizer.initialized = True
    return quantizer


def test_pact_forward_clips_then_rounds_on_the_alpha_grid():
    # y = clip(x, 0, 2) = 0, 0, 0.3, 0.5, 1.1, 1.9, 2, 2; y * 1.5 = 0, 0, 0.45, 0.75, 1.65, 2.85, 3, 3
    # rounded 0, 0, 0, 1, 2, 3, 3, 3 -> / 1.5
    out = _pact(2, 2.0)(torch.tensor(PACT_X, dtype=F64))
    torch.testing.assert_close(out, torch.tensor([0, 0, 0, 2 / 3, 4 / 3, 2, 2, 2], dtype=F64))


def test_pact_alpha_gradient_is_one_above_alpha_and_zero_below():
    # Eq. 3: d y_q / d alpha = 1 where x >= alpha (2.5, 10), 0 elsewhere
    quantizer = _pact(2, 2.0)
    x = torch.tensor(PACT_X, dtype=F64)
    per_element = torch.stack([torch.autograd.grad(quantizer(x)[i], quantizer.alpha)[0] for i in range(len(PACT_X))])
    torch.testing.assert_close(per_element, torch.tensor([0, 0, 0, 0, 0, 0, 1, 1], dtype=F64))
    (total,) = torch.autograd.grad(quantizer(x).sum(), quantizer.alpha)
    assert total.item() == 2.0  # the count of x >= alpha


def test_pact_input_gradient_is_one_inside_zero_alpha_only():
    # STE: d y_q / dx = 1 on (0, alpha) = (0, 2): 0.3, 0.5, 1.1, 1.9; 0 for -1, 2.5, 10 (x = 0: next test)
    x = torch.tensor([-1.0, 0.3, 0.5, 1.1, 1.9, 2.5, 10.0], dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(_pact(2, 2.0)(x).sum(), x)
    torch.testing.assert_close(grad, torch.tensor([0, 1, 1, 1, 1, 0, 0], dtype=F64))


def test_pact_input_gradient_is_one_at_zero():
    x = torch.tensor([0.0], dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(_pact(2, 2.0)(x).sum(), x)
    assert grad.item() == 1.0


def test_pact_alpha_gradient_is_one_at_x_equal_alpha():
    # Eq. 3: x in [alpha, inf) -> d y_q / d alpha = 1; x = alpha is in that interval (and d y_q / dx = 0 there)
    quantizer = _pact(2, 2.0)
    x = torch.tensor([2.0], dtype=F64, requires_grad=True)
    d_alpha, d_x = torch.autograd.grad(quantizer(x).sum(), [quantizer.alpha, x])
    assert (d_alpha.item(), d_x.item()) == (1.0, 0.0)


def test_pact_signed_input_clips_to_minus_alpha_alpha():
    # first batch has a negative value -> signed; 3 bits: 2^(3-1) - 1 = 3 levels per side; alpha = 1.5
    # grid 3 / 1.5 = 2 per unit (step 0.5)
    quantizer = PactQuantizer(3, alpha=1.5).double()
    x = torch.tensor([-4.0, -1.2, -0.3, 0.2, 0.8, 1.4, 3.0], dtype=F64, requires_grad=True)
    out = quantizer(x)
    assert quantizer.signed is True
    # clip: -1.5, -1.2, -0.3, 0.2, 0.8, 1.4, 1.5; * 2 = -3, -2.4, -0.6, 0.4, 1.6, 2.8, 3
    # rounded -3, -2, -1, 0, 2, 3, 3 -> / 2
    torch.testing.assert_close(out, torch.tensor([-1.5, -1.0, -0.5, 0.0, 1.0, 1.5, 1.5], dtype=F64))
    d_alpha, d_x = torch.autograd.grad(out.sum(), [quantizer.alpha, x])
    # d / d alpha: -1 below -alpha (x = -4), +1 above alpha (x = 3): sum 0; per-element checked by d_x
    assert d_alpha.item() == 0.0
    torch.testing.assert_close(d_x, torch.tensor([0, 1, 1, 1, 1, 1, 0], dtype=F64))
    (d_alpha_low,) = torch.autograd.grad(quantizer(x)[0], quantizer.alpha)
    (d_alpha_high,) = torch.autograd.grad(quantizer(x)[-1], quantizer.alpha)
    assert (d_alpha_low.item(), d_alpha_high.item()) == (-1.0, 1.0)


def test_pact_alpha_defaults_to_ten_and_is_activation_only():
    assert PactQuantizer(4).alpha.item() == 10.0
    with pytest.raises(ValueError, match="DoReFa"):
        PactQuantizer(4, "weight")


def test_pact_alpha_is_weight_decayed_and_not_a_step_parameter():
    model = quantize_model(small_cnn(), QuantSpec(4, 4, quantizer="pact"))
    pacts = [q for q in quantizers(model) if isinstance(q, PactQuantizer)]
    assert len(pacts) == 5 and all(q.decayed_parameters() == [q.alpha] and q.range_parameters() == [] for q in pacts)
    alphas = {id(q.alpha) for q in pacts}
    assert step_parameters(model) == []  # DoReFa weights and PACT inputs have no step sizes
    groups = param_groups(model, 1e-4)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 1e-4
    assert alphas <= {id(p) for p in groups[0]["params"]}


# ==================================================================================================
# 6. DorefaQuantizer
# ==================================================================================================


def test_dorefa_weight_values_3bit():
    # w_q = 2 quantize_3(tanh(w) / (2 max|tanh w|) + 1/2) - 1, max|tanh w| = tanh(2) = 0.964028
    # w        tanh(w)     r = tanh / (2 * 0.964028) + 0.5   7 r      round   2 round / 7 - 1
    # -2.0    -0.964028    0.0                               0.0      0       -1
    # -0.5    -0.462117    0.260320                          1.82224  2       -3/7
    #  0.1     0.099668    0.551694                          3.86185  4        1/7
    #  0.7     0.604368    0.813460                          5.69422  6        5/7
    #  1.5     0.905148    0.969462                          6.78623  7        1
    w = [-2.0, -0.5, 0.1, 0.7, 1.5]
    peak = max(abs(math.tanh(v)) for v in w)
    assert [round(7 * (math.tanh(v) / (2 * peak) + 0.5)) for v in w] == [0, 2, 4, 6, 7]  # the table above
    out = DorefaQuantizer(3, "weight")(torch.tensor(w, dtype=F64))
    torch.testing.assert_close(out, torch.tensor([-1.0, -3 / 7, 1 / 7, 5 / 7, 1.0], dtype=F64))


def test_dorefa_weight_per_channel_max():
    # 2 bits (levels -1, -1/3, 1/3, 1); rows are output channels
    # per channel: row 0 max = tanh(2) = 0.964028: 2 -> r = 1 -> 1; -0.5 -> r = 0.260320, 3r = 0.78 -> 1 -> -1/3
    #              row 1 max = tanh(0.2) = 0.197375: 0.1 -> r = 0.752483, 3r = 2.257 -> 2 -> 1/3; -0.2 -> r = 0 -> -1
    # per tensor (max tanh(2)): 0.1 -> r = 0.551694, 3r = 1.655 -> 2 -> 1/3; -0.2 -> r = 0.397630, 3r = 1.193
    #                           -> 1 -> -1/3
    w = torch.tensor([[2.0, -0.5], [0.1, -0.2]], dtype=F64)
    per_channel = DorefaQuantizer(2, "weight", per_channel=True, channels=2)(w)
    torch.testing.assert_close(per_channel, torch.tensor([[1.0, -1 / 3], [1 / 3, -1.0]], dtype=F64))
    per_tensor = DorefaQuantizer(2, "weight")(w)
    torch.testing.assert_close(per_tensor, torch.tensor([[1.0, -1 / 3], [1 / 3, -1 / 3]], dtype=F64))


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("per_channel", [False, True])
def test_dorefa_weights_lie_on_the_2k_levels_in_minus_one_one(bits, per_channel):
    torch.manual_seed(bits)
    w = 3 * torch.randn(6, 3, 3, 3, dtype=F64)
    out = DorefaQuantizer(bits, "weight", per_channel=per_channel, channels=6)(w)
    assert out.min() >= -1 and out.max() <= 1
    index = (out + 1) / 2 * (2**bits - 1)  # level i is 2 i / (2^k - 1) - 1, i = 0 .. 2^k - 1
    torch.testing.assert_close(index, index.round())
    # the extremes are always used: the largest |tanh w| (per channel when per-channel) maps to +-1
    if per_channel:
        assert (out.abs().flatten(1).amax(dim=1) == 1).all()
    else:
        assert out.abs().max() == 1


def test_dorefa_all_zero_weight_channel_stays_finite():
    w = torch.tensor([[0.5, -0.3], [0.0, 0.0]])
    assert torch.isfinite(DorefaQuantizer(2, "weight", per_channel=True, channels=2)(w)).all()


def test_dorefa_activation_values():
    # unsigned (the first batch has no negative value): quantize_2(clip(a, 0, 1)), levels 0, 1/3, 2/3, 1
    quantizer = DorefaQuantizer(2, "activation")
    quantizer(torch.tensor([0.0, 1.0]))
    assert quantizer.signed is False
    # clip: 0, 0, 0.1, 0.2, 0.6, 0.9, 1; * 3 = 0, 0, 0.3, 0.6, 1.8, 2.7, 3 -> rounded 0, 0, 0, 1, 2, 3, 3
    a = torch.tensor([-0.5, 0.0, 0.1, 0.2, 0.6, 0.9, 1.7], dtype=F64)
    torch.testing.assert_close(quantizer.double()(a), torch.tensor([0, 0, 0, 1 / 3, 2 / 3, 1, 1], dtype=F64))


def test_dorefa_signed_activation_values():
    # a negative first batch -> 2 quantize_2((clip(a, -1, 1) + 1) / 2) - 1
    # clip: -1, -0.4, 0.1, 0.5, 1 -> (. + 1) / 2 = 0, 0.3, 0.55, 0.75, 1 -> * 3 = 0, 0.9, 1.65, 2.25, 3
    # rounded 0, 1, 2, 2, 3 -> 2 i / 3 - 1 = -1, -1/3, 1/3, 1/3, 1
    quantizer = DorefaQuantizer(2, "activation").double()
    out = quantizer(torch.tensor([-3.0, -0.4, 0.1, 0.5, 2.0], dtype=F64))
    assert quantizer.signed is True
    torch.testing.assert_close(out, torch.tensor([-1, -1 / 3, 1 / 3, 1 / 3, 1], dtype=F64))


# ==================================================================================================
# 7. QuantSpec: validation and run ids
# ==================================================================================================


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"quantizer": "pact", "w_symmetric": False},
            "w_symmetric applies to the quantizers lsq, minmax, percentile only, not 'pact'",
        ),
        ({"quantizer": "dorefa", "grad_scale": "tensor"}, "grad_scale applies to the lsq quantizer only"),
        ({"quantizer": "lsq_plus", "a_init": "one"}, "a_init applies to the lsq quantizer only, not 'lsq_plus'"),
        ({"grad_scale": "bogus"}, "grad_scale must be one of"),
        ({"a_init": "zero"}, "a_init must be one of"),
        ({"step_init": "mse"}, "step_init must be one of"),
        ({"quantizer": "pact", "step_init": "minmax"}, "step_init applies to the lsq quantizer only, not 'pact'"),
        ({"quantizer": "apot"}, "quantizer must be one of"),
    ],
)
def test_quant_spec_rejects_invalid_combinations(changes, message):
    with pytest.raises(ValueError, match=message):
        QuantSpec(4, 4, **changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"w_symmetric": False, "grad_scale": "tensor", "a_init": "one"},
        {"quantizer": "lsq_plus", "w_per_channel": True},
        {"quantizer": "pact", "first_last": "fp"},
        {"quantizer": "dorefa", "first_last": "same"},
    ],
)
def test_quant_spec_accepts_valid_combinations(changes):
    assert QuantSpec(4, 4, **changes).to_dict() == {**QuantSpec(4, 4).to_dict(), **changes}


FIRST_RELEASE_IDENTITY = {"w_bits": 4, "a_bits": 4, "quantizer": "lsq", "w_per_channel": False, "first_last": "8bit"}


def _run(quant: QuantSpec) -> RunSpec:
    return _spec(quant=quant)


def test_identity_omits_new_fields_at_their_defaults():
    assert QuantSpec(4, 4).identity() == FIRST_RELEASE_IDENTITY
    explicit = QuantSpec(4, 4, w_symmetric=True, grad_scale="layer", a_init="batch", step_init="lsq")
    assert explicit.identity() == FIRST_RELEASE_IDENTITY
    # the pinned id of tests/test_config.py: runs finished before the new switches keep their folders
    assert _run(explicit).run_id == _run(QuantSpec(4, 4)).run_id == "3fcbc6e8154c83eb"
    # non-default first-release fields are always there (quantizer is, even at "lsq")
    assert QuantSpec(4, 4, quantizer="pact").identity() == {**FIRST_RELEASE_IDENTITY, "quantizer": "pact"}


@pytest.mark.parametrize(
    "change", [{"w_symmetric": False}, {"grad_scale": "tensor"}, {"a_init": "one"}, {"step_init": "minmax"}]
)
def test_identity_includes_a_new_field_only_when_changed(change):
    spec = QuantSpec(4, 4, **change)
    assert spec.identity() == {**FIRST_RELEASE_IDENTITY, **change}
    assert _run(spec).run_id != _run(QuantSpec(4, 4)).run_id


def test_run_ids_of_the_switches_are_all_distinct():
    specs = [
        QuantSpec(4, 4),
        QuantSpec(4, 4, w_symmetric=False),
        QuantSpec(4, 4, grad_scale="tensor"),
        QuantSpec(4, 4, a_init="one"),
        QuantSpec(4, 4, grad_scale="tensor", a_init="one"),
        QuantSpec(4, 4, step_init="minmax"),
        QuantSpec(4, 4, quantizer="lsq_plus"),
        QuantSpec(4, 4, quantizer="pact"),
        QuantSpec(4, 4, quantizer="dorefa"),
    ]
    assert len({_run(spec).run_id for spec in specs}) == len(specs)


# ==================================================================================================
# 8. quantize_model with every quantizer: classes, bits, double backward
# ==================================================================================================

CLASSES = {
    "lsq": (LsqQuantizer, LsqQuantizer),
    "lsq_plus": (LsqPlusQuantizer, LsqPlusQuantizer),
    "pact": (DorefaQuantizer, PactQuantizer),  # PACT's weights are DoReFa's
    "dorefa": (DorefaQuantizer, DorefaQuantizer),
}


@pytest.mark.parametrize("quantizer", CLASSES)
def test_quantize_model_builds_the_right_quantizers_with_8bit_edges(quantizer):
    w_cls, a_cls = CLASSES[quantizer]
    model = quantize_model(small_cnn(), QuantSpec(4, 3, quantizer=quantizer))
    for name in (STEM, *MIDDLE, CLASSIFIER):
        layer = model.get_submodule(name)
        assert type(layer.w_quant) is w_cls and layer.w_quant.kind == "weight"
        assert type(layer.a_quant) is a_cls and layer.a_quant.kind == "activation"
        expected = (8, 8) if name in (STEM, CLASSIFIER) else (4, 3)
        assert (layer.w_quant.bits, layer.a_quant.bits) == expected


@pytest.mark.parametrize("quantizer", ["lsq", "lsq_plus", "dorefa"])
def test_quantize_model_per_channel_weights(quantizer):
    model = quantize_model(small_cnn(), QuantSpec(4, 4, quantizer=quantizer, w_per_channel=True))
    layer = model.get_submodule(MIDDLE[0])  # Conv2d(8, 16): 16 output channels
    assert layer.w_quant.per_channel
    if quantizer != "dorefa":
        assert layer.w_quant.step.shape == (16,)


def test_lsq_switches_reach_the_quantizers():
    model = quantize_model(small_cnn(), QuantSpec(4, 4, grad_scale="tensor", a_init="one", w_symmetric=False))
    layer = model.get_submodule(MIDDLE[0])
    assert layer.w_quant.grad_count_mode == "tensor" and layer.w_quant.symmetric is False
    assert layer.a_quant.grad_count_mode == "tensor" and layer.a_quant.init_mode == "one"
    assert layer.a_quant.symmetric is True


@pytest.mark.parametrize("quantizer", CLASSES)
def test_double_backward_works_for_every_quantizer(quantizer):
    torch.manual_seed(0)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    model = calibrate(quantize_model(small_cnn(), QuantSpec(4, 4, quantizer=quantizer)), x)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
    vector = [torch.randn_like(p) for p in params]
    hvp = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vector)), params, allow_unused=True)
    weights = [h for h, p in zip(hvp, params) if p.dim() > 1]  # conv and linear weights
    assert len(weights) == 5 and all(h is not None and torch.isfinite(h).all() for h in weights)
    assert any(h.abs().sum() > 0 for h in weights)


# ==================================================================================================
# 9. Suites: per-method `quant` overrides and their errors
# ==================================================================================================

LSQ_ENTRY = "  - name: lsq\n    steps: 10\n"
NEW_METHODS_REGISTERED = all(name in METHODS.names() for name in ("pact", "lsq_plus", "dorefa"))
needs_new_methods = pytest.mark.skipif(
    not NEW_METHODS_REGISTERED, reason="methods pact / lsq_plus / dorefa are not registered yet"
)


def _suite(tmp_path, lsq_entry: str, quant: str = "", name: str = "suite.yaml"):
    assert LSQ_ENTRY in TINY_SUITE
    return write_suite(tmp_path, TINY_SUITE.replace(LSQ_ENTRY, lsq_entry) + quant, name)


def _one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_bad_method_quant_combination_is_exit_2_and_one_line_in_a_fresh_process(tmp_path):
    path = _suite(tmp_path, "  - name: lsq\n    quant: {quantizer: pact, w_symmetric: false}\n")
    result = run_cli("run", str(path), "--dry-run")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"qatbench: error: {path}: methods[1].quant: w_symmetric applies to the quantizers lsq, minmax, percentile "
        f"only, not 'pact' "
        f"(method 'lsq' uses quantizer 'pact')"
    )


@pytest.mark.parametrize(
    "entry, quant, where, key",
    [
        # the entry's own quant is wrong
        ("  - name: lsq\n    quant: {quantizer: dorefa, a_init: one}\n", "", "methods[1].quant", "a_init"),
        # the suite's quant is wrong for the suite's quantizer
        (LSQ_ENTRY, "quant: {quantizer: lsq_plus, grad_scale: tensor}\n", "quant", "grad_scale"),
        # the suite's switch is fine for lsq, but the entry changes the quantizer under it
        (
            "  - name: lsq\n    quant: {quantizer: pact}\n",
            "quant: {w_symmetric: false}\n",
            "methods[1].quant",
            "w_symmetric",
        ),
    ],
)
def test_bad_quant_combination_names_where_and_the_key(capsys, tmp_path, entry, quant, where, key):
    path = _suite(tmp_path, entry, quant)
    err = _one_line_error(capsys, ["run", str(path), "--dry-run"])
    assert err.startswith(f"qatbench: error: {path}: {where}: {key} applies to the ")
    assert "lsq" in err and "only" in err


def test_bad_quant_combination_from_set_blames_the_override(capsys, tmp_path):
    path = _suite(tmp_path, LSQ_ENTRY, "quant: {a_init: one}\n")
    err = _one_line_error(capsys, ["run", str(path), "--dry-run", "--set", "methods[1].quant.quantizer=dorefa"])
    assert err.startswith("qatbench: error: --set methods[1].quant.quantizer: a_init applies to the lsq quantizer only")


@pytest.mark.parametrize(
    "entry, expected",
    [
        (
            "  - name: lsq\n    quant: {grad_scal: tensor}\n",
            "methods[1].quant.grad_scal: unknown key 'grad_scal' (did you mean 'grad_scale'?)",
        ),
        ("  - name: lsq\n    quant: {grad_scale: bogus}\n", "methods[1].quant.grad_scale: Input should be 'layer' or"),
        ("  - name: lsq\n    quant: {quantizer: apot}\n", "methods[1].quant.quantizer: Input should be 'lsq', "),
        ("  - name: lsq\n    quant: {step_init: mse}\n", "methods[1].quant.step_init: Input should be 'lsq' or 'minmax'"),
    ],
)
def test_bad_quant_override_key_or_value_is_one_line(capsys, tmp_path, entry, expected):
    path = _suite(tmp_path, entry)
    assert f"{path}: {expected}" in _one_line_error(capsys, ["run", str(path), "--dry-run"])


def test_method_quant_overrides_reach_the_run_specs(tmp_path):
    from qatbench.runner import api

    entries = (
        "  - name: lsq\n"
        "  - name: lsq\n    label: lsq-fork\n    quant: {grad_scale: tensor, a_init: one}\n"
        "  - name: lsq\n    label: lsq-plus\n    quant: {quantizer: lsq_plus}\n"
    )
    specs = api.expand(api.load_suite(_suite(tmp_path, entries, "quant: {w_per_channel: true}\n")))
    by_label = {spec.label: spec.quant for spec in specs if spec.quant is not None}
    # suite quant, then the entry's: w_per_channel comes from the suite for every entry
    assert by_label["lsq"] == QuantSpec(4, 4, w_per_channel=True)
    assert by_label["lsq-fork"] == QuantSpec(4, 4, w_per_channel=True, grad_scale="tensor", a_init="one")
    assert by_label["lsq-plus"] == QuantSpec(4, 4, quantizer="lsq_plus", w_per_channel=True)
    assert len({spec.run_id for spec in specs}) == len(specs)


def test_suite_step_init_reaches_lsq_entries_and_leaves_ptq_observers_alone(tmp_path):
    from qatbench.runner import api

    entries = "  - name: lsq\n  - name: lsq\n    label: lsq-init\n    quant: {step_init: lsq}\n  - name: ptq\n"
    specs = api.expand(api.load_suite(_suite(tmp_path, entries, "quant: {step_init: minmax}\n")))
    by_label = {spec.label: spec.quant for spec in specs if spec.quant is not None}
    assert by_label["lsq"] == QuantSpec(4, 4, step_init="minmax")
    assert by_label["lsq-init"] == QuantSpec(4, 4)  # the entry's own quant wins: LSQ's start, LSQ's run id
    assert by_label["ptq"] == QuantSpec(4, 4, quantizer="minmax")  # observers have no learned start


def test_entry_restating_the_suite_quant_is_a_duplicate(capsys, tmp_path):
    entries = "  - name: lsq\n  - name: lsq\n    label: again\n    quant: {grad_scale: layer}\n"
    err = _one_line_error(capsys, ["run", str(_suite(tmp_path, entries)), "--dry-run"])
    assert "runs exactly what methods[1] runs" in err


@needs_new_methods
def test_method_that_fixes_its_quantizer_refuses_another(capsys, tmp_path):
    path = _suite(tmp_path, "  - name: pact\n    quant: {quantizer: lsq}\n")
    err = _one_line_error(capsys, ["run", str(path), "--dry-run"])
    assert f"{path}: methods[1].quant.quantizer: method 'pact' needs quantizer 'pact', got 'lsq'" in err


@needs_new_methods
@pytest.mark.parametrize("method", ["pact", "lsq_plus", "dorefa"])
def test_new_methods_use_their_quantizer(tmp_path, method):
    from qatbench.runner import api

    specs = api.expand(api.load_suite(_suite(tmp_path, f"  - name: {method}\n")))
    assert {spec.quant.quantizer for spec in specs if spec.quant is not None} == {method}


def test_symmetric_lsq_state_dict_keys_are_those_of_before_the_switches():
    # model.pt files written before asymmetric weights existed must load strictly
    state = quantize_model(build_model("small_cnn", (1, 28, 28), 10, {}), QuantSpec(4, 4)).state_dict()
    assert not any(key.endswith("zero_point") for key in state)
    asymmetric = quantize_model(build_model("small_cnn", (1, 28, 28), 10, {}), QuantSpec(4, 4, w_symmetric=False))
    assert any(key.endswith("w_quant.zero_point") for key in asymmetric.state_dict())
