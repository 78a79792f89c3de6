"""Gradient-disorder bookkeeping shared by GAQAT and FQAT: a ring buffer of one number per unit
(a step size, a layer) per step, kept on the device so that recording it never syncs the host.

GAQAT's reviews describe disorder as "the number of direction flips of the gradient over n
training steps"; neither paper's formula could be read (shared/papers.md 2-3), so the two
definitions below (GAQAT's, per step size) are reconstructions and the choice is an hparam:
- "flips": the fraction of consecutive steps in the window whose recorded sign differs;
- "conflict": the fraction of steps in the window whose two recorded signs (task and
  flatness gradient) differ.
FQAT's per-layer metrics of the same names are defined in fqat.py; both use SignHistory.
"""

from __future__ import annotations

from typing import Literal

import torch

Disorder = Literal["flips", "conflict"]


class SignHistory:
    """The last `window` rows of per-unit values, oldest first on request."""

    def __init__(self, window: int, units: int, device: torch.device):
        if window < 2:
            raise ValueError(f"the disorder window must be at least 2 steps, got {window}")
        self.window = window
        self.rows = torch.zeros(window, units, device=device)
        self.seen = 0

    def record(self, row: torch.Tensor) -> None:
        self.rows[self.seen % self.window] = row
        self.seen += 1

    @property
    def full(self) -> bool:
        return self.seen >= self.window

    def ordered(self) -> torch.Tensor:
        return torch.roll(self.rows, shifts=-(self.seen % self.window), dims=0)


def flip_rate(signs: torch.Tensor) -> torch.Tensor:
    """Per column, the fraction of consecutive rows whose sign differs."""
    return (signs[1:] != signs[:-1]).float().mean(dim=0)


def conflict_rate(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per column, the fraction of rows where the two signs differ."""
    return (a != b).float().mean(dim=0)
