"""Top eigenvalues, trace (with its standard error), per-layer trace and spectral density of the
Hessian of a model's loss: how sharp a (quantized) minimum is, with honest error bars.

- Top eigenvalues: Lanczos with a residual-based stop (`lanczos.py`), not deflated power iteration.
- Trace: Hutchinson with Rademacher probes (Hutchinson 1989), made cheaper by deflation: with Ritz
  pairs (V, Theta) of the top of the spectrum, tr(H) = sum(Theta) + tr(H - V Theta V^T) exactly for
  any orthonormal V, and only the remainder, whose outliers are gone, is estimated from probes
  (the control variate of Hutch++, Meyer et al. 2021, and of deflated Hutchinson, Gambhir et al.
  2017). Probes stop at a target relative standard error, never on a change of the running mean
  (PyHessian's stop, which can end after two probes with the wrong sign).
- Per-layer trace: the same probes, their products summed within each layer's coordinates.
- Density: stochastic Lanczos quadrature (Lin, Saad & Yang 2016; Ghorbani et al. 2019).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from qatbench.analysis.lanczos import Tridiagonal, lanczos, top_ritz_converged
from qatbench.analysis.operator import HessianOperator


@dataclass
class Eigen:
    values: list[float]  # largest first
    vectors: torch.Tensor  # (k, dim), unit rows
    residuals: list[float]  # ||H v - theta v||: an eigenvalue lies within it (lanczos.GUARANTEE)
    products: int
    converged: bool


@dataclass
class Trace:
    mean: float
    stderr: float
    probes: int
    products: int  # probes plus the products spent on deflation
    deflated: int  # Ritz pairs taken out exactly
    layers: dict[str, tuple[float, float]] = field(default_factory=dict)  # layer -> (mean, stderr)
    samples: list[float] = field(default_factory=list)  # per-probe estimates of the whole trace

    @property
    def rel_stderr(self) -> float:
        return self.stderr / abs(self.mean) if self.mean else math.inf


@dataclass
class Density:
    nodes: np.ndarray  # (runs, steps) quadrature nodes
    weights: np.ndarray  # (runs, steps) their weights; each row sums to 1
    products: int

    def moment(self, p: int) -> float:
        """Estimate of tr(H^p) / n, the p-th moment of the spectral density."""
        return float(np.mean(np.sum(self.weights * self.nodes**p, axis=1)))


def rademacher(dim: int, generator: torch.Generator, dtype, device) -> torch.Tensor:
    return (torch.randint(0, 2, (dim,), generator=generator) * 2 - 1).to(dtype=dtype, device=device)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def top_eigenvalues(
    op: HessianOperator,
    k: int = 1,
    *,
    tol: float = 1e-3,
    max_steps: int = 100,
    seed: int = 0,
    extra: int = 0,
    extra_tol: float = 1e-2,
) -> Eigen:
    """The k largest eigenvalues and their eigenvectors, each within `tol` (relative: the pair's
    residual over |theta|) unless `max_steps` products run out first (then `converged` is False).
    `extra` more pairs come along at the looser `extra_tol`: enough to deflate a trace with."""
    start = torch.randn(op.dim, generator=_generator(seed), dtype=torch.float64).to(op.dtype).to(op.device)
    before = op.products
    # the extra pairs only deflate a trace, which stays unbiased however rough they are: no 2k + 2 guard
    sharp, loose = top_ritz_converged(k, tol), top_ritz_converged(k + extra, extra_tol, min_steps=k + extra + 1)
    tri = lanczos(op, start, max_steps, converged=lambda t: sharp(t) and (extra == 0 or loose(t)))
    theta, coefficients, residuals = tri.ritz()
    n = min(k + extra, tri.steps)
    vectors = _ritz_vectors(tri, coefficients[:, :n])
    k = min(k, n)
    return Eigen(
        values=[float(t) for t in theta[:n]],
        vectors=vectors,
        residuals=[float(r) for r in residuals[:n]],
        products=op.products - before,
        converged=bool(np.all(residuals[:k] <= tol * np.abs(theta[:k]))) or tri.betas[-1] <= 1e-10,
    )


def _ritz_vectors(tri: Tridiagonal, coefficients: np.ndarray) -> torch.Tensor:
    c = torch.as_tensor(coefficients, dtype=tri.basis.dtype, device=tri.basis.device)
    return c.T @ tri.basis


def trace(
    op: HessianOperator,
    *,
    rel_stderr: float = 0.05,
    max_probes: int = 1000,
    min_probes: int = 10,
    deflate: Eigen | None = None,
    seed: int = 0,
    check_every: int = 1,
    probes_per_pass: int = 1,
) -> Trace:
    """Hutchinson's estimate of tr(H), per layer too, stopping once its standard error is below
    `rel_stderr` of its magnitude (after at least `min_probes`) or after `max_probes` probes.

    With `deflate` (Ritz pairs from `top_eigenvalues`), each probe estimates the trace of
    H - V Theta V^T and sum(Theta) is added back: unbiased whatever the pairs' accuracy, and the
    spread shrinks by the outliers' share of ||H||_F^2. `probes_per_pass` > 1 batches probes
    through one double backward (`HessianOperator.many`).
    """
    generator = _generator(seed)
    layout = op.layout
    if deflate is not None and len(deflate.values):
        vectors = deflate.vectors
        theta = torch.as_tensor(deflate.values, dtype=op.dtype, device=op.device)
        exact_total = float(theta.sum())
        exact_layers = layout.per_layer((theta[:, None] * vectors**2).sum(0))
    else:
        vectors, theta, exact_total = None, None, 0.0
        exact_layers = torch.zeros(len(layout.layers), dtype=op.dtype, device=op.device)
    before = op.products
    samples: list[torch.Tensor] = []  # per probe: (layers,) estimates, kept on the device
    while len(samples) < max_probes:
        count = min(probes_per_pass, max_probes - len(samples))
        z = torch.stack([rademacher(op.dim, generator, op.dtype, op.device) for _ in range(count)])
        hz = op.many(z)
        if vectors is not None:  # subtract V Theta V^T z
            hz = hz - ((z @ vectors.T) * theta) @ vectors
        samples.extend(layout.per_layer(z * hz).unbind(0))
        probe = len(samples)
        if probe >= min_probes and (probe // check_every > (probe - count) // check_every or probe == max_probes):
            total = torch.stack(samples).sum(1)
            mean = exact_total + float(total.mean())
            stderr = float(total.std()) / math.sqrt(probe)
            if stderr <= rel_stderr * abs(mean):
                break
    stack = torch.stack(samples)
    total = stack.sum(1)
    n = len(samples)
    layer_means = (exact_layers + stack.mean(0)).tolist()
    layer_errs = (stack.std(0) / math.sqrt(n)).tolist() if n > 1 else [math.inf] * len(layout.layers)
    total_err = float(total.std()) / math.sqrt(n) if n > 1 else math.inf
    return Trace(
        mean=exact_total + float(total.mean()),
        stderr=total_err,
        probes=n,
        products=op.products - before + (deflate.products if deflate is not None else 0),
        deflated=0 if vectors is None else len(deflate.values),
        layers={name: (m, e) for name, m, e in zip(layout.layers, layer_means, layer_errs)},
        samples=(exact_total + total).tolist(),
    )


def density(op: HessianOperator, *, runs: int = 1, steps: int = 80, seed: int = 0) -> Density:
    """Stochastic Lanczos quadrature: `runs` Lanczos runs of `steps` products from Rademacher
    starts; the spectral density is the average of their weighted nodes (smoothed for plots)."""
    generator = _generator(seed + 1)
    before = op.products
    nodes, weights = [], []
    for _ in range(runs):
        tri = lanczos(op, rademacher(op.dim, generator, op.dtype, op.device), steps)
        theta, w = tri.quadrature()
        nodes.append(np.pad(theta, (0, steps - len(theta))))
        weights.append(np.pad(w, (0, steps - len(w))))  # an exhausted Krylov space: zero-weight padding
    return Density(nodes=np.array(nodes), weights=np.array(weights), products=op.products - before)
