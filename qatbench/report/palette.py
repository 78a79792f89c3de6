"""One colour (and one marker) per method across every figure of a report, chance levels, and the
natural order of layer names.

A report builds one `Palette` from every method label its records hold and hands it to each figure,
so lsq is the same colour in the accuracy-vs-bits panel, the I.D.-vs-OOD scatter, the landscapes and
the per-layer traces. Colours are assigned in sorted label order, independent of which subset a
figure draws. Distinct hues come first (tab10, then Dark2, Set1, Set2 and Paired, qualitative
palettes meant for categories, each hue kept only when it is not close to one already kept; husl's
evenly spaced hues made 14 methods look alike), and a marker per method adds a second channel for
prints in grey.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import seaborn as sns

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
MAX_PER_PANEL = 8  # more methods than this in one panel: small multiples


# Two hues closer than this (Euclidean, RGB in [0, 1]) read as one method: tab10's purple and Dark2's
# (0.14 apart) drew eoq and sagm alike. 0.2 keeps 26 hues, enough for every label of the leaderboard.
MIN_DISTANCE = 0.2


def _colours() -> list[tuple[float, float, float]]:
    out: list[tuple[float, float, float]] = []
    for name in ("tab10", "Dark2", "Set1", "Set2", "Paired"):
        for colour in sns.color_palette(name):
            if all(math.dist(colour, kept) >= MIN_DISTANCE for kept in out):
                out.append(tuple(colour))
    return out


class Palette:
    """label -> colour and marker, fixed for one report."""

    def __init__(self, labels: Iterable[str]):
        self.labels = sorted({str(label) for label in labels})
        colours = _colours()
        if len(self.labels) > len(colours):  # more methods than distinct hues: husl fills in the rest
            colours += sns.color_palette("husl", len(self.labels) - len(colours))
        self._colour = dict(zip(self.labels, colours))
        self._marker = {label: MARKERS[i % len(MARKERS)] for i, label in enumerate(self.labels)}

    def colour(self, label: str):
        if str(label) not in self._colour:  # a label this report did not list: still one fixed colour
            self.labels.append(str(label))
            self._colour[str(label)] = sns.color_palette("husl", 24)[len(self._colour) % 24]
            self._marker[str(label)] = MARKERS[len(self._marker) % len(MARKERS)]
        return self._colour[str(label)]

    def marker(self, label: str) -> str:
        self.colour(label)
        return self._marker[str(label)]

    def mapping(self, labels: Iterable[str]) -> dict:
        """{label: colour} for seaborn's `palette=`."""
        return {str(label): self.colour(label) for label in labels}


def chunks(labels: list[str], size: int = MAX_PER_PANEL - 1) -> list[list[str]]:
    """Labels split into panels of at most `size` (small multiples), as evenly as possible."""
    if len(labels) <= MAX_PER_PANEL:
        return [labels]
    n = -(-len(labels) // size)
    per = -(-len(labels) // n)
    return [labels[i : i + per] for i in range(0, len(labels), per)]


def natural_key(name: str) -> list:
    """'layer10.conv2' after 'layer2.conv2', '14' after '3': numbers inside names compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", str(name)) if part]


# Class counts of the registered datasets, for records written before they carried `num_classes`
# (the report never imports the dataset registry, which needs torch). Chance = 100 / classes.
CLASSES = {
    "RotatedMNIST": 10,
    "ColoredMNIST": 2,
    "PACS": 7,
    "VLCS": 5,
    "OfficeHome": 65,
    "TerraIncognita": 10,
    "DomainNet": 345,
    "CIFAR10": 10,
    "CIFAR10C": 10,
    "CIFAR100": 100,
    "CIFAR100C": 100,
    "ImageNet": 1000,
}


def chance_percent(dataset: str, num_classes=None) -> float | None:
    """Accuracy (%) of guessing uniformly, from the record's class count, else the dataset's."""
    try:
        classes = int(num_classes) if num_classes is not None and num_classes == num_classes else None
    except (TypeError, ValueError):
        classes = None
    classes = classes or CLASSES.get(str(dataset))
    return 100.0 / classes if classes else None
