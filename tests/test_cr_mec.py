"""CR (consistency regularisation) and MEC-Quant (maximum entropy coding), each claim against a hand computation.

Expected values are computed here with plain torch on frozen copies of the models, written out
independently of the methods' helpers (KL from softmaxes, log det from eigenvalues, the series
from matrix powers). Methods run SGD with momentum 0, no weight decay and a constant schedule,
so one step is w <- w - lr * grad exactly.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from qatbench.config import QuantSpec
from qatbench.methods import METHODS
from qatbench.methods.cr import TwoViews, crop_flip, ramp
from qatbench.methods.mec import MEC_EPS_SQ, MecHParams, coding_length, value_experts
from qatbench.models import build_model
from qatbench.quant import calibrate, quantize_model, quantizers

pytestmark = pytest.mark.usefixtures("one_thread")

LR = 0.1
SGD = {"optimizer": "sgd", "lr": LR, "momentum": 0.0, "schedule": "constant", "weight_decay": 0.0}
TOL = {"rtol": 1e-9, "atol": 1e-12}


def _images(seed: int = 1, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def _fp_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("small_cnn", (1, 28, 28), 10, {"width": 4}).double()


def _cnn(seed: int = 0) -> nn.Module:
    model = quantize_model(_fp_cnn(seed), QuantSpec(4, 4))
    return calibrate(model, _images(9)[0])


def _tanh_mlp(seed: int = 0) -> nn.Module:
    """3 -> 5 -> 2, tanh: the classifier's input has no exact zeros (no ties between value ranges)."""
    torch.manual_seed(seed)
    model = quantize_model(nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double(), QuantSpec(4, 4))
    return calibrate(model, torch.randn(8, 3, dtype=torch.float64))


def _vectors(seed: int = 1, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (n,), generator=g)


def _build(name: str, model: nn.Module, hparams: dict, classes: int = 10, **kwargs):
    return METHODS.get(name)(model, classes, {**SGD, **hparams}, total_steps=100, quant=QuantSpec(4, 4), **kwargs)


def _record_views(method) -> list:
    seen, views = [], method.views
    method.views = lambda x: seen.append(views(x)) or seen[-1]
    return seen


def _kl_t2(teacher: torch.Tensor, student: torch.Tensor, t: float) -> torch.Tensor:
    p = torch.softmax(teacher / t, dim=1)
    return t**2 * (p * (p.log() - torch.log_softmax(student / t, dim=1))).sum(1).mean()


def _unit_rows(m: int, d: int, seed: int = 3) -> torch.Tensor:
    z = torch.randn(m, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return z / z.norm(dim=1, keepdim=True)


def _logdet_by_eigenvalues(z1: torch.Tensor, z2: torch.Tensor, eps_sq: float) -> torch.Tensor:
    m, d = z1.shape
    return (m + d) / 2 * torch.log1p(torch.linalg.eigvalsh(z1 @ z2.T / (m * eps_sq))).sum()


def _series_by_powers(z1: torch.Tensor, z2: torch.Tensor, eps_sq: float, order: int) -> torch.Tensor:
    m, d = z1.shape
    c = z1 @ z2.T / (m * eps_sq)
    return (m + d) / 2 * sum((-1) ** (k + 1) / k * torch.linalg.matrix_power(c, k).trace() for k in range(1, order + 1))


# ----------------------------------------------------------------------------------- CR


def test_cr_consistency_is_zero_for_identical_views_and_a_fresh_ema_teacher_and_positive_otherwise():
    x, y = _images()

    def consistency(hparams: dict) -> float:
        return _build("cr", _cnn(), hparams).update([(x, y)])["consistency"]

    assert consistency({"augment": "none"}) == 0.0  # teacher = student, same view, both with batch BN statistics
    # the near-uniform logits of an untrained net differ little, but not by zero
    assert consistency({"augment": "crop_flip"}) > 1e-6
    # an eval-mode teacher reads running BN statistics: nonzero even for identical views and weights
    assert consistency({"augment": "none", "teacher_mode": "eval"}) > 1e-6


def test_cr_consistency_is_t2_kl_of_teacher_view2_to_student_view1_by_hand():
    x, y = _images()
    model = _cnn()
    frozen = copy.deepcopy(model)
    method = _build("cr", model, {"temperature": 2.0, "ramp": "none", "consistency_weight": 0.7})
    views = _record_views(method)
    losses = method.update([(x[:4], y[:4]), (x[4:], y[4:])])
    v1, v2 = views[0]
    assert not torch.equal(v1, v2) and v1.shape == x.shape
    student = frozen(v1)
    with torch.no_grad():
        teacher = copy.deepcopy(frozen)(v2)  # the EMA teacher at construction: a copy of the student
    kl = _kl_t2(teacher, student, 2.0)
    ce = F.cross_entropy(student, y)
    assert losses["consistency"] == pytest.approx(kl.item(), rel=1e-10)
    assert losses["ce"] == pytest.approx(ce.item(), rel=1e-10)
    assert losses["weight"] == 0.7 and losses["loss"] == pytest.approx((ce + 0.7 * kl).item(), rel=1e-10)


def test_ramp_is_laine_aila_sigmoid_at_start_middle_and_end_and_scales_the_weight():
    assert ramp(0, 30, "sigmoid") == pytest.approx(math.exp(-5.0), rel=1e-15)
    assert ramp(15, 30, "sigmoid") == pytest.approx(math.exp(-1.25), rel=1e-15)
    assert ramp(30, 30, "sigmoid") == 1.0 and ramp(90, 30, "sigmoid") == 1.0
    assert [ramp(t, 30, "linear") for t in (0, 15, 30, 60)] == [0.0, 0.5, 1.0, 1.0]
    assert ramp(0, 30, "none") == 1.0 and ramp(0, 0, "sigmoid") == 1.0
    method = _build("cr", _cnn(), {"consistency_weight": 2.0, "ramp_fraction": 0.3})  # 100 steps: ramp over 30
    x, y = _images()
    assert method.update([(x, y)])["weight"] == pytest.approx(2 * math.exp(-5.0), rel=1e-15)  # first step: t = 0
    method.steps_taken = 15
    assert method.consistency_weight() == pytest.approx(2 * math.exp(-1.25), rel=1e-15)
    method.steps_taken = 30
    assert method.consistency_weight() == 2.0


def test_ema_teacher_after_one_step_is_decay_teacher_plus_one_minus_decay_student():
    model = _cnn()
    before = copy.deepcopy(model)
    method = _build("cr", model, {"ema_decay": 0.9, "teacher_mode": "eval"})  # eval: its forward keeps its buffers
    x, y = _images()
    method.update([(x, y)])
    teacher = method.ema_teacher
    assert len(quantizers(teacher)) == len(quantizers(model)) == 10  # quantized like the student
    moved = 0
    for name, t in teacher.state_dict().items():
        t0, s1 = before.state_dict()[name], model.state_dict()[name]
        if not isinstance(t, torch.Tensor):  # a quantizer's extra state (bits, sign)
            assert t == s1 == t0, name
        elif t.is_floating_point():
            assert torch.allclose(t, 0.9 * t0 + 0.1 * s1, **TOL), name
            moved += not torch.equal(t0, s1)
        else:
            assert torch.equal(t, s1), name  # BN's num_batches_tracked: copied
    assert moved > 20  # weights, step sizes and BN running statistics all moved
    in_optimizer = {id(p) for group in method.optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}
    assert not any(p.requires_grad for p in teacher.parameters())


def test_cr_sgd_step_moves_weights_by_lr_times_the_gradient_of_ce_plus_weighted_consistency():
    model = _cnn()
    frozen = copy.deepcopy(model)
    method = _build("cr", model, {"ramp": "none", "consistency_weight": 3.0})
    views = _record_views(method)
    x, y = _images()
    method.update([(x, y)])
    v1, v2 = views[0]
    with torch.no_grad():
        teacher = copy.deepcopy(frozen)(v2)
    params = [p for p in frozen.parameters() if p.requires_grad]
    student = frozen(v1)
    ce = F.cross_entropy(student, y)
    grads = torch.autograd.grad(ce + 3.0 * _kl_t2(teacher, student, 1.0), params, retain_graph=True)
    ce_only = torch.autograd.grad(ce, params)
    after = [p for p in model.parameters() if p.requires_grad]
    for p0, p1, g in zip(params, after, grads, strict=True):
        assert torch.allclose(p1, p0 - LR * g, **TOL)
    assert max((a - b).abs().max().item() for a, b in zip(grads, ce_only)) > 1e-3  # the consistency term counts


def test_cr_fp_teacher_supplies_the_target_logits():
    x, y = _images()
    model, parent = _cnn(0), _fp_cnn(5)  # a parent that differs from the student, to be told apart
    frozen = copy.deepcopy(model)
    method = _build("cr", model, {"teacher": "fp", "augment": "none", "temperature": 3.0}, teacher=parent)
    losses = method.update([(x, y)])
    with torch.no_grad():
        expected = _kl_t2(parent(x), frozen(x), 3.0)
    assert losses["consistency"] == pytest.approx(expected.item(), rel=1e-10)
    assert not hasattr(method, "ema_teacher") and not parent.training
    assert all(p.grad is None for p in parent.parameters())
    with pytest.raises(ValueError, match="needs the full-precision parent"):
        _build("cr", _cnn(), {"teacher": "fp"})


def test_crop_flip_views_are_same_size_crops_of_the_reflect_padded_images():
    x = torch.randn(24, 2, 7, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    views = crop_flip(x, 2, torch.Generator().manual_seed(1))
    assert views.shape == x.shape
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    found = set()
    for k in range(len(x)):
        crops = [(i, j, f) for i in range(5) for j in range(5) for f in (False, True)]
        matches = [c for c in crops if torch.equal(views[k], _crop(padded[k], *c, 7, 9))]
        assert len(matches) == 1, k
        found.add(matches[0])
    assert len(found) > 12  # offsets and flips vary from sample to sample
    assert not torch.equal(views, crop_flip(x, 2, torch.Generator().manual_seed(2)))


def _crop(image: torch.Tensor, i: int, j: int, flip: bool, h: int, w: int) -> torch.Tensor:
    crop = image[:, i : i + h, j : j + w]
    return crop.flip(-1) if flip else crop


def test_crop_flip_flips_about_half_of_many_samples_and_views_follow_the_run_seed():
    x = torch.arange(5.0).expand(4000, 1, 1, 5)
    flipped = (crop_flip(x, 0, torch.Generator().manual_seed(0))[:, 0, 0, 0] == 4).double().mean().item()
    assert abs(flipped - 0.5) < 0.03  # 3.8 standard deviations of a fair coin over 4000 draws
    images, _ = _images()
    torch.manual_seed(7)
    first = TwoViews("crop_flip", 4)(images)
    torch.manual_seed(7)
    again = TwoViews("crop_flip", 4)(images)
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and not torch.equal(*first)
    assert TwoViews("none", 4)(images) == (images, images)


def test_cr_leaves_the_student_state_dict_keys_unchanged():
    model = _cnn()
    keys = list(model.state_dict())
    method = _build("cr", model, {})
    x, y = _images()
    method.update([(x, y)])
    assert list(method.model.state_dict()) == keys
    assert method.model is model and all(m is not method.ema_teacher for m in model.modules())


# ----------------------------------------------------------------------------------- MEC


def test_taylor_coding_length_converges_to_mu_logdet_within_the_truncation_bound():
    z = _unit_rows(6, 4)
    eps_sq, rho, mu = 1.25, 0.8, 5.0  # rho = 1 / eps_sq bounds ||C||; mu = (m + d) / 2
    closed = _logdet_by_eigenvalues(z, z, eps_sq)
    errors = [abs(coding_length(z, z, eps_sq, k, "series") - closed).item() for k in range(1, 13)]
    for k, error in enumerate(errors, start=1):
        assert error <= mu * rho ** (k + 1) / (k + 1)
    assert all(b < a for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-3 * closed.item()
    # a collapsed batch (one direction) with eps_sq < 1 makes ||C|| = 1 / eps_sq = 2: the series diverges
    collapsed = z[:1].expand(6, 4)
    closed = _logdet_by_eigenvalues(collapsed, collapsed, 0.5)
    diverging = [abs(coding_length(collapsed, collapsed, 0.5, k, "series") - closed).item() for k in (4, 8, 12)]
    assert diverging[0] < diverging[1] < diverging[2] and diverging[2] > 100


def test_exact_coding_length_is_mu_torch_logdet():
    z = _unit_rows(6, 4)
    m, d = z.shape
    exact = coding_length(z, z, 0.06, 4, "exact")  # no convergence condition
    assert exact == (m + d) / 2 * torch.logdet(torch.eye(m, dtype=z.dtype) + z @ z.T / (m * 0.06))
    assert torch.allclose(exact, _logdet_by_eigenvalues(z, z, 0.06), **TOL)


@pytest.mark.parametrize("experts", [1, 3])
def test_single_view_coding_length_is_invariant_to_permuting_samples(experts):
    z = _unit_rows(8, 5)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(perm, torch.arange(8))

    def gated(v):
        return sum(g * coding_length(a, b, 2.0, 4, "series") for g, a, b in value_experts(v, v, experts))

    assert torch.allclose(gated(z[perm]), gated(z), **TOL)


def test_one_expert_is_plain_mec():
    z = _unit_rows(8, 5)
    [(gate, a, b)] = value_experts(z, z, 1)
    assert gate == 1.0 and torch.equal(a, z) and torch.equal(b, z)
    model = _tanh_mlp()
    hidden = copy.deepcopy(model)[:2]
    x, y = _vectors()
    losses = _build("mec", model, {"experts": 1}, classes=2).update([(x, y)])  # MEC's eps_sq, logdet "auto"
    with torch.no_grad():
        features = F.normalize(hidden(x), dim=1)
    assert torch.linalg.matrix_norm(features @ features.T / (8 * MEC_EPS_SQ), ord=2) > 1  # no series: exact
    closed = _logdet_by_eigenvalues(features, features, MEC_EPS_SQ)
    assert losses["coding_length"] == pytest.approx(closed.item(), rel=1e-10)
    assert losses["l_mec"] == pytest.approx(-MEC_EPS_SQ * closed.item() / ((8 + 5) / 2), rel=1e-10)


def test_value_experts_gates_sum_to_one_and_the_loss_is_the_gated_sum_by_hand():
    model = _tanh_mlp()
    hidden = copy.deepcopy(model)[:2]
    x, y = _vectors()
    losses = _build("mec", model, {"experts": 3, "logdet": "exact", "eps_sq": 2.0}, classes=2).update([(x, y)])
    with torch.no_grad():
        z = F.normalize(hidden(x), dim=1)  # 8 x 5: 40 entries, no three equal shares
    values = z.abs().flatten().sort().values  # quantile edges at 1/3 and 2/3, linear interpolation
    edges = []
    for q in (1 / 3, 2 / 3):
        position = q * (len(values) - 1)
        low = math.floor(position)
        edges.append(values[low] + (position - low) * (values[low + 1] - values[low]))
    which = (z.abs() > edges[0]).long() + (z.abs() > edges[1]).long()
    gates = [(which == e).double().mean() for e in range(3)]
    assert sum(gates).item() == pytest.approx(1.0, abs=1e-15) and all(abs(g - 1 / 3) < 0.03 for g in gates)
    assert max(abs(g - 1 / 3) for g in gates) > 0.01  # the gates are the shares, not 1/E
    masked = [z * (which == e) for e in range(3)]
    by_hand = sum(g * _logdet_by_eigenvalues(v, v, 2.0) for g, v in zip(gates, masked))
    assert losses["coding_length"] == pytest.approx(by_hand.item(), rel=1e-10)
    plain = _logdet_by_eigenvalues(z, z, 2.0)
    assert abs(by_hand - plain) > 1.0  # experts change the objective
    with_gates = [(g.item(), a) for g, a, _ in value_experts(z, z, 3)]
    assert [g for g, _ in with_gates] == pytest.approx([g.item() for g in gates], abs=1e-15)
    assert all(torch.equal(a, v) for (_, a), v in zip(with_gates, masked))


def test_mec_sgd_step_moves_weights_by_lr_times_the_gradient_of_ce_plus_beta_lmec():
    model = _tanh_mlp()
    frozen = copy.deepcopy(model)
    beta, eps_sq = 0.5, 1.5
    method = _build("mec", model, {"beta": beta, "eps_sq": eps_sq, "taylor_order": 5, "logdet": "series"}, classes=2)
    x, y = _vectors()
    losses = method.update([(x, y)])
    params = [p for p in frozen.parameters() if p.requires_grad]
    z = frozen[1](frozen[0](x))
    ce = F.cross_entropy(frozen[2](z), y)
    unit = z / z.norm(dim=1, keepdim=True)
    code = _series_by_powers(unit, unit, eps_sq, 5)  # mu log det(I + C) by its series
    l_mec = -eps_sq * code / ((8 + 5) / 2)  # MEC's loss: -eps_sq log det(I + C)
    grads = torch.autograd.grad(ce + beta * l_mec, params, retain_graph=True)
    ce_only = torch.autograd.grad(ce, params)
    after = [p for p in model.parameters() if p.requires_grad]
    for p0, p1, g in zip(params, after, grads, strict=True):
        assert torch.allclose(p1, p0 - LR * g, **TOL)
    assert max((a - b).abs().max().item() for a, b in zip(grads, ce_only)) > 1e-3
    assert losses["loss"] == pytest.approx((ce + beta * l_mec).item(), rel=1e-10)
    assert losses["coding_length"] == pytest.approx(code.item(), rel=1e-10)


@pytest.mark.parametrize("views", ["fp_pair", "two_views"])
def test_mec_pairs_student_features_with_the_fp_parent_or_a_second_view(views):
    model, parent = _cnn(0), _fp_cnn(0)  # the parent of the student, before quantization
    frozen = copy.deepcopy(model)
    method = _build("mec", model, {"views": views, "eps_sq": 2.0, "logdet": "series"}, teacher=parent)
    seen = _record_views(method) if views == "two_views" else []
    x, y = _images()
    losses = method.update([(x, y)])
    with torch.no_grad():
        if views == "fp_pair":
            z1, z2 = frozen[:-1](x), parent[:-1](x)  # small_cnn: the layers before its classifier
        else:
            v1, v2 = seen[0]
            z1, z2 = frozen[:-1](v1), frozen[:-1](v2)
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    assert losses["coding_length"] == pytest.approx(_series_by_powers(z1, z2, 2.0, 4).item(), rel=1e-10)
    assert all(p.grad is None for p in parent.parameters())
    assert views != "fp_pair" or not parent.training  # the frozen parent runs in eval mode


def test_auto_logdet_takes_the_series_where_it_converges_and_the_exact_logdet_where_it_does_not():
    spread = _unit_rows(6, 4)  # ||C|| = 0.8 at eps_sq 1.25 (the truncation test above)
    assert coding_length(spread, spread, 1.25, 4, "auto") == coding_length(spread, spread, 1.25, 4, "series")
    collapsed = spread[:1].expand(6, 4)  # ||C|| = 1 / eps_sq = 2: the series diverges
    closed = _logdet_by_eigenvalues(collapsed, collapsed, 0.5)
    assert coding_length(collapsed, collapsed, 0.5, 4, "auto") == coding_length(collapsed, collapsed, 0.5, 4, "exact")
    assert torch.allclose(coding_length(collapsed, collapsed, 0.5, 4, "auto"), closed, **TOL)
    assert MecHParams().eps_sq == 64 / 2048 and MecHParams().logdet == "auto"  # MEC code: --eps 64 / --dim 2048


def _gradient_ratio(hparams: dict) -> float:
    """beta |grad L_MEC| / |grad CE| over the parameters of a W4A4 small_cnn, random init and images."""
    model, (x, y) = _cnn(0), _images(seed=4, n=32)
    method = _build("mec", model, hparams)
    logits, z1, _ = method.representations(x)
    z1 = F.normalize(z1, dim=1)
    l_mec = -method.hparams.eps_sq * method.gated_log_det(z1, z1)
    params = [p for p in model.parameters() if p.requires_grad]
    g_ce = torch.autograd.grad(F.cross_entropy(logits, y), params, retain_graph=True)
    g_mec = torch.autograd.grad(l_mec, params, allow_unused=True)  # the classifier is not in L_MEC
    size = lambda grads: torch.sqrt(sum(g.square().sum() for g in grads if g is not None))  # noqa: E731
    return (method.hparams.beta * size(g_mec) / size(g_ce)).item()


def test_mec_term_pulls_as_hard_as_the_task_loss_at_defaults_and_far_harder_than_the_old_default():
    at_defaults = _gradient_ratio({})
    old = _gradient_ratio({"eps_sq": 2.0, "logdet": "series", "beta": 0.01})  # the earlier default
    assert 0.05 < at_defaults < 20, at_defaults
    assert old < 0.01 and at_defaults > 30 * old, (old, at_defaults)
