"""The intra-op thread count of a run, set by the run itself and not by whoever launched it.

Float reductions split across threads add in a different order, so on CPU the thread count changes
the last bits of a run's numbers (an LSQ run's I.D. accuracy read 0.1651 with 2 threads and 0.1663
with 1). A run id must mean one set of numbers whatever the launcher (`run`, `--workers N`, Slurm
tasks), so every run sets its suite's `training.threads` for as long as it trains and analyses,
and its record says how many it used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to `threads` inside the block, as they were after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
