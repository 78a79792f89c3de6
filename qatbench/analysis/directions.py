"""Directions to cut a loss landscape along, the same for every method and checkpoint.

Li et al. (2018, "Visualizing the Loss Landscape of Neural Nets") show that random directions
only compare across networks once each filter of the direction is scaled to the norm of the
matching filter of the weights; bias and BN parameters are left out (their direction is zero).
The Gaussian draw itself is seeded and saved once per suite and architecture, so that two
methods are cut along the same raw direction and differ only by their own filter norms.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch

from qatbench.records import atomic_write_bytes

Direction = dict[str, torch.Tensor]


def shapes_digest(weights: dict[str, torch.Tensor]) -> str:
    """The architecture as seen by a direction: parameter names and shapes."""
    text = ";".join(f"{name}:{tuple(w.shape)}" for name, w in weights.items())
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def gaussian(weights: dict[str, torch.Tensor], seed: int) -> Direction:
    """N(0, 1) entries for every parameter, drawn on the CPU so any device gives the same draw."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(w.shape, generator=generator, dtype=torch.float32) for name, w in weights.items()}


def saved_gaussian(folder: Path | None, model_name: str, weights: dict[str, torch.Tensor], seed: int) -> Direction:
    """`gaussian(weights, seed)`, read from `folder` when this architecture's draw is there, else
    drawn and saved (atomically) for the next run to read."""
    if folder is None:
        return gaussian(weights, seed)
    path = Path(folder) / f"{model_name}-{shapes_digest(weights)}-seed{seed}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if set(saved) == set(weights) and all(saved[n].shape == w.shape for n, w in weights.items()):
                return saved
        except Exception:  # noqa: BLE001  (a truncated file is drawn again, identically)
            pass
    direction = gaussian(weights, seed)
    buffer = io.BytesIO()
    torch.save(direction, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return direction


def is_filtered(weight: torch.Tensor) -> bool:
    """Weights of convolutions and linear layers have filters (rows); biases and BN vectors do not."""
    return weight.dim() > 1


def normalize(
    direction: Direction, weights: dict[str, torch.Tensor], *, normalization: str = "filter", ignore: str = "biasbn"
) -> Direction:
    """Scale each filter d_f of the direction to ||w_f|| (`filter`) or leave it (`none`), on the
    weights' device and dtype; with ignore='biasbn' vectors (biases, BN) get a zero direction."""
    out = {}
    for name, w in weights.items():
        d = direction[name].to(device=w.device, dtype=w.dtype)
        if not is_filtered(w):
            if ignore == "biasbn":
                out[name] = torch.zeros_like(w)
                continue
            out[name] = d * (w.norm() / d.norm().clamp_min(1e-12)) if normalization == "filter" else d
            continue
        if normalization == "filter":
            dims = tuple(range(1, w.dim()))
            norm = torch.linalg.vector_norm
            scale = norm(w, dim=dims, keepdim=True) / norm(d, dim=dims, keepdim=True).clamp_min(1e-12)
            d = d * scale
        out[name] = d
    return out


def from_flat(vector: torch.Tensor, weights: dict[str, torch.Tensor]) -> Direction:
    """A flat vector (an eigenvector of the Hessian over the same weights) as a direction."""
    pieces = torch.split(vector, [w.numel() for w in weights.values()])
    return {name: piece.view(w.shape).to(w.dtype) for (name, w), piece in zip(weights.items(), pieces)}


def difference(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor]) -> Direction:
    """end - start: alpha = 0 is `start`, alpha = 1 is `end` along it."""
    return {name: (end[name] - start[name].to(end[name])).detach() for name in end}
