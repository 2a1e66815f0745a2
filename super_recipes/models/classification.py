"""Classification architectures for the recipe key ``architecture``.

Two groups are registered in :data:`super_recipes.registry.MODELS`:

* CIFAR-style ResNets written here (``resnet18_cifar``, ``resnet34_cifar``, ``resnet50_cifar``): a 3x3
  stride-1 stem and no max-pool, so 32x32 inputs keep their resolution in the first stage. Plus
  ``resnet_tiny_cifar``, the small fast model used with the offline ``shapes`` dataset.
* The torchvision ImageNet families (``resnet18`` ... ``vit_b_16``), built without pretrained weights.

Every factory takes ``num_classes``; the other keyword arguments are the recipe's ``arch_params``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from super_recipes.registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet", "TORCHVISION_ARCH_PARAMS"]


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
    "mobilenet_v2": ("width_mult", "inverted_residual_setting", "round_nearest", "block", "norm_layer", "dropout"),
    "mobilenet_v3": ("width_mult", "reduced_tail", "dilated", "block", "norm_layer", "dropout"),
    "efficientnet": ("dropout", "stochastic_depth_prob", "norm_layer"),
    "regnet": ("stem_width", "stem_type", "block_type", "norm_layer", "activation"),
    "vit": (
        "image_size", "dropout", "attention_dropout", "representation_size", "norm_layer", "conv_stem_configs"
    ),
}

TORCHVISION_MODELS: dict[str, str] = {
    **{f"resnet{depth}": "resnet" for depth in (18, 34, 50, 101, 152)},
    "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3_large": "mobilenet_v3",
    "mobilenet_v3_small": "mobilenet_v3",
    **{f"efficientnet_b{i}": "efficientnet" for i in range(8)},
    **{f"regnet_y_{size}": "regnet" for size in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")},
    "vit_b_16": "vit",
}


class _TorchvisionDefault:
    """Marks an arch param left to torchvision's own default (it is then not passed at all)."""

    def __repr__(self) -> str:
        return "<torchvision default>"


_TV_DEFAULT: Any = _TorchvisionDefault()


def _torchvision_factory(name: str, family: str) -> Callable[..., nn.Module]:
    def factory(num_classes: int = 1000, **arch_params: Any) -> nn.Module:
        # Imported here: torchvision.models takes over a second to import.
        import torchvision.models

        kwargs = {k: v for k, v in arch_params.items() if v is not _TV_DEFAULT}
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)

    keyword = inspect.Parameter.KEYWORD_ONLY
    factory.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("num_classes", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=1000, annotation=int)]
        + [inspect.Parameter(p, keyword, default=_TV_DEFAULT) for p in TORCHVISION_ARCH_PARAMS[family]]
    )
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (
        f"torchvision ``{name}`` without pretrained weights; arch_params: "
        f"{', '.join(TORCHVISION_ARCH_PARAMS[family])}."
    )
    return factory


for _name, _family in TORCHVISION_MODELS.items():
    register_model(_name)(_torchvision_factory(_name, _family))
del _name, _family
