"""PyHessian (Yao et al. 2020, the PyPI package `pyhessian`) as the reference backend.

Its own algorithms are used as they are (power iteration for eigenvalues, its Hutchinson
probes); three of its habits are worked around, never copied: it adds into existing `.grad`
(doubling the Hessian unless gradients are cleared first), it takes every parameter with
`requires_grad` (quantizer step sizes are frozen around the call), and its trace stops on a
change of the running mean (its probes are drawn here one at a time, under qatbench's
standard-error stop). Its `density()` needs `torch.eig`, which torch removed in 1.9.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from qatbench.analysis.operator import Batch, curvature_parameters
from qatbench.config.analysis import HessianConfig


@contextlib.contextmanager
def only_weights_trainable(model: nn.Module):
    """Quantizer parameters (and anything else outside the curvature) frozen, .grad cleared before and after."""
    weights = {id(p) for p in curvature_parameters(model).values()}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in weights]
    for p in frozen:
        p.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    try:
        yield
    finally:
        model.zero_grad(set_to_none=True)
        for p in frozen:
            p.requires_grad_(True)


@contextlib.contextmanager
def counted_products(module, hessian):
    """Counts PyHessian's Hessian-vector products (both its cached and its per-batch paths)."""
    counter = {"products": 0}
    cached, per_batch = module.hessian_vector_product, hessian.dataloader_hv_product

    def cached_counted(*args, **kwargs):
        counter["products"] += 1
        return cached(*args, **kwargs)

    def per_batch_counted(*args, **kwargs):
        counter["products"] += 1
        return per_batch(*args, **kwargs)

    module.hessian_vector_product = cached_counted
    hessian.dataloader_hv_product = per_batch_counted
    try:
        yield counter
    finally:
        module.hessian_vector_product = cached


def reference_hessian(
    model: nn.Module, batches: Sequence[Batch], config: HessianConfig, loss_fn: Callable, seed: int
) -> dict:
    """Eigenvalues and trace by PyHessian, as plain values (see `measure.HessianResult`)."""
    import pyhessian

    module = sys.modules["pyhessian.hessian"]  # the package's `hessian` attribute is the class

    device = next(model.parameters()).device
    result: dict = {}
    with only_weights_trainable(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        one = len(batches) == 1
        reference = pyhessian.hessian(
            model,
            loss_fn,
            data=batches[0] if one else None,
            dataloader=None if one else list(batches),
            cuda=device.type == "cuda",
        )
        with counted_products(module, reference) as counter:
            values, _ = reference.eigenvalues(maxIter=config.max_steps, tol=config.tol, top_n=config.top_k)
            result.update(eigenvalues=[float(v) for v in values], eigen_products=counter["products"])
            if config.trace:
                samples: list[float] = []
                while len(samples) < config.max_probes:
                    model.zero_grad(set_to_none=True)
                    samples += reference.trace(maxIter=1, tol=0.0)  # one probe: its own stop never acts
                    if len(samples) >= config.min_probes:
                        mean, stderr = float(np.mean(samples)), float(np.std(samples, ddof=1)) / math.sqrt(len(samples))
                        if stderr <= config.rel_stderr * abs(mean):
                            break
                result.update(
                    trace=float(np.mean(samples)),
                    trace_stderr=float(np.std(samples, ddof=1)) / math.sqrt(len(samples)),
                    trace_probes=len(samples),
                    trace_samples=samples,
                    trace_products=counter["products"] - result["eigen_products"],
                )
        del reference  # holds the second-order graph
    return result
