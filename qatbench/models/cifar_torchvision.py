"""CIFAR versions of torchvision's ResNet-18, ResNet-50 and MobileNetV2, for 32x32 images.

FPQ (arXiv:2503.11159, Sec. 4.2; shared/papers.md 4(d)) trains "CIFAR versions" of these
networks without saying what was changed. The changes below are the common ones, those of
kuangliu/pytorch-cifar (`models/resnet.py`, `models/mobilenetv2.py`), which many QAT code bases
copy. Every network is torchvision's own class; only the layers listed are replaced.

ResNet-18 / ResNet-50 (torchvision.models.resnet18 / resnet50, weights=None):
  * `conv1`: 7x7 stride-2 padding-3 -> 3x3 stride-1 padding-1, no bias (kuangliu `ResNet.conv1`);
  * `maxpool`: 3x3 stride-2 max-pool -> nn.Identity (kuangliu has none).
  Spatial sizes for a 32x32 input: stem 32, layer1 32, layer2 16, layer3 8, layer4 4; the
  adaptive average pool then does what kuangliu's `avg_pool2d(out, 4)` does. The blocks are
  torchvision's (stride on the 3x3 conv of the bottleneck, 1x1-conv+BN downsample shortcuts),
  the same as kuangliu's, so the parameter count is torchvision's minus 64*C*7*7 plus 64*C*3*3
  (C input channels): 11,173,962 for ResNet-18 with 10 classes, as kuangliu's.

MobileNetV2 (torchvision.models.mobilenet_v2, weights=None):
  * stem `features[0][0]`: 3x3 stride 2 -> 3x3 stride 1 (padding 1, no bias, 32 channels);
  * the first stride-2 stage (t=6, c=24, n=2) gets stride 1, through torchvision's own
    `inverted_residual_setting` argument, so the stage strides are (1, 1, 2, 2, 1, 2, 1), the
    `cfg` of kuangliu `MobileNetV2` ("NOTE: change stride 2 -> 1 for CIFAR10", twice).
  Spatial sizes for a 32x32 input: stem 32, stages 32, 32, 16, 8, 8, 4, 4; the final 1x1 conv
  to 1280 channels sees 4x4 (kuangliu: "change pooling kernel_size 7 -> 4"). Kept from torchvision
  (so these differ from kuangliu's copy): residual connections only where stride is 1 and the
  channels do not change (MobileNetV2 paper; kuangliu adds 1x1-conv+BN shortcuts to the other
  stride-1 blocks), ReLU6, and Dropout(0.2) before the classifier. The stem keeps its size, so
  the parameter count is exactly torchvision's (2,236,682 with 10 classes).

Input channels other than 3 replace the stem's `in_channels`, as `torchvision_models.py` does.
Replaced stems are initialised like torchvision initialises its convolutions (Kaiming normal,
fan-out). No pretrained option: ImageNet weights do not fit a stride-1 3x3 stem.
"""

from __future__ import annotations

import torchvision
from torch import nn

from qatbench.models.registry import MODELS

CIFAR_CODE = "CIFAR changes of kuangliu/pytorch-cifar"
STEM_CHANNELS = {"resnet": 64, "mobilenetv2": 32}

# torchvision's MobileNetV2 setting (t expansion, c channels, n blocks, s stride of the first
# block), with the second stage's stride 2 -> 1 as in kuangliu/pytorch-cifar models/mobilenetv2.py.
MOBILENETV2_CIFAR_SETTING = [
    [1, 16, 1, 1],
    [6, 24, 2, 1],  # torchvision / the paper: stride 2
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]


def _stem(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _resnet(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    # assigning an existing attribute keeps its place in registration order: the stem stays the
    # first layer, which quantize_model keeps at 8 bits
    model.conv1 = _stem(input_shape[0], STEM_CHANNELS["resnet"])
    model.maxpool = nn.Identity()
    return model


@MODELS.register("resnet18_cifar", summary="torchvision ResNet-18, 3x3 stride-1 stem, no max-pool", paper=CIFAR_CODE)
def resnet18_cifar(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return _resnet("resnet18", input_shape, num_classes)


@MODELS.register("resnet50_cifar", summary="torchvision ResNet-50, 3x3 stride-1 stem, no max-pool", paper=CIFAR_CODE)
def resnet50_cifar(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return _resnet("resnet50", input_shape, num_classes)


@MODELS.register(
    "mobilenetv2_cifar", summary="torchvision MobileNetV2, stride-1 stem, stage strides 1,1,2,2,1,2,1", paper=CIFAR_CODE
)
def mobilenetv2_cifar(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    model = torchvision.models.mobilenet_v2(
        weights=None, num_classes=num_classes, inverted_residual_setting=MOBILENETV2_CIFAR_SETTING
    )
    model.features[0][0] = _stem(input_shape[0], STEM_CHANNELS["mobilenetv2"])
    return model
