"""Everything a method carries from one step to the next, as a picklable snapshot, so that a killed
run can resume with exactly the numbers of an uninterrupted one.

Methods keep their state in plain attributes (optimizers, schedulers, EMA teachers, sign histories,
random generators, step counters), so the snapshot walks them generically instead of asking every
method for a `state_dict`: the model itself is saved apart (its parameters and buffers are skipped
wherever a method refers to them), modules and optimizers give their `state_dict`, generators their
state, tensors a copy, plain values themselves, and other objects are walked attribute by attribute.
Attributes with a leading underscore are caches derived from the model (lookups keyed by `id(p)`,
orderings): they are rebuilt by the resumed process, never restored.
Restoring writes each value back in place, so references between the method and its model stay.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

SCALARS = (int, float, bool, str, type(None))
_SKIP = object()


def snapshot(method: Any, model: nn.Module) -> dict[str, Any]:
    """The method's state apart from `model` (saved on its own)."""
    owned = _model_ids(model)
    return {name: value for name, value in _walk(method, owned, set()).items() if value is not _SKIP}


def restore(method: Any, state: dict[str, Any], model: nn.Module) -> None:
    """Write the snapshot back; tensors that are not restored in place go to the model's device."""
    device = next(model.parameters()).device
    _restore(method, state, _model_ids(model), device)


def _model_ids(model: nn.Module) -> set[int]:
    owned = {id(m) for m in model.modules()} | {id(p) for p in model.parameters()} | {id(b) for b in model.buffers()}
    return owned | {id(model)}


def _value(value: Any, owned: set[int], seen: set[int]) -> Any:
    if id(value) in owned or isinstance(value, RemovableHandle) or callable(value) and not hasattr(value, "__dict__"):
        return _SKIP
    if isinstance(value, SCALARS):
        return value
    if isinstance(value, nn.Module | torch.optim.Optimizer | torch.optim.lr_scheduler.LRScheduler):
        return {"state_dict": value.state_dict()}  # serialized at once: no copy (GPU memory)
    if isinstance(value, torch.Generator):
        return {"generator": value.get_state()}
    if isinstance(value, torch.Tensor):
        return {"tensor": value.detach()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_value(v, owned, seen) for v in value]
        if any(item is _SKIP for item in items):  # model parameters (layer lists): the model holds them
            return _SKIP
        return {"sequence": type(value).__name__, "items": items}
    if isinstance(value, dict):
        items = {k: _value(v, owned, seen) for k, v in value.items()}
        return _SKIP if any(v is _SKIP for v in items.values()) else {"mapping": items}
    if hasattr(value, "__dict__") and id(value) not in seen and not isinstance(value, type):
        seen.add(id(value))
        return {"object": {k: v for k, v in _walk(value, owned, seen).items() if v is not _SKIP}}
    return _SKIP


def _walk(obj: Any, owned: set[int], seen: set[int]) -> dict[str, Any]:
    seen.add(id(obj))
    attributes = getattr(obj, "__dict__", {}).items()
    return {name: _value(value, owned, seen) for name, value in attributes if not name.startswith("_")}


def _restore(obj: Any, state: dict[str, Any], owned: set[int], device: torch.device) -> None:
    for name, saved in state.items():
        current = getattr(obj, name, None)
        setattr_ok = True
        if isinstance(saved, dict) and "state_dict" in saved:
            current.load_state_dict(saved["state_dict"])
        elif isinstance(saved, dict) and "generator" in saved:
            current.set_state(saved["generator"])
        elif isinstance(saved, dict) and "tensor" in saved:
            if isinstance(current, torch.Tensor) and current.shape == saved["tensor"].shape:
                with torch.no_grad():
                    current.copy_(saved["tensor"])
            else:
                object.__setattr__(obj, name, saved["tensor"].to(device))
        elif isinstance(saved, dict) and "object" in saved:
            _restore(current, saved["object"], owned, device)
        else:
            setattr_ok = False
        if not setattr_ok:
            object.__setattr__(obj, name, _plain(saved, device))


def _plain(saved: Any, device: torch.device) -> Any:
    """Sequences, mappings and scalars back to their values, tensors on the model's device."""
    if isinstance(saved, dict) and "sequence" in saved:
        items = [_plain(v, device) for v in saved["items"]]
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[saved["sequence"]](items)
    if isinstance(saved, dict) and "mapping" in saved:
        return {k: _plain(v, device) for k, v in saved["mapping"].items()}
    if isinstance(saved, dict) and "tensor" in saved:
        return saved["tensor"].to(device)
    if isinstance(saved, dict) and "generator" in saved:
        generator = torch.Generator()
        generator.set_state(saved["generator"])
        return generator
    return saved
