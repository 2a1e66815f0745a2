"""YOLO-NAS building blocks (recipe keys ``architecture: yolo_nas_s | yolo_nas_m | yolo_nas_l``): the QARepVGG
block, the CSP layer and the stem/stage/SPP/up/down stages the backbone and neck are made of.

Written from the YOLO-NAS description and its public architecture files (SuperGradients' ``yolo_nas_*_arch_params``)
and the QARepVGG paper (Chu et al. 2022, "Make RepVGG Greater Again: A Quantization-aware Approach",
arXiv:2212.01593). Backbone and neck sub-module names follow the published model (``stem``, ``stageN``,
``context_module``, ``neckN``, ``branch_3x3``, ``branch_1x1``, ``post_bn``, ``cv1``/``cv2``, ``conv1``/``conv2``/
``conv3``...); its QARepVGG blocks also register an unused ``rbr_reparam`` convolution before fusing, which we only
create when fusing.

QARepVGG specifics (:class:`QARepVGGBlock`):

* three branches summed: a 3x3 convolution followed by its own BatchNorm, a 1x1 convolution *with a bias and no
  BatchNorm*, and (stride 1, same width) the identity;
* an optional learnable scalar ``alpha`` multiplies the 1x1 branch (``use_alpha``; off in YOLO-NAS, whose residual
  scaling lives in :class:`YoloNASBottleneck` instead);
* one BatchNorm *after* the sum (``post_bn``), then ReLU. RepVGG normalises each branch separately; normalising the
  sum instead keeps the fused kernel's weight distribution quantisation friendly, and is what makes the block a
  "QA" RepVGG;
* :meth:`QARepVGGBlock.fuse_branches` folds the 3x3 BatchNorm into its kernel, pads the 1x1 kernel to 3x3 (times
  ``alpha``), adds an identity kernel, then folds ``post_bn`` into the sum: one 3x3 convolution with a bias,
  followed by ReLU, computing the same function in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvBNReLU", "QARepVGGBlock", "YoloNASBottleneck", "YoloNASCSPLayer", "YoloNASStem", "YoloNASStage",
           "SPP", "YoloNASUpStage", "YoloNASDownStage", "width_multiplier"]


def width_multiplier(channels: int, factor: float, divisor: int = 8) -> int:
    """``channels * factor`` rounded up to a multiple of ``divisor`` (how the published heads size their widths)."""
    return -(-int(channels * factor) // divisor) * divisor


class ConvBNReLU(nn.Module):
    """Convolution (no bias: BatchNorm follows) + BatchNorm + ReLU with "same" padding (SuperGradients' ``Conv``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


def _fold_bn(weight: Tensor, bias: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """``bn(conv(x))`` as one convolution: scale each output kernel by gamma/std and shift the bias."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale.reshape(-1, 1, 1, 1), (bias - bn.running_mean) * scale + bn.bias


class QARepVGGBlock(nn.Module):
    """QARepVGG block (3x3+BN, 1x1+bias (x alpha), identity; BatchNorm after the sum; ReLU), re-parameterisable
    into a single 3x3 convolution with :meth:`fuse_branches`. See the module docstring for the details.

    ``use_residual_connection`` adds the identity branch (needs stride 1 and ``in_channels == out_channels``).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, use_residual_connection: bool = True,
                 use_alpha: bool = False):
        super().__init__()
        if use_residual_connection and (stride != 1 or in_channels != out_channels):
            raise ValueError("QARepVGGBlock: the identity branch needs stride 1 and in_channels == out_channels "
                             f"(got {in_channels} -> {out_channels}, stride {stride})")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.use_residual_connection = use_residual_connection
        self.branch_3x3 = nn.Sequential()
        self.branch_3x3.add_module("conv", nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False))
        self.branch_3x3.add_module("bn", nn.BatchNorm2d(out_channels))
        self.branch_1x1 = nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=True)
        # A learnable weight of the 1x1 branch (PP-YOLOE+ style); a plain 1.0 when off, costing nothing.
        self.alpha: nn.Parameter | float = nn.Parameter(torch.ones(1)) if use_alpha else 1.0
        self.post_bn = nn.BatchNorm2d(out_channels)
        self.nonlinearity = nn.ReLU(inplace=True)
        self.rbr_reparam: nn.Conv2d | None = None  # the single convolution, once fused

    @property
    def fused(self) -> bool:
        return self.rbr_reparam is not None

    def forward(self, x: Tensor) -> Tensor:
        if self.rbr_reparam is not None:
            return self.nonlinearity(self.rbr_reparam(x))
        out = self.branch_3x3(x) + self.alpha * self.branch_1x1(x)
        if self.use_residual_connection:
            out = out + x
        return self.nonlinearity(self.post_bn(out))

    def equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The 3x3 kernel and bias of the whole block before the ReLU, with eval-mode BatchNorm statistics."""
        conv = self.branch_3x3.conv
        kernel, bias = _fold_bn(conv.weight, torch.zeros_like(self.post_bn.running_mean), self.branch_3x3.bn)
        kernel = kernel + self.alpha * F.pad(self.branch_1x1.weight, [1, 1, 1, 1])
        bias = bias + self.alpha * self.branch_1x1.bias
        if self.use_residual_connection:
            identity = torch.zeros_like(kernel)
            identity[torch.arange(self.out_channels), torch.arange(self.in_channels), 1, 1] = 1.0
            kernel = kernel + identity
        # The BatchNorm after the sum is affine in eval mode: it folds into the summed kernel too.
        return _fold_bn(kernel, bias, self.post_bn)

    @torch.no_grad()
    def fuse_branches(self) -> None:
        """Replace the branches and both BatchNorms by one 3x3 convolution with a bias (inference form; idempotent).
        Call in eval mode: the running BatchNorm statistics are folded in."""
        if self.rbr_reparam is not None:
            return
        kernel, bias = self.equivalent_kernel_bias()
        fused = nn.Conv2d(self.in_channels, self.out_channels, 3, self.stride, 1, bias=True)
        fused = fused.to(device=kernel.device, dtype=kernel.dtype)
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        self.rbr_reparam = fused
        del self.branch_3x3, self.branch_1x1, self.post_bn
        if isinstance(self.alpha, nn.Parameter):
            del self.alpha
            self.alpha = 1.0


class YoloNASBottleneck(nn.Module):
    """Two blocks in a row plus, when widths match, the input scaled by a learnable ``alpha`` (init 1)."""

    def __init__(self, in_channels: int, out_channels: int, block: str = "qarepvgg", shortcut: bool = True,
                 use_alpha: bool = True):
        super().__init__()
        if block not in ("qarepvgg", "conv"):
            raise ValueError(f"YoloNASBottleneck: block must be 'qarepvgg' or 'conv', got {block!r}")
        if block == "qarepvgg":
            self.cv1: nn.Module = QARepVGGBlock(in_channels, out_channels,
                                                use_residual_connection=in_channels == out_channels)
            self.cv2: nn.Module = QARepVGGBlock(out_channels, out_channels)
        else:  # the neck's down stages use plain 3x3 ConvBNReLU blocks
            self.cv1, self.cv2 = ConvBNReLU(in_channels, out_channels, 3), ConvBNReLU(out_channels, out_channels, 3)
        self.add = shortcut and in_channels == out_channels
        self.alpha: nn.Parameter | float = nn.Parameter(torch.ones(1)) if (self.add and use_alpha) else 1.0

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return self.alpha * x + y if self.add else y


class YoloNASCSPLayer(nn.Module):
    """Cross-stage layer: ``conv1`` (1x1) -> bottlenecks, ``conv2`` (1x1) alongside, both concatenated -> ``conv3``
    (1x1). With ``concat_intermediates`` every bottleneck's output (and conv1's) joins the concatenation."""

    def __init__(self, in_channels: int, out_channels: int, num_bottlenecks: int, hidden_channels: int | None = None,
                 block: str = "qarepvgg", shortcut: bool = True, concat_intermediates: bool = False,
                 expansion: float = 0.5):
        super().__init__()
        hidden = hidden_channels if hidden_channels is not None else int(out_channels * expansion)
        self.concat_intermediates = concat_intermediates
        self.conv1 = ConvBNReLU(in_channels, hidden, 1)
        self.conv2 = ConvBNReLU(in_channels, hidden, 1)
        self.bottlenecks = nn.Sequential(*(YoloNASBottleneck(hidden, hidden, block, shortcut)
                                           for _ in range(num_bottlenecks)))
        concatenated = hidden * (2 + (num_bottlenecks if concat_intermediates else 0))
        self.conv3 = ConvBNReLU(concatenated, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(x)
        parts = [y]
        for bottleneck in self.bottlenecks:
            y = bottleneck(y)
            parts.append(y)
        if not self.concat_intermediates:
            parts = [y]
        return self.conv3(torch.cat((*parts, self.conv2(x)), dim=1))


class YoloNASStem(nn.Module):
    """One stride-2 QARepVGG block without identity branch (input/2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.out_channels = out_channels
        self.conv = QARepVGGBlock(in_channels, out_channels, stride=2, use_residual_connection=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class YoloNASStage(nn.Module):
    """A stride-2 QARepVGG downsample followed by a CSP layer of QARepVGG bottlenecks."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, hidden_channels: int | None = None,
                 concat_intermediates: bool = False):
        super().__init__()
        self.out_channels = out_channels
        self.downsample = QARepVGGBlock(in_channels, out_channels, stride=2, use_residual_connection=False)
        self.blocks = YoloNASCSPLayer(out_channels, out_channels, num_blocks, hidden_channels,
                                      concat_intermediates=concat_intermediates)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


class SPP(nn.Module):
    """Spatial pyramid pooling (the backbone's context module): 1x1 to half width, max-pools of several sizes
    (stride 1) concatenated with their input, 1x1 to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: Sequence[int] = (5, 9, 13)):
        super().__init__()
        hidden = in_channels // 2
        self.out_channels = out_channels
        self.cv1 = ConvBNReLU(in_channels, hidden, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in kernel_sizes)
        self.cv2 = ConvBNReLU(hidden * (len(kernel_sizes) + 1), out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x, *(pool(x) for pool in self.m)], dim=1))


class YoloNASUpStage(nn.Module):
    """Top-down neck stage with a higher-resolution skip: ``in_channels = [x, skip, skip2]`` where ``skip2`` has
    twice ``skip``'s resolution. ``x`` goes 1x1 -> transposed-conv x2; the skips are reduced to the stage width
    by 1x1 convs (``skip2`` also downsampled by a stride-2 3x3), all three concatenated, reduced by a 1x1 and
    refined by a CSP layer. Returns ``(x after its 1x1, the stage output)``: the neck's down path reuses the first.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_blocks: int,
                 hidden_channels: int | None = None, concat_intermediates: bool = False):
        super().__init__()
        x_channels, skip1, skip2 = in_channels
        self.out_channels = [out_channels, out_channels]
        self.reduce_skip1 = ConvBNReLU(skip1, out_channels, 1)
        self.reduce_skip2 = ConvBNReLU(skip2, out_channels, 1)
        self.conv = ConvBNReLU(x_channels, out_channels, 1)
        self.upsample = nn.ConvTranspose2d(out_channels, out_channels, kernel_size=2, stride=2)
        self.downsample = ConvBNReLU(out_channels, out_channels, 3, stride=2)
        self.reduce_after_concat = ConvBNReLU(3 * out_channels, out_channels, 1)
        self.blocks = YoloNASCSPLayer(out_channels, out_channels, num_blocks, hidden_channels,
                                      concat_intermediates=concat_intermediates)

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        x, skip1, skip2 = inputs
        x_inter = self.conv(x)
        x = torch.cat([self.upsample(x_inter), self.reduce_skip1(skip1), self.downsample(self.reduce_skip2(skip2))],
                      dim=1)
        return x_inter, self.blocks(self.reduce_after_concat(x))


class YoloNASDownStage(nn.Module):
    """Bottom-up neck stage: ``in_channels = [x, skip]``; ``x`` downsampled by a stride-2 3x3 to half the stage
    width, concatenated with ``skip`` and refined by a CSP layer of plain 3x3 ConvBNReLU bottlenecks."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_blocks: int,
                 hidden_channels: int | None = None, concat_intermediates: bool = False):
        super().__init__()
        x_channels, skip_channels = in_channels
        self.out_channels = out_channels
        self.conv = ConvBNReLU(x_channels, out_channels // 2, 3, stride=2)
        self.blocks = YoloNASCSPLayer(out_channels // 2 + skip_channels, out_channels, num_blocks, hidden_channels,
                                      block="conv", concat_intermediates=concat_intermediates)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        x, skip = inputs
        return self.blocks(torch.cat([self.conv(x), skip], dim=1))
