"""Multi-domain image folders in DomainBed's layout: `<root>/<Dataset>/<domain>/<class>/<image>`.

The five DomainBed datasets (Gulrajani & Lopez-Paz, "In Search of Lost Domain Generalization",
ICLR 2021, `domainbed/datasets.py` and `scripts/download.py`) are entries of one table, with
their folder names, domains and class counts as DomainBed has them; `image_folder` reads any
root whose subfolders are domains. Listing uses torchvision's ImageFolder rules, so files
without an image extension are ignored; decoding goes through the image cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from qatbench.data import transforms
from qatbench.data.base import DomainDataset
from qatbench.data.image_cache import Fit, load_images
from qatbench.data.registry import DATASETS
from qatbench.data.tensors import ImageTensors
from qatbench.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Layout:
    folder: str  # under the data root, as DomainBed's download script names it
    domains: tuple[str, ...]
    num_classes: int
    classes: tuple[str, ...] | None = None  # checked by name when DomainBed's set is short enough to list


DOMAINBED = {
    "PACS": Layout(
        "PACS",
        ("art_painting", "cartoon", "photo", "sketch"),
        7,
        ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person"),
    ),
    "VLCS": Layout("VLCS", ("Caltech101", "LabelMe", "SUN09", "VOC2007"), 5, ("bird", "car", "chair", "dog", "person")),
    "OfficeHome": Layout("office_home", ("Art", "Clipart", "Product", "Real World"), 65),
    "TerraIncognita": Layout(
        "terra_incognita",
        ("location_100", "location_38", "location_43", "location_46"),
        10,
        ("bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon", "squirrel"),
    ),
    "DomainNet": Layout("domain_net", ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"), 345),
}
PAPERS = {
    "PACS": "Li et al., Deeper, Broader and Artier Domain Generalization, ICCV 2017",
    "VLCS": "Fang et al., Unbiased Metric Learning, ICCV 2013",
    "OfficeHome": "Venkateswara et al., Deep Hashing Network for Unsupervised Domain Adaptation, CVPR 2017",
    "TerraIncognita": "Beery et al., Recognition in Terra Incognita, ECCV 2018",
    "DomainNet": "Peng et al., Moment Matching for Multi-Source Domain Adaptation, ICCV 2019",
}


def load_domain_folders(
    name: str, directory: Path, image_size: int, layout: Layout | None = None, domains: list[str] | None = None
) -> DomainDataset:
    """Every domain folder of `directory` as one environment of decoded, cached images."""
    expected = f"<root>/{directory.name}/<domain>/<class>/<image>"
    if not directory.is_dir():
        parent = directory.parent
        found = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        raise UserError(
            f"{name}: no folder {directory} (expected layout {expected}); {parent} holds: "
            f"{', '.join(found) or 'nothing'}{did_you_mean(directory.name, found)}"
        )
    present = sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    wanted = list(layout.domains) if layout else (domains or present)
    missing = [d for d in wanted if d not in present]
    if missing or not wanted:
        raise UserError(
            f"{name}: missing domain folder(s) {', '.join(missing) or '(any)'} in {directory} "
            f"(expected layout {expected}); found: {', '.join(present) or 'nothing'}"
        )
    classes = _common_classes(name, directory, wanted)
    if layout and (len(classes) != layout.num_classes or (layout.classes and tuple(classes) != layout.classes)):
        want = ", ".join(layout.classes) if layout.classes else f"{layout.num_classes} classes"
        difference = ""
        if layout.classes:
            missing, extra = sorted(set(layout.classes) - set(classes)), sorted(set(classes) - set(layout.classes))
            difference = f" (missing: {', '.join(missing) or '-'}; not DomainBed's: {', '.join(extra) or '-'})"
        raise UserError(
            f"{name}: {directory} has {len(classes)} class folders per domain, DomainBed's {name} has {want}"
            f"{difference}"
        )
    class_to_idx = {c: i for i, c in enumerate(classes)}
    envs, skipped = [], []
    for domain in wanted:
        samples = make_dataset(str(directory / domain), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        if not samples:
            raise UserError(f"{name}: domain folder {directory / domain} holds no images ({', '.join(IMG_EXTENSIONS)})")
        env, unreadable = image_environment([(Path(p), c) for p, c in samples], image_size, f"{name}/{domain}")
        envs.append(env)
        skipped += unreadable
    return DomainDataset(
        name,
        list(wanted),
        envs,
        (3, image_size, image_size),
        len(classes),
        train_transform=transforms.domainbed_train(image_size),
        eval_transform=transforms.domainbed_eval(),
        skipped=skipped,
        sources={domain: directory / domain for domain in wanted},
    )


def image_environment(files: list[tuple[Path, int]], size: int, desc: str, fit: Fit = "squash"):
    """(ImageTensors over the readable files, the unreadable ones' paths)."""
    decoded = load_images(files, size, fit, desc)
    env = ImageTensors(decoded.images, torch.from_numpy(decoded.labels), decoded.readable)
    return env, decoded.skipped


def _common_classes(name: str, directory: Path, domains: list[str]) -> list[str]:
    per_domain = {
        d: {p.name for p in (directory / d).iterdir() if p.is_dir() and not p.name.startswith(".")} for d in domains
    }
    union = set().union(*per_domain.values())
    differences = [f"{d} lacks {', '.join(sorted(union - found))}" for d, found in per_domain.items() if union - found]
    if differences:
        raise UserError(f"{name}: class folders differ between domains in {directory}: {'; '.join(differences)}")
    if not union:
        raise UserError(f"{name}: the domain folders of {directory} hold no class folders (<domain>/<class>/<image>)")
    return sorted(union)


def _register(name: str, layout: Layout) -> None:
    def factory(root, data_seed: int = 0, folder: str = layout.folder, image_size: int = 224) -> DomainDataset:
        return load_domain_folders(name, Path(root) / folder, image_size, layout)

    factory.__name__ = name.lower()
    factory.__doc__ = f"DomainBed's {name}: <root>/{layout.folder}/<domain>/<class>/<image>."
    DATASETS.register(
        name,
        summary=f"{len(layout.domains)} domains x {layout.num_classes} classes, DomainBed image folders",
        paper=PAPERS[name],
        environments=list(layout.domains),
    )(factory)


for _name, _layout in DOMAINBED.items():
    _register(_name, _layout)


@DATASETS.register(
    "image_folder",
    summary="any <root>/<folder>/<domain>/<class>/<image> tree; domains from disk",
    paper="DomainBed's MultipleEnvironmentImageFolder (Gulrajani & Lopez-Paz 2021)",
)
def image_folder(
    root, data_seed: int = 0, folder: str = ".", image_size: int = 224, domains: list[str] | None = None
) -> DomainDataset:
    directory = (Path(root) / folder).resolve()
    return load_domain_folders(f"image_folder {folder}", directory, image_size, None, domains)
