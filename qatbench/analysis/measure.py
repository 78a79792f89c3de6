"""`hessian(...)` and `landscape(...)`: the analyses on any model, loss and fixed batches.

    result = qatbench.hessian(model, batches, HessianConfig(top_k=3, density=True))
    surface = qatbench.landscape(model, batches, LandscapeConfig(kind="1d"))

Both leave the model as they found it (mode, weights, `.grad`). The runner calls them on the
runs of a suite; researchers can call them on anything.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from qatbench.analysis import directions as dirs
from qatbench.analysis import hessian as curvature
from qatbench.analysis.lanczos import GUARANTEE
from qatbench.analysis.landscape import Surface, SurfaceEvaluator, compute_surface
from qatbench.analysis.operator import Batch, HessianOperator, curvature_parameters, modes_kept
from qatbench.analysis.pyhessian_backend import reference_hessian
from qatbench.config.analysis import HessianConfig, LandscapeConfig


@dataclass
class HessianResult:
    backend: str
    loss: float
    eigenvalues: list[float]
    eigen_products: int
    eigen_converged: bool | None = None
    eigen_residuals: list[float] = field(default_factory=list)  # what they bound: lanczos.GUARANTEE
    trace: float | None = None
    trace_stderr: float | None = None
    trace_probes: int | None = None
    trace_products: int | None = None
    trace_deflated: int | None = None
    trace_samples: list[float] = field(default_factory=list)
    layer_trace: dict[str, tuple[float, float]] = field(default_factory=dict)
    density: curvature.Density | None = None
    time_s: float = 0.0
    top_vector: torch.Tensor | None = field(default=None, repr=False)  # the top eigenvector (fast backend)

    def record(self) -> dict[str, Any]:
        """The scalars a run's record carries (report columns); details go to hessian.json."""
        return {
            "backend": self.backend,
            "loss": self.loss,
            "top_eigenvalue": self.eigenvalues[0] if self.eigenvalues else None,
            "eigenvalues": self.eigenvalues,
            "eigen_products": self.eigen_products,
            "eigen_converged": self.eigen_converged,
            "eigen_residuals": self.eigen_residuals,
            "trace": self.trace,
            "trace_stderr": self.trace_stderr,
            "trace_probes": self.trace_probes,
            "trace_products": self.trace_products,
            "time_s": round(self.time_s, 3),
        }

    def details(self) -> dict[str, Any]:
        density = None
        if self.density is not None:
            density = {"nodes": self.density.nodes.tolist(), "weights": self.density.weights.tolist()}
        return {
            **self.record(),
            "eigen_residuals_bound": GUARANTEE if self.eigen_residuals else None,
            "trace_deflated": self.trace_deflated,
            "trace_samples": self.trace_samples,
            "layer_trace": {name: list(v) for name, v in self.layer_trace.items()},
            "density": density,
        }


def _check_finite(loss: float) -> None:
    if not math.isfinite(loss):
        raise FloatingPointError(f"the loss on the analysis subset is not finite ({loss})")


def hessian(
    model: nn.Module,
    batches: Sequence[Batch],
    config: HessianConfig | None = None,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    seed: int = 0,
) -> HessianResult:
    """Top eigenvalues, trace (± standard error, per layer) and density of the loss Hessian
    w.r.t. the weights on `batches`, the model in eval mode, quantizer step sizes held fixed."""
    config = config or HessianConfig()
    started = time.time()
    with modes_kept(model):
        try:
            return _hessian(model, batches, config, loss_fn, seed, started)
        finally:
            model.zero_grad(set_to_none=True)


def _hessian(model, batches, config: HessianConfig, loss_fn, seed: int, started: float) -> HessianResult:
    if config.backend == "pyhessian":
        op_loss = _mean_loss(model.eval(), batches, loss_fn)
        _check_finite(op_loss)
        values = reference_hessian(model, batches, config, loss_fn, seed)
        return HessianResult(
            backend="pyhessian", loss=op_loss, time_s=time.time() - started, trace_deflated=0, **values
        )
    op = HessianOperator(model, batches, loss_fn, cache_graph=config.cache_graph)
    loss = op.loss()
    _check_finite(loss)
    deflate = config.deflate if config.trace else 0
    eigen = curvature.top_eigenvalues(
        op,
        config.top_k,
        tol=config.tol,
        max_steps=config.max_steps,
        seed=seed,
        extra=max(deflate - config.top_k, 0),
    )
    result = HessianResult(
        backend="fast",
        loss=loss,
        eigenvalues=eigen.values[: config.top_k],
        eigen_residuals=eigen.residuals[: config.top_k],
        eigen_products=eigen.products,
        eigen_converged=eigen.converged,
        top_vector=eigen.vectors[0].detach(),
    )
    if config.trace:
        pairs = None
        if deflate:
            pairs = curvature.Eigen(
                eigen.values[:deflate], eigen.vectors[:deflate], eigen.residuals[:deflate], 0, eigen.converged
            )
        estimate = curvature.trace(
            op,
            rel_stderr=config.rel_stderr,
            min_probes=config.min_probes,
            max_probes=config.max_probes,
            deflate=pairs,
            seed=seed + 1,
            probes_per_pass=config.probes_per_pass,
        )
        result.trace, result.trace_stderr = estimate.mean, estimate.stderr
        result.trace_probes, result.trace_products = estimate.probes, estimate.products
        result.trace_deflated, result.trace_samples = estimate.deflated, estimate.samples
        result.layer_trace = estimate.layers
    if config.density:
        result.density = curvature.density(op, runs=config.density_runs, steps=config.density_steps, seed=seed)
    op.release()
    result.time_s = time.time() - started
    return result


@torch.no_grad()
def _mean_loss(model: nn.Module, batches: Sequence[Batch], loss_fn) -> float:
    n = sum(len(y) for _, y in batches)
    return sum(float(loss_fn(model(x), y)) * len(y) for x, y in batches) / n


def landscape(
    model: nn.Module,
    batches: Sequence[Batch],
    config: LandscapeConfig | None = None,
    *,
    model_name: str = "model",
    directions_folder: Path | None = None,
    eigenvector: torch.Tensor | None = None,
    start: dict[str, torch.Tensor] | None = None,
    path: Path | None = None,
    setup: dict[str, Any] | None = None,
    progress: bool = False,
) -> Surface:
    """The loss and accuracy surface of `config` around `model`'s weights on `batches`.

    Directions: random (seeded Gaussian, saved in `directions_folder` per architecture, filter-
    normalised), `eigenvector` (a flat top eigenvector of the Hessian over the same weights), or
    interpolation from the weights `start` (alpha = -1) to the model's own (alpha = 0).
    """
    config = config or LandscapeConfig()
    weights = {name: p.detach() for name, p in curvature_parameters(model).items()}
    span, n = config.span, config.grid
    if config.direction == "interpolation":
        if start is None:
            raise ValueError("an interpolation landscape needs the weights to start from (the run's FP parent)")
        missing = sorted(set(weights) - set(start))
        if missing:
            raise ValueError(f"the start weights lack {len(missing)} of the model's weights, e.g. {missing[0]}")
        axes = [dirs.difference({k: start[k] for k in weights}, weights)]
        coords = [np.linspace(-1.0 - span, span, n)]
    else:
        if config.direction == "eigenvector":  # the unit eigenvector itself: its curvature is the eigenvalue
            if eigenvector is None:
                raise ValueError("an eigenvector landscape needs the top eigenvector (run the Hessian analysis first)")
            axes = [dirs.from_flat(eigenvector, weights)]
        else:
            raw = [
                dirs.saved_gaussian(directions_folder, model_name, weights, config.seed + k)
                for k in range(1 if config.kind == "1d" else 2)
            ]
            axes = [dirs.normalize(d, weights, normalization=config.normalization, ignore=config.ignore) for d in raw]
        coords = [np.linspace(-span, span, n) for _ in axes]
    evaluator = SurfaceEvaluator(model, batches, weights, axes, bn=config.bn)
    return compute_surface(
        evaluator,
        coords,
        path=path,
        setup=setup,
        points_per_forward=config.points_per_forward,
        progress=progress,
    )
