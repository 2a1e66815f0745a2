"""PP-YOLOE building blocks: the CSPResNet backbone (``CSPResNetBackbone``) and the CSP-PAN neck
(``PPYoloECSPPAN``), used by the ``ppyoloe_*`` architectures and registered as detection modules (by
:mod:`super_recipes.detection.ppyoloe.model`) for ``CustomizableDetector`` arch_params.

Written from the PP-YOLOE report (Xu et al., 2022, "PP-YOLOE: An evolved version of YOLO", arXiv:2203.16250):
RepVGG-style residual blocks (a 3x3 and a 1x1 conv-BN branch summed, re-parameterisable into one 3x3 conv),
cross-stage-partial stages with effective squeeze-excitation (ESE) on the concatenation, a three-conv stem, and
a PAN neck built of the same blocks (without residuals) with spatial pyramid pooling in its deepest stage. The
published sizes scale ``channels`` by ``width_mult`` and block counts by ``depth_mult`` (rounded, at least 1),
which gives the published parameter counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from super_recipes.errors import RecipeError, unknown_name_message

__all__ = ["ACTIVATIONS", "make_activation", "ConvBNAct", "RepVGGBlock", "EffectiveSE", "CSPResBasicBlock",
           "CSPResStage", "CSPResNetBackbone", "PPYoloESPP", "CSPStage", "PPYoloECSPPAN", "scale_channels",
           "scale_depth"]

# Activations a recipe may name (``activation: silu``); PP-YOLOE uses SiLU ("swish") throughout.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU, "swish": nn.SiLU, "relu": nn.ReLU, "relu6": nn.ReLU6, "leaky_relu": nn.LeakyReLU,
    "hardswish": nn.Hardswish, "mish": nn.Mish, "gelu": nn.GELU, "identity": nn.Identity,
}


def make_activation(name: str | type[nn.Module]) -> nn.Module:
    """A new activation module from its recipe name (``silu``, ``relu``...) or class."""
    if isinstance(name, type) and issubclass(name, nn.Module):
        return name()
    key = str(name).lower()
    if key not in ACTIVATIONS:
        raise RecipeError(unknown_name_message("activation", str(name), ACTIVATIONS))
    return ACTIVATIONS[key]()


def scale_channels(channels: Sequence[int], width_mult: float) -> list[int]:
    """Published channel scaling: ``max(round(c * width_mult), 1)``."""
    return [max(round(int(c) * float(width_mult)), 1) for c in channels]


def scale_depth(blocks: int, depth_mult: float) -> int:
    """Published depth scaling: ``max(round(n * depth_mult), 1)``."""
    return max(round(int(blocks) * float(depth_mult)), 1)


class ConvBNAct(nn.Module):
    """Convolution (no bias: BN follows) + BatchNorm + activation, with "same" padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 activation: str | type[nn.Module] = "silu"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, 1, kernel_size // 2, bias=False),
                         nn.BatchNorm2d(out_channels))


def _fold_bn(branch: nn.Sequential) -> tuple[Tensor, Tensor]:
    """The kernel and bias of a conv + BN (eval statistics) as one biased convolution."""
    conv, bn = branch[0], branch[1]
    std = (bn.running_var + bn.eps).sqrt()
    factor = bn.weight / std
    return conv.weight * factor.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * factor


class RepVGGBlock(nn.Module):
    """``act(BN(conv3x3(x)) + alpha * BN(conv1x1(x)))`` (PP-YOLOE's RepVggBlock: no identity branch).

    ``use_alpha`` (PP-YOLOE+) learns the weight of the 1x1 branch. :meth:`fuse_branches` folds both branches and
    their BatchNorms into a single biased 3x3 convolution for inference (same outputs in eval mode).
    """

    def __init__(self, in_channels: int, out_channels: int, activation: str | type[nn.Module] = "silu",
                 use_alpha: bool = False):
        super().__init__()
        self.branch_3x3 = _conv_bn(in_channels, out_channels, 3)
        self.branch_1x1 = _conv_bn(in_channels, out_channels, 1)
        self.alpha = nn.Parameter(torch.ones(1)) if use_alpha else None
        self.act = make_activation(activation)
        self.fused: nn.Conv2d | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        side = self.branch_1x1(x)
        if self.alpha is not None:
            side = self.alpha * side
        return self.act(self.branch_3x3(x) + side)

    @torch.no_grad()
    def fuse_branches(self) -> None:
        """Replace the two conv-BN branches by one 3x3 convolution (re-parameterisation; idempotent)."""
        if self.fused is not None:
            return
        kernel, bias = _fold_bn(self.branch_3x3)
        kernel_1x1, bias_1x1 = _fold_bn(self.branch_1x1)
        alpha = self.alpha if self.alpha is not None else 1.0
        kernel = kernel + alpha * F.pad(kernel_1x1, [1, 1, 1, 1])  # the 1x1 tap sits at the 3x3 centre
        bias = bias + alpha * bias_1x1
        conv = self.branch_3x3[0]
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=True,
                          device=kernel.device, dtype=kernel.dtype)
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        self.fused = fused
        del self.branch_3x3, self.branch_1x1
        self.alpha = None


class EffectiveSE(nn.Module):
    """Effective squeeze-excitation (CenterMask): one 1x1 conv on the global average, hard-sigmoid gate."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.fc(x.mean((2, 3), keepdim=True)))


class CSPResBasicBlock(nn.Module):
    """A 3x3 ConvBNAct then a RepVGG block, with a residual connection when ``shortcut`` (backbone) and not in
    the neck."""

    def __init__(self, in_channels: int, out_channels: int, activation: str | type[nn.Module] = "silu",
                 shortcut: bool = True, use_alpha: bool = False):
        super().__init__()
        if shortcut and in_channels != out_channels:
            raise RecipeError(f"A residual CSPResBasicBlock needs in_channels == out_channels, got {in_channels} "
                              f"and {out_channels}.")
        self.conv1 = ConvBNAct(in_channels, out_channels, 3, activation=activation)
        self.conv2 = RepVGGBlock(out_channels, out_channels, activation, use_alpha)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class CSPResStage(nn.Module):
    """A strided 3x3 downsampling conv, then a CSP split: one 1x1 half runs ``num_blocks`` residual blocks, the
    other skips them; ESE attention re-weights the concatenation and a 1x1 conv fuses it."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, stride: int = 2,
                 activation: str | type[nn.Module] = "silu", use_attention: bool = True, use_alpha: bool = False):
        super().__init__()
        half = (in_channels + out_channels) // 4  # the middle width, rounded down to an even number
        mid = 2 * half
        self.conv_down = ConvBNAct(in_channels, mid, 3, stride, activation) if stride != 1 else None
        self.conv1 = ConvBNAct(mid, half, 1, activation=activation)
        self.conv2 = ConvBNAct(mid, half, 1, activation=activation)
        self.blocks = nn.Sequential(*(CSPResBasicBlock(half, half, activation, True, use_alpha)
                                      for _ in range(num_blocks)))
        self.attn = EffectiveSE(mid) if use_attention else nn.Identity()
        self.conv3 = ConvBNAct(mid, out_channels, 1, activation=activation)

    def forward(self, x: Tensor) -> Tensor:
        if self.conv_down is not None:
            x = self.conv_down(x)
        y = torch.cat((self.conv1(x), self.blocks(self.conv2(x))), dim=1)
        return self.conv3(self.attn(y))


class CSPResNetBackbone(nn.Module):
    """CSPRepResNet (PP-YOLOE's backbone), ``CSPResNetBackbone`` in detection arch_params.

    :param in_channels: image channels.
    :param layers: residual blocks per stage before ``depth_mult`` (published ``[3, 6, 6, 3]``).
    :param channels: stem width then each stage's output width before ``width_mult``
        (published ``[64, 128, 256, 512, 1024]``).
    :param return_idx: stages whose outputs are returned (``1, 2, 3``: strides 8, 16, 32).
    :param use_large_stem: three 3x3 convs in the stem (published) instead of two.
    :param use_alpha: PP-YOLOE+'s learnable 1x1-branch weight in the RepVGG blocks.

    ``out_channels``: the widths of the returned maps, in order of increasing stride.
    """

    def __init__(self, in_channels: int = 3, layers: Sequence[int] = (3, 6, 6, 3),
                 channels: Sequence[int] = (64, 128, 256, 512, 1024), depth_mult: float = 1.0,
                 width_mult: float = 1.0, return_idx: Sequence[int] = (1, 2, 3), use_large_stem: bool = True,
                 activation: str = "silu", use_alpha: bool = False):
        super().__init__()
        if len(channels) != len(layers) + 1:
            raise RecipeError(f"CSPResNetBackbone needs one more channels entry (the stem) than layers, got "
                              f"channels={list(channels)} and layers={list(layers)}.")
        if not return_idx or any(not 0 <= int(i) < len(layers) for i in return_idx):
            raise RecipeError(f"CSPResNetBackbone return_idx must index the {len(layers)} stages, got "
                              f"{list(return_idx)}.")
        widths = scale_channels(channels, width_mult)
        depths = [scale_depth(n, depth_mult) for n in layers]
        stem = widths[0]
        convs = [ConvBNAct(in_channels, stem // 2, 3, 2, activation)]
        if use_large_stem:
            convs.append(ConvBNAct(stem // 2, stem // 2, 3, 1, activation))
        convs.append(ConvBNAct(stem // 2, stem, 3, 1, activation))
        self.stem = nn.Sequential(*convs)
        self.stages = nn.ModuleList(
            CSPResStage(widths[i], widths[i + 1], depths[i], 2, activation, use_alpha=use_alpha)
            for i in range(len(layers)))
        self.return_idx = tuple(sorted(int(i) for i in return_idx))
        self.out_channels = [widths[i + 1] for i in self.return_idx]
        self.strides = [4 * 2 ** i for i in self.return_idx]  # the stem halves, every stage halves again

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        outputs = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in self.return_idx:
                outputs.append(x)
        return outputs


class PPYoloESPP(nn.Module):
    """Spatial pyramid pooling: the input and its stride-1 max-pools (5, 9, 13) concatenated, then a ConvBNAct."""

    def __init__(self, in_channels: int, out_channels: int, pool_sizes: Sequence[int] = (5, 9, 13),
                 activation: str | type[nn.Module] = "silu"):
        super().__init__()
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in pool_sizes)
        self.conv = ConvBNAct(in_channels * (len(pool_sizes) + 1), out_channels, 1, activation=activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(torch.cat([x, *(pool(x) for pool in self.pools)], dim=1))


class CSPStage(nn.Module):
    """The neck's CSP block: two 1x1 halves, one through ``num_blocks`` non-residual basic blocks (with SPP after
    the middle one when ``spp``), concatenated and fused by a 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int,
                 activation: str | type[nn.Module] = "silu", spp: bool = False):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = ConvBNAct(in_channels, mid, 1, activation=activation)
        self.conv2 = ConvBNAct(in_channels, mid, 1, activation=activation)
        blocks: list[nn.Module] = []
        for i in range(num_blocks):
            blocks.append(CSPResBasicBlock(mid, mid, activation, shortcut=False))
            if spp and i == (num_blocks - 1) // 2:
                blocks.append(PPYoloESPP(mid, mid, activation=activation))
        self.blocks = nn.Sequential(*blocks)
        self.conv3 = ConvBNAct(2 * mid, out_channels, 1, activation=activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(torch.cat((self.conv1(x), self.blocks(self.conv2(x))), dim=1))


class PPYoloECSPPAN(nn.Module):
    """PP-YOLOE's CSP-PAN neck (``CustomCSPPAN``), ``PPYoloECSPPAN`` in detection arch_params.

    A top-down pass from the deepest map (CSP stage, 1x1 route conv halving the width, 2x nearest upsampling,
    concatenation with the next shallower map), then a bottom-up pass (strided 3x3 conv, concatenation, CSP stage).

    :param in_channels: widths of the input maps, shallowest first (the backbone's ``out_channels``).
    :param out_channels: output widths before ``width_mult``, shallowest first (published ``[192, 384, 768]``).
    :param block_num: basic blocks per CSP stage before ``depth_mult`` (published 3).
    :param stage_num: CSP stages per level (published 1).
    :param spp: SPP inside the deepest top-down stage (published).

    ``out_channels`` (attribute): the scaled output widths, shallowest (stride 8) first, as the maps come out.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: Sequence[int] = (192, 384, 768),
                 depth_mult: float = 1.0, width_mult: float = 1.0, block_num: int = 3, stage_num: int = 1,
                 spp: bool = True, activation: str = "silu"):
        super().__init__()
        if len(in_channels) != len(out_channels):
            raise RecipeError(f"PPYoloECSPPAN needs one output width per input map, got in_channels="
                              f"{list(in_channels)} and out_channels={list(out_channels)}.")
        widths = scale_channels(out_channels, width_mult)
        blocks = scale_depth(block_num, depth_mult)
        levels = len(widths)

        def stages(c_in: int, c_out: int, with_spp: bool) -> nn.Sequential:
            return nn.Sequential(*(CSPStage(c_in if j == 0 else c_out, c_out, blocks, activation, with_spp)
                                   for j in range(stage_num)))

        # Top-down, deepest level first; fpn_stages[k] serves level levels-1-k.
        fpn_stages, fpn_routes = [], []
        routed = 0
        for k, level in enumerate(reversed(range(levels))):
            fpn_stages.append(stages(int(in_channels[level]) + routed, widths[level], spp and k == 0))
            if level > 0:
                fpn_routes.append(ConvBNAct(widths[level], widths[level] // 2, 1, activation=activation))
                routed = widths[level] // 2
        self.fpn_stages = nn.ModuleList(fpn_stages)
        self.fpn_routes = nn.ModuleList(fpn_routes)
        # Bottom-up; pan_routes[i] / pan_stages[i] produce level i+1 from level i.
        self.pan_routes = nn.ModuleList(ConvBNAct(widths[i], widths[i], 3, 2, activation) for i in range(levels - 1))
        self.pan_stages = nn.ModuleList(stages(widths[i] + widths[i + 1], widths[i + 1], False)
                                        for i in range(levels - 1))
        self.out_channels = widths

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        top_down: list[Tensor] = []
        route: Tensor | None = None
        for k, feature in enumerate(reversed(list(features))):
            if route is not None:
                # 2x nearest upsampling as published, sized to the map it joins (inputs not divisible by 32).
                route = F.interpolate(route, size=feature.shape[-2:], mode="nearest")
                feature = torch.cat((route, feature), dim=1)
            out = self.fpn_stages[k](feature)
            top_down.append(out)
            if k < len(self.fpn_routes):
                route = self.fpn_routes[k](out)
        top_down.reverse()  # shallowest first
        outputs = [top_down[0]]
        for i, (down, stage) in enumerate(zip(self.pan_routes, self.pan_stages, strict=True)):
            outputs.append(stage(torch.cat((down(outputs[-1]), top_down[i + 1]), dim=1)))
        return outputs
