"""Classification architectures for the recipe key ``architecture``.

Two groups are registered in :data:`super_recipes.registry.MODELS`:

* CIFAR-style ResNets written here (``resnet18_cifar``, ``resnet34_cifar``, ``resnet50_cifar``): a 3x3
  stride-1 stem and no max-pool, so 32x32 inputs keep their resolution in the first stage. Plus
  ``resnet_tiny_cifar``, the small fast model used with the offline ``shapes`` dataset.
* The torchvision ImageNet families (``resnet18`` ... ``vit_b_16``, DenseNet, ShuffleNetV2, GoogLeNet, ResNeXt),
  built without pretrained weights, plus SuperGradients 1.x's names for some of them (:data:`TORCHVISION_ALIASES`)
  and its ``custom_densenet`` / ``shufflenet_v2_custom5``.

1.x names that are not models here are listed with the reason in :data:`RETIRED_OR_ELSEWHERE`; ``models.get``
raises that reason. The other 1.x names live in ``resnets``, ``darknet``, ``mobilenets``, ``regnet``, ``repvgg``.

Every factory takes ``num_classes``; the other keyword arguments are the recipe's ``arch_params``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from super_recipes.errors import RecipeError
from super_recipes.registry import register_model

__all__ = [
    "BasicBlock", "Bottleneck", "CifarResNet", "RETIRED_OR_ELSEWHERE", "TORCHVISION_ALIASES", "TORCHVISION_ARCH_PARAMS",
    "TORCHVISION_MODELS",
]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _projection(in_channels, out_channels, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4, with a shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _projection(in_channels, out_channels, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class CifarResNet(nn.Module):
    """ResNet for small (32x32) images: 3x3 stem, no max-pool, stage ``i`` has ``width * 2**i`` channels.

    With ``stem_stride=1`` the first stage keeps the input resolution; each later stage halves it.
    ``zero_init_residual`` starts every residual branch at zero (last BN gamma = 0), so each block begins as
    the identity, which helps large-batch training.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: Sequence[int],
        num_classes: int = 10,
        width: int = 64,
        in_channels: int = 3,
        dropout: float = 0.0,
        zero_init_residual: bool = False,
        stem_stride: int = 1,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        channels_in = width
        for i, depth in enumerate(layers):
            channels = width * 2**i
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(channels_in, channels, stride))
                channels_in = channels * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels_in, num_classes)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock | Bottleneck):
                    nn.init.zeros_(module.last_bn.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled features before the classifier, shape ``(N, C)``."""
        return self.pool(self.stages(self.stem(x))).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.forward_features(x)))


@register_model("resnet_tiny_cifar")
def resnet_tiny_cifar(
    num_classes: int = 10,
    width: int = 16,
    in_channels: int = 3,
    dropout: float = 0.0,
    zero_init_residual: bool = False,
    stem_stride: int = 2,
) -> CifarResNet:
    """Small 3-stage ResNet (one BasicBlock per stage, 78k params at width 16) for quick CPU runs.

    The stride-2 stem is what makes it fast: full-resolution 3x3 convolutions dominate the cost on CPU, and
    16x16 feature maps are plenty for the 32x32 ``shapes`` dataset. ``stem_stride=1`` gives a CIFAR ResNet-8.
    """
    return CifarResNet(
        BasicBlock, [1, 1, 1], num_classes, width, in_channels, dropout, zero_init_residual, stem_stride
    )


@register_model("resnet18_cifar")
def resnet18_cifar(
    num_classes: int = 10,
    width: int = 64,
    in_channels: int = 3,
    dropout: float = 0.0,
    zero_init_residual: bool = False,
) -> CifarResNet:
    """CIFAR ResNet-18 (BasicBlock, [2, 2, 2, 2]); 11.17M params at 10 classes."""
    return CifarResNet(BasicBlock, [2, 2, 2, 2], num_classes, width, in_channels, dropout, zero_init_residual)


@register_model("resnet34_cifar")
def resnet34_cifar(
    num_classes: int = 10,
    width: int = 64,
    in_channels: int = 3,
    dropout: float = 0.0,
    zero_init_residual: bool = False,
) -> CifarResNet:
    """CIFAR ResNet-34 (BasicBlock, [3, 4, 6, 3])."""
    return CifarResNet(BasicBlock, [3, 4, 6, 3], num_classes, width, in_channels, dropout, zero_init_residual)


@register_model("resnet50_cifar")
def resnet50_cifar(
    num_classes: int = 10,
    width: int = 64,
    in_channels: int = 3,
    dropout: float = 0.0,
    zero_init_residual: bool = False,
) -> CifarResNet:
    """CIFAR ResNet-50 (Bottleneck, [3, 4, 6, 3])."""
    return CifarResNet(Bottleneck, [3, 4, 6, 3], num_classes, width, in_channels, dropout, zero_init_residual)


# torchvision builders take **kwargs and some (MobileNetV3) silently swallow unknown ones, so each family's
# accepted arch params are listed here; the factories expose them as their signature and
# registry.call_with_kwargs rejects a misspelt one before anything is built.
TORCHVISION_ARCH_PARAMS: dict[str, tuple[str, ...]] = {
    "resnet": ("zero_init_residual", "groups", "width_per_group", "replace_stride_with_dilation", "norm_layer"),
    # The ResNeXt builders fix groups and width_per_group themselves (passing them is a torchvision error).
    "resnext": ("zero_init_residual", "replace_stride_with_dilation", "norm_layer"),
    "mobilenet_v2": ("width_mult", "inverted_residual_setting", "round_nearest", "block", "norm_layer", "dropout"),
    "mobilenet_v3": ("width_mult", "reduced_tail", "dilated", "block", "norm_layer", "dropout"),
    "efficientnet": ("dropout", "stochastic_depth_prob", "norm_layer"),
    "regnet": ("stem_width", "stem_type", "block_type", "norm_layer", "activation"),
    "vit": (
        "image_size", "dropout", "attention_dropout", "representation_size", "norm_layer", "conv_stem_configs"
    ),
    "densenet": ("growth_rate", "block_config", "num_init_features", "bn_size", "drop_rate", "memory_efficient"),
    "shufflenet_v2": ("inverted_residual",),
    "googlenet": ("aux_logits", "transform_input", "init_weights", "dropout", "dropout_aux"),
}

TORCHVISION_MODELS: dict[str, str] = {
    **{f"resnet{depth}": "resnet" for depth in (18, 34, 50, 101, 152)},
    "resnext50_32x4d": "resnext",
    "resnext101_32x8d": "resnext",
    "resnext101_64x4d": "resnext",
    "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3_large": "mobilenet_v3",
    "mobilenet_v3_small": "mobilenet_v3",
    **{f"efficientnet_b{i}": "efficientnet" for i in range(8)},
    **{f"regnet_y_{size}": "regnet" for size in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")},
    "vit_b_16": "vit",
    **{f"densenet{depth}": "densenet" for depth in (121, 161, 169, 201)},
    **{f"shufflenet_v2_x{size}": "shufflenet_v2" for size in ("0_5", "1_0", "1_5", "2_0")},
    "googlenet": "googlenet",
}

# SuperGradients 1.x names for torchvision networks that torchvision calls otherwise (1.x name -> torchvision
# name). They build the same network; the torchvision name is the one pretrained weights are published under.
TORCHVISION_ALIASES: dict[str, str] = {
    "resnext50": "resnext50_32x4d",
    "resnext101": "resnext101_32x8d",
    "googlenet_v1": "googlenet",
}

# Defaults that differ from torchvision's: GoogLeNet's auxiliary heads make its training-mode output a
# namedtuple that losses cannot take, and init_weights=None only adds a FutureWarning to the same init.
TORCHVISION_DEFAULTS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
}

# Names in the 1.x guide's architecture list that do not resolve here, and why (models.get raises this reason).
RETIRED_OR_ELSEWHERE: dict[str, str] = {
    **{name: "the YOLOv3 detector is not ported (the detection task ships yolox_*, ppyoloe_*, yolo_nas_*); "
             "its backbone is the classifier 'darknet53'" for name in ("yolo_v3", "tiny_yolo_v3")},
    **{name: "the YOLOv5 detectors are not ported; the detection task ships yolox_s/m/l/x, ppyoloe_* and "
             "yolo_nas_* instead" for name in ("yolo_v5s", "yolo_v5m", "yolo_v5l", "yolo_v5x", "custom_yolov5")},
    "ssd_mobilenet_v1": "SSD with a MobileNetV1 backbone is not ported; the detection task ships "
                        "'ssd_lite_mobilenet_v2'",
    **{name: "ShelfNet belongs to the segmentation task and is not ported; it ships stdc*_seg*, ddrnet_23* "
             "and pp_lite_*_seg* instead" for name in ("shelfnet18", "shelfnet34", "shelfnet50_3343",
                                                       "shelfnet50", "shelfnet101")},
    **{name: f"torchvision has EfficientNet B0-B7 only ({what}, published as TensorFlow checkpoints); with the "
             f"timm extra use 'timm/tf_{name}'"
       for name, what in (("efficientnet_b8", "B8 came with AdvProp"), ("efficientnet_l2", "L2 with Noisy Student"))},
    "ofa_flops_595m_s": "OFA-595 of the ImageNet-21K-P table is not in timm (its network comes from the "
                        "once-for-all package, with hard-sigmoids replaced by sigmoids); the table's other backbones "
                        "are here by name with the timm extra: tresnet_m, tresnet_l, mixer_b16_224, "
                        "mobilenetv3_large_100, vit_base_patch16_224, resnet50",
    "CustomizedEfficientnet": "retired: 1.x's EfficientNet with free width/depth coefficients; use "
                              "efficientnet_b0 ... efficientnet_b7 (dropout, stochastic_depth_prob), or with the "
                              "timm extra 'timm/efficientnet_b0' and its channel_multiplier/depth_multiplier",
}


class _TorchvisionDefault:
    """Marks an arch param left to torchvision's own default (it is then not passed at all)."""

    def __repr__(self) -> str:
        return "<torchvision default>"


_TV_DEFAULT: Any = _TorchvisionDefault()


def _torchvision_factory(name: str, family: str, alias: str | None = None) -> Callable[..., nn.Module]:
    """The registered factory of torchvision's ``name``; ``alias`` is the 1.x name it is registered under."""

    def factory(num_classes: int = 1000, **arch_params: Any) -> nn.Module:
        # Imported here: torchvision.models takes over a second to import.
        import torchvision.models

        # The signature's defaults are for show (call_with_kwargs passes only what the recipe gives).
        kwargs = {**TORCHVISION_DEFAULTS.get(name, {}), **arch_params}
        kwargs = {k: v for k, v in kwargs.items() if v is not _TV_DEFAULT}
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
        if family == "googlenet" and not kwargs.get("aux_logits", True):
            # torchvision's published GoogLeNet weights carry the auxiliary heads; without them they are not ours
            # to load, and not an error either.
            model.checkpoint_prefixes_without_place = ("aux1", "aux2")
        return model

    keyword = inspect.Parameter.KEYWORD_ONLY
    defaults = TORCHVISION_DEFAULTS.get(name, {})
    factory.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("num_classes", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=1000, annotation=int)]
        + [inspect.Parameter(p, keyword, default=defaults.get(p, _TV_DEFAULT)) for p in TORCHVISION_ARCH_PARAMS[family]]
    )
    factory.__name__ = factory.__qualname__ = alias or name
    factory.__doc__ = (
        f"torchvision ``{name}`` without pretrained weights"
        + (f" (SuperGradients 1.x name ``{alias}``)" if alias else "")
        + f"; arch_params: {', '.join(TORCHVISION_ARCH_PARAMS[family])}."
    )
    return factory


for _name, _family in TORCHVISION_MODELS.items():
    register_model(_name)(_torchvision_factory(_name, _family))
for _alias, _name in TORCHVISION_ALIASES.items():
    register_model(_alias)(_torchvision_factory(_name, TORCHVISION_MODELS[_name], _alias))
del _name, _family, _alias


@register_model("custom_densenet")
def custom_densenet(
    num_classes: int = 1000,
    growth_rate: int = 32,
    block_config: Sequence[int] | None = None,
    num_init_features: int = 64,
    bn_size: int = 4,
    drop_rate: float = 0.0,
    memory_efficient: bool = False,
    structure: Sequence[int] | None = None,
) -> nn.Module:
    """torchvision DenseNet with your configuration (recipe key ``architecture: custom_densenet``).

    ``block_config`` (1.x alias ``structure``) is the number of layers per dense block, default DenseNet-121's
    [6, 12, 24, 16]; with the defaults it is torchvision ``densenet121`` (7,978,856 parameters at 1000 classes,
    torchvision's published figure).
    """
    import torchvision.models

    if block_config is not None and structure is not None and list(block_config) != list(structure):
        raise RecipeError(f"Model 'custom_densenet': arch_params.block_config={list(block_config)} and its 1.x "
                          f"alias structure={list(structure)} disagree; give only one.")
    blocks = list(block_config if block_config is not None else structure if structure is not None
                  else (6, 12, 24, 16))
    _check_positive_ints("custom_densenet", "block_config", blocks)
    _check_positive_ints("custom_densenet", "growth_rate", [growth_rate])
    _check_positive_ints("custom_densenet", "num_init_features", [num_init_features])
    return torchvision.models.DenseNet(growth_rate, tuple(blocks), num_init_features, bn_size, drop_rate,
                                       num_classes, memory_efficient)


@register_model("shufflenet_v2_custom5")
def shufflenet_v2_custom5(
    num_classes: int = 1000,
    stages_repeats: Sequence[int] | None = None,
    stages_out_channels: Sequence[int] = (24, 116, 232, 464, 1024),
    structure: Sequence[int] | None = None,
) -> nn.Module:
    """torchvision ShuffleNetV2 with your 3 stage depths and 5 widths (recipe key ``architecture:
    shufflenet_v2_custom5``; 1.x's ``CustomizedShuffleNetV2``).

    ``stages_repeats`` (1.x alias ``structure``, default [4, 8, 4]) and ``stages_out_channels`` (stem, three
    stages, last 1x1 conv; default x1.0's). The defaults are torchvision ``shufflenet_v2_x1_0`` (2,278,604
    parameters at 1000 classes, torchvision's published figure).
    """
    import torchvision.models

    name = "shufflenet_v2_custom5"
    if stages_repeats is not None and structure is not None and list(stages_repeats) != list(structure):
        raise RecipeError(f"Model '{name}': arch_params.stages_repeats={list(stages_repeats)} and its 1.x alias "
                          f"structure={list(structure)} disagree; give only one.")
    repeats = list(stages_repeats if stages_repeats is not None else structure if structure is not None
                   else (4, 8, 4))
    widths = list(stages_out_channels)
    _check_positive_ints(name, "stages_repeats", repeats, length=3)
    _check_positive_ints(name, "stages_out_channels", widths, length=5)
    if any(width % 2 for width in widths[1:4]):
        raise RecipeError(f"Model '{name}': the three stage widths in stages_out_channels must be even (each "
                          f"block splits its channels in two), got {widths}.")
    return torchvision.models.ShuffleNetV2(repeats, widths, num_classes)


def _check_positive_ints(model: str, key: str, values: list[Any], length: int | None = None) -> None:
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values) and bool(values)
    if not ok or (length is not None and len(values) != length):
        count = f"{length} " if length is not None else ""
        raise RecipeError(f"Model '{model}': arch_params.{key} must be {count}positive integers, got {values}.")
