"""Claims about augmentation threads: per-image transforms run on one intra-op thread in the training
process, which gets its own thread count back for the training step. (Loader workers: torch's worker
loop already sets one thread, and qatbench's worker_init_fn says so explicitly; nothing to test.)"""

from __future__ import annotations

import numpy as np
import torch

from qatbench.data.loaders import infinite_batches
from qatbench.data.tensors import ImageTensors


def _threads_seen(image: torch.Tensor) -> torch.Tensor:
    return torch.full_like(image, torch.get_num_threads())


def _dataset() -> ImageTensors:
    return ImageTensors(np.zeros((8, 1, 2, 2), dtype=np.uint8), torch.arange(8))


def test_the_training_process_augments_on_one_thread_and_trains_on_its_own_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x, _ = next(infinite_batches(_dataset(), 4, seed=0, transform=_threads_seen))
        assert x.unique().tolist() == [1]
        assert torch.get_num_threads() == 2  # restored for the model step
    finally:
        torch.set_num_threads(before)
