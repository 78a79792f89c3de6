"""Claims about qatbench's curvature code, checked against exact Hessians of tiny networks.

Two float64 networks small enough for `torch.autograd.functional.hessian` over every curvature
parameter: an MLP Linear(5,6)-Tanh-Linear(6,3) (57 weights) and a W4A4 LSQ-quantized
Conv2d(1,2,3)-ReLU-Flatten-Linear(32,3) (119 weights, step sizes held fixed). On the quantized
net the exact Hessian is that of the straight-through surrogate (tests/test_hvp.py), which is
what double backward differentiates. Stochastic claims (Hutchinson, SLQ) are checked against
the exact variance of a Rademacher quadratic form, Var(z^T A z) = 2 (||A||_F^2 - sum_i A_ii^2).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from qatbench.analysis import hessian as curvature
from qatbench.analysis.lanczos import Tridiagonal, lanczos, top_ritz_converged
from qatbench.analysis.measure import hessian
from qatbench.analysis.operator import HessianOperator, curvature_parameters, layer_of
from qatbench.config.analysis import HessianConfig
from qatbench.config.spec import QuantSpec
from qatbench.quant import calibrate, quantize_model

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class Net:
    """A tiny network, its data in uneven batches, and the exact Hessian of the mean loss over all of it."""

    model: nn.Module
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    x: torch.Tensor  # the batches concatenated
    y: torch.Tensor
    H: torch.Tensor  # (dim, dim)
    eigenvalues: torch.Tensor  # descending
    eigenvectors: torch.Tensor  # columns, in the same order

    @property
    def dim(self) -> int:
        return self.H.shape[0]

    def operator(self, **kwargs) -> HessianOperator:
        return HessianOperator(self.model, self.batches, **kwargs)

    def block(self, layer: str) -> torch.Tensor:
        """The diagonal block of H belonging to the parameters of `layer`."""
        mask = torch.cat(
            [torch.full((p.numel(),), layer_of(name) == layer) for name, p in curvature_parameters(self.model).items()]
        )
        assert mask.any()  # the layer owns some parameters
        return self.H[mask][:, mask]


def _flat_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """w -> mean cross-entropy of `model` with its curvature parameters replaced by the flat w."""
    params = curvature_parameters(model)
    names, shapes = list(params), [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]

    def loss(w: torch.Tensor) -> torch.Tensor:
        pieces = {n: t.view(s) for n, t, s in zip(names, torch.split(w, sizes), shapes)}
        return F.cross_entropy(functional_call(model, pieces, (x,)), y)

    return loss


def _flat_weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in curvature_parameters(model).values()])


def _net(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sizes: list[int]) -> Net:
    batches = list(zip(torch.split(x, sizes), torch.split(y, sizes)))
    H = torch.autograd.functional.hessian(_flat_loss(model, x, y), _flat_weights(model))
    values, vectors = torch.linalg.eigh(H)
    return Net(model, batches, x, y, H, values.flip(0), vectors.flip(1))


@pytest.fixture(scope="module")
def mlp() -> Net:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double().eval()
    x, y = torch.randn(24, 5, dtype=torch.float64), torch.randint(0, 3, (24,))
    return _net(model, x, y, [10, 8, 6])


@pytest.fixture(scope="module")
def qcnn() -> Net:
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double()
    x, y = torch.randn(18, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (18,))
    model = quantize_model(float_model.eval(), QuantSpec(w_bits=4, a_bits=4, first_last="same")).eval()
    calibrate(model, x)
    return _net(model, x, y, [8, 6, 4])


@pytest.fixture(params=["mlp", "qcnn"])
def net(request) -> Net:
    return request.getfixturevalue(request.param)


def _randn(dim: int, seed: int) -> torch.Tensor:
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rademacher_variance(A: torch.Tensor) -> float:
    """Var(z^T A z) for z with independent +-1 entries."""
    return float(2 * ((A**2).sum() - (A.diagonal() ** 2).sum()))


def _steps(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "quant" in name}


# --- the operator -------------------------------------------------------------------------------


def test_hvp_equals_exact_hessian_times_vector(net):
    op = net.operator()
    for seed in range(3):
        v = _randn(net.dim, seed)
        exact = net.H @ v
        assert (op(v) - exact).norm() <= 1e-10 * exact.norm()


def test_operator_over_uneven_batches_is_that_of_one_concatenated_batch(net):
    many, one = net.operator(), HessianOperator(net.model, [(net.x, net.y)])
    assert len(many.batches) == 3 and many.n == len(net.y)
    v = _randn(net.dim, 7)
    assert (many(v) - one(v)).norm() <= 1e-12 * one(v).norm()
    with torch.no_grad():
        assert many.loss() == pytest.approx(float(F.cross_entropy(net.model(net.x), net.y)), rel=1e-12)
    w = _flat_weights(net.model).requires_grad_()
    (exact_gradient,) = torch.autograd.grad(_flat_loss(net.model, net.x, net.y)(w), w)
    assert (many.gradient() - exact_gradient).norm() <= 1e-12 * exact_gradient.norm()
    # the unweighted mean of the three batch means is another function: weighting matters here
    with torch.no_grad():
        unweighted = sum(float(F.cross_entropy(net.model(x), y)) for x, y in net.batches) / 3
    assert abs(unweighted - many.loss()) > 1e-6


def test_hvp_equals_central_differences_of_the_gradient_on_mlp(mlp):
    loss, w0, v, eps = _flat_loss(mlp.model, mlp.x, mlp.y), _flat_weights(mlp.model), _randn(mlp.dim, 3), 1e-5

    def gradient(w):
        w = w.clone().requires_grad_()
        return torch.autograd.grad(loss(w), w)[0]

    finite_difference = (gradient(w0 + eps * v) - gradient(w0 - eps * v)) / (2 * eps)
    hv = mlp.operator()(v)
    assert (hv - finite_difference).norm() <= 1e-8 * hv.norm()


def test_uncached_graph_gives_the_same_products(net):
    cached, uncached = net.operator(), net.operator(cache_graph=False)
    assert cached._grads is not None and uncached._grads is None
    for seed in range(2):
        v = _randn(net.dim, seed)
        assert (uncached(v) - cached(v)).norm() <= 1e-13 * cached(v).norm()


def test_each_product_is_counted_once_whatever_the_number_of_batches(mlp):
    op = mlp.operator()
    assert op.products == 0
    for k in range(1, 4):
        op(_randn(mlp.dim, k))
        assert op.products == k


def test_quantizer_step_sizes_are_not_curvature_parameters(qcnn):
    op = qcnn.operator()
    assert any("quant" in name for name, _ in qcnn.model.named_parameters())  # there are step sizes to leave out
    assert op.layout.names == ("0.weight", "0.bias", "3.weight", "3.bias")
    assert op.layout.layers == ("0", "3")
    assert op.dim == 2 * 9 + 2 + 32 * 3 + 3 == qcnn.dim


def test_hvp_on_quantized_net_leaves_step_sizes_and_grads_untouched(qcnn):
    steps = _steps(qcnn.model)
    weights = {name: p.detach().clone() for name, p in qcnn.model.named_parameters()}
    op = qcnn.operator()
    op(_randn(qcnn.dim, 0))
    assert steps and all(torch.equal(qcnn.model.get_parameter(name), s) for name, s in steps.items())
    assert all(torch.equal(qcnn.model.get_parameter(name), w) for name, w in weights.items())
    assert all(p.grad is None for p in qcnn.model.parameters())


# --- Lanczos and top eigenvalues ----------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
def test_top_eigenvalues_equal_exact_ones(net, k):
    op = net.operator()
    eigen = curvature.top_eigenvalues(op, k, tol=1e-6, max_steps=100)
    exact = net.eigenvalues[:k]
    assert eigen.converged
    assert len(eigen.values) == k
    torch.testing.assert_close(torch.tensor(eigen.values, dtype=torch.float64), exact, rtol=1e-6, atol=0)
    for value, vector in zip(eigen.values, eigen.vectors):
        assert float(vector.norm()) == pytest.approx(1.0, abs=1e-12)
        assert float((net.H @ vector - value * vector).norm()) <= 1e-3 * abs(value)
    assert eigen.products == op.products  # every Lanczos step is one product, all counted
    assert eigen.products < net.dim  # stopped by the convergence test, long before the Krylov space runs out


def test_top_eigenvalue_residuals_bound_the_error_and_ritz_values_are_lower_bounds(mlp):
    """An eigenvalue within r of each theta (the guarantee), theta_i <= lambda_i (interlacing), and
    once converged the one within r is the i-th itself."""
    op = mlp.operator()
    for seed in range(6):
        for tol, steps in ((1e-6, 100), (1.0, 3)):  # converged, and three steps from anywhere
            eigen = curvature.top_eigenvalues(op, 3, tol=tol, max_steps=steps, seed=seed)
            theta, r = torch.tensor(eigen.values, dtype=torch.float64), torch.tensor(eigen.residuals)
            nearest = (theta[:, None] - mlp.eigenvalues[None, :]).abs().min(1).values
            assert (nearest <= r + 1e-12).all()
            assert (theta <= mlp.eigenvalues[:3] + 1e-12).all()
            if tol < 1 and eigen.converged:  # 2k + 2 steps and small residuals: not a guarantee, the usual case
                assert ((theta - mlp.eigenvalues[:3]).abs() <= r + 1e-14).all()


@pytest.mark.parametrize("k", [1, 5])
def test_residual_stop_at_1e_minus_4_reaches_that_relative_error_on_each_of_the_top_k(net, k):
    """The matched-accuracy setting of bench_hessian.py: tol 1e-4 gives every one of the top k within 1e-4."""
    op = net.operator()
    for seed in range(4):
        eigen = curvature.top_eigenvalues(op, k, tol=1e-4, seed=seed)
        assert eigen.converged and eigen.products < net.dim
        exact = net.eigenvalues[:k]
        errors = (torch.tensor(eigen.values[:k], dtype=torch.float64) - exact).abs() / exact.abs()
        assert (errors <= 1e-4).all(), (seed, errors)
        assert (torch.tensor(eigen.residuals[:k]) <= 1e-4 * exact.abs() * (1 + 1e-9)).all()


def test_top_three_eigenvalues_at_the_default_tolerance_are_the_three_largest(mlp):
    eigen = curvature.top_eigenvalues(mlp.operator(), 3, tol=1e-3, seed=0)
    assert eigen.converged
    torch.testing.assert_close(torch.tensor(eigen.values, dtype=torch.float64), mlp.eigenvalues[:3], rtol=1e-3, atol=0)


def test_ritz_residuals_are_the_true_residuals_and_bound_the_distance_to_the_spectrum(mlp):
    """||H y - theta y|| = beta_m |s_m| for every Ritz pair, and some eigenvalue lies within it."""
    op = mlp.operator()
    for steps in (3, 8, 15):
        tri = lanczos(op, _randn(mlp.dim, steps), steps)
        theta, coefficients, residuals = tri.ritz()
        vectors = torch.as_tensor(coefficients).T @ tri.basis  # (steps, dim) Ritz vectors
        true = (vectors @ mlp.H - torch.as_tensor(theta)[:, None] * vectors).norm(dim=1)
        np.testing.assert_allclose(residuals, true.numpy(), rtol=1e-8, atol=1e-12)
        distance = (torch.as_tensor(theta)[:, None] - mlp.eigenvalues[None, :]).abs().min(1).values
        assert (distance.numpy() <= residuals + 1e-12).all()


def test_lanczos_stops_at_the_first_step_the_convergence_test_accepts(mlp):
    op = mlp.operator()
    seen: list[int] = []

    def after_five(tri: Tridiagonal) -> bool:
        seen.append(tri.steps)
        return tri.steps == 5

    tri = lanczos(op, _randn(mlp.dim, 0), 40, converged=after_five)
    assert tri.steps == 5 and op.products == 5 and seen == [1, 2, 3, 4, 5]
    assert lanczos(op, _randn(mlp.dim, 0), 7).steps == 7  # no test: runs to max_steps


def test_lanczos_stops_when_the_krylov_space_is_exhausted():
    """A 10x10 operator with 3 distinct eigenvalues: three steps span its Krylov space, and give them exactly."""
    diagonal = torch.tensor([3.0, 3.0, 3.0, 1.0, 1.0, -2.0, -2.0, -2.0, -2.0, 1.0], dtype=torch.float64)
    calls = []

    def operator(v):
        calls.append(1)
        return diagonal * v

    tri = lanczos(operator, torch.ones(10, dtype=torch.float64), 10)
    assert tri.steps == 3 == len(calls)
    np.testing.assert_allclose(tri.ritz()[0], [3.0, 1.0, -2.0], atol=1e-12)
    assert tri.betas[-1] < 1e-10


def test_lanczos_basis_is_orthonormal(mlp):
    tri = lanczos(mlp.operator(), _randn(mlp.dim, 1), 40)
    gram = tri.basis @ tri.basis.T
    assert (gram - torch.eye(tri.steps, dtype=torch.float64)).abs().max() <= 1e-12


def test_unconverged_eigenvalues_are_reported_as_such(mlp):
    op = mlp.operator()
    eigen = curvature.top_eigenvalues(op, 3, tol=1e-12, max_steps=4)
    assert not eigen.converged
    assert eigen.products == 4


def test_top_ritz_converged_needs_2k_plus_2_steps_and_small_residuals(mlp):
    tri = lanczos(mlp.operator(), _randn(mlp.dim, 0), 4)
    assert not top_ritz_converged(2, 1.0)(tri)  # four steps cannot certify two values: 2k + 2 = 6
    theta, _, residuals = tri.ritz()
    assert top_ritz_converged(1, float(residuals[0] / abs(theta[0])) * 1.01)(tri)
    assert not top_ritz_converged(1, float(residuals[0] / abs(theta[0])) * 0.99)(tri)


# --- trace --------------------------------------------------------------------------------------


def test_trace_is_within_three_standard_errors_of_exact(net):
    op, exact = net.operator(), float(net.H.trace())
    for seed in range(5):
        estimate = curvature.trace(op, rel_stderr=0.2, max_probes=400, seed=seed)
        assert abs(estimate.mean - exact) <= 3 * estimate.stderr


def test_trace_standard_error_is_honest(mlp):
    """Over 30 seeds of 20 probes: the mean falls within 2 standard errors about 95% of the time, and
    the per-probe variance is the exact Var(z^T H z)."""
    op, exact = mlp.operator(), float(mlp.H.trace())
    estimates = [curvature.trace(op, min_probes=20, max_probes=20, seed=seed) for seed in range(30)]
    inside = np.mean([abs(e.mean - exact) <= 2 * e.stderr for e in estimates])
    assert inside >= 0.8
    assert all(e.stderr == pytest.approx(np.std(e.samples, ddof=1) / math.sqrt(20), rel=1e-9) for e in estimates)
    per_probe_variance = np.mean([np.var(e.samples, ddof=1) for e in estimates])
    assert per_probe_variance == pytest.approx(_rademacher_variance(mlp.H), rel=0.25)


def _ritz_pairs(op: HessianOperator, steps: int, seed: int) -> curvature.Eigen:
    """The top three Ritz pairs after `steps` Lanczos steps, converged or not (orthonormal either way)."""
    tri = lanczos(op, _randn(op.dim, seed), steps)
    theta, coefficients, residuals = tri.ritz()
    vectors = torch.as_tensor(coefficients[:, :3]).T @ tri.basis
    return curvature.Eigen(list(theta[:3]), vectors, list(residuals[:3]), steps, False)


@pytest.mark.parametrize("lanczos_steps", [4, 30])
def test_deflated_trace_is_unbiased_and_spreads_less(mlp, lanczos_steps):
    """With pairs (V, Theta), each probe estimates tr(H - V Theta V^T): its variance is that of the
    remainder's quadratic form, and the mean is tr(H) whether or not the pairs have converged."""
    op, exact = mlp.operator(), float(mlp.H.trace())
    pairs = _ritz_pairs(op, lanczos_steps, seed=11)
    remainder = mlp.H - pairs.vectors.T @ torch.diag(torch.tensor(pairs.values)) @ pairs.vectors
    deflated = [curvature.trace(op, min_probes=30, max_probes=30, deflate=pairs, seed=s) for s in range(10)]
    plain = [curvature.trace(op, min_probes=30, max_probes=30, seed=s) for s in range(10)]
    assert all(d.deflated == 3 and d.products == 30 + lanczos_steps for d in deflated)
    assert all(abs(d.mean - exact) <= 3 * d.stderr for d in deflated)
    deflated_variance = np.mean([np.var(d.samples, ddof=1) for d in deflated])
    plain_variance = np.mean([np.var(p.samples, ddof=1) for p in plain])
    assert deflated_variance == pytest.approx(_rademacher_variance(remainder), rel=0.25)
    assert deflated_variance < 0.8 * plain_variance
    pooled = np.mean([d.mean for d in deflated])  # 300 probes: a tighter check of unbiasedness
    assert abs(pooled - exact) <= 3 * math.sqrt(_rademacher_variance(remainder) / 300)


def test_deflation_by_all_eigenpairs_gives_the_exact_trace_with_no_spread(net):
    op = net.operator()
    everything = curvature.top_eigenvalues(op, net.dim, tol=1e-10, max_steps=net.dim)
    estimate = curvature.trace(op, min_probes=3, max_probes=3, deflate=everything)
    scale = float(net.H.abs().sum())
    assert estimate.mean == pytest.approx(float(net.H.trace()), abs=1e-10 * scale)
    assert estimate.stderr <= 1e-10 * scale
    for layer, (mean, _) in estimate.layers.items():
        assert mean == pytest.approx(float(net.block(layer).trace()), abs=1e-10 * scale)


def _target_met(samples: list[float], m: int, rel_stderr: float) -> bool:
    """Whether the first m probes have a standard error within rel_stderr of their mean."""
    first = np.asarray(samples[:m])
    return np.std(first, ddof=1) / math.sqrt(m) <= rel_stderr * abs(np.mean(first))


def test_trace_stops_at_the_first_probe_meeting_the_standard_error_asked(mlp):
    op = mlp.operator()
    loose = curvature.trace(op, rel_stderr=0.5, min_probes=10, max_probes=300)
    medium = curvature.trace(op, rel_stderr=0.2, min_probes=10, max_probes=300)
    tight = curvature.trace(op, rel_stderr=1e-4, min_probes=10, max_probes=60)
    tiny = curvature.trace(op, rel_stderr=0.99, min_probes=10, max_probes=300)
    assert 10 <= loose.probes < medium.probes < 300
    assert tight.probes == 60  # the target is out of reach: max_probes ends it
    assert tiny.probes == 10  # never fewer than min_probes, however loose the target
    for estimate, target in ((loose, 0.5), (medium, 0.2)):
        assert estimate.products == estimate.probes
        assert _target_met(estimate.samples, estimate.probes, target)
        assert not any(_target_met(estimate.samples, m, target) for m in range(10, estimate.probes))


def test_per_layer_traces_equal_exact_diagonal_blocks_and_sum_to_the_total(net):
    op = net.operator()
    estimate = curvature.trace(op, min_probes=300, max_probes=300, seed=3)
    assert tuple(estimate.layers) == op.layout.layers
    for layer, (mean, stderr) in estimate.layers.items():
        assert abs(mean - float(net.block(layer).trace())) <= 3.5 * stderr
    assert sum(mean for mean, _ in estimate.layers.values()) == pytest.approx(estimate.mean, rel=1e-10)
    deflated = curvature.trace(op, min_probes=20, max_probes=20, deflate=_ritz_pairs(op, 10, seed=0))
    assert sum(mean for mean, _ in deflated.layers.values()) == pytest.approx(deflated.mean, rel=1e-10)


# --- spectral density ---------------------------------------------------------------------------


def _moment(H: torch.Tensor, v: torch.Tensor, p: int) -> float:
    """v^T H^p v / v^T v."""
    return float(v @ torch.linalg.matrix_power(H, p) @ v / (v @ v))


def test_gauss_quadrature_reproduces_moments_up_to_degree_2m_minus_1(mlp):
    v = _randn(mlp.dim, 5)
    scale = float(mlp.eigenvalues.abs().max())
    m = 5
    nodes, weights = lanczos(mlp.operator(), v, m).quadrature()
    assert len(nodes) == m and weights.sum() == pytest.approx(1.0, abs=1e-12)
    for p in range(2 * m):
        assert np.sum(weights * nodes**p) == pytest.approx(_moment(mlp.H, v, p), abs=1e-10 * scale**p)
    assert abs(np.sum(weights * nodes ** (2 * m)) - _moment(mlp.H, v, 2 * m)) > 1e-6 * scale ** (2 * m)


def test_gauss_quadrature_over_the_whole_krylov_space_reproduces_every_moment(mlp):
    v = _randn(mlp.dim, 6)
    scale = float(mlp.eigenvalues.abs().max())
    tri = lanczos(mlp.operator(), v, mlp.dim)
    nodes, weights = tri.quadrature()
    assert tri.steps < mlp.dim  # the 7-fold null space (softmax shift invariance) ends the space early
    for p in range(2 * tri.steps + 4):
        assert np.sum(weights * nodes**p) == pytest.approx(_moment(mlp.H, v, p), abs=1e-9 * scale**p)


def test_density_moments_estimate_normalized_traces(mlp):
    op, runs, steps, n = mlp.operator(), 40, 4, mlp.dim
    estimate = curvature.density(op, runs=runs, steps=steps, seed=0)
    assert estimate.nodes.shape == estimate.weights.shape == (runs, steps)
    assert estimate.products == runs * steps
    np.testing.assert_allclose(estimate.weights.sum(1), 1.0, atol=1e-12)
    low, high = float(mlp.eigenvalues[-1]), float(mlp.eigenvalues[0])
    assert (estimate.nodes >= low - 1e-12).all() and (estimate.nodes <= high + 1e-12).all()
    for p in (1, 2):
        Hp = torch.linalg.matrix_power(mlp.H, p)
        sigma = math.sqrt(_rademacher_variance(Hp) / runs) / n
        assert abs(estimate.moment(p) - float(Hp.trace()) / n) <= 4 * sigma


def test_density_pads_runs_that_exhaust_the_krylov_space_with_zero_weight(mlp):
    estimate = curvature.density(mlp.operator(), runs=2, steps=mlp.dim, seed=0)
    assert estimate.nodes.shape == (2, mlp.dim)
    np.testing.assert_allclose(estimate.weights.sum(1), 1.0, atol=1e-12)
    assert (estimate.weights[:, -3:] == 0).all()
    assert estimate.products < 2 * mlp.dim


# --- measure.hessian: backends, and the model left as found -------------------------------------


def test_fast_backend_reports_exact_values_on_the_quantized_net(qcnn):
    config = HessianConfig(top_k=3, tol=1e-6, rel_stderr=0.1, deflate=3, density=True, density_runs=2)
    result = hessian(qcnn.model, qcnn.batches, config)
    assert result.backend == "fast" and result.eigen_converged
    np.testing.assert_allclose(result.eigenvalues, qcnn.eigenvalues[:3].numpy(), rtol=1e-6)
    assert abs(result.trace - float(qcnn.H.trace())) <= 3 * result.trace_stderr
    assert result.trace_deflated == 3 and result.trace_probes >= config.min_probes
    with torch.no_grad():
        assert result.loss == pytest.approx(float(F.cross_entropy(qcnn.model(qcnn.x), qcnn.y)), rel=1e-12)
    assert set(result.layer_trace) == {"0", "3"}
    assert result.density is not None and result.density.weights.shape[0] == 2
    top = result.top_vector
    assert float((qcnn.H @ top - result.eigenvalues[0] * top).norm()) <= 1e-3 * result.eigenvalues[0]
    assert result.record()["top_eigenvalue"] == result.eigenvalues[0]


@pytest.mark.parametrize("split", [1, 2], ids=["one-batch", "two-batches"])
def test_pyhessian_and_fast_backends_agree_with_each_other_and_with_exact(mlp, split):
    batches = list(zip(torch.split(mlp.x, 24 // split), torch.split(mlp.y, 24 // split)))
    common = dict(top_k=1, tol=1e-8, max_steps=300, rel_stderr=0.1, min_probes=10, max_probes=400, deflate=0)
    fast = hessian(mlp.model, batches, HessianConfig(**common))
    reference = hessian(mlp.model, batches, HessianConfig(backend="pyhessian", **common), seed=1)
    exact_top, exact_trace = float(mlp.eigenvalues[0]), float(mlp.H.trace())
    assert reference.backend == "pyhessian"
    assert fast.eigenvalues[0] == pytest.approx(exact_top, rel=1e-6)
    assert reference.eigenvalues[0] == pytest.approx(exact_top, rel=1e-5)
    assert 0 < reference.eigen_products <= 300
    assert abs(fast.trace - reference.trace) <= 3 * math.hypot(fast.trace_stderr, reference.trace_stderr)
    assert abs(reference.trace - exact_trace) <= 3 * reference.trace_stderr
    assert reference.trace_probes == len(reference.trace_samples) >= 10
    assert reference.trace_products == reference.trace_probes
    assert reference.loss == pytest.approx(fast.loss, rel=1e-12)


def test_pyhessian_backend_leaves_grads_none_and_quantizer_steps_trainable(qcnn):
    steps = _steps(qcnn.model)
    config = HessianConfig(backend="pyhessian", top_k=1, tol=1e-8, max_steps=300, min_probes=3, max_probes=3)
    result = hessian(qcnn.model, [(qcnn.x, qcnn.y)], config)
    assert result.eigenvalues[0] == pytest.approx(float(qcnn.eigenvalues[0]), rel=1e-4)
    assert all(p.grad is None for p in qcnn.model.parameters())
    assert all(qcnn.model.get_parameter(name).requires_grad for name in steps)
    assert all(torch.equal(qcnn.model.get_parameter(name), s) for name, s in steps.items())


@pytest.mark.parametrize("backend", ["fast", "pyhessian"])
def test_hessian_leaves_the_model_as_found(qcnn, backend):
    model = copy.deepcopy(qcnn.model).train()
    state = copy.deepcopy(model.state_dict())  # tensors, and the quantizers' extra state
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    config = HessianConfig(backend=backend, top_k=1, min_probes=2, max_probes=2, density=backend == "fast")
    hessian(model, qcnn.batches, config)
    assert all(m.training for m in model.modules())
    after = model.state_dict()
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], v) if torch.is_tensor(v) else after[k] == v for k, v in state.items())
    assert {name: p.requires_grad for name, p in model.named_parameters()} == trainable
    assert all(p.grad is None for p in model.parameters())


def test_hessian_restores_the_mode_of_every_submodule(mlp):
    model = copy.deepcopy(mlp.model).train()
    model[1].eval()
    modes = [m.training for m in model.modules()]
    hessian(model, mlp.batches, HessianConfig(trace=False))
    assert [m.training for m in model.modules()] == modes


@pytest.mark.parametrize("backend", ["fast", "pyhessian"])
def test_non_finite_loss_raises_floating_point_error(qcnn, backend):
    model = copy.deepcopy(qcnn.model).train()
    x = qcnn.x.clone()
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite"):
        hessian(model, [(x, qcnn.y)], HessianConfig(backend=backend))
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_batched_products_equal_one_at_a_time_and_batched_probes_give_the_same_trace(net):
    op = net.operator()
    vectors = torch.stack([_randn(net.dim, seed) for seed in range(4)])
    before = op.products
    batched = op.many(vectors)
    assert op.products - before == 4  # a batched pass counts every product it makes
    torch.testing.assert_close(batched, torch.stack([net.H @ v for v in vectors]), rtol=1e-10, atol=1e-12)
    one = curvature.trace(op, rel_stderr=0.0, max_probes=24, seed=7)
    eight = curvature.trace(op, rel_stderr=0.0, max_probes=24, seed=7, probes_per_pass=8)
    assert eight.samples == pytest.approx(one.samples, rel=1e-10) and eight.probes == one.probes == 24
