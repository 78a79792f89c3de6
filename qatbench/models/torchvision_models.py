"""torchvision's ImageNet ResNets by name, with ImageNet weights read from disk only.

No run-time downloads: `pretrained: true` looks for torchvision's own cache file
(`$TORCH_HOME/hub/checkpoints/<file>`, where `torchvision` would have put it), and
`pretrained: /path/to/weights.pth` names a file. The classifier is replaced when the number
of classes differs from ImageNet's, and the stem when the input is not RGB.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from qatbench.errors import UserError
from qatbench.models.registry import MODELS

_WEIGHTS = {
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
}


def pretrained_path(name: str, pretrained: bool | str | os.PathLike) -> Path:
    if isinstance(pretrained, (str, os.PathLike)):
        return Path(pretrained).expanduser()
    url = _WEIGHTS[name].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def read_state_dict(name: str, path: Path, fix: str) -> dict[str, torch.Tensor]:
    """A weights file as a state_dict of tensors (never executing code); `fix` says how to get one."""
    if not path.is_file():
        raise UserError(
            f"model '{name}': pretrained weights not found at {path}; qatbench never downloads: "
            f"{fix} (or set pretrained: /path/to/file.pth)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any unreadable file is the user's to fix)
        raise UserError(
            f"model '{name}': cannot read weights from {path}: {type(exc).__name__}: {exc}".splitlines()[0]
        ) from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"model '{name}': {path} does not hold a state_dict of tensors")
    return state


def _load_pretrained(model: nn.Module, name: str, pretrained: bool | str | os.PathLike) -> None:
    """Every backbone tensor must come from the file; only a replaced stem or classifier may not."""
    path = pretrained_path(name, pretrained)
    state = read_state_dict(name, path, f"fetch {_WEIGHTS[name].url} into that folder")
    own = model.state_dict()
    replaced = tuple(
        prefix
        for prefix, kept in (("fc.", model.fc.out_features == 1000), ("conv1.", model.conv1.in_channels == 3))
        if not kept
    )
    foreign = sorted(set(state) - set(own))
    mismatched = sorted(
        k for k in set(state) & set(own) if state[k].shape != own[k].shape and not k.startswith(replaced)
    )
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(replaced))
    if foreign or mismatched or missing:
        example = (foreign or mismatched or missing)[:3]
        raise UserError(f"model '{name}': {path} does not hold {name} weights (e.g. {', '.join(example)})")
    usable = {k: v for k, v in state.items() if not k.startswith(replaced)}
    model.load_state_dict(usable, strict=False)


def _build(
    name: str, input_shape: tuple[int, ...], num_classes: int, pretrained: bool | str | os.PathLike
) -> nn.Module:
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    if input_shape[0] != 3:
        old = model.conv1
        model.conv1 = nn.Conv2d(input_shape[0], old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    if pretrained:
        _load_pretrained(model, name, pretrained)
    return model


@MODELS.register("resnet18", summary="torchvision ResNet-18 (ImageNet weights when on disk)")
def resnet18(input_shape: tuple[int, ...], num_classes: int, pretrained: bool | str = False) -> nn.Module:
    return _build("resnet18", input_shape, num_classes, pretrained)


@MODELS.register("resnet50", summary="torchvision ResNet-50 (ImageNet weights when on disk)")
def resnet50(input_shape: tuple[int, ...], num_classes: int, pretrained: bool | str = False) -> nn.Module:
    return _build("resnet50", input_shape, num_classes, pretrained)
