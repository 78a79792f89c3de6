"""What every registered method promises, checked over the registry so that a new method gets the
checks for free: `update` returns finite named losses and moves the model; a frozen parameter and
the frozen teacher stay bit-identical; `predict` in eval mode is deterministic; the resume snapshot
(methods/state.py, serialized as the runner's checkpoint is) restores it exactly; and its hparams
are one flat dataclass whose every field says where its default comes from.

Tiny on purpose: a width-4 small_cnn on 16x16 images, two domains of 4, three steps per method.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math

import pytest
import torch

from qatbench.config import QuantSpec
from qatbench.methods import METHODS
from qatbench.methods.hparams import is_reconstruction, sources
from qatbench.methods.state import restore, snapshot
from qatbench.models import build_model
from qatbench.quant import calibrate, quantize_model
from tests.conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE, CLASSES = (1, 16, 16), 3
NAMES = [entry.name for entry in METHODS.entries()]
TRAINED = [name for name in NAMES if METHODS.get(name).trains and METHODS.get(name).kind != "checkpoint"]


def _batches(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, *SHAPE, generator=g), torch.randint(0, CLASSES, (4,), generator=g)) for _ in range(2)]


def _quant_spec(cls) -> QuantSpec | None:
    if cls.kind == "fp":
        return None
    allowed = cls.quantizers_allowed
    quantizer = cls.quant_fixed.get("quantizer") or ("lsq" if allowed is None or "lsq" in allowed else allowed[0])
    return QuantSpec(4, 4, quantizer=quantizer, first_last="same")


def _build(name: str):
    """The method as the runner builds it: FP parent (the teacher, when wanted), quantized and
    calibrated for QAT; its first parameter frozen, as a method or a user may freeze one."""
    cls = METHODS.get(name)
    torch.manual_seed(0)
    model = build_model("small_cnn", SHAPE, CLASSES, {"width": 4})
    teacher = copy.deepcopy(model).eval().requires_grad_(False) if cls.needs_teacher else None
    quant = _quant_spec(cls)
    if cls.kind == "qat":
        model = calibrate(quantize_model(model, quant), torch.cat([x for x, _ in _batches(99)]))
    if cls.kind == "ensemble":  # an ensemble's model is its members, each in eval mode
        model = torch.nn.ModuleList([model.eval()])
    next(model.parameters()).requires_grad_(False)
    method = cls(model, CLASSES, {}, teacher=teacher, quant=quant, total_steps=3)
    method.train()
    return method


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's tensors, copied (a quantizer's extra state, a dict, is left out)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("name", TRAINED)
def test_update_returns_finite_named_losses_moves_the_model_and_leaves_frozen_parameters_alone(name):
    method = _build(name)
    frozen = next(method.model.parameters()).detach().clone()
    before = _state(method.model)
    teacher = _state(method.teacher) if method.teacher is not None else {}
    for step in range(3):
        losses = method.update(_batches(step))
        assert losses and all(isinstance(k, str) and k for k in losses), losses
        assert all(isinstance(v, float) and math.isfinite(v) for v in losses.values()), losses
    assert torch.equal(next(method.model.parameters()), frozen)
    assert any(not torch.equal(v, before[k]) for k, v in _state(method.model).items())
    if method.teacher is not None:
        assert all(torch.equal(v, teacher[k]) for k, v in _state(method.teacher).items())


@pytest.mark.parametrize("name", [n for n in NAMES if METHODS.get(n).kind != "checkpoint"])
def test_predict_in_eval_mode_is_deterministic(name):
    method = _build(name)
    if METHODS.get(name).trains:
        method.update(_batches(0))
    method.eval()
    x, _ = _batches(5)[0]
    with torch.no_grad():
        first, second = method.predict(x), method.predict(x)
    assert first.shape == (4, CLASSES) and torch.equal(first, second)


@pytest.mark.parametrize("name", TRAINED)
def test_the_resume_snapshot_restores_the_method_exactly(name):
    method = _build(name)
    method.update(_batches(0))
    buffer = io.BytesIO()  # serialized and read back, as the runner's checkpoint is
    torch.save({"model": method.model.state_dict(), "method": snapshot(method, method.model)}, buffer)
    rng = torch.get_rng_state()
    straight = method.update(_batches(1))

    resumed = _build(name)  # a fresh process builds the method anew, then restores it
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    resumed.model.load_state_dict(saved["model"])
    restore(resumed, saved["method"], resumed.model)
    torch.set_rng_state(rng)
    assert resumed.update(_batches(1)) == straight
    after, expected = _state(resumed.model), _state(method.model)
    assert after.keys() == expected.keys() and all(torch.equal(after[k], expected[k]) for k in expected)


@pytest.mark.parametrize("name", NAMES)
def test_hparams_are_one_flat_frozen_dataclass_whose_every_default_has_a_source(name):
    hparams_cls = METHODS.get(name).HParams
    assert dataclasses.is_dataclass(hparams_cls) and hparams_cls.__dataclass_params__.frozen
    assert not [c for c in hparams_cls.__mro__[1:] if dataclasses.is_dataclass(c)]  # flat: no inherited fields
    documented = sources(hparams_cls)
    assert [field for field, source in documented.items() if len(source) < 4] == []
    for field, source in documented.items():  # a reconstruction says why
        assert not is_reconstruction(source) or len(source.replace("RECONSTRUCTION", "").strip(" :;,")) > 10, field
    hparams_cls()  # the defaults pass the dataclass's own checks


def test_list_methods_details_prints_every_hparam_its_default_and_source_and_marks_reconstructions():
    done = run_cli("list", "methods", "--details")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("gaqat "))
    block = lines[start + 1 : start + 1 + len(dataclasses.fields(METHODS.get("gaqat").HParams))]
    rows = {line[4:].split()[0]: line for line in block}
    assert list(rows) == [f.name for f in dataclasses.fields(METHODS.get("gaqat").HParams)]
    assert rows["tau"].startswith("  * tau") and " 0.3 " in rows["tau"] and "RECONSTRUCTION" in rows["tau"]
    assert rows["rho"].startswith("    rho") and " 0.05 " in rows["rho"] and rows["rho"].endswith("SAGM code")
    assert "'weights_and_steps'" in rows["perturb"] and "'conflict'" in rows["disorder"]
    assert lines[-1].startswith("* RECONSTRUCTION")
