"""PP-LiteSeg for the recipe key ``architecture``: ``pp_lite_t_seg50``, ``pp_lite_t_seg75``, ``pp_lite_b_seg50``,
``pp_lite_b_seg75``.

Written from Peng et al., 2022, "PP-LiteSeg: A Superior Real-Time Semantic Segmentation Model", and the layer
definitions of PaddleSeg's implementation and configs (read, not copied). The network:

* **Encoder**: the STDC backbone (:class:`~super_recipes.segmentation.models.stdc.STDCBackbone`): STDC1 for
  PP-LiteSeg-T, STDC2 for PP-LiteSeg-B; its 1/8, 1/16 and 1/32 features are used.
* **SPPM** (simple pyramid pooling): the 1/32 features average-pooled to 1x1, 2x2 and 4x4, each through a 1x1
  ConvBNReLU, upsampled and *summed* (not concatenated: cheaper), then a 3x3 ConvBNReLU.
* **Flexible and lightweight decoder**: from 1/32 up to 1/8, a UAFM at each scale fuses the upsampled deeper
  feature with the backbone feature of that scale; its channel count shrinks as the resolution grows (T:
  128 -> 64 -> 32, B: 128 -> 96 -> 64), which is where the decoder saves its computation.
* **UAFM** (unified attention fusion, spatial variant): a weight map ``a`` from a small conv over the channel
  mean and max of both inputs, then ``a * low + (1 - a) * high`` and a 3x3 ConvBNReLU.
* **Heads**: a segmentation head on each decoder output; the 1/8 one is the model's output, the 1/16 and 1/32
  ones (``use_aux_heads``) are the published deep supervision, used in training only.

The "50"/"75" variants share the architecture; they differ in the published evaluation scale, ``eval_scale`` 0.5
(512x1024 input) or 0.75 (768x1536) of the 1024x2048 Cityscapes frame (both are trained on 512x1024 crops).

``arch_params``: ``num_classes`` (19), ``use_aux_heads`` (false), ``in_channels`` (3), ``base_channels`` (64, the
published width; the backbone, SPPM, decoder and head widths all scale with it).
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
from super_recipes.segmentation.models.sg_names import SG_ONLY, pp_lite_seg_key, pp_lite_seg_values
from super_recipes.segmentation.models.stdc import STDC_DEPTHS, STDCBackbone

__all__ = ["PP_LITE_SIZES", "PPLiteSeg", "SPPM", "UAFM"]

# Per variant, at base_channels 64 (PaddleSeg's configs): backbone, decoder widths (1/8, 1/16, 1/32) and head
# widths (1/8, 1/16, 1/32). SPPM always outputs 128 channels.
PP_LITE_SIZES: dict[str, tuple[str, tuple[int, int, int], tuple[int, int, int]]] = {
    "pp_lite_t": ("stdc1", (32, 64, 128), (32, 64, 64)),
    "pp_lite_b": ("stdc2", (64, 96, 128), (64, 64, 64)),
}
SPPM_CHANNELS = 128
SPPM_BINS = (1, 2, 4)


class SPPM(nn.Module):
    """Simple pyramid pooling: pooled to each bin size, 1x1 ConvBNReLU, upsampled and summed, 3x3 ConvBNReLU."""

    def __init__(self, in_channels: int, channels: int, bins: Sequence[int] = SPPM_BINS):
        super().__init__()
        self.bins = tuple(bins)
        self.stages = nn.ModuleList(ConvBNReLU(in_channels, channels, 1, pooled=b == 1) for b in self.bins)
        self.conv_out = ConvBNReLU(channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        out = sum(resize_to(stage(F.adaptive_avg_pool2d(x, b)), size) for b, stage in zip(self.bins, self.stages,
                                                                                           strict=True))
        return self.conv_out(out)


class UAFM(nn.Module):
    """Unified attention fusion (spatial attention): fuses the low-level feature ``low`` (``low_channels``) with the
    upsampled high-level feature ``high`` (``high_channels``) into ``out_channels``."""

    def __init__(self, low_channels: int, high_channels: int, out_channels: int):
        super().__init__()
        self.conv_low = ConvBNReLU(low_channels, high_channels, 3)
        # Mean and max over channels of both inputs (4 maps) -> one weight map.
        self.attention = nn.Sequential(ConvBNReLU(4, 2, 3), ConvBNReLU(2, 1, 3, relu=False))
        self.conv_out = ConvBNReLU(high_channels, out_channels, 3)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        low = self.conv_low(low)
        high = resize_to(high, low.shape[-2:])
        stats = torch.cat((low.mean(1, keepdim=True), low.amax(1, keepdim=True),
                           high.mean(1, keepdim=True), high.amax(1, keepdim=True)), dim=1)
        weight = torch.sigmoid(self.attention(stats))
        return self.conv_out(low * weight + high * (1 - weight))


class PPLiteSeg(SegmentationModel):
    """PP-LiteSeg: STDC encoder, SPPM, a UAFM decoder from 1/32 to 1/8, segmentation heads (see the module doc).

    Training outputs with ``use_aux_heads`` (``output_names``): ``main`` (input size), ``aux16`` and ``aux32``
    (class logits of the 1/16 and 1/32 decoder stages, at those resolutions).
    """

    aux_names = ("aux16", "aux32")
    # SuperGradients modules ours has no place for (sg_names.SG_ONLY): a load leaves them out and reports them.
    checkpoint_prefixes_without_place = (SG_ONLY,)

    def __init__(self, backbone: str, decoder_channels: Sequence[int], head_channels: Sequence[int],
                 num_classes: int = 19, use_aux_heads: bool = False, in_channels: int = 3, base_channels: int = 64,
                 eval_scale: float = 0.5):
        super().__init__(num_classes, use_aux_heads, eval_scale)
        self.backbone = STDCBackbone(STDC_DEPTHS[backbone], base_channels, in_channels)
        features = self.backbone.out_channels[2:]  # 1/8, 1/16, 1/32
        self.decoder_channels = [scaled(c, base_channels) for c in decoder_channels]
        self.head_channels = [scaled(c, base_channels) for c in head_channels]
        sppm_channels = scaled(SPPM_CHANNELS, base_channels)
        self.sppm = SPPM(features[-1], sppm_channels)
        # decoder[i] fuses backbone level i with the output of level i + 1 (the SPPM for the last level).
        highs = [*self.decoder_channels[1:], sppm_channels]
        self.decoder = nn.ModuleList(UAFM(f, h, o) for f, h, o in zip(features, highs, self.decoder_channels,
                                                                          strict=True))
        init_weights(self)
        self._set_heads()

    def _build_heads(self, num_classes: int) -> nn.ModuleDict:
        specs = list(zip(("main", *self.aux_names), self.decoder_channels, self.head_channels, strict=True))
        return nn.ModuleDict({name: SegHead(c, mid, num_classes)
                              for name, c, mid in (specs if self.use_aux_heads else specs[:1])})

    def forward_logits(self, x: Tensor, with_aux: bool) -> tuple[Tensor, list[Tensor]]:
        features = self.backbone(x)[2:]
        high = self.sppm(features[-1])
        decoded = []
        for level in reversed(range(len(features))):
            high = self.decoder[level](features[level], high)
            decoded.insert(0, high)
        main = self.heads["main"](decoded[0])
        if not with_aux:
            return main, []
        return main, [self.heads[name](feat) for name, feat in zip(self.aux_names, decoded[1:], strict=True)]

    def super_gradients_key(self, sg_name: str) -> str | None:
        """Our state-dict key for a SuperGradients PP-LiteSeg key (the checkpoint loader's hook; rules and SG
        sources in :mod:`super_recipes.segmentation.models.sg_names`); None where we have no place for SG's
        tensor. SG's ``aux_heads`` read other features than ours: they are left out."""
        return pp_lite_seg_key(sg_name, len(self.decoder))

    def super_gradients_convert(self, weights: dict[str, Tensor]) -> dict[str, str]:
        """SG's UAFM attention (which weighs the other input) rewritten as ours (the loader's value hook, after the
        renaming; in place in ``weights``); returns {key read: our key written}."""
        return pp_lite_seg_values(weights, len(self.decoder))


def _build(size: str, eval_scale: float, num_classes: int, use_aux_heads: bool, in_channels: int,
           base_channels: int) -> PPLiteSeg:
    check_arch_params(f"{size}_seg{round(eval_scale * 100)}", num_classes=num_classes, in_channels=in_channels,
                      use_aux_heads=use_aux_heads, base_channels=(base_channels, 2, "even"))
    backbone, decoder_channels, head_channels = PP_LITE_SIZES[size]
    return PPLiteSeg(backbone, decoder_channels, head_channels, num_classes, use_aux_heads, in_channels,
                     base_channels, eval_scale)


@register_model("pp_lite_t_seg50")
def pp_lite_t_seg50(num_classes: int = 19, use_aux_heads: bool = False, in_channels: int = 3,
                    base_channels: int = 64) -> PPLiteSeg:
    """PP-LiteSeg-T (STDC1 encoder, decoder 32/64/128), evaluated at 512x1024. 8.03M params at 19 classes
    (inference model; the two auxiliary heads add 0.11M)."""
    return _build("pp_lite_t", 0.5, num_classes, use_aux_heads, in_channels, base_channels)


@register_model("pp_lite_t_seg75")
def pp_lite_t_seg75(num_classes: int = 19, use_aux_heads: bool = False, in_channels: int = 3,
                    base_channels: int = 64) -> PPLiteSeg:
    """PP-LiteSeg-T, evaluated at 768x1536."""
    return _build("pp_lite_t", 0.75, num_classes, use_aux_heads, in_channels, base_channels)


@register_model("pp_lite_b_seg50")
def pp_lite_b_seg50(num_classes: int = 19, use_aux_heads: bool = False, in_channels: int = 3,
                    base_channels: int = 64) -> PPLiteSeg:
    """PP-LiteSeg-B (STDC2 encoder, decoder 64/96/128), evaluated at 512x1024. 12.23M params at 19 classes
    (inference model)."""
    return _build("pp_lite_b", 0.5, num_classes, use_aux_heads, in_channels, base_channels)


@register_model("pp_lite_b_seg75")
def pp_lite_b_seg75(num_classes: int = 19, use_aux_heads: bool = False, in_channels: int = 3,
                    base_channels: int = 64) -> PPLiteSeg:
    """PP-LiteSeg-B, evaluated at 768x1536."""
    return _build("pp_lite_b", 0.75, num_classes, use_aux_heads, in_channels, base_channels)
