"""The method zoo, each method's defining update checked against a hand computation.

Every expected value here is computed in the test with plain torch.autograd on explicit copies
of the weights (`_mlp_grad_at`, `Reference.grad_at`), never by calling the method's own helpers.
The methods run with SGD, momentum 0, no weight decay and a constant schedule, so one step is
w <- w - lr * d exactly and the update direction d the method used is (w_before - w_after) / lr.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from qatbench.config import QuantSpec
from qatbench.methods import METHODS
from qatbench.methods.disorder import SignHistory, conflict_rate, flip_rate
from qatbench.methods.fqat import unstable_layers
from qatbench.methods.kd import distillation_loss
from qatbench.models import build_model
from qatbench.quant import (
    DorefaQuantizer,
    LsqPlusQuantizer,
    LsqQuantizer,
    PactQuantizer,
    calibrate,
    quantize_model,
    quantizers,
    step_parameters,
)
from qatbench.runner.api import expand, load_suite
from tests.conftest import run_cli, write_suite

LR = 0.1
SGD = {"optimizer": "sgd", "lr": LR, "momentum": 0.0, "schedule": "constant", "weight_decay": 0.0}
TOL = {"rtol": 1e-8, "atol": 1e-10}


# ----------------------------------------------------------------------------------- helpers


def _mlp(seed: int = 0, widths: tuple[int, ...] = (3, 4, 2), bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [nn.Linear(a, b, bias=bias)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    return nn.Sequential(*layers).double()


def _bn_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    return net.double()


def _data(seed: int = 1, n: int = 8, shape: tuple[int, ...] = (3,)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (n,), generator=g)
    y[0], y[1] = 0, 1  # both classes present
    return x, y


def _envs(x: torch.Tensor, y: torch.Tensor):
    """The batch as two environments' minibatches (methods pool them)."""
    half = len(x) // 2
    return [(x[:half], y[:half]), (x[half:], y[half:])]


def _quantized_mlp(seed: int = 0, spec: QuantSpec | None = None, widths: tuple[int, ...] = (3, 4, 2)):
    x, _ = _data()
    model = quantize_model(_mlp(seed, widths), spec or QuantSpec(4, 4))
    calibrate(model, x)
    return model


class Reference:
    """A frozen copy of a model: its loss and gradient at any explicit parameter values."""

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model)
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]

    def grad_at(self, values, x, y):
        leaves = [v.detach().clone().requires_grad_(True) for v in values]
        loss = F.cross_entropy(functional_call(self.model, dict(zip(self.names, leaves)), (x,)), y)
        return loss.detach(), list(torch.autograd.grad(loss, leaves))


def _mlp_grad_at(values, x, y):
    """Loss and gradient of the 3-4-2 MLP (with biases or without), its forward written out by hand."""
    leaves = [v.detach().clone().requires_grad_(True) for v in values]
    w1, b1, w2, b2 = leaves if len(leaves) == 4 else (leaves[0], None, leaves[1], None)
    loss = F.cross_entropy(F.linear(F.relu(F.linear(x, w1, b1)), w2, b2), y)
    return loss.detach(), list(torch.autograd.grad(loss, leaves))


def _params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _snapshot(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in _params(model)]


def _direction(before, model: nn.Module) -> list[torch.Tensor]:
    return [(b - p.detach()) / LR for b, p in zip(before, _params(model))]


def _gnorm(vectors) -> float:
    return math.sqrt(sum(float((v.detach() * v.detach()).sum()) for v in vectors))


def _add(ws, es, scale: float = 1.0):
    return [w + scale * e for w, e in zip(ws, es)]


def _close(actual, expected, **tol) -> bool:
    return all(torch.allclose(a, e, **(tol or TOL)) for a, e in zip(actual, expected, strict=True))


def _far(a, b, margin: float = 1e-4) -> bool:
    """The hand computations being told apart differ by much more than the tolerance."""
    return _gnorm([u - v for u, v in zip(a, b, strict=True)]) > margin


def _build(name: str, model: nn.Module, hparams: dict, **kwargs):
    return METHODS.get(name)(model, 2, {**SGD, **hparams}, total_steps=100, **kwargs)


# ----------------------------------------------------------------------------------- SAM, ASAM


def test_sam_steps_from_w_along_the_gradient_at_w_plus_rho_g_over_norm_g():
    rho = 0.3
    model = _mlp()
    x, y = _data()
    w = _snapshot(model)
    method = _build("sam", model, {"rho": rho})
    seen = []
    ascent = method.ascent
    method.ascent = lambda weights, grads: seen.append(ascent(weights, grads)) or seen[-1]
    losses = method.update(_envs(x, y))

    loss, g = _mlp_grad_at(w, x, y)
    e = [rho * gi / _gnorm(g) for gi in g]
    perturbed_loss, g_p = _mlp_grad_at(_add(w, e), x, y)
    assert _gnorm(seen[0]) == pytest.approx(rho, rel=1e-9)  # ||e|| = rho (up to the 1e-12 norm guard)
    assert _close(seen[0], e)
    assert _close(_direction(w, model), g_p)
    assert _close(_params(model), _add(w, g_p, -LR))  # from w, not from w + e
    assert losses["loss"] == pytest.approx(loss.item(), rel=1e-12)
    assert losses["perturbed_loss"] == pytest.approx(perturbed_loss.item(), rel=1e-12)
    # the check can fail: an unnormalised ascent, or the plain gradient, give other directions
    assert _far(g_p, _mlp_grad_at(_add(w, g, rho), x, y)[1]) and _far(g_p, g)
    assert _far(_add(w, g_p, -LR), _add(_add(w, e), g_p, -LR))


def _asam_update(bias: bool, rho: float = 0.5, eta: float = 0.01):
    model = _mlp(bias=bias)
    x, y = _data()
    w = _snapshot(model)
    method = _build("asam", model, {"rho": rho, "eta": eta})
    seen = []
    ascent = method.ascent
    method.ascent = lambda weights, grads: seen.append(ascent(weights, grads)) or seen[-1]
    method.update(_envs(x, y))
    return model, x, y, w, seen[0]


def test_asam_perturbation_is_rho_t2_g_over_norm_tg_with_t_abs_w_plus_eta():
    rho, eta = 0.5, 0.01
    model, x, y, w, e_used = _asam_update(bias=False, rho=rho, eta=eta)  # weights only: no convention on biases
    _, g = _mlp_grad_at(w, x, y)
    t = [wi.abs() + eta for wi in w]
    tg_norm = _gnorm([ti * gi for ti, gi in zip(t, g)])
    e = [rho * ti * ti * gi / tg_norm for ti, gi in zip(t, g)]
    _, g_p = _mlp_grad_at(_add(w, e), x, y)
    assert _close(e_used, e)
    assert _gnorm([ei / ti for ei, ti in zip(e_used, t)]) == pytest.approx(rho, rel=1e-9)  # ||T^-1 e|| = rho
    assert _close(_direction(w, model), g_p)
    assert _close(_params(model), _add(w, g_p, -LR))
    assert _far(g_p, _mlp_grad_at(_add(w, [rho * gi / _gnorm(g) for gi in g]), x, y)[1])  # differs from SAM's
    assert _far(e, [rho * ti * gi / tg_norm for ti, gi in zip(t, g)])  # T^2, not T


def test_asam_leaves_biases_unnormalised_as_samsunglabs_asam_does():
    rho, eta = 0.5, 0.01
    _, x, y, w, e_used = _asam_update(bias=True, rho=rho, eta=eta)
    _, g = _mlp_grad_at(w, x, y)
    t = [wi.abs() + eta if wi.dim() > 1 else torch.ones_like(wi) for wi in w]  # W1, b1, W2, b2
    tg_norm = _gnorm([ti * gi for ti, gi in zip(t, g)])
    assert _close(e_used, [rho * ti * ti * gi / tg_norm for ti, gi in zip(t, g)])


# ----------------------------------------------------------------------------------- BN statistics


@pytest.mark.parametrize("name", ["sam", "sagm", "gam"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_extra_passes_leave_bn_running_statistics_as_one_plain_forward_would(name, momentum):
    model = _bn_net()
    model[1].momentum = momentum
    reference = copy.deepcopy(model)
    method = _build(name, model, {"grad_rho": 0.2, "grad_norm_rho": 0.3} if name == "gam" else {"rho": 0.3})
    method.train()
    for step in range(2):
        x, y = _data(seed=10 + step, shape=(1, 6, 6))
        with torch.no_grad():  # the reference sees the same weights, once, in train mode
            for p, q in zip(reference.parameters(), model.parameters()):
                p.copy_(q)
            reference.train()(x)
        before = model[1].running_mean.clone()
        method.update(_envs(x, y))
        bn, ref = model[1], reference[1]
        assert torch.allclose(bn.running_mean, ref.running_mean, rtol=1e-12, atol=1e-14)
        assert torch.allclose(bn.running_var, ref.running_var, rtol=1e-12, atol=1e-14)
        assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked) == step + 1
        assert bn.momentum == momentum  # restored
        assert not torch.allclose(bn.running_mean, before)  # the statistics did move, once
    with torch.no_grad():  # a second plain pass would have moved them: the check can fail
        reference(x)
    assert not torch.allclose(model[1].running_mean, reference[1].running_mean)


# ----------------------------------------------------------------------------------- SAGM


def test_sagm_direction_is_the_mean_of_g_and_the_gradient_at_w_plus_rho_over_norm_minus_alpha_g():
    rho, alpha = 0.3, 0.2
    model = _mlp()
    x, y = _data()
    w = _snapshot(model)
    _build("sagm", model, {"rho": rho, "alpha": alpha}).update(_envs(x, y))

    _, g = _mlp_grad_at(w, x, y)
    _, g_p = _mlp_grad_at(_add(w, g, rho / _gnorm(g) - alpha), x, y)
    assert _close(_direction(w, model), [0.5 * (a + b) for a, b in zip(g, g_p)])
    _, g_p_without_alpha = _mlp_grad_at(_add(w, g, rho / _gnorm(g)), x, y)
    assert _far(g_p, g_p_without_alpha) and _far(g_p, g)


def test_sagm_defaults_are_the_official_pacs_values():
    hp = METHODS.get("sagm").HParams()
    official = {"optimizer": "adam", "lr": 3e-5, "weight_decay": 1e-4, "rho": 0.05, "alpha": 0.001}
    assert {k: getattr(hp, k) for k in official} == official and hp.smooth_weight == 0.5


# ----------------------------------------------------------------------------------- GAM


def test_gam_direction_is_the_four_pass_formula_of_its_docstring():
    hp = {"grad_rho": 0.1, "grad_norm_rho": 0.3, "grad_beta_0": 0.2, "grad_beta_1": 0.3, "grad_gamma": 0.4}
    model = _mlp()
    x, y = _data()
    w = _snapshot(model)
    losses = _build("gam", model, hp).update(_envs(x, y))

    loss, g0 = _mlp_grad_at(w, x, y)
    _, g1 = _mlp_grad_at(_add(w, g0, hp["grad_rho"] / _gnorm(g0)), x, y)
    h = [a - b for a, b in zip(g1, g0)]
    w2 = _add(w, h, hp["grad_norm_rho"] / _gnorm(h))
    _, g2 = _mlp_grad_at(w2, x, y)
    _, g3 = _mlp_grad_at(_add(w2, g2, hp["grad_rho"] / _gnorm(g2)), x, y)
    beta2, beta3 = 1 - hp["grad_beta_0"], 1 - hp["grad_beta_1"]
    m = [a + beta2 * b for a, b in zip(g0, g2)]
    d = [hp["grad_beta_1"] * a + beta3 * b for a, b in zip(g1, g3)]
    m_norm, d_norm = _gnorm(m), _gnorm(d)
    cosine = sum(float((a * b).sum()) for a, b in zip(m, d)) / (m_norm * d_norm)
    expected = [di - hp["grad_gamma"] * (mi - cosine * m_norm * di / d_norm) for mi, di in zip(m, d)]

    assert _close(_direction(w, model), expected)
    assert losses["loss"] == pytest.approx(loss.item(), rel=1e-12)
    assert _far(expected, d) and _far(expected, g1) and _far(expected, g0)  # gamma's correction matters


# ----------------------------------------------------------------------------------- lsq_sam, lsq_sagm


def _hand_lsq_update(model, w, x, y, *, rho, alpha, perturb, combine):
    """The perturbation e and the direction of lsq_sam ("sam") or lsq_sagm ("sagm") on a quantized
    model, by hand: the ranges move only with perturb="weights_and_steps"."""
    ref = Reference(model)
    steps = {n for n, _ in model.named_parameters() if n.endswith((".step", ".offset", ".alpha"))}
    moves = [perturb == "weights_and_steps" or n not in steps for n in ref.names]
    _, g = ref.grad_at(w, x, y)
    scale = rho / _gnorm([gi for gi, m in zip(g, moves) if m]) - alpha
    e = [scale * gi if m else torch.zeros_like(gi) for gi, m in zip(g, moves)]
    _, g_p = ref.grad_at(_add(w, e), x, y)
    d = g_p if combine == "sam" else [0.5 * (a + b) for a, b in zip(g, g_p)]
    return g, g_p, d, e


@pytest.mark.parametrize("name", ["lsq_sam", "lsq_sagm"])
def test_lsq_sharpness_methods_perturb_step_sizes_only_when_asked(name):
    # rho small enough that no perturbed step size reaches zero (below it every gradient vanishes)
    rho, alpha = 0.05, (0.0 if name == "lsq_sam" else 0.01)
    extra = {} if name == "lsq_sam" else {"alpha": alpha}
    x, y = _data()
    expected = {}
    for perturb in ("weights", "weights_and_steps"):
        model = _quantized_mlp(spec=QuantSpec(4, 4, first_last="same"))
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        is_step = [n.endswith(".step") for n in names]
        assert sum(is_step) == 4 and {id(p) for p in step_parameters(model)} == {
            id(p) for p, s in zip(_params(model), is_step) if s
        }
        w = _snapshot(model)
        seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}  # each parameter's value at every forward
        hooks = [
            module.register_forward_pre_hook(
                lambda m, a, p=p, log=seen[f"{prefix}.{leaf}"]: log.append(p.detach().clone())
            )
            for prefix, module in model.named_modules()
            for leaf, p in module.named_parameters(recurse=False)
        ]
        method = _build(name, model, {"rho": rho, "perturb": perturb, **extra}, quant=QuantSpec(4, 4))
        assert method.effective_hparams()["perturb"] == perturb
        method.update(_envs(x, y))
        for hook in hooks:
            hook.remove()
        _, _, d, e = _hand_lsq_update(
            model, w, x, y, rho=rho, alpha=alpha, perturb=perturb, combine=name.removeprefix("lsq_")
        )
        for n, wi, ei, step in zip(names, w, e, is_step):
            at_w, at_perturbed = seen[n]  # two passes: at w, at w + e
            assert torch.equal(at_w, wi)
            if step and perturb == "weights":
                assert torch.equal(at_perturbed, wi)  # the step sizes stay where they were
            else:
                assert torch.allclose(at_perturbed, wi + ei, **TOL) and not torch.equal(at_perturbed, wi)
        got = _direction(w, model)
        assert _close(got, d, rtol=1e-7, atol=1e-9)
        expected[perturb] = [di for di, s in zip(d, is_step) if s]
        assert any(not torch.equal(a, b) for a, b, s in zip(w, _params(model), is_step) if s)  # steps learn
    assert _far(expected["weights"], expected["weights_and_steps"], 1e-6)  # the two modes are told apart
    assert METHODS.get(name).HParams().perturb == "weights_and_steps"  # SAGM's code perturbs every parameter


# ----------------------------------------------------------------------------------- KD


def _hand_kd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    def log_softmax(z):
        z = z - z.max(dim=1, keepdim=True).values
        return z - torch.log(torch.exp(z).sum(dim=1, keepdim=True))

    log_ps, log_pt = log_softmax(s / temperature), log_softmax(t / temperature)
    kl = (torch.exp(log_pt) * (log_pt - log_ps)).sum() / len(s)
    ce = -log_softmax(s)[torch.arange(len(s)), y].sum() / len(s)
    return alpha * temperature**2 * kl + (1 - alpha) * ce


@pytest.mark.parametrize("temperature, alpha", [(4.0, 0.9), (1.0, 0.3), (2.5, 1.0), (3.0, 0.0)])
def test_distillation_loss_is_alpha_t2_kl_teacher_student_plus_1_minus_alpha_ce(temperature, alpha):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g, dtype=torch.float64), 3 * torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=g)
    got = distillation_loss(s, t, y, temperature, alpha)
    assert got.item() == pytest.approx(_hand_kd(s, t, y, temperature, alpha).item(), rel=1e-12)
    swapped = _hand_kd(t, s, y, temperature, alpha)  # KL(student || teacher) would be another number
    assert alpha == 0.0 or abs(got.item() - swapped.item()) > 1e-3


def test_kd_needs_a_teacher_which_stays_frozen_in_eval_mode_and_gets_no_gradient():
    with pytest.raises(ValueError, match="teacher"):
        _build("kd", _mlp(), {})
    torch.manual_seed(5)
    teacher = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()
    with torch.no_grad():
        teacher[1].running_mean.copy_(torch.randn(4))
        teacher[1].running_var.copy_(torch.rand(4) + 0.5)
    teacher.train()
    frozen = copy.deepcopy(teacher.state_dict())
    model = _mlp()
    x, y = _data()
    w = _snapshot(model)
    method = _build("kd", model, {"temperature": 3.0, "alpha": 0.7}, teacher=teacher)
    teacher.train()  # whatever the caller does to it, method.train() puts it back in eval mode
    method.train()
    assert model.training and not teacher.training
    losses = method.update(_envs(x, y))

    bn = teacher[1]
    with torch.no_grad():  # the teacher in eval mode, written out: running statistics, not the batch's
        h = (teacher[0](x) - frozen["1.running_mean"]) / torch.sqrt(frozen["1.running_var"] + bn.eps)
        t_logits = teacher[3](F.relu(h * frozen["1.weight"] + frozen["1.bias"]))
    leaves = [v.clone().requires_grad_(True) for v in w]
    s_logits = F.linear(F.relu(F.linear(x, leaves[0], leaves[1])), leaves[2], leaves[3])
    loss = _hand_kd(s_logits, t_logits, y, 3.0, 0.7)
    assert losses["loss"] == pytest.approx(loss.item(), rel=1e-10)
    assert _close(_direction(w, model), torch.autograd.grad(loss, leaves))
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in frozen.items())  # BN stats did not move
    with torch.no_grad():  # in train mode the teacher's logits would differ: the check can fail
        assert not torch.allclose(copy.deepcopy(teacher).train()(x), t_logits)


# ----------------------------------------------------------------------------------- GAQAT


def _gaqat(**hparams):
    model = _quantized_mlp(spec=QuantSpec(4, 4, first_last="same"))
    method = _build("gaqat", model, {"rho": 0.3, **hparams}, quant=QuantSpec(4, 4))
    params = _params(model)
    where = [next(i for i, p in enumerate(params) if p is s) for s in method.scales]
    return method, params, where


def _synthetic(params, where, task_signs, smooth_signs, seed):
    """g and g_p with the given signs of g (task) and g_p - g (smoothness) at the step sizes."""
    gen = torch.Generator().manual_seed(seed)
    g = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    g_p = [gi + torch.randn(p.shape, generator=gen, dtype=p.dtype) for gi, p in zip(g, params)]
    for k, i in enumerate(where):
        size = 0.5 + torch.rand((), generator=gen, dtype=torch.float64)
        g[i] = task_signs[k] * size
        g_p[i] = g[i] + smooth_signs[k] * (0.2 + torch.rand((), generator=gen, dtype=torch.float64))
    return g, g_p


def _check_gaqat_direction(method, params, where, g, g_p, d):
    frozen = {where[k] for k, f in enumerate(method.frozen) if f}
    for i in range(len(params)):
        smooth = 0.5 * (g_p[i] - g[i])
        assert torch.allclose(d[i], smooth if i in frozen else g[i] + smooth, rtol=1e-12, atol=1e-15)


def test_gaqat_freezes_steady_step_sizes_every_k_steps_permanently_and_drops_only_their_task_gradient():
    method, params, where = _gaqat(window=4, every=4, tau=0.3, disorder="flips")
    names = method.scale_names
    assert len(names) == 4 and len(where) == 4
    alternating = [1, -1, 1, -1]
    for t in range(1, 13):
        alt = alternating[(t - 1) % 4]
        if t <= 4:  # 0 and 2 steady, 1 and 3 alternate
            task = [1, alt, -1, -alt]
        else:  # 0 starts alternating (frozen stays frozen), 1 becomes steady, 3 keeps alternating
            task = [alt, 1, -1, -alt]
        g, g_p = _synthetic(params, where, task, [1, 1, 1, 1], seed=t)
        d = method.combine(params, g, g_p)
        if t < 4:
            assert method.frozen == [False] * 4 and method.frozen_at == {}
        if t == 4:
            assert method.last_disorder == [0.0, 1.0, 0.0, 1.0]
            assert method.frozen == [True, False, True, False]
            assert method.frozen_at == {names[0]: 4, names[2]: 4}
        if 4 < t < 8:
            assert method.frozen == [True, False, True, False]
        if t == 8:
            assert method.last_disorder == [1.0, 0.0, 0.0, 1.0]  # 0 is in disorder now, and stays frozen
            assert method.frozen == [True, True, True, False]
            assert method.frozen_at == {names[0]: 4, names[1]: 8, names[2]: 4}
        if t > 8:
            assert method.frozen == [True, True, True, False]
        if t != 4 and t != 8:
            _check_gaqat_direction(method, params, where, g, g_p, d)
    assert method.frozen_at == {names[0]: 4, names[1]: 8, names[2]: 4}  # unchanged after step 12's review
    summary = method.summary()
    assert summary["n_scales"] == 4 and summary["n_frozen"] == 3
    assert summary["frozen_at_step"] == {names[0]: 4, names[1]: 8, names[2]: 4}


@pytest.mark.parametrize(
    "disorder, tau, frozen",
    [
        ("flips", 0.3, [True, True, False, True]),
        ("conflict", 0.3, [True, False, True, False]),
        ("conflict", 0.5, [True, False, True, False]),  # D < tau: 0.5 is not below 0.5
        ("conflict", 0.51, [True, False, True, True]),
    ],
)
def test_gaqat_disorder_flips_of_the_task_sign_or_conflict_with_the_smoothness_sign(disorder, tau, frozen):
    method, params, where = _gaqat(window=4, every=4, tau=tau, disorder=disorder)
    for t in range(4):
        alt = 1 if t % 2 == 0 else -1
        # 0: steady, agree; 1: steady, disagree; 2: alternating, agree; 3: steady, smoothness alternating
        g, g_p = _synthetic(params, where, [1, 1, alt, 1], [1, -1, alt, alt], seed=t)
        method.combine(params, g, g_p)
    expected = {"flips": [0.0, 0.0, 1.0, 0.0], "conflict": [0.0, 1.0, 0.0, 0.5]}[disorder]
    assert method.last_disorder == expected
    assert method.frozen == frozen


def test_gaqat_default_disorder_is_the_conflict_of_its_two_sign_sequences():
    assert METHODS.get("gaqat").HParams().disorder == "conflict"  # the reviews: task and smoothness sequences
    method, params, where = _gaqat(window=4, every=4, tau=0.3)
    for t in range(4):
        alt = 1 if t % 2 == 0 else -1
        g, g_p = _synthetic(params, where, [1, 1, alt, 1], [1, -1, alt, alt], seed=t)
        method.combine(params, g, g_p)
    assert method.last_disorder == [0.0, 1.0, 0.0, 0.5]  # flips of g_task alone would give [0, 0, 1, 0]
    assert method.frozen == [True, False, True, False]


def test_gaqat_judges_only_full_windows():
    method, params, where = _gaqat(window=4, every=2, tau=0.5)
    for t in range(1, 7):
        g, g_p = _synthetic(params, where, [1, 1, 1, 1], [1, 1, 1, 1], seed=t)
        method.combine(params, g, g_p)
        assert all(method.frozen) == (t >= 4)  # step 2 is a review step, but its window is half empty
    assert set(method.frozen_at.values()) == {4}


def test_gaqat_update_moves_frozen_step_sizes_along_half_the_smoothness_gradient_only():
    rho, alpha = 0.3, 0.05
    x, y = _data()
    # tau > 1: all freeze at step 2; weights-only perturbation keeps the hand computation's step sizes fixed
    method, params, where = _gaqat(window=2, every=2, tau=1.5, alpha=alpha, perturb="weights")
    for seed in (20, 21):
        method.update(_envs(*_data(seed)))
    assert all(method.frozen) and len(method.frozen_at) == 4
    w = _snapshot(method.model)
    method.update(_envs(x, y))
    g, g_p, _, _ = _hand_lsq_update(method.model, w, x, y, rho=rho, alpha=alpha, perturb="weights", combine="sagm")
    expected = [0.5 * (b - a) if i in where else 0.5 * (a + b) for i, (a, b) in enumerate(zip(g, g_p))]
    assert _close(_direction(w, method.model), expected, rtol=1e-7, atol=1e-9)
    assert _far([expected[i] for i in where], [0.5 * (g[i] + g_p[i]) for i in where], 1e-6)


@pytest.mark.parametrize("quantizer", ["pact", "dorefa"])
def test_gaqat_needs_learnable_step_sizes(quantizer):
    model = _quantized_mlp(spec=QuantSpec(4, 4, quantizer=quantizer))
    with pytest.raises(ValueError, match="step sizes"):
        _build("gaqat", model, {}, quant=QuantSpec(4, 4, quantizer=quantizer))


# ----------------------------------------------------------------------------------- FQAT


def test_unstable_layers_are_above_mean_plus_margin_std_most_disordered_first_capped():
    values = [0.1, 0.9, 0.2, 0.8, 0.15, 0.1, 0.95, 0.1]
    disorder = torch.tensor(values, dtype=torch.float64)
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    for margin, max_frozen in [(0.5, 0.25), (0.5, 0.5), (0.0, 1.0), (1.0, 1.0), (2.0, 1.0), (-10.0, 0.5)]:
        above = sorted((i for i, v in enumerate(values) if v > mean + margin * std), key=lambda i: -values[i])
        expected = [i for i in sorted(range(n), key=lambda i: -values[i])[: int(max_frozen * n)] if i in above]
        assert unstable_layers(disorder, margin, max_frozen) == expected
    assert unstable_layers(disorder, 0.5, 0.25) == [6, 1]  # capped at 2 of 8, most disordered first
    assert unstable_layers(disorder, 0.5, 0.5) == [6, 1, 3]  # 0.2 and below are under the threshold
    assert unstable_layers(disorder, 0.5, 0.1) == []  # int(0.8) = 0 layers may freeze
    assert unstable_layers(torch.tensor([5.0]), -1.0, 1.0) == []


def _fqat(widths=(3, 4, 4, 4, 2), **hparams):
    model = _quantized_mlp(spec=QuantSpec(4, 4, first_last="same"), widths=widths)
    method = _build("fqat", model, {"rho": 0.3, **hparams}, quant=QuantSpec(4, 4))
    params = _params(model)
    index = [[next(i for i, p in enumerate(params) if p is q) for q in layer] for layer in method.layer_params]
    return method, params, index


def _fqat_synthetic(params, index, t):
    """Layer 0: steady task gradient against the flatness one (conflict); layer 2: d flips every
    step, no flatness gradient; layers 1 and 3: steady and agreeing."""
    gen = torch.Generator().manual_seed(t)
    g = [torch.zeros_like(p) for p in params]
    g_p = [torch.zeros_like(p) for p in params]
    for layer, idx in enumerate(index):
        for i in idx:
            c = 0.5 + torch.rand(params[i].shape, generator=gen, dtype=params[i].dtype)
            if layer == 0:
                g[i], g_p[i] = c, 0.5 * c
            elif layer == 2:
                g[i] = c * (1 if t % 2 else -1)
                g_p[i] = g[i].clone()
            else:
                g[i], g_p[i] = c, 2 * c
    return g, g_p


@pytest.mark.parametrize("freeze", ["layer", "flat", "task"])
@pytest.mark.parametrize("disorder, unstable", [("flips", 2), ("conflict", 0)])
def test_fqat_freezes_the_layer_the_disorder_metric_points_at_and_drops_what_freeze_says(freeze, disorder, unstable):
    method, params, index = _fqat(window=2, margin=0.5, max_frozen=0.25, freeze=freeze, disorder=disorder)
    assert len(index) == 4 and all(len(idx) == 4 for idx in index)  # weight, bias, two step sizes
    for t in range(1, 4):
        g, g_p = _fqat_synthetic(params, index, t)
        d = method.combine(params, g, g_p)
        assert method.frozen_now == ([] if t == 1 else [unstable])  # the window is full from step 2
        frozen = set(index[unstable]) if t > 1 else set()
        for i in range(len(params)):
            flat = g_p[i] - g[i]
            if i not in frozen:
                assert torch.allclose(d[i], g[i] + 0.5 * flat, rtol=1e-12, atol=1e-15)
            elif freeze == "layer":
                assert d[i] is None
            else:
                assert torch.allclose(d[i], g[i] if freeze == "flat" else 0.5 * flat, rtol=1e-12, atol=1e-15)
    summary = method.summary()
    counts = [2 if layer == unstable else 0 for layer in range(4)]
    assert method.frozen_counts == counts
    assert summary["n_layers"] == 4
    assert list(summary["frozen_fraction"].values()) == [round(c / 3, 4) for c in counts]
    assert summary["mean_frozen_per_step"] == round(sum(counts) / 3, 4)
    assert sum(summary["frozen_fraction"].values()) == pytest.approx(summary["mean_frozen_per_step"], abs=1e-3)


@pytest.mark.parametrize("freeze", ["layer", "flat", "task"])
def test_fqat_update_on_a_quantized_model_leaves_the_frozen_layer_as_freeze_says(freeze):
    rho, alpha = 0.3, 0.05
    x, y = _data()
    # two layers, at most one frozen; margin -100: the most disordered layer is always unstable
    method, params, index = _fqat(
        widths=(3, 4, 2), window=2, margin=-100.0, max_frozen=0.5, freeze=freeze, alpha=alpha, disorder="conflict",
        perturb="weights",
    )
    method.update(_envs(*_data(30)))
    assert method.frozen_now == []
    w = _snapshot(method.model)
    method.update(_envs(x, y))
    assert len(method.frozen_now) == 1
    frozen = set(index[method.frozen_now[0]])
    g, g_p, _, _ = _hand_lsq_update(method.model, w, x, y, rho=rho, alpha=alpha, perturb="weights", combine="sagm")
    got = _direction(w, method.model)
    for i, (a, b) in enumerate(zip(g, g_p)):
        if i not in frozen:
            assert torch.allclose(got[i], 0.5 * (a + b), rtol=1e-7, atol=1e-9)
        elif freeze == "layer":
            assert torch.equal(params[i].detach(), w[i])  # not stepped at all
        else:
            assert torch.allclose(got[i], a if freeze == "flat" else 0.5 * (b - a), rtol=1e-7, atol=1e-9)
    unfrozen_rule = [0.5 * (g[i] + g_p[i]) for i in sorted(frozen)]
    assert _far(
        [w[i] - LR * u for i, u in zip(sorted(frozen), unfrozen_rule)], [params[i] for i in sorted(frozen)], 1e-6
    )
    summary = method.summary()
    assert method.frozen_counts == [1 if layer == method.frozen_now[0] else 0 for layer in range(2)]
    assert list(summary["frozen_fraction"].values()) == [c / 2 for c in method.frozen_counts]
    assert summary["mean_frozen_per_step"] == 0.5


def test_fqat_needs_a_quantized_model():
    with pytest.raises(ValueError, match="quantized"):
        _build("fqat", _mlp(), {})


# ----------------------------------------------------------------------------------- disorder.py


def test_flip_rate_and_conflict_rate_per_column():
    signs = torch.tensor([[1.0, 1.0, -1.0, 0.0], [1.0, -1.0, -1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    assert flip_rate(signs).tolist() == [0.0, 1.0, 0.5, 0.5]
    other = torch.tensor([[1.0, -1.0, -1.0, 0.0], [-1.0, 1.0, -1.0, 1.0], [1.0, -1.0, 1.0, -1.0]])
    assert conflict_rate(signs, other).tolist() == pytest.approx([1 / 3, 1.0, 0.0, 1 / 3])


def test_sign_history_keeps_the_last_window_rows_oldest_first():
    with pytest.raises(ValueError, match="at least 2"):
        SignHistory(1, 2, torch.device("cpu"))
    history = SignHistory(3, 2, torch.device("cpu"))
    rows = [torch.tensor([float(i), -float(i)]) for i in range(1, 8)]
    for k, row in enumerate(rows, start=1):
        history.record(row)
        assert history.full == (k >= 3)
        if k == 2:  # not full: the unwritten row (zeros) first, then the two recorded, oldest first
            assert history.ordered().tolist() == [[0.0, 0.0], [1.0, -1.0], [2.0, -2.0]]
        if k >= 3:
            assert history.ordered().tolist() == [r.tolist() for r in rows[k - 3 : k]]
    assert history.seen == 7


# ----------------------------------------------------------------------------------- through the runner


ZOO_SUITE = """\
name: zoo
datasets:
  - name: RotatedMNIST
    test_envs: [0]
models:
  - {name: small_cnn, options: {width: 2}}
methods:
  - name: erm
    steps: 4
  - name: lsq_plus
  - name: kd
  - name: gaqat
    steps: 4
    hparams: {window: 2, every: 2}
  - name: pact
  - name: dorefa
bits: [W4A4]
seeds: [0]
training:
  steps: 2
  batch_size: 8
  eval_every: 100
  eval_batch_size: 4096
"""


def test_quantizer_methods_fix_the_quantizer_their_runs_build(tmp_path):
    specs = expand(load_suite(write_suite(tmp_path, ZOO_SUITE)))
    classes = {"lsq_plus": (LsqPlusQuantizer,) * 2, "pact": (DorefaQuantizer, PactQuantizer)}
    classes |= {"dorefa": (DorefaQuantizer,) * 2, "kd": (LsqQuantizer,) * 2, "gaqat": (LsqQuantizer,) * 2}
    seen = set()
    for spec in specs:
        if spec.quant is None:
            continue
        seen.add(spec.method)
        expected = {"lsq_plus": "lsq_plus", "pact": "pact", "dorefa": "dorefa"}.get(spec.method, "lsq")
        assert spec.quant.quantizer == expected
        model = quantize_model(build_model(spec.model, (1, 28, 28), 10, dict(spec.model_options)), spec.quant)
        w_cls, a_cls = classes[spec.method]
        for q in quantizers(model):
            assert type(q) is (w_cls if q.kind == "weight" else a_cls)
    assert seen == set(classes)


def test_erm_lsq_plus_kd_gaqat_run_end_to_end_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # twice as fast on two busy cores; same runs
    suite = write_suite(tmp_path, ZOO_SUITE.replace("  - name: pact\n  - name: dorefa\n", ""))
    results = tmp_path / "results"
    done = run_cli("run", str(suite), "--results", str(results), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    records = {r["method"]: r for r in (json.loads(p.read_text()) for p in results.rglob("record.json"))}
    assert set(records) == {"erm", "lsq_plus", "kd", "gaqat"}
    assert all(r["status"] == "done" for r in records.values())
    assert records["erm"].get("quant.quantizer") is None
    assert records["lsq_plus"]["quant.quantizer"] == "lsq_plus"
    assert records["kd"]["quant.quantizer"] == records["gaqat"]["quant.quantizer"] == "lsq"
    gaqat = records["gaqat"]
    assert (
        0 <= gaqat["method_state.n_frozen"] <= gaqat["method_state.n_scales"] == 10
    )  # 5 layers, weight and input steps
    assert gaqat["effective_hparams.perturb"] == "weights_and_steps" and gaqat["effective_hparams.window"] == 2
    assert records["kd"]["effective_hparams.temperature"] == 4.0
    state = torch.load(results / "zoo" / records["lsq_plus"]["run_id"] / "model.pt", weights_only=False)
    assert any(k.endswith("a_quant.offset") for k in state)  # LSQ+ activation quantizers, learnable offset
