"""The reported eigenvalue residuals hold as error bars against ARPACK on CNNs too big for an exact Hessian.

The reference is scipy's `eigsh` (ARPACK's implicitly restarted Lanczos, to machine precision)
on a `LinearOperator` of the same Hessian-vector product, so model, batch and product are shared
and only the eigensolver differs. Models are float64 with random data: a small CNN (qatbench's
`small_cnn`, width 4) in float and LSQ W4A4, and a ResNet-20-shaped net (3 stages of 3 basic
blocks, 19 convolutions, option-A shortcuts) at width 4-8-16 instead of 16-32-64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn

from qatbench.analysis import hessian as curvature
from qatbench.analysis.measure import hessian
from qatbench.analysis.operator import HessianOperator
from qatbench.config.analysis import HessianConfig
from qatbench.config.spec import QuantSpec
from qatbench.models import build_model
from qatbench.models.resnet_cifar import BasicBlock
from qatbench.quant import calibrate, quantize_model

pytestmark = pytest.mark.usefixtures("one_thread")
TOP = 5


@dataclass
class Case:
    op: HessianOperator
    reference: np.ndarray  # ARPACK's top eigenvalues, descending


def _resnet20_shaped(widths=(4, 8, 16), classes: int = 5) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
    c_in = widths[0]
    for stage, c_out in enumerate(widths):
        for block in range(3):
            layers.append(BasicBlock(c_in, c_out, 2 if stage and not block else 1, shortcut="A"))
            c_in = c_out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, classes))


def _with_batch_statistics(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """BN running statistics of `x` (not the initial 0/1), then eval mode: the analysis's setting."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a cumulative average: one batch sets them
    with torch.no_grad():
        model.train()(x)
    return model.eval()


def _arpack(op: HessianOperator, k: int = TOP) -> np.ndarray:
    def matvec(v: np.ndarray) -> np.ndarray:
        return op(torch.from_numpy(np.ascontiguousarray(v).reshape(-1))).numpy()

    operator = LinearOperator((op.dim, op.dim), matvec=matvec, dtype=np.float64)
    values = eigsh(operator, k=k, which="LA", v0=np.ones(op.dim), return_eigenvectors=False)
    return np.sort(values)[::-1]


def _case(model: nn.Module, shape: tuple[int, ...], seed: int) -> Case:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(12, *shape, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 5, (12,), generator=generator)
    op = HessianOperator(model, [(x[:8], y[:8]), (x[8:], y[8:])])
    return Case(op, _arpack(op))


@pytest.fixture(scope="module")
def small_cnn() -> Case:
    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 8, 8), 5, {"width": 4}).double()
    return _case(_with_batch_statistics(model, torch.randn(32, 1, 8, 8, dtype=torch.float64)), (1, 8, 8), 1)


@pytest.fixture(scope="module")
def small_cnn_w4a4() -> Case:
    torch.manual_seed(0)
    model = build_model("small_cnn", (1, 8, 8), 5, {"width": 4}).double()
    x = torch.randn(32, 1, 8, 8, dtype=torch.float64)
    model = quantize_model(_with_batch_statistics(model, x), QuantSpec(w_bits=4, a_bits=4, first_last="same"))
    return _case(calibrate(model, x).eval(), (1, 8, 8), 2)


@pytest.fixture(scope="module")
def resnet20_shaped() -> Case:
    torch.manual_seed(0)
    model = _resnet20_shaped().double()
    return _case(_with_batch_statistics(model, torch.randn(32, 3, 8, 8, dtype=torch.float64)), (3, 8, 8), 3)


@pytest.fixture(params=["small_cnn", "small_cnn_w4a4", "resnet20_shaped"])
def case(request) -> Case:
    return request.getfixturevalue(request.param)


def test_the_cases_are_beyond_an_exact_hessian_with_top_eigenvalues_to_find(case):
    assert case.op.dim > 1000
    assert case.reference[0] > case.reference[-1] > 0
    # ARPACK's top value is the one Lanczos reaches at a residual of 1e-9: two solvers, one eigenvalue
    lanczos_top = curvature.top_eigenvalues(case.op, 1, tol=1e-9).values[0]
    assert case.reference[0] == pytest.approx(lanczos_top, rel=1e-9)


@pytest.mark.parametrize("k, tol", [(1, 1e-4), (TOP, 1e-3)])
def test_actual_error_against_arpack_is_within_the_reported_residual(case, k, tol):
    for seed in range(3):
        eigen = curvature.top_eigenvalues(case.op, k, tol=tol, seed=seed)
        assert eigen.converged
        theta, r = np.array(eigen.values[:k]), np.array(eigen.residuals[:k])
        error = np.abs(theta - case.reference[:k])
        rounding = 1e-12 * np.abs(case.reference[:k])  # both solvers' float64 floor, beyond any bound
        assert (error <= r + rounding).all(), (seed, error, r)
        assert (theta <= case.reference[:k] * (1 + 1e-12)).all()  # Ritz values are lower bounds (interlacing)
        assert (r <= tol * np.abs(theta)).all()  # the stop asked for


def test_reported_residuals_are_the_true_residuals_of_the_reported_pairs(resnet20_shaped):
    op = resnet20_shaped.op
    eigen = curvature.top_eigenvalues(op, 3, tol=1e-2, seed=0)
    for value, vector, reported in zip(eigen.values, eigen.vectors, eigen.residuals):
        true = float((op(vector) - value * vector).norm())
        assert reported == pytest.approx(true, rel=1e-6)


def test_record_and_hessian_json_name_the_residuals_and_what_they_bound(small_cnn):
    op = small_cnn.op
    result = hessian(op.model, op.batches, HessianConfig(top_k=2, tol=1e-3, trace=False))
    assert result.record()["eigen_residuals"] == result.eigen_residuals and len(result.eigen_residuals) == 2
    details = result.details()
    assert "eigen_error_bounds" not in details
    assert "some eigenvalue of H lies in [theta_i - r_i, theta_i + r_i]" in details["eigen_residuals_bound"]
    assert "Not guaranteed: that the eigenvalue within r_i is the i-th" in details["eigen_residuals_bound"]
    errors = np.abs(np.array(result.eigenvalues) - small_cnn.reference[:2])
    assert (errors <= np.array(result.eigen_residuals) + 1e-12 * small_cnn.reference[:2]).all()
