"""The 1.x guide's extra ResNets: ``resnet50_3343`` and the ``custom_resnet*`` family.

The ImageNet ones are torchvision's :class:`~torchvision.models.ResNet` with its own blocks and module names
(``conv1``, ``layer1`` ... ``layer4``, ``fc``), so torchvision ResNet weights load into them whenever the shapes
agree; only the stage depths and widths are free. The CIFAR ones reuse
:class:`~super_recipes.models.classification.CifarResNet` (3x3 stride-1 stem, no max-pool).

SuperGradients 1.x recipes spelled the stage depths ``structure``; it is accepted as an alias of ``layers``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from super_recipes.errors import RecipeError
from super_recipes.models.classification import BasicBlock, Bottleneck, CifarResNet
from super_recipes.registry import register_model

__all__ = ["build_resnet", "resolve_layers"]

_BLOCKS = {"basic": "basic", "bottleneck": "bottleneck"}  # names for build_resnet
_CIFAR_BLOCKS: dict[str, type[BasicBlock | Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def build_resnet(
    block_name: str,
    layers: Sequence[int],
    num_classes: int = 1000,
    width_mult: float = 1.0,
    in_channels: int = 3,
    zero_init_residual: bool = False,
    groups: int = 1,
    width_per_group: int = 64,
) -> nn.Module:
    """A :class:`torchvision.models.ResNet` with free stage depths and ``width_mult`` on its 64/128/256/512 widths.

    torchvision's constructor hard-codes the stage widths, so the instance is set up here with the same
    attributes, torchvision's own ``_make_layer`` and its initialisation; ``forward`` and the module tree are
    torchvision's. At ``width_mult=1`` and [3, 4, 6, 3] bottlenecks the state-dict keys and shapes are exactly
    torchvision ResNet-50's, so its published weights load.
    """
    import torchvision.models.resnet as tv_resnet  # slow to import: only when a ResNet is built

    block = {"basic": tv_resnet.BasicBlock, "bottleneck": tv_resnet.Bottleneck}[block_name]
    widths = [int(base * width_mult) for base in (64, 128, 256, 512)]
    model = tv_resnet.ResNet.__new__(tv_resnet.ResNet)
    nn.Module.__init__(model)
    # The attributes torchvision's _make_layer reads.
    model._norm_layer = nn.BatchNorm2d
    model.inplanes = widths[0]
    model.dilation = 1
    model.groups = groups
    model.base_width = width_per_group
    model.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(widths[0])
    model.relu = nn.ReLU(inplace=True)
    model.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    model.layer1 = model._make_layer(block, widths[0], layers[0])
    model.layer2 = model._make_layer(block, widths[1], layers[1], stride=2)
    model.layer3 = model._make_layer(block, widths[2], layers[2], stride=2)
    model.layer4 = model._make_layer(block, widths[3], layers[3], stride=2)
    model.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    model.fc = nn.Linear(widths[3] * block.expansion, num_classes)
    model.num_classes = num_classes
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    if zero_init_residual:  # each residual branch starts at zero, as torchvision's flag does
        for module in model.modules():
            if isinstance(module, tv_resnet.Bottleneck):
                nn.init.zeros_(module.bn3.weight)
            elif isinstance(module, tv_resnet.BasicBlock):
                nn.init.zeros_(module.bn2.weight)
    return model


def resolve_layers(layers: Sequence[int] | None, structure: Sequence[int] | None, model: str,
                   default: Sequence[int] | None = None, stages: int | None = 4) -> list[int]:
    """The stage depths from ``layers`` or its 1.x alias ``structure``; a RecipeError when they are unusable."""
    if layers is not None and structure is not None and list(layers) != list(structure):
        raise RecipeError(f"Model '{model}': arch_params.layers={list(layers)} and its 1.x alias "
                          f"structure={list(structure)} disagree; give only one.")
    chosen = layers if layers is not None else structure if structure is not None else default
    if chosen is None:
        raise RecipeError(f"Model '{model}' needs arch_params.layers, the number of blocks per stage "
                          f"(e.g. layers: [2, 2, 2, 2]).")
    if isinstance(chosen, str | bytes) or not isinstance(chosen, Sequence):
        raise RecipeError(f"Model '{model}': arch_params.layers must be a list of block counts, got {chosen!r}.")
    depths = list(chosen)
    if stages is not None and len(depths) != stages:
        raise RecipeError(f"Model '{model}': arch_params.layers must have {stages} entries (one per stage), "
                          f"got {depths}.")
    if not depths or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in depths):
        raise RecipeError(f"Model '{model}': arch_params.layers must be positive integers, got {depths}.")
    return depths


def _block(block: str, table: dict[str, Any], model: str) -> Any:
    if block not in table:
        raise RecipeError(f"Model '{model}': arch_params.block must be one of {', '.join(table)}, got {block!r}.")
    return table[block]


def _width_mult(width_mult: float, model: str) -> float:
    if isinstance(width_mult, bool) or not isinstance(width_mult, int | float) or not width_mult > 0:
        raise RecipeError(f"Model '{model}': arch_params.width_mult must be a positive number, got {width_mult!r}.")
    if int(64 * width_mult) < 1:
        raise RecipeError(f"Model '{model}': width_mult={width_mult} leaves the first stage without channels.")
    return float(width_mult)


@register_model("resnet50_3343")
def resnet50_3343(
    num_classes: int = 1000,
    in_channels: int = 3,
    zero_init_residual: bool = False,
) -> nn.Module:
    """ResNet-50 with stage depths [3, 3, 4, 3] instead of [3, 4, 6, 3] (recipe key ``architecture:
    resnet50_3343``, SuperGradients 1.x's name): 23,042,600 parameters at 1000 classes, i.e. torchvision
    ResNet-50's published 25,557,032 less one 128-wide and two 256-wide bottlenecks."""
    return build_resnet("bottleneck", [3, 3, 4, 3], num_classes, 1.0, in_channels, zero_init_residual)


@register_model("custom_resnet")
def custom_resnet(
    num_classes: int = 1000,
    layers: Sequence[int] | None = None,
    block: str = "basic",
    width_mult: float = 1.0,
    in_channels: int = 3,
    zero_init_residual: bool = False,
    groups: int = 1,
    width_per_group: int = 64,
    structure: Sequence[int] | None = None,
) -> nn.Module:
    """ImageNet ResNet with your stage depths (recipe key ``architecture: custom_resnet``).

    ``layers`` (4 block counts; 1.x alias ``structure``), ``block`` (``basic`` or ``bottleneck``), ``width_mult``
    scales the 64/128/256/512 stage widths. ``layers=[2, 2, 2, 2]`` is torchvision ResNet-18 (11,689,512
    parameters at 1000 classes, torchvision's published figure); ``groups`` / ``width_per_group`` give ResNeXt.
    """
    name = "custom_resnet"
    depths = resolve_layers(layers, structure, name)
    return build_resnet(_block(block, _BLOCKS, name), depths, num_classes, _width_mult(width_mult, name),
                       in_channels, zero_init_residual, groups, width_per_group)


@register_model("custom_resnet50")
def custom_resnet50(
    num_classes: int = 1000,
    layers: Sequence[int] | None = None,
    width_mult: float = 1.0,
    in_channels: int = 3,
    zero_init_residual: bool = False,
    groups: int = 1,
    width_per_group: int = 64,
    structure: Sequence[int] | None = None,
) -> nn.Module:
    """``custom_resnet`` with bottleneck blocks (recipe key ``architecture: custom_resnet50``); ``layers``
    defaults to ResNet-50's [3, 4, 6, 3] (25,557,032 parameters at 1000 classes, torchvision's figure)."""
    name = "custom_resnet50"
    depths = resolve_layers(layers, structure, name, default=[3, 4, 6, 3])
    return build_resnet("bottleneck", depths, num_classes, _width_mult(width_mult, name), in_channels,
                       zero_init_residual, groups, width_per_group)


@register_model("custom_resnet_cifar")
def custom_resnet_cifar(
    num_classes: int = 10,
    layers: Sequence[int] | None = None,
    block: str = "basic",
    width_mult: float = 1.0,
    in_channels: int = 3,
    dropout: float = 0.0,
    zero_init_residual: bool = False,
    structure: Sequence[int] | None = None,
) -> CifarResNet:
    """CIFAR ResNet with your stage depths (recipe key ``architecture: custom_resnet_cifar``): 3x3 stride-1 stem,
    no max-pool, stage ``i`` is ``int(64 * width_mult) * 2**i`` wide. ``layers`` (any number of stages; 1.x
    alias ``structure``), ``block`` (``basic`` or ``bottleneck``). ``layers=[2, 2, 2, 2]`` equals
    ``resnet18_cifar`` (11.17M parameters at 10 classes)."""
    name = "custom_resnet_cifar"
    depths = resolve_layers(layers, structure, name, stages=None)
    width = int(64 * _width_mult(width_mult, name))
    return CifarResNet(_block(block, _CIFAR_BLOCKS, name), depths, num_classes, width, in_channels, dropout,
                       zero_init_residual)


@register_model("custom_resnet50_cifar")
def custom_resnet50_cifar(
    num_classes: int = 10,
    layers: Sequence[int] | None = None,
    width_mult: float = 1.0,
    in_channels: int = 3,
    dropout: float = 0.0,
    zero_init_residual: bool = False,
    structure: Sequence[int] | None = None,
) -> CifarResNet:
    """``custom_resnet_cifar`` with bottleneck blocks (recipe key ``architecture: custom_resnet50_cifar``);
    ``layers`` defaults to [3, 4, 6, 3], which equals ``resnet50_cifar``."""
    name = "custom_resnet50_cifar"
    depths = resolve_layers(layers, structure, name, default=[3, 4, 6, 3], stages=None)
    width = int(64 * _width_mult(width_mult, name))
    return CifarResNet(Bottleneck, depths, num_classes, width, in_channels, dropout, zero_init_residual)
