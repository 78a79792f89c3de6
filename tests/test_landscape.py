"""Claims about loss landscapes, checked against the same losses computed by hand.

A float64 Conv2d(1,3,3)-BatchNorm2d-ReLU-Flatten-Linear(48,3) net on 4x4 inputs, with running
statistics away from their defaults, and three uneven batches. "By hand" means the naive path:
a deep copy of the model whose state_dict gets the shifted weights, evaluated like any model.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.nn import functional as F

from qatbench.analysis import directions as dirs
from qatbench.analysis.landscape import SurfaceEvaluator, compute_surface
from qatbench.analysis.measure import hessian, landscape
from qatbench.analysis.operator import curvature_parameters
from qatbench.config.analysis import HessianConfig, LandscapeConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)
    ).double()
    with torch.no_grad():  # running statistics and affine BN parameters away from their defaults
        model.train()
        for _ in range(3):
            model(2 + 3 * torch.randn(32, 1, 4, 4, dtype=torch.float64))
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.fixture
def model() -> nn.Module:
    return _cnn(0)


@pytest.fixture(scope="module")
def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(20, 1, 4, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=generator)
    return list(zip(torch.split(x, [8, 7, 5]), torch.split(y, [8, 7, 5])))


@torch.no_grad()
def _loss_and_acc(model: nn.Module, batches, *, train: bool = False) -> tuple[float, float]:
    """The naive evaluation: mean loss and accuracy over all examples, on a copy in the mode asked."""
    model = copy.deepcopy(model).train(train)
    n = sum(len(y) for _, y in batches)
    logits = [(model(x), y) for x, y in batches]
    loss = sum(float(F.cross_entropy(out, y, reduction="sum")) for out, y in logits) / n
    acc = sum(int((out.argmax(1) == y).sum()) for out, y in logits) / n
    return loss, acc


def _shifted(model: nn.Module, *moves: tuple[float, dict[str, torch.Tensor]]) -> nn.Module:
    """A copy of `model` with sum_k a_k d_k added to its weights through load_state_dict."""
    state = model.state_dict()
    for a, direction in moves:
        state = {**state, **{name: state[name] + a * d for name, d in direction.items()}}
    moved = copy.deepcopy(model)
    moved.load_state_dict(state)
    return moved


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in curvature_parameters(model).items()}


def _saved_directions(folder: Path, model: nn.Module) -> list[dict[str, torch.Tensor]]:
    """The raw directions landscape() drew and saved, normalised as it normalises them by default."""
    files = sorted(folder.glob("*.pt"), key=lambda p: int(p.stem.rpartition("seed")[2]))
    raw = [torch.load(f, weights_only=True) for f in files]
    return [dirs.normalize(d, _weights(model)) for d in raw]


class CountingEvaluator:
    """Wraps a SurfaceEvaluator: records every point evaluated, and can fail after `fail_after` points."""

    def __init__(self, evaluator: SurfaceEvaluator, fail_after: int | None = None):
        self.evaluator = evaluator
        self.points: list[tuple[float, ...]] = []
        self.fail_after = fail_after

    def evaluate(self, points):
        if self.fail_after is not None and len(self.points) + len(points) > self.fail_after:
            raise KeyboardInterrupt  # what a user's Ctrl-C raises mid-surface
        self.points += [tuple(p) for p in points]
        return self.evaluator.evaluate(points)


# --- the surface's values ------------------------------------------------------------------------


@pytest.mark.parametrize("kind, grid", [("1d", 5), ("2d", 3)])
def test_centre_of_the_surface_is_the_models_eval_loss_and_accuracy(model, batches, kind, grid):
    model.train()  # the surface is measured in eval mode whatever mode the model is in
    surface = landscape(model, batches, LandscapeConfig(kind=kind, grid=grid))
    assert surface.loss.shape == surface.acc.shape == ((grid,) if kind == "1d" else (grid, grid))
    assert surface.complete
    loss, acc = _loss_and_acc(model, batches)
    assert surface.center() == pytest.approx((loss, acc), abs=1e-12)


def test_1d_points_are_the_losses_of_the_model_shifted_by_hand(model, batches, tmp_path):
    surface = landscape(model, batches, LandscapeConfig(kind="1d", grid=5), directions_folder=tmp_path)
    (direction,) = _saved_directions(tmp_path, model)
    np.testing.assert_array_equal(surface.coords[0], [-1.0, -0.5, 0.0, 0.5, 1.0])
    for i, a in enumerate(surface.coords[0]):
        loss, acc = _loss_and_acc(_shifted(model, (a, direction)), batches)
        assert surface.loss[i] == pytest.approx(loss, rel=1e-12)
        assert surface.acc[i] == acc
    assert len(set(np.round(surface.loss, 6))) == 5  # the direction moves the loss: the check has teeth


def test_2d_point_at_x_i_y_j_is_stored_at_loss_j_i(model, batches, tmp_path):
    surface = landscape(model, batches, LandscapeConfig(kind="2d", grid=3), directions_folder=tmp_path)
    first, second = _saved_directions(tmp_path, model)
    x, y = surface.coords
    for j, i in [(2, 0), (0, 1), (1, 2)]:
        loss, _ = _loss_and_acc(_shifted(model, (x[i], first), (y[j], second)), batches)
        assert surface.loss[j, i] == pytest.approx(loss, rel=1e-12)


def test_vmapped_points_give_the_same_surface_as_one_point_per_forward(model, batches):
    for kind, grid in (("1d", 5), ("2d", 3)):  # 5 points: chunks of 3 and 2; 9 points: three chunks of 3
        one = landscape(model, batches, LandscapeConfig(kind=kind, grid=grid))
        three = landscape(model, batches, LandscapeConfig(kind=kind, grid=grid, points_per_forward=3))
        np.testing.assert_allclose(three.loss, one.loss, rtol=1e-10)
        np.testing.assert_array_equal(three.acc, one.acc)


# --- batch norm ---------------------------------------------------------------------------------


def test_bn_eval_and_batch_leave_running_statistics_untouched(model, batches):
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    for bn in ("eval", "batch"):
        landscape(model, batches, LandscapeConfig(kind="1d", grid=3, bn=bn))
        assert all(torch.equal(b, buffers[name]) for name, b in model.named_buffers())


def test_bn_batch_uses_each_batchs_statistics(model, batches):
    surface = landscape(model, batches, LandscapeConfig(kind="1d", grid=3, bn="batch"))
    batch_loss, batch_acc = _loss_and_acc(model, batches, train=True)
    eval_loss, _ = _loss_and_acc(model, batches)
    assert surface.center() == pytest.approx((batch_loss, batch_acc), abs=1e-12)
    assert abs(batch_loss - eval_loss) > 1e-3


def test_bn_batch_takes_one_point_per_forward():
    """Batch statistics update running buffers in place, which vmap cannot batch: refused at load."""
    with pytest.raises(ValidationError, match="bn 'batch' evaluates one point per forward"):
        LandscapeConfig(kind="1d", grid=3, bn="batch", points_per_forward=3)


# --- directions ---------------------------------------------------------------------------------


def test_filter_normalization_gives_each_filter_the_norm_of_the_weights_filter(model):
    weights = _weights(model)
    raw = dirs.gaussian(weights, seed=0)
    normalized = dirs.normalize(raw, weights)
    for name in ("0.weight", "4.weight"):  # conv filters (3,1,3,3) and linear rows (3,48)
        w, d = weights[name], normalized[name]
        assert d.dtype == torch.float64
        torch.testing.assert_close(d.flatten(1).norm(dim=1), w.flatten(1).norm(dim=1), rtol=1e-12, atol=0)
        # each filter is the raw one rescaled: same direction
        cosine = F.cosine_similarity(d.flatten(1), raw[name].double().flatten(1), dim=1)
        torch.testing.assert_close(cosine, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)
    vectors = ("0.bias", "1.weight", "1.bias", "4.bias")
    assert all(not normalized[name].any() for name in vectors)  # ignore="biasbn": not moved

    kept = dirs.normalize(raw, weights, ignore="none")
    for name in vectors:
        assert kept[name].any()
        assert float(kept[name].norm()) == pytest.approx(float(weights[name].norm()), rel=1e-12)

    untouched = dirs.normalize(raw, weights, normalization="none", ignore="none")
    assert all(torch.equal(untouched[name], raw[name].double()) for name in weights)


def test_saved_gaussian_writes_one_file_per_model_architecture_and_seed(model, tmp_path):
    weights = _weights(model)
    first = dirs.saved_gaussian(tmp_path, "cnn", weights, seed=0)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    assert all(torch.equal(first[n], d) for n, d in dirs.gaussian(weights, 0).items())

    again = dirs.saved_gaussian(tmp_path, "cnn", weights, seed=0)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    assert all(torch.equal(first[n], again[n]) for n in weights)

    (path,) = tmp_path.glob("*.pt")  # the second call reads the file: what is in it comes back
    torch.save({n: torch.full_like(d, 7.0) for n, d in first.items()}, path)
    assert all((d == 7.0).all() for d in dirs.saved_gaussian(tmp_path, "cnn", weights, seed=0).values())

    path.write_bytes(b"truncated")  # a damaged file is drawn again, identically, and rewritten
    assert all(torch.equal(first[n], d) for n, d in dirs.saved_gaussian(tmp_path, "cnn", weights, seed=0).items())
    assert all(torch.equal(first[n], d) for n, d in torch.load(path, weights_only=True).items())

    dirs.saved_gaussian(tmp_path, "cnn", weights, seed=1)
    dirs.saved_gaussian(tmp_path, "other", weights, seed=0)
    wider = _weights(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(64, 3)))
    other_architecture = dirs.saved_gaussian(tmp_path, "cnn", wider, seed=0)
    assert len(list(tmp_path.glob("*.pt"))) == 4
    assert {n: d.shape for n, d in other_architecture.items()} == {n: w.shape for n, w in wider.items()}


def test_interpolation_runs_from_the_start_weights_at_minus_one_to_the_model_at_zero(model, batches):
    start = _weights(_cnn(1))
    config = LandscapeConfig(kind="1d", direction="interpolation", grid=5, span=0.5)
    surface = landscape(model, batches, config, start=start)
    np.testing.assert_array_equal(surface.coords[0], [-1.5, -1.0, -0.5, 0.0, 0.5])
    at_start, _ = _loss_and_acc(_shifted(model, (1.0, {n: start[n] - w for n, w in _weights(model).items()})), batches)
    assert surface.loss[1] == pytest.approx(at_start, rel=1e-12)
    assert surface.loss[3] == pytest.approx(_loss_and_acc(model, batches)[0], rel=1e-12)
    beyond = {n: w - start[n] for n, w in _weights(model).items()}  # alpha = 0.5: past the model, away from start
    assert surface.loss[4] == pytest.approx(_loss_and_acc(_shifted(model, (0.5, beyond)), batches)[0], rel=1e-12)

    with pytest.raises(ValueError, match="start from"):
        landscape(model, batches, config)
    with pytest.raises(ValueError, match="lack"):
        landscape(model, batches, config, start={n: w for n, w in start.items() if n != "4.bias"})


def test_eigenvector_landscape_moves_along_the_given_vector(model, batches):
    vector = torch.randn(sum(w.numel() for w in _weights(model).values()), dtype=torch.float64)
    config = LandscapeConfig(kind="1d", direction="eigenvector", grid=3, normalization="none", ignore="none")
    surface = landscape(model, batches, config, eigenvector=vector)
    direction = dirs.from_flat(vector, _weights(model))
    for i, a in enumerate(surface.coords[0]):
        assert surface.loss[i] == pytest.approx(_loss_and_acc(_shifted(model, (a, direction)), batches)[0], rel=1e-12)
    with pytest.raises(ValueError, match="eigenvector"):
        landscape(model, batches, config)


def test_curvature_along_the_top_eigenvector_is_the_top_eigenvalue(model, batches):
    """(L(h) - 2 L(0) + L(-h)) / h^2 = v^T H v + O(h^2): the landscape and the Hessian agree."""
    result = hessian(model, batches, HessianConfig(trace=False, tol=1e-10, max_steps=200))
    h = 1e-3
    config = LandscapeConfig(kind="1d", direction="eigenvector", grid=3, span=h, normalization="none", ignore="none")
    loss = landscape(model, batches, config, eigenvector=result.top_vector).loss
    assert (loss[0] - 2 * loss[1] + loss[2]) / h**2 == pytest.approx(result.eigenvalues[0], rel=1e-4)


# --- the model, left as found --------------------------------------------------------------------


def test_landscape_leaves_the_model_as_found(model, batches):
    model.train()
    state = copy.deepcopy(model.state_dict())
    for config in (
        LandscapeConfig(kind="1d", grid=3),
        LandscapeConfig(kind="2d", grid=3, points_per_forward=3),
        LandscapeConfig(kind="1d", grid=3, bn="batch"),
        LandscapeConfig(kind="1d", grid=3, normalization="none", ignore="none"),
    ):
        landscape(model, batches, config)
        assert all(m.training for m in model.modules())
        after = model.state_dict()
        assert all(torch.equal(after[name], value) for name, value in state.items())
        assert all(p.grad is None for p in model.parameters())


def test_landscape_restores_the_mode_of_every_submodule(model, batches):
    model.train()
    model[1].eval()
    modes = [m.training for m in model.modules()]
    landscape(model, batches, LandscapeConfig(kind="1d", grid=3))
    assert [m.training for m in model.modules()] == modes


# --- saving and resuming ------------------------------------------------------------------------


SETUP = {"model": "cnn", "kind": "2d", "grid": 3, "seed": 0}


def _evaluator(model, batches) -> SurfaceEvaluator:
    weights = _weights(model)
    axes = [dirs.normalize(dirs.gaussian(weights, seed), weights) for seed in (0, 1)]
    return SurfaceEvaluator(model, batches, weights, axes)


COORDS = [np.linspace(-1, 1, 3), np.linspace(-1, 1, 3)]


def test_resume_evaluates_only_the_missing_points(model, batches, tmp_path):
    path = tmp_path / "surface.npz"
    full = CountingEvaluator(_evaluator(model, batches))
    reference = compute_surface(full, COORDS, path=path, setup=SETUP, save_every_s=0)
    assert len(full.points) == 9 and reference.complete

    with np.load(path) as saved:
        arrays = dict(saved)
    lost = [(0, 2), (1, 1), (2, 0)]  # (j, i): the point (x[i], y[j])
    for index in lost:
        arrays["loss"][index] = np.nan
    np.savez(path, **arrays)

    rest = CountingEvaluator(_evaluator(model, batches))
    resumed = compute_surface(rest, COORDS, path=path, setup=SETUP, save_every_s=0)
    assert sorted(rest.points) == sorted((float(COORDS[0][i]), float(COORDS[1][j])) for j, i in lost)
    np.testing.assert_array_equal(resumed.loss, reference.loss)
    np.testing.assert_array_equal(resumed.acc, reference.acc)


def test_interrupted_surface_resumes_where_it_stopped(model, batches, tmp_path):
    path = tmp_path / "surface.npz"
    reference = compute_surface(_evaluator(model, batches), COORDS)

    interrupted = CountingEvaluator(_evaluator(model, batches), fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        compute_surface(interrupted, COORDS, path=path, setup=SETUP, save_every_s=0)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["points_done"] == 4 and sidecar["complete"] is False

    rest = CountingEvaluator(_evaluator(model, batches))
    resumed = compute_surface(rest, COORDS, path=path, setup=SETUP, save_every_s=0)
    assert len(rest.points) == 5 and not set(rest.points) & set(interrupted.points)
    np.testing.assert_array_equal(resumed.loss, reference.loss)
    np.testing.assert_array_equal(resumed.acc, reference.acc)


def test_surface_with_another_setup_is_computed_from_scratch(model, batches, tmp_path):
    path = tmp_path / "surface.npz"
    compute_surface(_evaluator(model, batches), COORDS, path=path, setup=SETUP, save_every_s=0)
    again = CountingEvaluator(_evaluator(model, batches))
    compute_surface(again, COORDS, path=path, setup={**SETUP, "seed": 1}, save_every_s=0)
    assert len(again.points) == 9
    assert json.loads(path.with_suffix(".json").read_text())["seed"] == 1


def test_sidecar_holds_the_setup_and_the_progress(model, batches, tmp_path):
    path = tmp_path / "cut.npz"
    surface = landscape(model, batches, LandscapeConfig(kind="2d", grid=3), path=path, setup=SETUP)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert {k: sidecar[k] for k in SETUP} == SETUP
    assert sidecar["complete"] is True and sidecar["points_done"] == 9
    assert sidecar["center_loss"] == pytest.approx(_loss_and_acc(model, batches)[0], rel=1e-12)
    assert sidecar["center_acc"] == surface.center()[1]
    with np.load(path) as saved:
        np.testing.assert_array_equal(saved["loss"], surface.loss)
        np.testing.assert_array_equal(saved["x"], surface.coords[0])
        np.testing.assert_array_equal(saved["y"], surface.coords[1])
