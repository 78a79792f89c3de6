"""Second-order claims on a tiny LSQ-quantized network: what its Hessian-vector product is.

The quantized loss is piecewise constant in the weights, so its true Hessian is zero almost
everywhere. What double backward through the straight-through estimator differentiates is a
surrogate: the same network with every rounding offset round(x) - x frozen at its value at w0.
These tests rebuild that surrogate explicitly and check the HVP against its finite differences,
then check that torch.func's forward-over-reverse and reverse-over-reverse agree with it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

import qatbench.quant.lsq
from qatbench.config.spec import QuantSpec
from qatbench.quant import calibrate, quantize_model

EPS = 1e-6  # central differences in float64: truncation ~EPS^2, round-off ~1e-16 / EPS


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class Setup:
    """A Conv2d(1,4,3)+ReLU+Flatten+Linear(144,3) net on 8x8 inputs, W4A4 everywhere, float64, eval."""

    def __init__(self):
        torch.manual_seed(0)
        self.float_model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
        self.float_model = self.float_model.double().eval()
        self.x = torch.randn(16, 1, 8, 8, dtype=torch.float64)  # signed input: the first quantizer is signed
        self.y = torch.randint(0, 3, (16,))
        spec = QuantSpec(w_bits=4, a_bits=4, first_last="same")
        self.model = quantize_model(self.float_model, spec).eval()  # step sizes follow the float64 layers
        calibrate(self.model, self.x)
        # the quantized tensors only: biases stay float, and step sizes are not what is varied
        self.w0 = {name: self.model.get_parameter(name).detach().clone() for name in ("0.weight", "3.weight")}
        self.v = {name: torch.randn_like(p) for name, p in self.w0.items()}

    def loss(self, params: dict[str, torch.Tensor], model: nn.Module | None = None) -> torch.Tensor:
        return F.cross_entropy(functional_call(model or self.model, params, (self.x,)), self.y)

    def grad(self, params: dict[str, torch.Tensor], model: nn.Module | None = None) -> torch.Tensor:
        params = {k: p.detach().clone().requires_grad_() for k, p in params.items()}
        return _flat(torch.autograd.grad(self.loss(params, model), list(params.values())))

    def shifted(self, scale: float) -> dict[str, torch.Tensor]:
        return {k: self.w0[k] + scale * self.v[k] for k in self.w0}

    def hvp_double_backward(self, model: nn.Module | None = None) -> torch.Tensor:
        params = {k: p.clone().requires_grad_() for k, p in self.w0.items()}
        grads = torch.autograd.grad(self.loss(params, model), list(params.values()), create_graph=True)
        grad_dot_v = sum((g * self.v[k]).sum() for g, k in zip(grads, params))
        return _flat(torch.autograd.grad(grad_dot_v, list(params.values())))


class FrozenRounding:
    """A stand-in for lsq.round_ste: records round(x) - x in call order, then replays it as x + offset."""

    def __init__(self):
        self.offsets: list[torch.Tensor] = []
        self.recording = True
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.recording:
            self.offsets.append((torch.round(x) - x).detach())
        offset = self.offsets[self.calls]
        self.calls += 1
        return x + offset

    def replay(self) -> FrozenRounding:
        assert self.calls == len(self.offsets)
        self.recording, self.calls = False, 0
        return self


@pytest.fixture(scope="module")
def setup() -> Setup:
    return Setup()


@pytest.fixture(scope="module")
def hvp(setup) -> torch.Tensor:
    return setup.hvp_double_backward()


def test_hvp_matches_finite_differences_of_frozen_rounding_surrogate(setup, hvp, monkeypatch):
    real_grad = setup.grad(setup.w0)
    frozen = FrozenRounding()
    monkeypatch.setattr(qatbench.quant.lsq, "round_ste", frozen)
    setup.grad(setup.w0)  # the recording pass at w0
    assert len(frozen.offsets) == 4  # two layers, an activation and a weight quantizer each
    frozen.replay()
    # the surrogate is the quantized network at w0: same gradient there
    torch.testing.assert_close(setup.grad(setup.w0), real_grad, rtol=1e-12, atol=1e-14)
    frozen.replay()

    plus = setup.grad(setup.shifted(EPS))
    frozen.replay()
    minus = setup.grad(setup.shifted(-EPS))
    frozen.replay()
    finite_difference = (plus - minus) / (2 * EPS)

    assert hvp.norm() > 1e-3
    assert (hvp - finite_difference).norm() <= 1e-5 * hvp.norm()


def test_finite_differences_of_the_true_quantized_gradient_see_no_curvature(setup, hvp):
    """Why the surrogate is needed: the real forward is flat between rounding thresholds."""
    finite_difference = (setup.grad(setup.shifted(EPS)) - setup.grad(setup.shifted(-EPS))) / (2 * EPS)
    assert finite_difference.norm() <= 1e-6 * hvp.norm()


def test_quantized_hvp_differs_from_float_hvp(setup, hvp):
    assert all(torch.equal(setup.float_model.get_parameter(k), w) for k, w in setup.w0.items())  # same weights
    float_hvp = setup.hvp_double_backward(setup.float_model)
    assert (hvp - float_hvp).norm() > 0.05 * hvp.norm()


def test_forward_over_reverse_hvp_equals_double_backward(setup, hvp):
    _, hvp_fwd = torch.func.jvp(torch.func.grad(setup.loss), (setup.w0,), (setup.v,))
    assert (_flat(hvp_fwd.values()) - hvp).norm() <= 1e-10 * hvp.norm()


def test_reverse_over_reverse_hvp_equals_double_backward(setup, hvp):
    _, vjp_fn = torch.func.vjp(torch.func.grad(setup.loss), setup.w0)
    (hvp_rev,) = vjp_fn(setup.v)
    assert (_flat(hvp_rev.values()) - hvp).norm() <= 1e-10 * hvp.norm()
