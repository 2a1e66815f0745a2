"""RepVGG classifiers (recipe keys ``architecture: repvgg_a0 ... repvgg_b3 | repvgg_d2se | repvgg_custom``).

Ding et al. 2021, "RepVGG: Making VGG-style ConvNets Great Again" (arXiv:2101.03697, CVPR 2021). A RepVGG is a
plain stack of 3x3 convolutions and ReLUs: a stride-2 stem block, then four stages whose first block halves the
resolution, then global pooling and a linear classifier. Stage widths are ``64a, 128a, 256a, 512b`` and the stem
has ``min(64, 64a)`` channels (paper Sec. 3.4); A-models have ``[2, 4, 14, 1]`` blocks after the stem,
B-models ``[4, 6, 16, 1]``, D2SE ``[8, 14, 24, 1]`` with squeeze-and-excitation in every block.

While training each block sums three branches -- 3x3 conv+BN, 1x1 conv+BN and, when the input and output shapes
agree, a BN on the identity -- and ``prep_model_for_conversion()`` folds them into one 3x3 convolution with bias
(every block's ``fuse_branches()``); in eval mode the outputs are unchanged. ``build_residual_branches=False``
builds that fused (deploy) form directly.

Module names follow SuperGradients' RepVGG (``stem``, ``stage1..4``, ``branch_3x3``/``branch_1x1`` with
``conv``/``bn``, ``no_conv_branch``, ``rbr_reparam``, ``linear``) so its checkpoints map key for key. One
difference: SuperGradients gives the stem ``int(64a)`` channels, not the paper's ``min(64, 64a)``; the two agree
for A0, A1 and B0 and differ for A2, B1, B2, B3 and D2SE, where ``stem_width=int(64 * a)`` rebuilds
SuperGradients' layout (e.g. 128 for B1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from super_recipes.errors import RecipeError
from super_recipes.registry import register_model

__all__ = ["RepVGGBlock", "RepVGG", "REPVGG_CONFIGS", "PUBLISHED_PARAMS"]

# name -> (blocks per stage after the stem, width multipliers a (stages 1-3) and b (stage 4), SE blocks).
# Paper Table 2 (A0-B3); D2SE from the authors' repository (DingXiaoH/RepVGG README, Apr 25 2021 update).
REPVGG_CONFIGS: dict[str, tuple[tuple[int, ...], tuple[float, ...], bool]] = {
    "repvgg_a0": ((2, 4, 14, 1), (0.75, 0.75, 0.75, 2.5), False),
    "repvgg_a1": ((2, 4, 14, 1), (1.0, 1.0, 1.0, 2.5), False),
    "repvgg_a2": ((2, 4, 14, 1), (1.5, 1.5, 1.5, 2.75), False),
    "repvgg_b0": ((4, 6, 16, 1), (1.0, 1.0, 1.0, 2.5), False),
    "repvgg_b1": ((4, 6, 16, 1), (2.0, 2.0, 2.0, 4.0), False),
    "repvgg_b2": ((4, 6, 16, 1), (2.5, 2.5, 2.5, 5.0), False),
    "repvgg_b3": ((4, 6, 16, 1), (3.0, 3.0, 3.0, 5.0), False),
    "repvgg_d2se": ((8, 14, 24, 1), (2.5, 2.5, 2.5, 5.0), True),
}

# name -> (train-form params M, deploy-form params M) at 1000 classes. Deploy figures: paper Table 4 (A0-B3);
# train figures and both D2SE figures: the authors' weights as counted by mmpretrain (configs/repvgg/README.md),
# which also gives deploy figures within 0.01M of the paper's.
PUBLISHED_PARAMS: dict[str, tuple[float, float]] = {
    "repvgg_a0": (9.11, 8.30),
    "repvgg_a1": (14.09, 12.78),
    "repvgg_a2": (28.21, 25.49),
    "repvgg_b0": (15.82, 14.33),
    "repvgg_b1": (57.42, 51.82),
    "repvgg_b2": (89.02, 80.31),
    "repvgg_b3": (123.09, 110.96),
    "repvgg_d2se": (133.33, 120.39),
}


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    branch = nn.Sequential()
    branch.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                                        bias=False))
    branch.add_module("bn", nn.BatchNorm2d(out_channels))
    return branch


def _fold_bn(kernel: Tensor, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Kernel and bias of ``bn(conv(x))`` as one convolution, from BN's running statistics (eval behaviour)."""
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class RepVGGBlock(nn.Module):
    """``relu(se(bn(conv3x3(x)) + bn(conv1x1(x)) [+ bn(x)]))``; ``fuse_branches()`` makes it ``relu(se(conv3x3(x)))``.

    The identity branch exists only when ``stride == 1`` and the channel counts match (paper Fig. 2). SE (the
    D2SE variant) sits after the sum, before the ReLU, with ``out_channels // 16`` squeeze channels, as in the
    authors' code; it is not folded (it is input-dependent), so a fused D2SE keeps its SE modules.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, use_se: bool = False,
                 build_residual_branches: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.nonlinearity = nn.ReLU(inplace=True)
        self.se: nn.Module = nn.Identity()
        if use_se:
            # Imported here: building a non-SE model (and the registry's import of this module) stays free of
            # torchvision.
            from torchvision.ops import SqueezeExcitation

            self.se = SqueezeExcitation(out_channels, max(1, out_channels // 16))
        self.build_residual_branches = build_residual_branches
        self.branch_3x3: nn.Module | None = None
        self.branch_1x1: nn.Module | None = None
        self.no_conv_branch: nn.Module | None = None
        self.rbr_reparam: nn.Module | None = None
        if build_residual_branches:
            self.branch_3x3 = _conv_bn(in_channels, out_channels, 3, stride)
            self.branch_1x1 = _conv_bn(in_channels, out_channels, 1, stride)
            if stride == 1 and in_channels == out_channels:
                self.no_conv_branch = nn.BatchNorm2d(in_channels)
        else:
            self.rbr_reparam = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=True)

    @property
    def fused(self) -> bool:
        return self.rbr_reparam is not None

    def forward(self, x: Tensor) -> Tensor:
        if self.rbr_reparam is not None:
            return self.nonlinearity(self.se(self.rbr_reparam(x)))
        assert self.branch_3x3 is not None and self.branch_1x1 is not None
        out = self.branch_3x3(x) + self.branch_1x1(x)
        if self.no_conv_branch is not None:
            out = out + self.no_conv_branch(x)
        return self.nonlinearity(self.se(out))

    def equivalent_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The single 3x3 kernel and bias equal (in eval mode) to the sum of the branches; differentiable."""
        assert self.branch_3x3 is not None and self.branch_1x1 is not None
        kernel, bias = _fold_bn(self.branch_3x3.conv.weight, self.branch_3x3.bn)
        kernel_1x1, bias_1x1 = _fold_bn(self.branch_1x1.conv.weight, self.branch_1x1.bn)
        # A 1x1 kernel is a 3x3 kernel that is zero off-centre (the 3x3 branch pads by 1, the 1x1 by 0).
        kernel = kernel + nn.functional.pad(kernel_1x1, [1, 1, 1, 1])
        bias = bias + bias_1x1
        if self.no_conv_branch is not None:
            # The identity is a 3x3 convolution whose kernel is 1 at the centre of channel i -> i.
            identity = torch.zeros_like(kernel)
            channels = torch.arange(self.in_channels, device=kernel.device)
            identity[channels, channels, 1, 1] = 1.0
            kernel_id, bias_id = _fold_bn(identity, self.no_conv_branch)
            kernel, bias = kernel + kernel_id, bias + bias_id
        return kernel, bias

    @torch.no_grad()
    def fuse_branches(self) -> None:
        """Replace the branches by one 3x3 convolution with bias (``rbr_reparam``); idempotent."""
        if self.rbr_reparam is not None:
            return
        kernel, bias = self.equivalent_kernel_bias()
        conv = nn.Conv2d(self.in_channels, self.out_channels, 3, self.stride, 1, bias=True,
                         device=kernel.device, dtype=kernel.dtype)
        conv.weight.copy_(kernel)
        assert conv.bias is not None
        conv.bias.copy_(bias)
        self.rbr_reparam = conv
        self.branch_3x3 = self.branch_1x1 = self.no_conv_branch = None
        self.build_residual_branches = False

    # SuperGradients' name for the same operation, so code written against its blocks keeps working.
    fuse_block_residual_branches = fuse_branches


class RepVGG(nn.Module):
    """RepVGG classifier: stem block, four stages of :class:`RepVGGBlock`, global average pool, linear.

    :param struct: blocks in stages 1-4 (the stem is one more block), e.g. ``[2, 4, 14, 1]`` for the A family.
    :param num_classes: classifier outputs.
    :param width_multiplier: one float for every stage, or four (``[a, a, a, b]`` in the paper).
    :param build_residual_branches: ``False`` builds the fused (deploy) form directly.
    :param use_se: squeeze-and-excitation in every block (D2SE).
    :param in_channels: input image channels.
    :param backbone_mode: drop the pool and classifier; ``forward`` returns the last feature map.
    :param stem_width: stem channels; ``None`` is the paper's ``min(64, int(64 * a))`` (SuperGradients uses
        ``int(64 * a)``, pass that to load its A2/B1/B2/B3 checkpoints).
    """

    def __init__(self, struct: Sequence[int], num_classes: int = 1000,
                 width_multiplier: float | Sequence[float] = 1.0, build_residual_branches: bool = True,
                 use_se: bool = False, in_channels: int = 3, backbone_mode: bool = False,
                 stem_width: int | None = None):
        super().__init__()
        struct, widths = _check_arguments(struct, num_classes, width_multiplier, in_channels, stem_width)
        self.num_classes = num_classes
        self.build_residual_branches = build_residual_branches
        self.use_se = use_se
        self.backbone_mode = backbone_mode
        channels = [int(base * w) for base, w in zip((64, 128, 256, 512), widths, strict=True)]
        # The paper caps the stem at 64 channels: it works at 1/2 resolution, where width is costly.
        stem = stem_width if stem_width is not None else min(64, channels[0])

        def block(cin: int, cout: int, stride: int) -> RepVGGBlock:
            return RepVGGBlock(cin, cout, stride, use_se, build_residual_branches)

        self.stem = block(in_channels, stem, 2)
        previous = stem
        for index, (depth, width) in enumerate(zip(struct, channels, strict=True), start=1):
            blocks = []
            for position in range(depth):
                blocks.append(block(previous, width, 2 if position == 0 else 1))
                previous = width
            self.add_module(f"stage{index}", nn.Sequential(*blocks))
        self.out_channels = previous
        if not backbone_mode:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.linear = nn.Linear(previous, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last feature map, ``(N, out_channels, H/32, W/32)``."""
        x = self.stem(x)
        for index in range(1, 5):
            x = getattr(self, f"stage{index}")(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        if self.backbone_mode:
            return x
        return self.linear(torch.flatten(self.avgpool(x), 1))

    def prep_model_for_conversion(self, input_size: Sequence[int] | None = None, **kwargs: Any) -> None:
        """Fold every block's branches into one 3x3 convolution (deploy form; eval outputs unchanged).

        ``input_size`` and other keyword arguments are accepted for SuperGradients' API and not needed here.
        """
        # Imported here: the detection package is not loaded for classification runs.
        from super_recipes.detection.customizable import fuse_reparameterizable_blocks

        fuse_reparameterizable_blocks(self)
        self.build_residual_branches = False

    def replace_head(self, new_num_classes: int) -> None:
        """A new, freshly initialised classifier with ``new_num_classes`` outputs (fine-tuning)."""
        if self.backbone_mode:
            raise RecipeError("replace_head: this RepVGG was built with backbone_mode=True and has no head.")
        self.linear = nn.Linear(self.out_channels, new_num_classes)
        self.num_classes = new_num_classes


def _check_arguments(struct: Any, num_classes: Any, width_multiplier: Any, in_channels: Any,
                     stem_width: Any) -> tuple[list[int], list[float]]:
    def positive_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    def positive_number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and value > 0

    if isinstance(struct, str) or not isinstance(struct, Sequence) or len(struct) != 4 \
            or not all(positive_int(d) for d in struct):
        raise RecipeError(f"RepVGG arch_params.struct must list the blocks of the 4 stages after the stem as "
                          f"positive integers, e.g. [2, 4, 14, 1] (RepVGG-A); got {struct!r}.",
                          key="arch_params.struct")
    widths = [width_multiplier] * 4 if positive_number(width_multiplier) else width_multiplier
    if isinstance(widths, str) or not isinstance(widths, Sequence) or len(widths) != 4 \
            or not all(positive_number(w) for w in widths) or any(int(64 * w) < 1 for w in widths):
        raise RecipeError(f"RepVGG arch_params.width_multiplier must be one positive number or four (stages "
                          f"1-4, e.g. [0.75, 0.75, 0.75, 2.5] for A0) giving at least one channel per "
                          f"stage; got {width_multiplier!r}.", key="arch_params.width_multiplier")
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not positive_int(value):
            raise RecipeError(f"RepVGG arch_params.{name} must be a positive integer, got {value!r}.",
                              key=f"arch_params.{name}")
    if stem_width is not None and not positive_int(stem_width):
        raise RecipeError(f"RepVGG arch_params.stem_width must be a positive integer or null (paper: "
                          f"min(64, 64a)), got {stem_width!r}.", key="arch_params.stem_width")
    return list(struct), [float(w) for w in widths]


@register_model("repvgg_custom")
def repvgg_custom(struct: Sequence[int], width_multiplier: float | Sequence[float], num_classes: int = 1000,
                  build_residual_branches: bool = True, use_se: bool = False, in_channels: int = 3,
                  backbone_mode: bool = False, stem_width: int | None = None) -> RepVGG:
    """Recipe key ``architecture: repvgg_custom``: any RepVGG (``struct``: blocks in stages 1-4 after the stem;
    ``width_multiplier``: one float or four), with the arguments of :class:`RepVGG`."""
    return RepVGG(struct, num_classes, width_multiplier, build_residual_branches, use_se, in_channels,
                  backbone_mode, stem_width)


def _make_factory(name: str) -> None:
    struct, widths, use_se = REPVGG_CONFIGS[name]
    train_m, deploy_m = PUBLISHED_PARAMS[name]

    def factory(num_classes: int = 1000, build_residual_branches: bool = True, in_channels: int = 3,
                backbone_mode: bool = False, stem_width: int | None = None) -> RepVGG:
        return RepVGG(struct, num_classes, widths, build_residual_branches, use_se, in_channels, backbone_mode,
                      stem_width)

    label = "RepVGG-" + name.removeprefix("repvgg_").upper().replace("SE", "se")
    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (
        f"Recipe key ``architecture: {name}``: {label}, blocks [1, {', '.join(map(str, struct))}], width "
        f"multipliers a={widths[0]:g}, b={widths[3]:g}{', SE in every block' if use_se else ''}. Published: "
        f"{train_m:.2f}M parameters training form, {deploy_m:.2f}M deployed (after ``prep_model_for_conversion``"
        f"), at 1000 classes (see :data:`PUBLISHED_PARAMS` for the sources)."
        + (" Evaluated at 320x320 (trained at 224)." if name == "repvgg_d2se" else "")
    )
    globals()[name] = register_model(name)(factory)


for _name in REPVGG_CONFIGS:
    _make_factory(_name)
