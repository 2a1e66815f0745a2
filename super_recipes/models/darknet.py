"""DarkNet-53 (YOLOv3's backbone) and CSPDarknet-53 (CSPNet's, YOLOv4's backbone) as ImageNet classifiers.

Both are a 3x3 stem followed by five stride-2 stages of 64, 128, 256, 512, 1024 channels with 1, 2, 8, 8, 4
residual blocks (1x1 halving, 3x3 restoring), then global average pooling and a linear head. CSPDarknet-53
splits each stage after its downsampling convolution (Cross Stage Partial): one half goes through the residual
blocks, the other half skips them, and a 1x1 transition fuses the concatenation; that saves a third of the
parameters. Every convolution is torchvision's ``Conv2dNormActivation`` (conv without bias, BatchNorm, activation).

Published parameter counts at 1000 classes: DarkNet-53 41.6M (timm's ``darknet53`` model card; the YOLOv3 paper
gives only its 18.7 billion operations at 256x256), CSPDarknet-53 27.6M (YOLOv4 paper, Table 1; also the
timm ``cspdarknet53`` weights' count).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from super_recipes.errors import RecipeError
from super_recipes.registry import register_model

__all__ = ["CSPDarknet53", "CSPStage", "DarkResidual", "Darknet53"]

STAGE_CHANNELS = (64, 128, 256, 512, 1024)
STAGE_DEPTHS = (1, 2, 8, 8, 4)
STEM_CHANNELS = 32


def _activation(name: str) -> type[nn.Module] | partial[nn.Module]:
    # Darknet's "leaky" is LeakyReLU(0.1), not PyTorch's default slope of 0.01.
    table: dict[str, type[nn.Module] | partial[nn.Module]] = {
        "leaky_relu": partial(nn.LeakyReLU, 0.1),
        "mish": nn.Mish,
        "relu": nn.ReLU,
        "silu": nn.SiLU,
    }
    if name not in table:
        raise RecipeError(f"arch_params.activation must be one of {', '.join(table)}, got {name!r}.")
    return table[name]


def _conv(in_channels: int, out_channels: int, kernel_size: int, activation: type[nn.Module] | partial[nn.Module],
          stride: int = 1) -> nn.Module:
    from torchvision.ops.misc import Conv2dNormActivation  # torchvision is slow to import: only when building

    return Conv2dNormActivation(in_channels, out_channels, kernel_size, stride, activation_layer=activation)


class DarkResidual(nn.Module):
    """Darknet residual block: 1x1 to ``hidden`` channels, 3x3 back to ``channels``, plus the input."""

    def __init__(self, channels: int, hidden: int, activation: type[nn.Module] | partial[nn.Module]):
        super().__init__()
        self.conv1 = _conv(channels, hidden, 1, activation)
        self.conv2 = _conv(hidden, channels, 3, activation)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.conv1(x))


class _Classifier(nn.Module):
    """Stem, stages, global average pooling, dropout and a linear head; ``forward_features`` stops before it."""

    num_features = STAGE_CHANNELS[-1]

    def __init__(self, stages: list[nn.Module], num_classes: int, in_channels: int, dropout: float,
                 activation: type[nn.Module] | partial[nn.Module]):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise RecipeError(f"num_classes must be a positive integer, got {num_classes!r}.")
        self.num_classes = num_classes
        self.stem = _conv(in_channels, STEM_CHANNELS, 3, activation)
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """Pooled features before the classifier, shape ``(N, 1024)``."""
        return self.pool(self.stages(self.stem(x))).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.forward_features(x)))


class Darknet53(_Classifier):
    """DarkNet-53 classifier (YOLOv3, Redmon & Farhadi 2018): 52 convolutions and the linear head.

    41,609,928 parameters at 1000 classes; published: 41.6M (timm ``darknet53`` model card).
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.0,
                 activation: str = "leaky_relu"):
        act = _activation(activation)
        stages: list[nn.Module] = []
        previous = STEM_CHANNELS
        for channels, depth in zip(STAGE_CHANNELS, STAGE_DEPTHS, strict=True):
            blocks = [_conv(previous, channels, 3, act, stride=2)]
            blocks += [DarkResidual(channels, channels // 2, act) for _ in range(depth)]
            stages.append(nn.Sequential(*blocks))
            previous = channels
        super().__init__(stages, num_classes, in_channels, dropout, act)


class CSPStage(nn.Module):
    """One Cross Stage Partial stage: downsample, split in two halves, residual blocks on one, fuse.

    ``expand`` sets the width before the split (2x for CSPDarknet-53's first stage, whose halves keep the full 64
    channels, with blocks narrowing to 32 inside; 1x after, where each half has ``out_channels / 2``).
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int, expand: float, block_ratio: float,
                 activation: type[nn.Module] | partial[nn.Module]):
        super().__init__()
        expanded = int(out_channels * expand)
        half = expanded // 2
        self.down = _conv(in_channels, out_channels, 3, activation, stride=2)
        # One 1x1 producing both halves: the same weights as CSPNet's two parallel 1x1 convolutions.
        self.split = _conv(out_channels, expanded, 1, activation)
        self.blocks = nn.Sequential(*(DarkResidual(half, int(half * block_ratio), activation)
                                      for _ in range(depth)))
        self.transition_blocks = _conv(half, half, 1, activation)
        self.transition = _conv(expanded, out_channels, 1, activation)

    def forward(self, x: Tensor) -> Tensor:
        skip, through = self.split(self.down(x)).chunk(2, dim=1)
        through = self.transition_blocks(self.blocks(through))
        return self.transition(torch.cat([skip, through], dim=1))


class CSPDarknet53(_Classifier):
    """CSPDarknet-53 classifier (CSPNet, Wang et al. 2019; YOLOv4's backbone, Bochkovskiy et al. 2020).

    27,642,184 parameters at 1000 classes; published: 27.6M (YOLOv4 paper, Table 1). Mish activations as in
    YOLOv4 by default (CSPNet's classifier used leaky ReLU: ``activation: leaky_relu``).
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.0,
                 activation: str = "mish"):
        act = _activation(activation)
        stages: list[nn.Module] = []
        previous = STEM_CHANNELS
        for i, (channels, depth) in enumerate(zip(STAGE_CHANNELS, STAGE_DEPTHS, strict=True)):
            first = i == 0
            stages.append(CSPStage(previous, channels, depth, expand=2.0 if first else 1.0,
                                   block_ratio=0.5 if first else 1.0, activation=act))
            previous = channels
        super().__init__(stages, num_classes, in_channels, dropout, act)


@register_model("darknet53")
def darknet53(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.0,
              activation: str = "leaky_relu") -> Darknet53:
    """DarkNet-53 classifier (recipe key ``architecture: darknet53``); 41.6M parameters at 1000 classes
    (timm ``darknet53`` model card). ``activation``: leaky_relu (Darknet's, slope 0.1), mish, relu or silu."""
    return Darknet53(num_classes, in_channels, dropout, activation)


@register_model("csp_darknet53")
def csp_darknet53(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.0,
                  activation: str = "mish") -> CSPDarknet53:
    """CSPDarknet-53 classifier (recipe key ``architecture: csp_darknet53``); 27.6M parameters at 1000 classes
    (YOLOv4 paper, Table 1). Not SuperGradients' own ``csp_darknet53``, which is YOLOv5's backbone."""
    return CSPDarknet53(num_classes, in_channels, dropout, activation)
