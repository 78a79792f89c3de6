"""A multi-domain dataset as DomainBed frames it: environments, each split into `in` and `out`.

Splits depend only on the data seed and the environment index (never on the method, its
hparams or the run seed), so every method of a suite sees the same training and validation
images, and a QAT run fine-tuned from its FP parent never validates on what the parent saw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from qatbench.errors import UserError


@dataclass
class DomainDataset:
    """Environments of one dataset, in the order of `environments`.

    `train_transform` is random and per image, applied by the loader to training batches only;
    `eval_transform` is deterministic and works on whole batches on the training device. An
    environment whose data comes already split (CIFAR's train and test sets) is in
    `fixed_splits` as its (in, out) pair and ignores the holdout fraction. Environments in
    `eval_only` are measured but never trained on, whether or not they are test environments.
    """

    name: str
    environments: list[str]
    envs: list[Dataset]
    input_shape: tuple[int, ...]
    num_classes: int
    train_transform: Callable | None = None
    eval_transform: Callable | None = None
    fixed_splits: dict[int, tuple[Dataset, Dataset]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # unreadable image files, left out
    eval_only: set[int] = field(default_factory=set)
    sources: dict[str, Path] = field(default_factory=dict)  # environment -> the folder or file it was read from

    def train_envs(self, test_envs) -> list[int]:
        return [i for i in range(len(self.envs)) if i not in test_envs and i not in self.eval_only]

    def __post_init__(self):
        if len(self.environments) != len(self.envs):
            raise ValueError(
                f"{self.name}: {len(self.environments)} environment names for {len(self.envs)} environments"
            )


@dataclass
class EnvSplit:
    """One environment cut in two: `in` trains (or is the test domain), `out` validates."""

    name: str
    in_split: Dataset
    out_split: Dataset


def split_seed(data_seed: int, env_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([data_seed, env_index]))


def split_environments(dataset: DomainDataset, holdout_fraction: float, data_seed: int) -> list[EnvSplit]:
    """Each environment's `out` split is a seeded `holdout_fraction` of it (DomainBed's holdout)."""
    splits = []
    for i, (name, env) in enumerate(zip(dataset.environments, dataset.envs)):
        if i in dataset.fixed_splits:
            splits.append(EnvSplit(name, *dataset.fixed_splits[i]))
            continue
        order = split_seed(data_seed, i).permutation(len(env))
        n_out = int(len(env) * holdout_fraction)
        if not 0 < n_out < len(env):
            raise UserError(
                f"holdout_fraction {holdout_fraction} leaves environment '{name}' of {dataset.name} "
                f"({len(env)} examples) with an empty in or out split"
            )
        out_idx, in_idx = np.sort(order[:n_out]), np.sort(order[n_out:])
        splits.append(EnvSplit(name, _subset(env, in_idx), _subset(env, out_idx)))
    return splits


def _subset(env: Dataset, indices: np.ndarray) -> Dataset:
    """Tensor environments stay tensors (fast batched indexing); others get a Subset."""
    if hasattr(env, "subset"):
        return env.subset(indices)
    tensors = getattr(env, "tensors", None)
    if tensors is not None:
        index = torch.as_tensor(indices, dtype=torch.long)
        return torch.utils.data.TensorDataset(*(t[index] for t in tensors))
    return Subset(env, indices.tolist())
