"""Does the loader keep a training step fed? Images per second delivered by qatbench's PACS
loader against images per second consumed by a ResNet-18 training step, measured in one run.

    python benchmarks/bench_loader.py [--data-root DIR] [--folder PACS-64] [--size 64] [--batch 32] [--load 2]

Three numbers, each a ratio within this run (the machine's noise mostly cancels):

- evaluation epoch, first vs second: the first decodes every JPEG/PNG into the image cache, the
  second maps the cache; both deliver every image once as a normalized float batch.
  Target: the second at least 10x faster.
- training loader vs training step: shuffled batches with DomainBed's augmentation (random
  resized crop, flip, color jitter, grayscale), in the training process as on CPU runs, against
  a ResNet-18 SGD step on batches of the same size. Target: the loader at least 5x faster.
  Both run while `--load` other processes (default: one per core) keep every core busy, as on a
  shared machine, and the loader is measured twice, alternating: augmentation pinned to one
  intra-op thread (what qatbench does) and on torch's default thread pool (what it did).

The data root is --data-root, else $QATBENCH_DATA, else ../shared/data; the cache goes to a
temporary folder so the first epoch really decodes (or to --cache, kept between runs).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from qatbench.data import DomainDataset, build_dataset, eval_batches, infinite_batches, loaders, transforms
from qatbench.errors import UserError
from qatbench.models import build_model


def evaluation_epoch(root: Path, folder: str, size: int, batch: int) -> tuple[float, DomainDataset]:
    """Seconds to build PACS through the registry and deliver every image once, normalized."""
    start = time.perf_counter()
    dataset = build_dataset("PACS", root, 0, {"folder": folder, "image_size": size})
    for env in dataset.envs:
        for x, _ in eval_batches(env, batch):
            dataset.eval_transform(x)
    return time.perf_counter() - start, dataset


def training_loader_rate(env, size: int, batch: int, batches: int) -> float:
    stream = infinite_batches(env, batch, seed=0, transform=transforms.domainbed_train(size))
    next(stream)
    start = time.perf_counter()
    for _ in itertools.islice(stream, batches):
        pass
    return batches * batch / (time.perf_counter() - start)


def _busy(stop) -> None:
    """Another process's work: one core's worth of float arithmetic until told to stop."""
    x = 1.0001
    while not stop.is_set():
        for _ in range(100_000):
            x = x * 1.0000001 % 7.0


def busy_cores(n: int):
    """`n` processes spinning until the returned event is set."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    workers = [context.Process(target=_busy, args=(stop,), daemon=True) for _ in range(n)]
    for worker in workers:
        worker.start()
    return stop, workers


def loader_rates(env, size: int, batch: int, batches: int, rounds: int = 3) -> tuple[float, float]:
    """(pinned, default-threads) augmentation rates, alternating, median of `rounds` each."""
    pinned, default = [], []
    for _ in range(rounds):
        loaders.AUGMENT_THREADS = 1
        pinned.append(training_loader_rate(env, size, batch, batches))
        loaders.AUGMENT_THREADS = None
        default.append(training_loader_rate(env, size, batch, batches))
    loaders.AUGMENT_THREADS = 1
    return statistics.median(pinned), statistics.median(default)


def training_step_rate(size: int, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model("resnet18", (3, size, size), 7)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 7, (batch,))
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=os.environ.get("QATBENCH_DATA", "../shared/data"))
    parser.add_argument("--folder", default="PACS-64")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--cache", help="image cache folder to keep between runs (default: a temporary one)")
    parser.add_argument("--load", type=int, default=os.cpu_count() or 1, help="busy processes (default: one per core)")
    args = parser.parse_args()
    root = Path(args.data_root)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["QATBENCH_CACHE"] = args.cache or cache  # a kept cache: epoch 1 decodes only the first time
        try:
            first, dataset = evaluation_epoch(root, args.folder, args.size, 256)
        except UserError as exc:
            raise SystemExit(f"bench_loader: {exc}") from None
        second, _ = evaluation_epoch(root, args.folder, args.size, 256)
        stop, busy = busy_cores(args.load)
        try:
            pinned, default = loader_rates(dataset.envs[0], args.size, args.batch, args.batches)
            step = training_step_rate(args.size, args.batch, 10)
        finally:
            stop.set()
            for worker in busy:
                worker.join()
    n = sum(len(env) for env in dataset.envs)
    print(f"{n} images of {root / args.folder} at {args.size} px, torch threads {torch.get_num_threads()}")
    print(f"evaluation epoch 1 (decode into cache): {n / first:9.0f} img/s  ({first:.2f} s)")
    print(f"evaluation epoch 2 (from cache):        {n / second:9.0f} img/s  ({second:.2f} s)")
    print(f"  second / first speed:  {first / second:6.1f}x   (target >= 10x)")
    print(f"while {args.load} other processes keep the cores busy:")
    print(f"training loader, DomainBed augmentation, 1 thread:          {pinned:7.0f} img/s")
    print(f"training loader, DomainBed augmentation, {torch.get_num_threads()} threads (old): {default:7.0f} img/s")
    print(f"ResNet-18 training step, batch {args.batch}:                     {step:7.0f} img/s")
    threads = torch.get_num_threads()
    print(f"  loader / training speed: {pinned / step:5.1f}x   (target >= 5x; {default / step:.1f}x on {threads} threads)")


if __name__ == "__main__":
    main()
