"""Claims about the CIFAR versions of torchvision's networks (qatbench/models/cifar_torchvision.py):
shapes, the replaced stem, spatial sizes, parameter counts against torchvision's own models, and
that qatbench's quantizer handles them (stem and classifier at 8 bits)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from qatbench.config.spec import QuantSpec
from qatbench.errors import UserError
from qatbench.models import MODELS, build_model
from qatbench.quant import QuantConv2d, QuantLinear, calibrate, quantize_model
from tests.conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["resnet18_cifar", "resnet50_cifar", "mobilenetv2_cifar"]
# the torchvision builder each one starts from, and the module whose output is the last feature map
TORCHVISION = {"resnet18_cifar": "resnet18", "resnet50_cifar": "resnet50", "mobilenetv2_cifar": "mobilenet_v2"}
LAST_FEATURES = {"resnet18_cifar": "layer4", "resnet50_cifar": "layer4", "mobilenetv2_cifar": "features"}


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _stem(model: nn.Module) -> nn.Module:
    return model.features[0][0] if hasattr(model, "features") else model.conv1


def _spatial_sizes(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, tuple[int, int]]:
    """The (H, W) of each named module's output for input x."""
    sizes: dict[str, tuple[int, int]] = {}
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: sizes.__setitem__(name, tuple(out.shape[-2:]))
        )
        for name in names
    ]
    with torch.no_grad():
        model.eval()(x)
    for handle in handles:
        handle.remove()
    return sizes


# --------------------------------------------------------------------------------------------- shapes


def test_the_cifar_models_are_registered():
    assert set(NAMES) <= set(MODELS.names())


def test_qatbench_list_models_shows_the_cifar_models():
    result = run_cli("list", "models")
    assert result.returncode == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert set(NAMES) <= set(listed)


@pytest.mark.parametrize("name", NAMES)
def test_cifar_models_take_no_pretrained_option(name):
    # ImageNet weights do not fit a 3x3 stride-1 stem: no option, so nothing can be downloaded
    with pytest.raises(UserError, match=r"unknown option 'pretrained'"):
        build_model(name, (3, 32, 32), 10, {"pretrained": True})


# --------------------------------------------------------------------------------------------- stem


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [3, 1])
def test_stem_is_a_3x3_stride_1_conv_without_bias_and_there_is_no_max_pool(name, channels):
    model = build_model(name, (channels, 32, 32), 10)
    stem = _stem(model)
    assert type(stem) is nn.Conv2d
    assert stem.in_channels == channels
    assert (stem.kernel_size, stem.stride, stem.padding, stem.bias) == ((3, 3), (1, 1), (1, 1), None)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    # the stem is the first conv/linear registered: quantize_model's "first layer"
    first = next(m for m in model.modules() if type(m) in (nn.Conv2d, nn.Linear))
    assert first is stem


# --------------------------------------------------------------------------------------------- spatial sizes


@pytest.mark.parametrize("name", ["resnet18_cifar", "resnet50_cifar"])
def test_resnet_cifar_feature_maps_go_32_32_16_8_4(name):
    stages = ["conv1", "layer1", "layer2", "layer3", "layer4"]
    sizes = _spatial_sizes(build_model(name, (3, 32, 32), 10), stages, torch.rand(1, 3, 32, 32))
    assert [sizes[s] for s in stages] == [(32, 32), (32, 32), (16, 16), (8, 8), (4, 4)]


def test_mobilenetv2_cifar_stages_have_strides_1_1_2_2_1_2_1_after_a_stride_1_stem():
    # torchvision's features: [0] stem, [1] t1c16, [2-3] c24, [4-6] c32, [7-10] c64, [11-13] c96,
    # [14-16] c160, [17] c320, [18] 1x1 conv to 1280. The output of each stage's last block:
    stages = {"features.0": 32, "features.1": 32, "features.3": 32, "features.6": 16, "features.10": 8}
    stages |= {"features.13": 8, "features.16": 4, "features.17": 4, "features.18": 4}
    model = build_model("mobilenetv2_cifar", (3, 32, 32), 10)
    sizes = _spatial_sizes(model, list(stages), torch.rand(1, 3, 32, 32))
    assert sizes == {name: (size, size) for name, size in stages.items()}
    # only the 24-channel stage changed: its depthwise conv has stride 1; torchvision's residual
    # rule (stride 1 and same channels) is kept, so its first block still has no shortcut
    first_24 = model.features[2]
    assert first_24.stride == 1 and first_24.conv[1][0].stride == (1, 1) and not first_24.use_res_connect
    assert torchvision.models.mobilenet_v2().features[2].conv[1][0].stride == (2, 2)


@pytest.mark.parametrize("name", NAMES)
def test_final_feature_map_before_pooling_is_4x4(name):
    last = LAST_FEATURES[name]
    sizes = _spatial_sizes(build_model(name, (3, 32, 32), 10), [last], torch.rand(2, 3, 32, 32))
    assert sizes[last] == (4, 4)


# --------------------------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("channels, num_classes", [(3, 10), (1, 100)])
@pytest.mark.parametrize("name", ["resnet18_cifar", "resnet50_cifar"])
def test_resnet_cifar_has_torchvisions_parameters_but_a_3x3_stem(name, channels, num_classes):
    reference = getattr(torchvision.models, TORCHVISION[name])(weights=None, num_classes=num_classes)
    # torchvision's stem: 64 x 3 x 7 x 7 weights, no bias; ours: 64 x C x 3 x 3; max-pool has none
    expected = _n_params(reference) - 64 * 3 * 7 * 7 + 64 * channels * 3 * 3
    assert _n_params(build_model(name, (channels, 32, 32), num_classes)) == expected


def test_resnet18_cifar_has_kuangliu_pytorch_cifar_parameter_count():
    # 11,181,642 (torchvision ResNet-18, 10 classes) - 9,408 (7x7 stem) + 1,728 (3x3 stem)
    assert _n_params(build_model("resnet18_cifar", (3, 32, 32), 10)) == 11_173_962


@pytest.mark.parametrize("num_classes", [10, 100])
def test_mobilenetv2_cifar_has_exactly_torchvisions_parameters(num_classes):
    # strides have no parameters and the stem keeps its 32 x 3 x 3 x 3 size
    reference = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
    assert _n_params(build_model("mobilenetv2_cifar", (3, 32, 32), num_classes)) == _n_params(reference)


def test_mobilenetv2_cifar_with_one_input_channel_has_a_smaller_stem():
    reference = torchvision.models.mobilenet_v2(weights=None, num_classes=10)
    assert _n_params(build_model("mobilenetv2_cifar", (1, 32, 32), 10)) == _n_params(reference) - 32 * 2 * 3 * 3


# --------------------------------------------------------------------------------------------- quantized


@torch.no_grad()
def _with_batch_statistics(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """BN running statistics of one training-mode pass, as a trained FP parent has them.

    `calibrate` runs in eval mode. With a fresh model's running statistics (mean 0, variance 1),
    torchvision's fan-out initialisation of MobileNetV2's depthwise convs (std sqrt(2 / 9C) for
    fan-in 9) shrinks the eval-mode activations layer after layer, so the step sizes come out far
    below the training-mode (batch-normalised) activations, every activation is clipped, and no
    gradient reaches the weights. QAT starts from a trained model, whose statistics fit its data.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average: the statistics of this pass
    model.train()(x)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.1
    return model


@pytest.mark.parametrize("name", NAMES)
def test_quantized_w4a4_cifar_model_trains_with_an_8_bit_stem_and_classifier(name):
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([1, 7])
    model = _with_batch_statistics(build_model(name, (3, 32, 32), 10), torch.rand(8, 3, 32, 32))
    model = quantize_model(model, QuantSpec(4, 4))
    calibrate(model, x)
    stem = _stem(model)
    classifier = model.fc if hasattr(model, "fc") else model.classifier[-1]
    assert type(stem) is QuantConv2d and (stem.w_quant.bits, stem.a_quant.bits) == (8, 8)
    assert type(classifier) is QuantLinear and (classifier.w_quant.bits, classifier.a_quant.bits) == (8, 8)
    middle = [m for m in model.modules() if isinstance(m, QuantConv2d) and m is not stem]
    assert middle and all((m.w_quant.bits, m.a_quant.bits) == (4, 4) for m in middle)
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in model.modules())

    model.train()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert stem.weight.grad is not None and torch.isfinite(stem.weight.grad).all()
    assert stem.weight.grad.abs().sum() > 0
    steps = [p for n, p in model.named_parameters() if "quant" in n]
    assert steps and all(p.grad is not None for p in steps)
