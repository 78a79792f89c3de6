"""Accuracy of a method on every environment's `in` and `out` split, and the I.D./OOD summary.

I.D. accuracy is the mean over training environments of their held-out `out` accuracy (the
quantity DomainBed's training-domain validation selects on). OOD accuracy is the mean over
test environments of the accuracy on the whole environment (`in` and `out` together); a run
with no test environment (CIFAR without -C) has no OOD accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qatbench.data import EnvSplit, eval_batches


@torch.no_grad()
def count_correct(predict, dataset, batch_size: int, device: torch.device, transform=None) -> tuple[int, int]:
    """`transform` (deterministic, batched) runs on the device, after the uint8 batch is moved."""
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    for x, y in eval_batches(dataset, batch_size):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if transform is not None:
            x = transform(x)
        correct += (predict(x).argmax(dim=1) == y).sum()
        total += len(y)
    return int(correct), total


def evaluate(
    method,
    splits: Sequence[EnvSplit],
    test_envs: Sequence[int],
    batch_size: int,
    device: torch.device,
    transform=None,
    train_envs=None,
) -> dict[str, float | None]:
    """`train_envs(test_envs)` names the environments trained on (default: all but the test ones)."""
    method.eval()
    metrics: dict[str, float] = {}
    for i, split in enumerate(splits):
        c_in, n_in = count_correct(method.predict, split.in_split, batch_size, device, transform)
        c_out, n_out = count_correct(method.predict, split.out_split, batch_size, device, transform)
        metrics[f"env{i}_in_acc"] = c_in / max(n_in, 1)
        metrics[f"env{i}_out_acc"] = c_out / max(n_out, 1)
        metrics[f"env{i}_acc"] = (c_in + c_out) / max(n_in + n_out, 1)
    method.train()
    trained = train_envs(test_envs) if train_envs else [i for i in range(len(splits)) if i not in test_envs]
    metrics["id_acc"] = sum(metrics[f"env{i}_out_acc"] for i in trained) / max(len(trained), 1)
    metrics["ood_acc"] = sum(metrics[f"env{i}_acc"] for i in test_envs) / len(test_envs) if test_envs else None
    return metrics
