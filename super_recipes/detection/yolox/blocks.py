"""YOLOX building blocks: the CSPDarknet backbone and the PAFPN neck, used by the ``yolox_*`` architectures.

Written from the YOLOX paper (Ge et al., 2021, "YOLOX: Exceeding YOLO Series in 2021") and the CSPNet / YOLOv5
architecture descriptions. Channel and depth arithmetic follows the published models so that parameter counts
match them; sub-modules are declared in the same order as the reference implementation, so its state dicts line
up tensor-by-tensor (``strict_load: no_key_matching``) even though the names differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["BN_EPS", "BN_MOMENTUM", "ConvBNAct", "DepthwiseSeparableConv", "conv_block", "Focus", "Bottleneck",
           "CSPLayer", "SPPBottleneck", "CSPDarknet", "PAFPN"]

# YOLOX trains with these BatchNorm settings (not PyTorch's 1e-5 / 0.1): the smaller momentum keeps the running
# statistics stable under its heavy mosaic/mixup augmentation.
BN_EPS = 1e-3
BN_MOMENTUM = 0.03


class ConvBNAct(nn.Module):
    """Convolution (no bias: BN follows) + BatchNorm + SiLU, with "same" padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class DepthwiseSeparableConv(nn.Module):
    """Depthwise ``k x k`` ConvBNAct then pointwise 1x1 ConvBNAct (YOLOX-Nano's replacement for 3x3 convs)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.depthwise = ConvBNAct(in_channels, in_channels, kernel_size, stride, groups=in_channels)
        self.pointwise = ConvBNAct(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


def conv_block(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
               depthwise: bool = False) -> nn.Module:
    """A ``k x k`` conv of the chosen flavour: plain ConvBNAct, or depthwise-separable for the Nano model."""
    if depthwise:
        return DepthwiseSeparableConv(in_channels, out_channels, kernel_size, stride)
    return ConvBNAct(in_channels, out_channels, kernel_size, stride)


class Focus(nn.Module):
    """Space-to-depth stem: each 2x2 pixel block becomes 4x the channels at half resolution, then a 3x3 conv.

    Halving the resolution without a strided conv keeps every input pixel in the first layer's receptive field.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = ConvBNAct(in_channels * 4, out_channels, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        # Channel order (even/even, odd/even, even/odd, odd/odd rows/cols) matches the published weights.
        top_left = x[..., ::2, ::2]
        bottom_left = x[..., 1::2, ::2]
        top_right = x[..., ::2, 1::2]
        bottom_right = x[..., 1::2, 1::2]
        return self.conv(torch.cat((top_left, bottom_left, top_right, bottom_right), dim=1))


class Bottleneck(nn.Module):
    """1x1 conv then 3x3 conv, with a residual connection when shapes allow and ``shortcut`` is set."""

    def __init__(self, in_channels: int, out_channels: int, shortcut: bool = True, expansion: float = 0.5,
                 depthwise: bool = False):
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvBNAct(in_channels, hidden, 1)
        self.conv2 = conv_block(hidden, out_channels, 3, depthwise=depthwise)
        self.residual = shortcut and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.conv1(x))
        return out + x if self.residual else out


class CSPLayer(nn.Module):
    """Cross-stage-partial block: one 1x1 branch runs ``depth`` bottlenecks, the other skips them; a 1x1 conv
    fuses the concatenation. Only half the channels pay for the bottlenecks, with the full gradient paths kept."""

    def __init__(self, in_channels: int, out_channels: int, depth: int = 1, shortcut: bool = True,
                 expansion: float = 0.5, depthwise: bool = False):
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvBNAct(in_channels, hidden, 1)
        self.conv2 = ConvBNAct(in_channels, hidden, 1)
        self.conv3 = ConvBNAct(2 * hidden, out_channels, 1)
        self.blocks = nn.Sequential(
            *(Bottleneck(hidden, hidden, shortcut, 1.0, depthwise) for _ in range(depth))
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(torch.cat((self.blocks(self.conv1(x)), self.conv2(x)), dim=1))


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling (stride-1 max-pools of several sizes, concatenated) between two 1x1 convs: a cheap
    way to widen the receptive field of the last stage."""

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: Sequence[int] = (5, 9, 13)):
        super().__init__()
        hidden = in_channels // 2
        self.conv1 = ConvBNAct(in_channels, hidden, 1)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes)
        self.conv2 = ConvBNAct(hidden * (len(kernel_sizes) + 1), out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x, *(pool(x) for pool in self.pools)], dim=1))


def _stage(in_channels: int, out_channels: int, depth: int, depthwise: bool, last: bool = False) -> nn.Sequential:
    """A strided 3x3 downsampling conv, then (last stage) SPP, then a CSP layer."""
    layers: list[nn.Module] = [conv_block(in_channels, out_channels, 3, 2, depthwise)]
    if last:
        layers.append(SPPBottleneck(out_channels, out_channels))
    layers.append(CSPLayer(out_channels, out_channels, depth, shortcut=not last, depthwise=depthwise))
    return nn.Sequential(*layers)


class CSPDarknet(nn.Module):
    """CSPDarknet-53 scaled by ``depth`` (bottlenecks per CSP layer) and ``width`` (channels).

    Returns the stride 8, 16 and 32 feature maps (``dark3``, ``dark4``, ``dark5``) with
    ``64 * width * (4, 8, 16)`` channels.
    """

    def __init__(self, depth: float, width: float, depthwise: bool = False, in_channels: int = 3):
        super().__init__()
        base = int(width * 64)
        base_depth = max(round(depth * 3), 1)
        self.stem = Focus(in_channels, base, 3)
        self.dark2 = _stage(base, base * 2, base_depth, depthwise)
        self.dark3 = _stage(base * 2, base * 4, base_depth * 3, depthwise)
        self.dark4 = _stage(base * 4, base * 8, base_depth * 3, depthwise)
        self.dark5 = _stage(base * 8, base * 16, base_depth, depthwise, last=True)
        self.out_channels = (base * 4, base * 8, base * 16)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        c3 = self.dark3(self.dark2(self.stem(x)))
        c4 = self.dark4(c3)
        return c3, c4, self.dark5(c4)


class PAFPN(nn.Module):
    """Path-aggregation FPN over the CSPDarknet maps: a top-down pass (upsample + concat + CSP) then a bottom-up
    pass (strided conv + concat + CSP). Returns the stride 8/16/32 maps with ``(256, 512, 1024) * width``
    channels, the widths the backbone gives them."""

    def __init__(self, depth: float, width: float, depthwise: bool = False):
        super().__init__()
        c3, c4, c5 = (int(c * width) for c in (256, 512, 1024))
        n = round(3 * depth)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral_conv5 = ConvBNAct(c5, c4, 1)
        self.top_down_p4 = CSPLayer(2 * c4, c4, n, shortcut=False, depthwise=depthwise)
        self.lateral_conv4 = ConvBNAct(c4, c3, 1)
        self.top_down_p3 = CSPLayer(2 * c3, c3, n, shortcut=False, depthwise=depthwise)
        self.downsample_p3 = conv_block(c3, c3, 3, 2, depthwise)
        self.bottom_up_p4 = CSPLayer(2 * c3, c4, n, shortcut=False, depthwise=depthwise)
        self.downsample_p4 = conv_block(c4, c4, 3, 2, depthwise)
        self.bottom_up_p5 = CSPLayer(2 * c4, c5, n, shortcut=False, depthwise=depthwise)
        self.out_channels = (c3, c4, c5)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        c3, c4, c5 = features
        lateral5 = self.lateral_conv5(c5)
        p4 = self.top_down_p4(torch.cat((self.upsample(lateral5), c4), dim=1))
        lateral4 = self.lateral_conv4(p4)
        out3 = self.top_down_p3(torch.cat((self.upsample(lateral4), c3), dim=1))
        out4 = self.bottom_up_p4(torch.cat((self.downsample_p3(out3), lateral4), dim=1))
        out5 = self.bottom_up_p5(torch.cat((self.downsample_p4(out4), lateral5), dim=1))
        return out3, out4, out5
