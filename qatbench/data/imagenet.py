"""ImageNet-style folders, `<root>/<folder>/train/<wnid>/*` and `val/<wnid>/*`, for PTQ calibration
and evaluation.

One environment, `imagenet`: `train` is its in split (calibration and fine-tuning draw from it),
`val` its out split (the reported accuracy). Images are cached the way torchvision's reference
evaluation reads them: resize the short side to size x 256/224, center-crop `image_size`.
`train_per_class` keeps the first N files of each class, enough for PTQ calibration without
decoding 1.28 million images.
"""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from qatbench.data import transforms
from qatbench.data.base import DomainDataset
from qatbench.data.folders import image_environment
from qatbench.data.registry import DATASETS
from qatbench.errors import UserError


@DATASETS.register(
    "ImageNet",
    summary="ImageNet-style train/ and val/ class folders (PTQ calibration and evaluation)",
    paper="Deng et al., ImageNet, CVPR 2009",
    environments=["imagenet"],
    test_envs="none",
)
def imagenet(
    root, data_seed: int = 0, folder: str = "imagenet", image_size: int = 224, train_per_class: int | None = None
) -> DomainDataset:
    directory = Path(root) / folder
    splits = {}
    for part in ("train", "val"):
        path = directory / part
        if not path.is_dir():
            found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
            raise UserError(
                f"ImageNet: no folder {path} (expected layout <root>/{folder}/train/<wnid>/<image> and "
                f"<root>/{folder}/val/<wnid>/<image>); found in {directory}: {', '.join(found) or 'nothing'}"
            )
        try:
            splits[part] = find_classes(str(path))[0]
        except FileNotFoundError:
            raise UserError(f"ImageNet: {path} holds no class folders (expected {path}/<wnid>/<image>)") from None
    if splits["train"] != splits["val"]:
        only_train = sorted(set(splits["train"]) - set(splits["val"]))
        only_val = sorted(set(splits["val"]) - set(splits["train"]))
        raise UserError(
            f"ImageNet: class folders of train and val differ in {directory}: "
            f"only in train: {', '.join(only_train[:10]) or '-'}; only in val: {', '.join(only_val[:10]) or '-'}"
        )
    class_to_idx = {c: i for i, c in enumerate(splits["train"])}
    envs, skipped = {}, []
    for part in ("train", "val"):
        samples = make_dataset(str(directory / part), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        if part == "train" and train_per_class is not None:
            samples = _first_per_class(samples, train_per_class)
        files = [(Path(p), c) for p, c in samples]
        envs[part], unreadable = image_environment(files, image_size, f"ImageNet/{part}", fit="center")
        skipped += unreadable
    return DomainDataset(
        "ImageNet",
        ["imagenet"],
        [envs["train"]],
        (3, image_size, image_size),
        len(class_to_idx),
        train_transform=transforms.imagenet_train(image_size),
        eval_transform=transforms.domainbed_eval(),
        fixed_splits={0: (envs["train"], envs["val"])},
        skipped=skipped,
        sources={"imagenet": directory},
    )


def _first_per_class(samples: list[tuple[str, int]], n: int) -> list[tuple[str, int]]:
    kept, counts = [], {}
    for path, label in samples:  # make_dataset lists each class's files in sorted order
        if counts.get(label, 0) < n:
            kept.append((path, label))
            counts[label] = counts.get(label, 0) + 1
    return kept
