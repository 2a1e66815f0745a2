"""DDRNet for the recipe key ``architecture``: ``ddrnet_23`` and ``ddrnet_23_slim``.

Written from Hong et al., 2021, "Deep Dual-resolution Networks for Real-time and Accurate Semantic Segmentation of
Road Scenes", and the layer definitions of its official implementation (read, not copied). The network:

* a ResNet-like stem and two stages down to 1/8; then **two branches** run side by side: a high-resolution
  branch that stays at 1/8 with ``2 * planes`` channels (spatial detail) and a low-resolution branch that keeps
  downsampling to 1/16, 1/32 and 1/64 (context);
* **bilateral fusion** after stages 3 and 4: the high branch is added, through strided 3x3 convs, to the low one,
  and the low branch, through a 1x1 conv and bilinear upsampling, to the high one;
* a bottleneck stage on each branch, then **DAPPM** on the 1/64 features: average pools of growing size
  (5, 9, 17 with strides 2, 4, 8, and global), each upsampled and refined *hierarchically* (each scale's 3x3 conv
  sees the sum of its pooled map and the previous scale's output), concatenated, compressed, plus a shortcut;
* the DAPPM output, upsampled to 1/8, is added to the high branch and fed to the **segmentation head**;
* with ``use_aux_heads``, the published **auxiliary head** on the high-resolution branch after the stage-3
  fusion (1/8), used in training only.

Convolutions are laid out as in the official code (BatchNorm-ReLU-conv inside DAPPM and the heads, residual
blocks whose last block leaves its output un-activated, the ReLU applied where the output is consumed).

``eval_scale`` is 1.0: the published models are trained on 1024x1024 crops and evaluated on the full 1024x2048
Cityscapes frame.

``arch_params``: ``num_classes`` (19), ``use_aux_heads`` (false), ``in_channels`` (3), ``planes`` (64 for
DDRNet-23, 32 for -slim: the width of the first stage; every branch width is a multiple of it), ``head_planes``
(128 / 64: the hidden width of the heads), ``spp_planes`` (128: the width of each DAPPM scale).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from super_recipes.registry import register_model
from super_recipes.segmentation.models.common import (
    ConvBNReLU,
    PooledBatchNorm2d,
    SegmentationModel,
    check_arch_params,
    init_weights,
    resize_to,
)
from super_recipes.segmentation.models.sg_names import SG_ONLY, ddrnet_key, ddrnet_values

__all__ = ["DAPPM", "DDRNet", "DDRNetBackbone", "DDRNetHead"]

DDRNET_23_DEPTHS = (2, 2, 2, 2)


class _Residual(nn.Module):
    """``body(x) + shortcut(x)``, then a ReLU unless the block is the last of its stage: DDRNet leaves stage
    outputs un-activated and applies the ReLU where they are consumed (they feed several paths)."""

    expansion = 1

    def __init__(self, body: nn.Module, in_channels: int, out_channels: int, stride: int, last: bool):
        super().__init__()
        self.body = body
        self.shortcut = _projection(in_channels, out_channels, stride)
        self.act = nn.Identity() if last else nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class BasicBlock(_Residual):
    """Two 3x3 convs (the first carries the stride) with a shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, last: bool = False):
        body = nn.Sequential(ConvBNReLU(in_channels, channels, 3, stride), ConvBNReLU(channels, channels, 3,
                                                                                      relu=False))
        super().__init__(body, in_channels, channels, stride, last)


class Bottleneck(_Residual):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand by 2, with a shortcut."""

    expansion = 2

    def __init__(self, in_channels: int, channels: int, stride: int = 1, last: bool = True):
        out = channels * self.expansion
        body = nn.Sequential(ConvBNReLU(in_channels, channels, 1), ConvBNReLU(channels, channels, 3, stride),
                             ConvBNReLU(channels, out, 1, relu=False))
        super().__init__(body, in_channels, out, stride, last)


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return ConvBNReLU(in_channels, out_channels, 1, stride, relu=False)


def _stage(block: type[_Residual], in_channels: int, channels: int, depth: int, stride: int = 1) -> nn.Sequential:
    blocks = [block(in_channels, channels, stride, last=depth == 1)]
    blocks += [block(channels * block.expansion, channels, 1, last=i == depth - 1) for i in range(1, depth)]
    return nn.Sequential(*blocks)


def _bn_relu_conv(in_channels: int, out_channels: int, kernel_size: int, pooled: bool = False) -> list[nn.Module]:
    return [(PooledBatchNorm2d if pooled else nn.BatchNorm2d)(in_channels), nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)]


class DAPPM(nn.Module):
    """Deep aggregation pyramid pooling (see the module doc), ``in_channels`` -> ``out_channels``."""

    def __init__(self, in_channels: int, branch_channels: int, out_channels: int):
        super().__init__()
        pools: list[nn.Module] = [nn.AvgPool2d(k, s, k // 2) for k, s in ((5, 2), (9, 4), (17, 8))]
        pools.append(nn.AdaptiveAvgPool2d(1))
        self.scale0 = nn.Sequential(*_bn_relu_conv(in_channels, branch_channels, 1))
        # Pooled maps can be 1x1 (always for the global one, on small inputs for the others).
        self.scales = nn.ModuleList(nn.Sequential(pool, *_bn_relu_conv(in_channels, branch_channels, 1, pooled=True))
                                    for pool in pools)
        self.process = nn.ModuleList(nn.Sequential(*_bn_relu_conv(branch_channels, branch_channels, 3))
                                     for _ in pools)
        self.compression = nn.Sequential(*_bn_relu_conv(branch_channels * (len(pools) + 1), out_channels, 1))
        self.shortcut = nn.Sequential(*_bn_relu_conv(in_channels, out_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        outputs = [self.scale0(x)]
        for scale, process in zip(self.scales, self.process, strict=True):
            outputs.append(process(resize_to(scale(x), size) + outputs[-1]))
        return self.compression(torch.cat(outputs, dim=1)) + self.shortcut(x)


class DDRNetHead(nn.Module):
    """BN-ReLU-3x3 conv to ``mid_channels``, BN-ReLU-1x1 conv (with bias) to the logits."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int):
        super().__init__()
        self.conv = nn.Sequential(*_bn_relu_conv(in_channels, mid_channels, 3))
        self.classifier = nn.Sequential(nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True),
                                        nn.Conv2d(mid_channels, num_classes, 1, bias=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.conv(x))


class DDRNetBackbone(nn.Module):
    """The dual-resolution trunk: returns ``(low, high, high3)``: the 1/64 features (``16 * planes`` channels),
    the 1/8 high-resolution branch after its last stage (``4 * planes``), and the high branch after the stage-3
    fusion (``2 * planes``, what the auxiliary head reads)."""

    def __init__(self, planes: int = 64, in_channels: int = 3, depths: tuple[int, ...] = DDRNET_23_DEPTHS):
        super().__init__()
        high = planes * 2
        self.stem = nn.Sequential(ConvBNReLU(in_channels, planes, 3, 2), ConvBNReLU(planes, planes, 3, 2))
        self.layer1 = _stage(BasicBlock, planes, planes, depths[0])
        self.layer2 = _stage(BasicBlock, planes, planes * 2, depths[1], 2)
        self.layer3 = _stage(BasicBlock, planes * 2, planes * 4, depths[2], 2)
        self.layer4 = _stage(BasicBlock, planes * 4, planes * 8, depths[3], 2)
        self.compression3 = ConvBNReLU(planes * 4, high, 1, relu=False)
        self.compression4 = ConvBNReLU(planes * 8, high, 1, relu=False)
        self.down3 = ConvBNReLU(high, planes * 4, 3, 2, relu=False)
        self.down4 = nn.Sequential(ConvBNReLU(high, planes * 4, 3, 2), ConvBNReLU(planes * 4, planes * 8, 3, 2,
                                                                                  relu=False))
        self.layer3_high = _stage(BasicBlock, planes * 2, high, 2)
        self.layer4_high = _stage(BasicBlock, high, high, 2)
        self.layer5_high = _stage(Bottleneck, high, high, 1)
        self.layer5 = _stage(Bottleneck, planes * 8, planes * 8, 1, 2)
        self.relu = nn.ReLU()  # not in place: the un-activated outputs are used twice
        self.out_channels = (planes * 16, high * 2, high)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        relu = self.relu
        x = self.layer1(self.stem(x))
        x8 = self.layer2(relu(x))
        low = self.layer3(relu(x8))
        high = self.layer3_high(relu(x8))
        # Bilateral fusion 3: each branch gets the other's pre-fusion output.
        low, high = low + self.down3(relu(high)), high + resize_to(self.compression3(relu(low)), high.shape[-2:])
        high3 = high
        low4 = self.layer4(relu(low))
        high = self.layer4_high(relu(high))
        low, high = low4 + self.down4(relu(high)), high + resize_to(self.compression4(relu(low4)), high.shape[-2:])
        return self.layer5(relu(low)), self.layer5_high(relu(high)), high3


class DDRNet(SegmentationModel):
    """DDRNet-23 / -23-slim (see the module doc).

    Training outputs with ``use_aux_heads`` (``output_names``): ``main`` (input size) and ``aux`` (class logits of
    the high-resolution branch after the stage-3 fusion, at 1/8).
    """

    aux_names = ("aux",)
    # SuperGradients modules ours has no place for (sg_names.SG_ONLY): a load leaves them out and reports them.
    checkpoint_prefixes_without_place = (SG_ONLY,)

    def __init__(self, num_classes: int = 19, use_aux_heads: bool = False, in_channels: int = 3, planes: int = 64,
                 head_planes: int = 128, spp_planes: int = 128, eval_scale: float = 1.0):
        super().__init__(num_classes, use_aux_heads, eval_scale)
        self.head_planes = head_planes
        self.backbone = DDRNetBackbone(planes, in_channels)
        self.spp = DAPPM(planes * 16, spp_planes, planes * 4)
        init_weights(self)
        self._set_heads()

    def _build_heads(self, num_classes: int) -> nn.ModuleDict:
        _, high, high3 = self.backbone.out_channels
        heads = nn.ModuleDict({"main": DDRNetHead(high, self.head_planes, num_classes)})
        if self.use_aux_heads:
            heads["aux"] = DDRNetHead(high3, self.head_planes, num_classes)
        return heads

    def forward_logits(self, x: Tensor, with_aux: bool) -> tuple[Tensor, list[Tensor]]:
        low, high, high3 = self.backbone(x)
        main = self.heads["main"](high + resize_to(self.spp(low), high.shape[-2:]))
        return main, [self.heads["aux"](high3)] if with_aux else []

    def super_gradients_key(self, sg_name: str) -> str | None:
        """Our state-dict key for a SuperGradients DDRNet-23 / -23-slim key (the checkpoint loader's hook; rules
        and SG sources in :mod:`super_recipes.segmentation.models.sg_names`); None where we have no place for SG's
        tensor (DDRNet-39's second stage-3 repeat)."""
        return ddrnet_key(sg_name, self.use_aux_heads)

    def super_gradients_convert(self, weights: dict[str, Tensor]) -> dict[str, str]:
        """SG's stem conv biases folded into the stem BatchNorms (the loader's value hook, after the renaming;
        in place in ``weights``); returns {key read: our key written}."""
        return ddrnet_values(weights)


def _build(name: str, num_classes: int, use_aux_heads: bool, in_channels: int, planes: int, head_planes: int,
           spp_planes: int) -> DDRNet:
    check_arch_params(name, num_classes=num_classes, in_channels=in_channels, use_aux_heads=use_aux_heads,
                      planes=(planes, 1), head_planes=(head_planes, 1), spp_planes=(spp_planes, 1))
    return DDRNet(num_classes, use_aux_heads, in_channels, planes, head_planes, spp_planes)


@register_model("ddrnet_23")
def ddrnet_23(num_classes: int = 19, use_aux_heads: bool = False, in_channels: int = 3, planes: int = 64,
              head_planes: int = 128, spp_planes: int = 128) -> DDRNet:
    """DDRNet-23: 20.15M params at 19 classes (published 20.1M; the auxiliary head adds 0.15M)."""
    return _build("ddrnet_23", num_classes, use_aux_heads, in_channels, planes, head_planes, spp_planes)


@register_model("ddrnet_23_slim")
def ddrnet_23_slim(num_classes: int = 19, use_aux_heads: bool = False, in_channels: int = 3, planes: int = 32,
                   head_planes: int = 64, spp_planes: int = 128) -> DDRNet:
    """DDRNet-23-slim: DDRNet-23 at half the width (``planes`` 32, ``head_planes`` 64): 5.70M params at 19
    classes (published 5.7M; the auxiliary head adds 0.04M)."""
    return _build("ddrnet_23_slim", num_classes, use_aux_heads, in_channels, planes, head_planes, spp_planes)
