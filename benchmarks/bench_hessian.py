"""WIP"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from qatbench.config import QuantSpec
from qatbench.models import build_model
from qatbench.quant import calibrate, quantize_model

PACS = Path("/work/shared/data/PACS-64")
CACHE = Path(__file__).resolve().parent / ".cache"
CLASSES = 7  # PACS: dog, elephant, giraffe, guitar, horse, house, person
SIZE = 32  # CIFAR ResNet-20's input


def load_images(count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
    """`count` PACS images (all four domains, shuffled), resized to 32x32 and standardised; random
    tensors when the folder is missing. Returns (x, y, what the data is)."""
    files = sorted(PACS.glob("*/*/*")) if PACS.is_dir() else []
    if not files:
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(count, 3, SIZE, SIZE, generator=generator)
        return x, torch.randint(0, CLASSES, (count,), generator=generator), "random tensors"
    classes = sorted({f.parent.name for f in files})
    random.Random(seed).shuffle(files)
    files = files[:count]
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    y = torch.tensor([classes.index(f.parent.name) for f in files])
    return x, y, f"PACS-64 ({len(files)} images, 32 px)"


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, seed: int = 0) -> nn.Module:
    """Plain SGD with momentum and a cosine schedule: enough to leave the random initialisation
    (whose Hessian is not that of a trained network)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(y), (batch,), generator=generator)
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def trained_model(name: str, images: int, steps: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, str]:
    """`name` trained for `steps` SGD steps on `images` images (read from benchmarks/.cache/ when
    there), with those images: (model in eval mode, x, y, what the data is)."""
    x, y, what = load_images(images)
    model = build_model(name, (3, SIZE, SIZE), CLASSES, {})
    path = CACHE / f"{name}-{'pacs' if what.startswith('PACS') else 'random'}{images}-{steps}steps.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), x, y, what
    torch.manual_seed(0)
    train(model, x, y, steps, batch=128)
    CACHE.mkdir(exist_ok=True)
    (CACHE / ".gitignore").write_text("*\n")  # the cache ignores itself (the repository's .gitignore does not)
    torch.save(model.state_dict(), path)
    return model, x, y, what


def w4a4(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The model with LSQ 4-bit weights and activations, calibrated on `x`."""
    return calibrate(quantize_model(copy.deepcopy(model), QuantSpec(4, 4)), x).eval()
