"""Datasets by name, their environments, and in/out splits."""

from __future__ import annotations

import os
from pathlib import Path

from qatbench.data import cifar, folders, imagenet, mnist_domains  # noqa: F401  (register the datasets)
from qatbench.data.base import DomainDataset, EnvSplit, split_environments
from qatbench.data.loaders import eval_batches, infinite_batches
from qatbench.data.registry import DATASETS
from qatbench.errors import UserError
from qatbench.provenance import provenance

__all__ = [
    "DATASETS",
    "DomainDataset",
    "EnvSplit",
    "build_dataset",
    "data_provenance",
    "eval_batches",
    "infinite_batches",
    "resolve_data_root",
    "split_environments",
]

DATA_ROOT_ENV = "QATBENCH_DATA"


def resolve_data_root(flag: str | os.PathLike | None, suite_value: str | None = None) -> Path | None:
    """--data-root, else $QATBENCH_DATA, else the suite's data_root; it must exist when given."""
    for source, value in (
        ("--data-root", flag),
        (f"${DATA_ROOT_ENV}", os.environ.get(DATA_ROOT_ENV)),
        ("data_root", suite_value),
    ):
        if value:
            root = Path(value).expanduser()
            if not root.is_dir():
                raise UserError(f"{source}: data root '{root}' is not a directory")
            return root
    return None


def build_dataset(name: str, root: Path | None, data_seed: int, options: dict | None = None) -> DomainDataset:
    entry = DATASETS.entry(name)
    if entry.meta.get("needs_root", True) and root is None:
        raise UserError(f"dataset '{name}' reads from disk: give --data-root DIR or set ${DATA_ROOT_ENV}")
    return DATASETS.build(name, root, data_seed, **(options or {}))


def data_provenance(dataset: DomainDataset, root: Path | None) -> dict:
    """The record's `data_root` and `data_fingerprints`. A loader that names no sources per
    environment is fingerprinted by its whole data root (coarser: other datasets there count too)."""
    if root is None:
        return provenance({}, None)
    return provenance(dataset.sources or {"(data root)": Path(root)}, Path(root))
