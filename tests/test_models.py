"""Claims about the model table: shapes, ResNet-20's parameter count, weights read from disk only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from qatbench.errors import UserError
from qatbench.models import MODELS, build_model

RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's cache name for ResNet18_Weights.IMAGENET1K_V1


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "name, input_shape, num_classes",
    [
        ("small_cnn", (1, 28, 28), 10),
        ("small_cnn", (2, 28, 28), 2),
        ("resnet20", (3, 32, 32), 10),
        ("resnet20", (1, 28, 28), 10),
        ("resnet18", (3, 64, 64), 7),
        ("resnet18", (2, 28, 28), 2),
        ("resnet50", (3, 64, 64), 5),
        ("efficientnet_lite0", (3, 64, 64), 7),
        ("efficientnet_lite2", (1, 48, 40), 3),
        *[
            (name, shape, classes)
            for name in ("resnet18_cifar", "resnet50_cifar", "mobilenetv2_cifar")
            for shape, classes in (((3, 32, 32), 100), ((1, 32, 32), 7))
        ],
    ],
)
def test_model_maps_a_batch_to_one_logit_per_class(name, input_shape, num_classes):
    torch.manual_seed(0)
    model = build_model(name, input_shape, num_classes).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, *input_shape))
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()


def test_every_registered_model_is_covered_here():
    assert MODELS.names() == [
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",  # tests/test_efficientnet_lite.py
        "mobilenetv2_cifar", "resnet18", "resnet18_cifar", "resnet20", "resnet50", "resnet50_cifar", "small_cnn"
    ]  # fmt: skip


def test_small_cnn_width_scales_its_channels():
    model = build_model("small_cnn", (1, 28, 28), 10, {"width": 8})
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 32]
    assert model[-1].in_features == 32


# --------------------------------------------------------------------------------------------- ResNet-20


def test_resnet20_option_a_has_the_papers_0_27m_parameters():
    # He et al. 2016, Sec. 4.2: 16/32/64 channels, n = 3 basic blocks per stage, option A shortcuts.
    #   stem  conv 3x3, 3->16: 3*16*9 = 432;  BN: 2*16 = 32                               ->     464
    #   stage 1: 3 blocks x (2 convs 16*16*9 = 2*2304, 2 BN 2*2*16 = 64) = 3 * 4672       ->  14,016
    #   stage 2: block 1: 16*32*9 + 32*32*9 + 2*2*32 = 4608 + 9216 + 128 = 13,952
    #            blocks 2,3: 2 * (2*9216 + 128) = 2 * 18,560 = 37,120                     ->  51,072
    #   stage 3: block 1: 32*64*9 + 64*64*9 + 2*2*64 = 18,432 + 36,864 + 256 = 55,552
    #            blocks 2,3: 2 * (2*36,864 + 256) = 2 * 73,984 = 147,968                  -> 203,520
    #   fc 64->10: 640 + 10                                                                ->     650
    #   total: 464 + 14,016 + 51,072 + 203,520 + 650 = 269,722 (zero-padding shortcuts add nothing)
    model = build_model("resnet20", (3, 32, 32), 10)
    assert _n_params(model) == 269_722
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules())


def test_resnet20_option_b_adds_exactly_the_two_projection_shortcuts():
    # option B: 1x1 conv + BN where the shape changes: 16*32 + 2*32 = 576 and 32*64 + 2*64 = 2,176
    model = build_model("resnet20", (3, 32, 32), 10, {"shortcut": "B"})
    assert _n_params(model) == 269_722 + 576 + 2_176 == 272_474
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in model.modules()) == 2


def test_resnet20_option_a_shortcut_zero_pads_the_new_channels():
    block = build_model("resnet20", (3, 32, 32), 10).layer2[0]
    x = torch.rand(1, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (1, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def test_resnet20_rejects_an_unknown_shortcut_option():
    with pytest.raises(UserError, match=r"shortcut must be 'A' or 'B'"):
        build_model("resnet20", (3, 32, 32), 10, {"shortcut": "C"})


# --------------------------------------------------------------------------------------------- pretrained


@pytest.fixture
def empty_torch_home(monkeypatch, tmp_path):
    """TORCH_HOME and the hub dir point at an empty folder; any download attempt fails the test."""
    home = tmp_path / "torch_home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", torch.hub._hub_dir)  # restored after the test
    torch.hub.set_dir(str(home / "hub"))

    def no_download(*args, **kwargs):
        raise AssertionError("qatbench tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    return home


@pytest.fixture(scope="module")
def resnet18_imagenet_file(tmp_path_factory) -> Path:
    """A state dict of a randomly initialized 1000-class torchvision ResNet-18."""
    torch.manual_seed(123)
    path = tmp_path_factory.mktemp("weights") / "resnet18_random.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_pretrained_true_without_the_cached_file_names_the_path_and_never_downloads(empty_torch_home):
    expected = empty_torch_home / "hub" / "checkpoints" / RESNET18_FILE
    with pytest.raises(UserError) as info:
        build_model("resnet18", (3, 64, 64), 7, {"pretrained": True})
    message = str(info.value)
    assert str(expected) in message
    assert "never downloads" in message
    assert not [p for p in empty_torch_home.rglob("*") if p.is_file()], "something was written (downloaded?)"


def test_pretrained_true_looks_under_torch_home_when_no_hub_dir_is_set(empty_torch_home, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    with pytest.raises(UserError, match=str(empty_torch_home / "hub" / "checkpoints" / RESNET18_FILE)):
        build_model("resnet18", (3, 64, 64), 7, {"pretrained": True})


def test_pretrained_true_reads_torchvisions_cache_file_when_present(empty_torch_home, resnet18_imagenet_file):
    checkpoints = empty_torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / RESNET18_FILE).write_bytes(resnet18_imagenet_file.read_bytes())
    state = torch.load(resnet18_imagenet_file, weights_only=True)
    model = build_model("resnet18", (3, 64, 64), 1000, {"pretrained": True})
    # 1000 classes: the classifier is ImageNet's too
    assert torch.equal(model.fc.weight, state["fc.weight"])
    assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_pretrained_file_loads_every_backbone_tensor_and_a_fresh_classifier(resnet18_imagenet_file):
    state = torch.load(resnet18_imagenet_file, weights_only=True)
    torch.manual_seed(0)
    model = build_model("resnet18", (3, 64, 64), 7, {"pretrained": str(resnet18_imagenet_file)})
    own = model.state_dict()
    backbone = [k for k in own if not k.startswith("fc.")]
    assert len(backbone) == len(state) - 2
    for key in backbone:
        assert torch.equal(own[key], state[key]), key
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert model.fc.weight.shape == (7, 512) and model.fc.bias.shape == (7,)
    with torch.no_grad():
        logits = model.eval()(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, 7)


def test_pretrained_file_keeps_a_fresh_stem_for_non_rgb_input(resnet18_imagenet_file):
    state = torch.load(resnet18_imagenet_file, weights_only=True)
    model = build_model("resnet18", (1, 28, 28), 10, {"pretrained": str(resnet18_imagenet_file)})
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.equal(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert torch.equal(model.bn1.running_var, state["bn1.running_var"])


def test_pretrained_file_of_another_architecture_is_a_user_error(resnet18_imagenet_file):
    # ResNet-18 weights into a ResNet-50: bottleneck tensors are missing or differ in shape
    with pytest.raises(UserError, match=r"does not hold resnet50 weights"):
        build_model("resnet50", (3, 64, 64), 7, {"pretrained": str(resnet18_imagenet_file)})


def test_pretrained_file_of_a_small_cnn_is_a_user_error(tmp_path):
    path = tmp_path / "small_cnn.pth"
    torch.save(build_model("small_cnn", (1, 28, 28), 10).state_dict(), path)
    with pytest.raises(UserError, match=r"does not hold resnet18 weights"):
        build_model("resnet18", (3, 64, 64), 7, {"pretrained": str(path)})


def test_pretrained_file_of_resnet34_is_refused_by_resnet18(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(UserError, match=r"does not hold resnet18 weights"):
        build_model("resnet18", (3, 64, 64), 7, {"pretrained": str(path)})


@pytest.mark.parametrize("content", ["tensor", "text"])
def test_pretrained_file_that_is_not_a_state_dict_is_a_user_error(tmp_path, content):
    path = tmp_path / "weights.pth"
    if content == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        path.write_text("not a checkpoint\n")
    with pytest.raises(UserError, match=str(path)):
        build_model("resnet18", (3, 64, 64), 7, {"pretrained": str(path)})


def test_pretrained_given_as_a_pathlib_path_loads_that_file(resnet18_imagenet_file, empty_torch_home):
    state = torch.load(resnet18_imagenet_file, weights_only=True)
    model = build_model("resnet18", (3, 64, 64), 7, {"pretrained": resnet18_imagenet_file})
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


# --------------------------------------------------------------------------------------------- user errors


def test_misspelled_model_name_suggests_the_registered_one():
    with pytest.raises(UserError, match=r"unknown model 'resnt18' \(did you mean 'resnet18'\?\)"):
        build_model("resnt18", (3, 64, 64), 7)


def test_unknown_model_option_names_the_allowed_one():
    with pytest.raises(UserError) as info:
        build_model("small_cnn", (1, 28, 28), 10, {"widht": 8})
    message = str(info.value)
    assert "unknown option 'widht'" in message
    assert "did you mean 'width'" in message
    assert "allowed: width" in message
