"""Tests for super_recipes.models: the registered architectures, models.get and its error messages."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from super_recipes import models
from super_recipes.errors import RecipeError
from super_recipes.models.classification import TORCHVISION_ARCH_PARAMS, TORCHVISION_MODELS, CifarResNet

CIFAR_MODELS = ["resnet_tiny_cifar", "resnet18_cifar", "resnet34_cifar", "resnet50_cifar"]
# One real forward per torchvision family (the smallest member): the other members differ only in sizes.
FAMILY_REPRESENTATIVES = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf"]


def _last_linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


@pytest.mark.parametrize("name", CIFAR_MODELS + FAMILY_REPRESENTATIVES)
def test_model_output_shape(name: str) -> None:
    model = models.get(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 7)


def test_vit_head_has_num_classes() -> None:
    # ViT-B/16 needs 224x224 inputs; running it would dominate this file's runtime, so check the head only.
    model = models.get("vit_b_16", num_classes=7)
    assert _last_linear(model).out_features == 7


def test_every_torchvision_name_has_a_builder() -> None:
    import torchvision.models

    assert set(TORCHVISION_MODELS) <= set(models.names())
    for name in TORCHVISION_MODELS:
        assert callable(torchvision.models.get_model_builder(name))
    assert {"resnet18_cifar", "resnet34_cifar", "resnet50_cifar", "resnet_tiny_cifar"} <= set(models.names())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(TORCHVISION_MODELS) - set(FAMILY_REPRESENTATIVES) - {"vit_b_16"}))
def test_every_torchvision_model_builds(name: str) -> None:
    assert _last_linear(models.get(name, num_classes=3)).out_features == 3


def test_torchvision_arch_param_tables_match_torchvision() -> None:
    import torchvision.models as tvm

    classes = {
        "resnet": tvm.ResNet,
        "mobilenet_v2": tvm.MobileNetV2,
        "mobilenet_v3": tvm.MobileNetV3,
        "efficientnet": tvm.EfficientNet,
        "regnet": tvm.RegNet,
        "vit": tvm.VisionTransformer,
        "resnext": tvm.ResNet,
        "densenet": tvm.DenseNet,
        "shufflenet_v2": tvm.ShuffleNetV2,
        "googlenet": tvm.GoogLeNet,
    }
    # Consumed by the builder functions rather than the model classes.
    builder_params = {"mobilenet_v3": {"width_mult", "reduced_tail", "dilated"}, "vit": {"image_size"}}
    assert set(classes) == set(TORCHVISION_ARCH_PARAMS) == set(TORCHVISION_MODELS.values())
    for family, params in TORCHVISION_ARCH_PARAMS.items():
        accepted = set(inspect.signature(classes[family]).parameters) | builder_params.get(family, set())
        assert set(params) <= accepted, family


def test_torchvision_arch_params_are_passed_through() -> None:
    model = models.get("resnet18", num_classes=5, arch_params={"zero_init_residual": True})
    assert all(not block.bn2.weight.any() for block in model.layer1)


def test_default_num_classes() -> None:
    assert _last_linear(models.get("resnet_tiny_cifar")).out_features == 10
    assert _last_linear(models.get("mobilenet_v3_small")).out_features == 1000


def test_unknown_model_name_lists_close_names() -> None:
    with pytest.raises(RecipeError) as err:
        models.get("resnet19_cifar", num_classes=10)
    message = str(err.value)
    assert "Unknown model 'resnet19_cifar'" in message
    assert "Did you mean" in message and "resnet18_cifar" in message


@pytest.mark.parametrize("name", ["resnet18_cifar", "mobilenet_v3_small"])
def test_bad_arch_param_names_it_and_the_accepted_ones(name: str) -> None:
    # mobilenet_v3 matters: torchvision's MobileNetV3 silently swallows unknown keyword arguments.
    with pytest.raises(RecipeError) as err:
        models.get(name, num_classes=10, arch_params={"dropuot": 0.1})
    message = str(err.value)
    assert "dropuot" in message and "Did you mean: dropout" in message
    assert "Accepted" in message and "num_classes" in message


def test_arch_params_from_dictconfig_and_kwargs() -> None:
    arch_params = OmegaConf.create({"width": 8, "dropout": 0.5})
    model = models.get("resnet_tiny_cifar", num_classes=4, arch_params=arch_params, width=4)
    assert isinstance(model, CifarResNet)
    assert model.stem[0].out_channels == 4  # the keyword argument wins over arch_params
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.5


def test_conflicting_num_classes_is_an_error() -> None:
    assert _last_linear(models.get("resnet_tiny_cifar", 3, {"num_classes": 3})).out_features == 3
    with pytest.raises(RecipeError, match="num_classes"):
        models.get("resnet_tiny_cifar", num_classes=3, arch_params={"num_classes": 5})


def test_arch_params_must_be_a_mapping() -> None:
    with pytest.raises(RecipeError, match="mapping"):
        models.get("resnet_tiny_cifar", arch_params=[1, 2])


def test_resnet18_cifar_structure() -> None:
    model = models.get("resnet18_cifar", num_classes=10)
    stem = model.stem[0]
    assert isinstance(stem, nn.Conv2d) and stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 11.17
    # The first stage keeps the 32x32 resolution.
    with torch.no_grad():
        assert model.stages[0](model.stem(torch.randn(1, 3, 32, 32))).shape == (1, 64, 32, 32)


def test_zero_init_residual_and_in_channels() -> None:
    model = models.get("resnet50_cifar", num_classes=10, zero_init_residual=True, in_channels=1, width=8)
    for stage in model.stages:
        for block in stage:
            assert not block.bn3.weight.any()
            assert block.bn2.weight.all()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_tiny_model_trains_a_step() -> None:
    torch.manual_seed(0)
    model = models.get("resnet_tiny_cifar", num_classes=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 4, (16,))
    losses = []
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_models_import_and_cifar_build_do_not_import_torchvision() -> None:
    code = (
        "import sys; from super_recipes import models; models.get('resnet_tiny_cifar', num_classes=2); "
        "assert 'torchvision' not in sys.modules, 'torchvision imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
