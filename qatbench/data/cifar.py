"""CIFAR-10/100 from the official python pickles, and CIFAR-10-C/100-C from their `.npy` files.

Layouts, as the archives unpack (Krizhevsky 2009; Hendrycks & Dietterich, "Benchmarking Neural
Network Robustness to Common Corruptions and Perturbations", ICLR 2019):

    <root>/cifar-10-batches-py/data_batch_1..5, test_batch      (dicts: data (N, 3072) uint8, labels)
    <root>/cifar-100-python/train, test                          (dicts: data, fine_labels)
    <root>/CIFAR-10-C/<corruption>.npy, labels.npy               ((5 x 10000, 32, 32, 3) uint8,
    <root>/CIFAR-100-C/...                                        severities 1..5 stacked in order)

Environment 0, `clean`, trains on the training set and validates on the test set, so the run's
I.D. accuracy is the usual CIFAR test accuracy. With -C, every corruption x severity is one more
environment, named `<corruption>/<severity>`, evaluated but never trained on: `test_envs:
["*/*"]` makes the run's OOD accuracy the mean corruption error's complement, `["*/5"]` the mean
over severity 5 only (the other corruption environments are still measured, in the record).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from qatbench.data import transforms
from qatbench.data.base import DomainDataset
from qatbench.data.registry import DATASETS
from qatbench.data.tensors import ImageTensors
from qatbench.errors import UserError, excerpt, first_line

CORRUPTIONS = (  # the 15 of the benchmark; the .npy set adds 4 held-out ones (see EXTRA_CORRUPTIONS)
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
SEVERITIES = (1, 2, 3, 4, 5)

CIFAR = {
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", "CIFAR-10-C"),
    100: ("cifar-100-python", ["train"], ["test"], "fine_labels", "CIFAR-100-C"),
}
STATS = {
    10: (transforms.CIFAR10_MEAN, transforms.CIFAR10_STD),
    100: (transforms.CIFAR100_MEAN, transforms.CIFAR100_STD),
}


def read_batches(root: Path, classes: int, train: bool) -> ImageTensors:
    folder, train_files, test_files, label_key, _ = CIFAR[classes]
    directory = Path(root) / folder
    names = train_files if train else test_files
    missing = [n for n in names if not (directory / n).is_file()]
    if missing:
        found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
        raise UserError(
            f"CIFAR{classes}: missing {', '.join(missing)} in {directory} (expected the official python "
            f"pickles: <root>/{folder}/{' '.join(train_files + test_files)}); found: {', '.join(found) or 'nothing'}"
        )
    images, labels = [], []
    for name in names:
        batch = _unpickle(directory / name)
        if "data" not in batch or label_key not in batch:
            raise UserError(f"CIFAR{classes}: {directory / name} has keys {sorted(batch)}; expected data, {label_key}")
        data, targets = np.asarray(batch["data"], dtype=np.uint8), np.asarray(batch[label_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(targets):
            raise UserError(
                f"CIFAR{classes}: {directory / name} holds data of shape {data.shape} and {len(targets)} labels; "
                f"expected (N, 3072) uint8 rows and N labels"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(targets)
    return ImageTensors(np.concatenate(images), torch.from_numpy(np.concatenate(labels)))


def read_corruptions(root: Path, classes: int, corruptions, severities) -> tuple[list[str], list[ImageTensors]]:
    directory = Path(root) / CIFAR[classes][4]
    labels_file = directory / "labels.npy"
    if not labels_file.is_file():
        raise UserError(
            f"CIFAR{classes}C: no {labels_file} (expected <root>/{directory.name}/<corruption>.npy and labels.npy)"
        )
    labels = torch.from_numpy(np.load(labels_file).astype(np.int64))
    if len(labels) == 0 or len(labels) % len(SEVERITIES):
        raise UserError(f"CIFAR{classes}C: {labels_file} has {len(labels)} labels; expected 5 severities x N")
    per_severity = len(labels) // len(SEVERITIES)
    names, envs = [], []
    for corruption in corruptions:
        path = directory / f"{corruption}.npy"
        if not path.is_file():
            found = sorted(p.stem for p in directory.glob("*.npy") if p.stem != "labels")
            raise UserError(f"CIFAR{classes}C: no {path}; found corruptions: {', '.join(found) or 'none'}")
        array = np.load(path, mmap_mode="r")  # (5 x n, 32, 32, 3), read lazily
        if array.shape[0] != len(labels) or array.shape[1:] != (32, 32, 3):
            raise UserError(
                f"CIFAR{classes}C: {path} has shape {array.shape}; "
                f"expected ({len(labels)}, 32, 32, 3) to match labels.npy"
            )
        channels_first = array.transpose(0, 3, 1, 2)
        for severity in severities:
            rows = slice((severity - 1) * per_severity, severity * per_severity)
            names.append(f"{corruption}/{severity}")
            envs.append(ImageTensors(channels_first[rows], labels[rows]))
    return names, envs


def cifar(root, classes: int, corruptions=(), severities=SEVERITIES) -> DomainDataset:
    train, test = read_batches(root, classes, True), read_batches(root, classes, False)
    names, envs = read_corruptions(root, classes, corruptions, severities) if corruptions else ([], [])
    mean, std = STATS[classes]
    return DomainDataset(
        f"CIFAR{classes}" + ("C" if corruptions else ""),
        ["clean", *names],
        [train, *envs],
        (3, 32, 32),
        classes,
        train_transform=transforms.cifar_train(mean, std),
        eval_transform=transforms.normalize(mean, std),
        fixed_splits={0: (train, test)},
        eval_only=set(range(1, 1 + len(envs))),  # corrupted images are never trained on
    )


def corruption_environments(
    corruptions: tuple[str, ...] = CORRUPTIONS, severities: tuple[int, ...] = SEVERITIES, **_
) -> list[str]:
    _check(corruptions, severities)
    return ["clean", *(f"{c}/{s}" for c in corruptions for s in severities)]


def _check(corruptions: tuple[str, ...], severities: tuple[int, ...]) -> None:
    allowed = CORRUPTIONS + EXTRA_CORRUPTIONS
    unknown = [c for c in corruptions if c not in allowed]
    if unknown:
        raise UserError(f"corruptions: unknown {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    if not set(severities) <= set(SEVERITIES) or not severities:
        raise UserError(f"severities: {severities} not allowed; allowed: a non-empty subset of 1, 2, 3, 4, 5")


@DATASETS.register("CIFAR10", summary="CIFAR-10 train/test from the python pickles", paper="Krizhevsky 2009",
                   environments=["clean"], test_envs="none")  # fmt: skip
def cifar10(root, data_seed: int = 0) -> DomainDataset:
    return cifar(root, 10)


@DATASETS.register("CIFAR100", summary="CIFAR-100 train/test from the python pickles", paper="Krizhevsky 2009",
                   environments=["clean"], test_envs="none")  # fmt: skip
def cifar100(root, data_seed: int = 0) -> DomainDataset:
    return cifar(root, 100)


@DATASETS.register(
    "CIFAR10C",
    summary="CIFAR-10 clean + CIFAR-10-C corruption x severity environments",
    paper="Hendrycks & Dietterich, ICLR 2019",
    environments=corruption_environments,
    test_envs=[["*/*"]],  # one run, every corruption held out
)
def cifar10c(
    root, data_seed: int = 0, corruptions: tuple[str, ...] = CORRUPTIONS, severities: tuple[int, ...] = SEVERITIES
) -> DomainDataset:
    _check(corruptions, severities)
    return cifar(root, 10, corruptions, severities)


@DATASETS.register(
    "CIFAR100C",
    summary="CIFAR-100 clean + CIFAR-100-C corruption x severity environments",
    paper="Hendrycks & Dietterich, ICLR 2019",
    environments=corruption_environments,
    test_envs=[["*/*"]],  # one run, every corruption held out
)
def cifar100c(
    root, data_seed: int = 0, corruptions: tuple[str, ...] = CORRUPTIONS, severities: tuple[int, ...] = SEVERITIES
) -> DomainDataset:
    _check(corruptions, severities)
    return cifar(root, 100, corruptions, severities)


# The only globals a CIFAR batch refers to: numpy arrays rebuilt from their bytes. The official
# batches are Python 2 pickles (protocol 2: `_reconstruct`, `ndarray`, `dtype`); a batch written again
# by Python 3 also uses `_codecs.encode` (bytes under protocol 2) or `_frombuffer` (protocol 5).
# Anything else (os.system, builtins.eval, ...) in a file under a data root is refused, never called.
CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Admits dicts, lists, bytes, str, numbers and numpy arrays: what the official batches hold."""

    def find_class(self, module: str, name: str):
        if (module, name) not in CIFAR_GLOBALS:
            refused = f"{excerpt(module, 60)}.{excerpt(name, 60)}"
            raise pickle.UnpicklingError(f"refers to {refused}, which a CIFAR batch never does: refused")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{path}: not a CIFAR python pickle ({first_line(exc)})") from None
    if not isinstance(batch, dict):
        raise UserError(f"{path}: not a CIFAR python pickle (holds a {type(batch).__name__}, not a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
