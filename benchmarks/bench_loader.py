"""Does the loader keep a training step fed? Images per second delivered by qatbench's PACS
loader against images per second consumed by a ResNet-18 training step, measured in one run.

    python benchmarks/bench_loader.py [--data-root DIR] [--folder PACS-64] [--size 64] [--batch 32]

Three numbers, each a ratio within this run (the machine's noise mostly cancels):

- evaluation epoch, first vs second: the first decodes every JPEG/PNG into the image cache, the
  second maps the cache; both deliver every image once as a normalized float batch.
  Target: the second at least 10x faster.
- training loader vs training step: shuffled batches with DomainBed's augmentation (random
  resized crop, flip, color jitter, grayscale), in the training process as on CPU runs, against
  a ResNet-18 SGD step on batches of the same size. Target: the loader at least 5x faster.

The data root is --data-root, else $QATBENCH_DATA, else ../shared/data; the cache goes to a
temporary folder so the first epoch really decodes.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from qatbench.data import eval_batches, infinite_batches, transforms
from qatbench.data.folders import image_environment
from qatbench.models import build_model


def pacs_files(directory: Path) -> list[tuple[Path, int]]:
    classes = sorted(p.name for p in next(p for p in directory.iterdir() if p.is_dir()).iterdir())
    class_to_idx = {c: i for i, c in enumerate(classes)}
    files = []
    for domain in sorted(p for p in directory.iterdir() if p.is_dir()):
        files += [(Path(p), c) for p, c in make_dataset(str(domain), class_to_idx, IMG_EXTENSIONS, allow_empty=True)]
    return files


def evaluation_epoch(files, size: int, batch: int) -> float:
    """Seconds to deliver every image once, normalized, through the image cache."""
    start = time.perf_counter()
    env, _ = image_environment(files, size, "PACS")
    normalize = transforms.domainbed_eval()
    for x, _ in eval_batches(env, batch):
        normalize(x)
    return time.perf_counter() - start


def training_loader_rate(env, size: int, batch: int, batches: int) -> float:
    stream = infinite_batches(env, batch, seed=0, transform=transforms.domainbed_train(size))
    next(stream)
    start = time.perf_counter()
    for _ in itertools.islice(stream, batches):
        pass
    return batches * batch / (time.perf_counter() - start)


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
    parser.add_argument("--batches", type=int, default=60)
    args = parser.parse_args()
    directory = Path(args.data_root) / args.folder
    if not directory.is_dir():
        raise SystemExit(f"bench_loader: no folder {directory}; give --data-root DIR holding {args.folder}/")
    files = pacs_files(directory)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["QATBENCH_CACHE"] = cache
        first = evaluation_epoch(files, args.size, 256)
        second = evaluation_epoch(files, args.size, 256)
        env, _ = image_environment(files, args.size, "PACS")
        loader = training_loader_rate(env, args.size, args.batch, args.batches)
    step = training_step_rate(args.size, args.batch, 10)
    print(f"{len(files)} images of {directory} at {args.size} px, torch threads {torch.get_num_threads()}")
    print(f"evaluation epoch 1 (decode into cache): {len(files) / first:9.0f} img/s  ({first:.2f} s)")
    print(f"evaluation epoch 2 (from cache):        {len(files) / second:9.0f} img/s  ({second:.2f} s)")
    print(f"  second / first speed:  {first / second:6.1f}x   (target >= 10x)")
    print(f"training loader, DomainBed augmentation: {loader:7.0f} img/s")
    print(f"ResNet-18 training step, batch {args.batch}:      {step:7.0f} img/s")
    print(f"  loader / training speed: {loader / step:5.1f}x   (target >= 5x)")


if __name__ == "__main__":
    main()
