"""STDC-Seg for the recipe key ``architecture``: ``stdc1_seg50``, ``stdc1_seg75``, ``stdc2_seg50``, ``stdc2_seg75``.

Written from Fan et al., CVPR 2021, "Rethinking BiSeNet For Real-time Semantic Segmentation", and the layer
definitions of its official implementation (read, not copied). The network:

* **STDC backbone** (:class:`STDCBackbone`, also PP-LiteSeg's encoder): two strided 3x3 convs (1/2, 1/4), then
  three stages of Short-Term Dense Concatenate blocks (1/8, 1/16, 1/32). A block runs a chain of convolutions
  whose widths halve step by step (``C/2, C/4, C/8, C/8``) and concatenates all their outputs: multi-scale
  receptive fields at a low cost. STDC1 has ``[2, 2, 2]`` blocks per stage, STDC2 ``[4, 5, 3]``.
* **Context path**: the 1/32 features, attention-refined (ARM: a conv, then channel weights from global average
  pooling) plus a global-context vector, upsampled and added to the refined 1/16 features, upsampled again to 1/8.
* **Feature fusion** (FFM) of the 1/8 backbone features with the context path, then the segmentation head.
* Training only, with ``use_aux_heads``: two auxiliary heads on the context path (1/8 and 1/16) and the
  **detail head**, a one-channel logit map on the 1/8 backbone features that the detail loss (Laplacian edges of
  the mask, binary cross-entropy + dice) supervises, so that the backbone learns spatial detail without a spatial
  path at inference.

The "50"/"75" variants share the architecture; they differ in the published training/evaluation scale,
``eval_scale`` 0.5 (512x1024 input) or 0.75 (768x1536) of the 1024x2048 Cityscapes frame.

``arch_params``: ``num_classes`` (19), ``use_aux_heads`` (false), ``in_channels`` (3), ``base_channels`` (64, the
published width; every width of the model -- backbone, context path, fusion, heads -- scales with it, so that
``base_channels: 16`` is the same network at a quarter of the width).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from super_recipes.registry import register_model
from super_recipes.segmentation.models.common import (
    ConvBNReLU,
    SegHead,
    SegmentationModel,
    check_arch_params,
    init_weights,
    resize_to,
    scaled,
)
from super_recipes.segmentation.models.sg_names import SG_ONLY, stdc_key

__all__ = ["STDC_DEPTHS", "STDCBackbone", "STDCBlock", "STDCSeg"]

# Blocks per stage (1/8, 1/16, 1/32), as published.
STDC_DEPTHS: dict[str, tuple[int, int, int]] = {"stdc1": (2, 2, 2), "stdc2": (4, 5, 3)}


class STDCBlock(nn.Module):
    """Short-Term Dense Concatenate block: ``steps`` convolutions whose widths halve (``C/2, C/4, ..., C/2**(n-1),
    C/2**(n-1)``), all outputs concatenated to ``C`` channels.

    With ``stride=2`` the first (1x1) output is downsampled twice over: a depthwise strided 3x3 conv feeds the
    chain, and a 3x3 average pool brings the first output itself to the new resolution for the concatenation.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, steps: int = 4):
        super().__init__()
        widths = [out_channels // 2**i for i in range(1, steps)] + [out_channels // 2 ** (steps - 1)]
        self.stride = stride
        self.convs = nn.ModuleList([ConvBNReLU(in_channels, widths[0], 1)])
        self.convs.extend(ConvBNReLU(widths[i - 1], widths[i], 3) for i in range(1, steps))
        if stride == 2:
            half = widths[0]
            self.downsample = nn.Sequential(nn.Conv2d(half, half, 3, 2, 1, groups=half, bias=False),
                                            nn.BatchNorm2d(half))
            self.skip = nn.AvgPool2d(3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        first = self.convs[0](x)
        out = self.downsample(first) if self.stride == 2 else first
        outputs = [self.skip(first) if self.stride == 2 else first]
        for conv in self.convs[1:]:
            out = conv(out)
            outputs.append(out)
        return torch.cat(outputs, dim=1)


class STDCBackbone(nn.Module):
    """STDCNet without its classifier: returns the 1/2, 1/4, 1/8, 1/16 and 1/32 feature maps, with
    ``out_channels == (base/2, base, 4 base, 8 base, 16 base)``."""

    def __init__(self, depths: Sequence[int], base_channels: int = 64, in_channels: int = 3, steps: int = 4):
        super().__init__()
        base = base_channels
        self.stem2 = ConvBNReLU(in_channels, base // 2, 3, 2)
        self.stem4 = ConvBNReLU(base // 2, base, 3, 2)
        stages = []
        channels = base
        for i, depth in enumerate(depths):
            width = base * 4 * 2**i
            blocks = [STDCBlock(channels, width, 2, steps)]
            blocks += [STDCBlock(width, width, 1, steps) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        self.stage8, self.stage16, self.stage32 = stages
        self.out_channels = (base // 2, base, base * 4, base * 8, base * 16)

    def forward(self, x: Tensor) -> list[Tensor]:
        x2 = self.stem2(x)
        x4 = self.stem4(x2)
        x8 = self.stage8(x4)
        x16 = self.stage16(x8)
        return [x2, x4, x8, x16, self.stage32(x16)]


class AttentionRefinement(nn.Module):
    """ARM: a 3x3 ConvBNReLU, then its output reweighted per channel by a sigmoid of its global average."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels, 3)
        self.attention = ConvBNReLU(out_channels, out_channels, 1, relu=False, pooled=True)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.attention(F.adaptive_avg_pool2d(feat, 1)))


class ContextPath(nn.Module):
    """BiSeNet's context path over the 1/16 and 1/32 features: returns the context at 1/8 and at 1/16."""

    def __init__(self, in16: int, in32: int, channels: int):
        super().__init__()
        self.arm16 = AttentionRefinement(in16, channels)
        self.arm32 = AttentionRefinement(in32, channels)
        self.conv_head32 = ConvBNReLU(channels, channels, 3)
        self.conv_head16 = ConvBNReLU(channels, channels, 3)
        self.conv_global = ConvBNReLU(in32, channels, 1, pooled=True)

    def forward(self, x8: Tensor, x16: Tensor, x32: Tensor) -> tuple[Tensor, Tensor]:
        global_context = self.conv_global(F.adaptive_avg_pool2d(x32, 1))  # broadcast over the 1/32 map
        up32 = self.conv_head32(resize_to(self.arm32(x32) + global_context, x16.shape[-2:], "nearest"))
        up16 = self.conv_head16(resize_to(self.arm16(x16) + up32, x8.shape[-2:], "nearest"))
        return up16, up32


class FeatureFusion(nn.Module):
    """FFM: concatenate, 1x1 ConvBNReLU, then add a channel-attention-weighted copy (squeeze by 4)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels, 1)
        squeezed = max(1, out_channels // 4)
        self.attention = nn.Sequential(nn.Conv2d(out_channels, squeezed, 1, bias=False), nn.ReLU(inplace=True),
                                       nn.Conv2d(squeezed, out_channels, 1, bias=False), nn.Sigmoid())

    def forward(self, spatial: Tensor, context: Tensor) -> Tensor:
        feat = self.conv(torch.cat((spatial, context), dim=1))
        return feat + feat * self.attention(F.adaptive_avg_pool2d(feat, 1))


class STDCSeg(SegmentationModel):
    """STDC-Seg: STDC backbone, BiSeNet context path and fusion, a head at 1/8 (see the module doc).

    Training outputs with ``use_aux_heads`` (``output_names``): ``main`` (input size), ``aux8`` and ``aux16``
    (class logits from the context path at 1/8 and 1/16), ``detail`` (one-channel detail logits at 1/8).
    """

    aux_names = ("aux8", "aux16", "detail")
    # SuperGradients modules ours has no place for (sg_names.SG_ONLY): a load leaves them out and reports them.
    checkpoint_prefixes_without_place = (SG_ONLY,)

    def __init__(self, depths: Sequence[int], num_classes: int = 19, use_aux_heads: bool = False,
                 in_channels: int = 3, base_channels: int = 64, eval_scale: float = 0.5):
        super().__init__(num_classes, use_aux_heads, eval_scale)
        self.backbone = STDCBackbone(depths, base_channels, in_channels)
        _, _, c8, c16, c32 = self.backbone.out_channels
        # Published widths at base 64: context 128, fusion and main head 256, auxiliary/detail heads 64.
        self.context_channels = scaled(128, base_channels)
        self.fusion_channels = scaled(256, base_channels)
        self.aux_mid_channels = scaled(64, base_channels)
        self.context = ContextPath(c16, c32, self.context_channels)
        self.ffm = FeatureFusion(c8 + self.context_channels, self.fusion_channels)
        init_weights(self)
        self._set_heads()

    def _build_heads(self, num_classes: int) -> nn.ModuleDict:
        heads = nn.ModuleDict({"main": SegHead(self.fusion_channels, self.fusion_channels, num_classes)})
        if self.use_aux_heads:
            heads["aux8"] = SegHead(self.context_channels, self.aux_mid_channels, num_classes)
            heads["aux16"] = SegHead(self.context_channels, self.aux_mid_channels, num_classes)
            heads["detail"] = SegHead(self.backbone.out_channels[2], self.aux_mid_channels, 1)
        return heads

    def forward_logits(self, x: Tensor, with_aux: bool) -> tuple[Tensor, list[Tensor]]:
        _, _, x8, x16, x32 = self.backbone(x)
        context8, context16 = self.context(x8, x16, x32)
        main = self.heads["main"](self.ffm(x8, context8))
        if not with_aux:
            return main, []
        return main, [self.heads["aux8"](context8), self.heads["aux16"](context16), self.heads["detail"](x8)]

    def super_gradients_key(self, sg_name: str) -> str | None:
        """Our state-dict key for a SuperGradients STDC-Seg key (the checkpoint loader's hook; rules and SG sources
        in :mod:`super_recipes.segmentation.models.sg_names`); None where we have no place for SG's tensor. SG's
        ``aux_head_s16``/``aux_head_s32`` read other features than our aux heads: they are left out."""
        return stdc_key(sg_name, self.use_aux_heads)


def _build(variant: str, eval_scale: float, num_classes: int, use_aux_heads: bool, in_channels: int,
           base_channels: int) -> STDCSeg:
    check_arch_params(f"{variant}_seg{round(eval_scale * 100)}", num_classes=num_classes, in_channels=in_channels,
                      use_aux_heads=use_aux_heads, base_channels=(base_channels, 2, "even"))
    return STDCSeg(STDC_DEPTHS[variant], num_classes, use_aux_heads, in_channels, base_channels, eval_scale)


@register_model("stdc1_seg50")
def stdc1_seg50(num_classes: int = 19, use_aux_heads: bool = False, in_channels: int = 3,
                base_channels: int = 64) -> STDCSeg:
    """STDC1-Seg50: STDC1 backbone, evaluated at 0.5 x 1024x2048 (512x1024). 8.28M params at 19 classes
    (inference model; the auxiliary and detail heads add 0.30M)."""
    return _build("stdc1", 0.5, num_classes, use_aux_heads, in_channels, base_channels)


@register_model("stdc1_seg75")
def stdc1_seg75(num_classes: int = 19, use_aux_heads: bool = False, in_channels: int = 3,
                base_channels: int = 64) -> STDCSeg:
    """STDC1-Seg75: STDC1-Seg50's network, evaluated at 0.75 x 1024x2048 (768x1536)."""
    return _build("stdc1", 0.75, num_classes, use_aux_heads, in_channels, base_channels)


@register_model("stdc2_seg50")
def stdc2_seg50(num_classes: int = 19, use_aux_heads: bool = False, in_channels: int = 3,
                base_channels: int = 64) -> STDCSeg:
    """STDC2-Seg50: STDC2 backbone (deeper stages), evaluated at 512x1024. 12.31M params at 19
    classes (inference model)."""
    return _build("stdc2", 0.5, num_classes, use_aux_heads, in_channels, base_channels)


@register_model("stdc2_seg75")
def stdc2_seg75(num_classes: int = 19, use_aux_heads: bool = False, in_channels: int = 3,
                base_channels: int = 64) -> STDCSeg:
    """STDC2-Seg75: STDC2-Seg50's network, evaluated at 768x1536."""
    return _build("stdc2", 0.75, num_classes, use_aux_heads, in_channels, base_channels)
