"""1D and 2D loss (and accuracy) surfaces around a model: f(a, b) = L(theta + a d1 + b d2).

The weights are never written into the model: each grid point's parameters go in through
`torch.func.functional_call`, built from the centre with two fused multiply-adds, so the model
is left exactly as it was found (loss-landscapes' in-place `add_` drifts) and no `state_dict`
is copied per point. Surfaces are saved as they fill (npz beside a JSON sidecar holding every
setting that shapes the numbers), and a surface interrupted with the same settings resumes
where it stopped.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F
from tqdm.auto import tqdm

from qatbench.analysis.operator import Batch, modes_kept
from qatbench.records import atomic_write_bytes, write_json

log = logging.getLogger(__name__)

PROGRESS_KEYS = ("complete", "points_done", "center_loss", "center_acc", "time_s")


@dataclass
class Surface:
    coords: list[np.ndarray]  # one axis (1D) or two (x, y)
    loss: np.ndarray  # (nx,) or (ny, nx): loss[j, i] at (x[i], y[j]); NaN where not computed
    acc: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return bool(np.isfinite(self.loss).all())

    def center(self) -> tuple[float, float]:
        """Loss and accuracy at the grid point nearest the centre (all coordinates 0)."""
        index = tuple(int(np.argmin(np.abs(axis))) for axis in reversed(self.coords))
        return float(self.loss[index]), float(self.acc[index])


def grid_points(coords: Sequence[np.ndarray]) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
    """(array index, coordinates) of every point, row by row: index (j, i) at (x[i], y[j])."""
    if len(coords) == 1:
        return [((i,), (float(a),)) for i, a in enumerate(coords[0])]
    x, y = coords
    return [((j, i), (float(a), float(b))) for j, b in enumerate(y) for i, a in enumerate(x)]


class SurfaceEvaluator:
    """Loss and accuracy of `model` at theta + sum_k c_k d_k on fixed `batches`."""

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[Batch],
        center: dict[str, torch.Tensor],
        axes: Sequence[dict[str, torch.Tensor]],
        *,
        bn: str = "eval",
    ):
        self.model = model
        self.batches = list(batches)
        self.names = [name for name in center if any(axis[name].any() for axis in axes)]  # moved parameters only
        self.center = [center[name].detach() for name in self.names]
        self.axes = [[axis[name] for name in self.names] for axis in axes]
        self.bn = bn
        self.n = sum(len(y) for _, y in self.batches)

    def parameters_at(self, point: Sequence[float]) -> dict[str, torch.Tensor]:
        params = list(self.center)
        for axis, c in zip(self.axes, point):
            params = torch._foreach_add(params, axis, alpha=c)
        return dict(zip(self.names, params))

    def _call(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if self.bn == "batch":  # batch statistics; running statistics in copies, left untouched
            params = {**params, **{n: b.clone() for n, b in self.model.named_buffers()}}
        return functional_call(self.model, params, (x,))

    @torch.no_grad()
    def evaluate(self, points: Sequence[Sequence[float]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss and accuracy at each point; several points share one vmapped forward."""
        with modes_kept(self.model):
            self.model.train(self.bn == "batch")
            return self._evaluate(points)

    def _evaluate(self, points: Sequence[Sequence[float]]) -> tuple[torch.Tensor, torch.Tensor]:
        loss = torch.zeros(len(points), dtype=torch.float64)
        correct = torch.zeros(len(points), dtype=torch.float64)
        if len(points) == 1:
            params = self.parameters_at(points[0])
            per_point = lambda x: self._call(params, x).unsqueeze(0)  # noqa: E731
        else:
            stacked = [self.parameters_at(p) for p in points]
            params = {n: torch.stack([s[n] for s in stacked]) for n in self.names}
            per_point = lambda x: vmap(self._call, in_dims=(0, None))(params, x)  # noqa: E731
        for x, y in self.batches:
            logits = per_point(x)  # (points, batch, classes)
            targets = y.expand(len(points), -1)
            loss += (
                F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
                .view(len(points), -1)
                .sum(1)
                .double()
                .cpu()
            )
            correct += (logits.argmax(-1) == targets).sum(1).double().cpu()
        return loss / self.n, correct / self.n


def compute_surface(
    evaluator: SurfaceEvaluator,
    coords: Sequence[np.ndarray],
    *,
    path: Path | None = None,
    setup: dict[str, Any] | None = None,
    points_per_forward: int = 1,
    save_every_s: float = 10.0,
    progress: bool = False,
) -> Surface:
    """Fill the surface over the grid `coords`, resuming from `path` (.npz, with a .json sidecar)
    when a surface with the same `setup` is there; saves every `save_every_s` seconds and at the end."""
    setup = dict(setup or {})
    coords = [np.asarray(axis, dtype=np.float64) for axis in coords]
    shape = tuple(len(axis) for axis in reversed(coords))
    surface = _resume(path, setup, coords, shape) if path is not None else None
    if surface is None:
        surface = Surface(coords, np.full(shape, np.nan), np.full(shape, np.nan), setup)
    todo = [(index, point) for index, point in grid_points(coords) if not np.isfinite(surface.loss[index])]
    started = last_save = time.time()
    with tqdm(total=len(todo), desc="landscape", unit="pt", leave=False, disable=not progress) as bar:
        for start in range(0, len(todo), points_per_forward):
            chunk = todo[start : start + points_per_forward]
            loss, acc = evaluator.evaluate([point for _, point in chunk])
            if not torch.isfinite(loss).all():
                log.warning("non-finite loss at landscape points %s", [p for _, p in chunk])
            for k, (index, _) in enumerate(chunk):
                surface.loss[index], surface.acc[index] = float(loss[k]), float(acc[k])
            bar.update(len(chunk))
            if path is not None and time.time() - last_save >= save_every_s:
                _save(path, surface, time.time() - started)
                last_save = time.time()
    if path is not None:
        _save(path, surface, time.time() - started)
    return surface


def _save(path: Path, surface: Surface, elapsed: float) -> None:
    arrays = {"loss": surface.loss, "acc": surface.acc, "x": surface.coords[0]}
    if len(surface.coords) == 2:
        arrays["y"] = surface.coords[1]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())  # the arrays first: a sidecar never describes missing points
    center_loss, center_acc = surface.center()
    surface.meta.update(
        complete=surface.complete,
        points_done=int(np.isfinite(surface.loss).sum()),
        center_loss=center_loss,
        center_acc=center_acc,
        time_s=round(surface.meta.get("time_s", 0.0) + elapsed, 3),
    )
    write_json(path.with_suffix(".json"), surface.meta)


def _resume(path: Path, setup: dict[str, Any], coords: list[np.ndarray], shape: tuple[int, ...]) -> Surface | None:
    sidecar = path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
        with np.load(path) as saved:
            loss, acc = saved["loss"], saved["acc"]
    except (OSError, ValueError, KeyError):
        return None
    same = {k: v for k, v in meta.items() if k not in PROGRESS_KEYS} == json.loads(json.dumps(setup))
    if not same or loss.shape != shape:
        log.info("%s: other settings than asked; computing the surface again", path)
        return None
    meta = {**setup, **{k: meta[k] for k in PROGRESS_KEYS if k in meta}}
    return Surface(coords, loss.astype(np.float64), acc.astype(np.float64), meta)
