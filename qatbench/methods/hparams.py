"""Every hparam says where its default comes from, on the field itself, so that the contract test
can check that none is missing and `qatbench list methods --details` can print them.

    lr: float = hparam(5e-5, "DomainBed, ResNet backbones")
    tau: float = hparam(0.3, "RECONSTRUCTION: the value was not found")

A default that no paper or official code gives says RECONSTRUCTION, with the reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any

RECONSTRUCTION = "RECONSTRUCTION"


def hparam(default: Any, source: str) -> Any:
    """A dataclass field with its default and the default's source (paper, code, or RECONSTRUCTION)."""
    return dataclasses.field(default=default, metadata={"source": source})


def sources(hparams_cls: type) -> dict[str, str]:
    """Each field's source ("" where a field has none)."""
    return {f.name: f.metadata.get("source", "") for f in dataclasses.fields(hparams_cls)}


def is_reconstruction(source: str) -> bool:
    return RECONSTRUCTION in source


def described(hparams_cls: type) -> list[tuple[str, Any, str, bool]]:
    """(name, default, source, reconstructed) of every field, in declaration order."""
    return [
        (f.name, f.default, f.metadata.get("source", ""), is_reconstruction(f.metadata.get("source", "")))
        for f in dataclasses.fields(hparams_cls)
    ]
