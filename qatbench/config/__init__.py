"""Suites, run specifications and quantization specifications: values, validated, hashable."""

from __future__ import annotations

import os
from collections.abc import Sequence

from qatbench.config.catalog import Catalog, MethodKind
from qatbench.config.grid import check_suite, expand, parent_entry, resolve_hparams
from qatbench.config.spec import QuantSpec, RunSpec, parse_bits
from qatbench.config.suite import Suite, blame, load_suite_dict, parse_suite

__all__ = [
    "Catalog",
    "MethodKind",
    "QuantSpec",
    "RunSpec",
    "Suite",
    "expand",
    "load_suite",
    "parent_entry",
    "parse_bits",
    "resolve_hparams",
]


def load_suite(path: str | os.PathLike, overrides: Sequence[str] = (), *, catalog: Catalog) -> Suite:
    """Read, override, validate and check a suite file against the registries in `catalog`."""
    raw, touched = load_suite_dict(path, overrides)
    suite = parse_suite(path, raw, touched)
    check_suite(suite, catalog, lambda loc: blame(path, loc, touched))
    return suite
