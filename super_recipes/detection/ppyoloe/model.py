"""PP-YOLOE detectors for the recipe key ``architecture``: ``ppyoloe_s``, ``ppyoloe_m``, ``ppyoloe_l`` and
``ppyoloe_x``; and the parts registered as detection modules for ``CustomizableDetector``: ``CSPResNetBackbone``,
``PPYoloECSPPAN`` (:mod:`super_recipes.detection.ppyoloe.blocks`) and ``PPYoloEHead`` (here).

Each is a :class:`PPYoloE` (a :class:`~super_recipes.detection.customizable.CustomizableDetector`): a CSPRepResNet
backbone, a CSP-PAN neck with SPP and the efficient task-aligned head (ET-head: ESE attention per level, class
logits and a ``reg_max + 1``-bin distance distribution per box side) over strides 8, 16 and 32, scaled by the
published depth/width multipliers (Xu et al. 2022, "PP-YOLOE: An evolved version of YOLO", arXiv:2203.16250).
``arch_params``: ``num_classes`` (default 80), ``in_channels`` (3), ``reg_max`` (16), ``activation`` (``silu``),
``use_alpha`` (``False``; ``True`` is PP-YOLOE+'s weighted RepVGG branch).

Outputs (:func:`~super_recipes.detection.dfl_outputs.dfl_head_outputs`, ``A = sum(H/s * W/s)``):

* ``model.train()``: ``(cls_scores [B, A, C], reg_distri [B, A, 4 * (reg_max + 1)], anchors [A, 4],
  anchor_points [A, 2], num_anchors_list, stride_tensor [A, 1])``, what ``PPYoloELoss`` consumes;
* ``model.eval()``: ``((pred_bboxes [B, A, 4] xyxy input pixels, pred_scores [B, A, C]), raw 6-tuple)``;
* traced or exported (``torch.jit.trace``, ONNX, ``torch.export``): ``(pred_bboxes, pred_scores)``.

``model.get_post_prediction_callback(conf=, iou=)`` gives a
:class:`~super_recipes.detection.ppyoloe.postprocess.PPYoloEPostPredictionCallback`;
``model.prep_model_for_conversion()`` folds every RepVGG block into one 3x3 convolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from super_recipes.detection.customizable import CustomizableDetector
from super_recipes.detection.dfl_outputs import dfl_head_outputs
from super_recipes.detection.ppyoloe.blocks import ConvBNAct, CSPResNetBackbone, PPYoloECSPPAN, PPYoloESPP
from super_recipes.detection.ppyoloe.postprocess import PPYoloEPostPredictionCallback
from super_recipes.detection.ppyoloe.sg_names import ppyoloe_key
from super_recipes.errors import RecipeError
from super_recipes.registry import register_detection_module, register_model

__all__ = ["PPYOLOE_SIZES", "PUBLISHED_PARAMS", "ESEAttn", "PPYoloEHead", "PPYoloE", "ppyoloe_s", "ppyoloe_m",
           "ppyoloe_l", "ppyoloe_x"]

# (depth multiplier, width multiplier), as published.
PPYOLOE_SIZES: dict[str, tuple[float, float]] = {
    "ppyoloe_s": (0.33, 0.50),
    "ppyoloe_m": (0.67, 0.75),
    "ppyoloe_l": (1.0, 1.0),
    "ppyoloe_x": (1.33, 1.25),
}
# Parameters (millions) at 80 classes: PP-YOLOE report (arXiv:2203.16250, Table 2) and PaddleDetection's model
# zoo (configs/ppyoloe/README_legacy.md). They count the deployed model, whose RepVGG blocks are folded into one
# 3x3 conv each: ours match them to 0.05% after prep_model_for_conversion() (2-4% more while training).
PUBLISHED_PARAMS: dict[str, float] = {"ppyoloe_s": 7.93, "ppyoloe_m": 23.43, "ppyoloe_l": 52.20, "ppyoloe_x": 98.42}

register_detection_module("CSPResNetBackbone")(CSPResNetBackbone)
register_detection_module("PPYoloECSPPAN")(PPYoloECSPPAN)


class ESEAttn(nn.Module):
    """The ET-head's per-level attention: a sigmoid channel gate from the level's global average (1x1 conv),
    then a 1x1 ConvBNAct."""

    def __init__(self, channels: int, activation: str = "silu"):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)
        self.conv = ConvBNAct(channels, channels, 1, activation=activation)
        nn.init.normal_(self.fc.weight, std=0.001)  # start close to a uniform 0.5 gate

    def forward(self, feature: Tensor, average: Tensor) -> Tensor:
        return self.conv(feature * torch.sigmoid(self.fc(average)))


@register_detection_module("PPYoloEHead")
class PPYoloEHead(nn.Module):
    """PP-YOLOE's efficient task-aligned head, ``PPYoloEHead`` in detection arch_params.

    Per level: ``cls = conv3x3(ESE_cls(x) + x)`` (``num_classes`` logits) and ``reg = conv3x3(ESE_reg(x))``
    (``4 * (reg_max + 1)`` distance logits, per side l, t, r, b), decoded by
    :func:`~super_recipes.detection.dfl_outputs.dfl_head_outputs` (its expectation over the bins is a fixed
    ``0..reg_max`` projection, not a parameter).

    :param in_channels: widths of the input maps, one per stride (the neck's ``out_channels``).
    :param num_classes: classes predicted.
    :param strides: stride of each input map (published ``[8, 16, 32]``).
    :param reg_max: the distance distribution has ``reg_max + 1`` bins (published 16).
    :param grid_cell_scale: anchor boxes (for the ATSS assigner) are squares of side ``grid_cell_scale * stride``.
    :param grid_cell_offset: cell centres at ``(index + offset) * stride``.
    :param prior_prob: initial class probability (the focal-loss prior: keeps the early loss of the ~all
        background cells small).
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int = 80, strides: Sequence[int] = (8, 16, 32),
                 reg_max: int = 16, grid_cell_scale: float = 5.0, grid_cell_offset: float = 0.5,
                 activation: str = "silu", prior_prob: float = 0.01):
        super().__init__()
        if len(in_channels) != len(strides):
            raise RecipeError(f"PPYoloEHead needs one stride per input map, got in_channels={list(in_channels)} "
                              f"and strides={list(strides)}.")
        if int(num_classes) < 1 or int(reg_max) < 1:
            raise RecipeError(f"PPYoloEHead needs num_classes >= 1 and reg_max >= 1, got {num_classes} and "
                              f"{reg_max}.")
        self.in_channels = [int(c) for c in in_channels]
        self.num_classes = int(num_classes)
        self.strides = [int(s) for s in strides]
        self.reg_max = int(reg_max)
        self.grid_cell_scale = float(grid_cell_scale)
        self.grid_cell_offset = float(grid_cell_offset)
        self.stem_cls = nn.ModuleList(ESEAttn(c, activation) for c in self.in_channels)
        self.stem_reg = nn.ModuleList(ESEAttn(c, activation) for c in self.in_channels)
        self.pred_cls = nn.ModuleList(nn.Conv2d(c, self.num_classes, 3, padding=1) for c in self.in_channels)
        self.pred_reg = nn.ModuleList(nn.Conv2d(c, 4 * (self.reg_max + 1), 3, padding=1) for c in self.in_channels)
        self.reset_prediction_layers(prior_prob)

    @torch.no_grad()
    def reset_prediction_layers(self, prior_prob: float = 0.01) -> None:
        """Zero the prediction convs; class biases at the ``prior_prob`` logit, distance biases equal (a uniform
        distribution: every box starts as the expected ``reg_max / 2`` strides on each side)."""
        bias = -math.log((1 - prior_prob) / prior_prob)
        for cls_conv, reg_conv in zip(self.pred_cls, self.pred_reg, strict=True):
            nn.init.zeros_(cls_conv.weight)
            nn.init.constant_(cls_conv.bias, bias)
            nn.init.zeros_(reg_conv.weight)
            nn.init.constant_(reg_conv.bias, 1.0)

    def forward(self, features: Sequence[Tensor]) -> Any:
        if len(features) != len(self.strides):
            raise ValueError(f"PPYoloEHead got {len(features)} feature maps for {len(self.strides)} strides.")
        cls_logits, reg_distri = [], []
        for i, feature in enumerate(features):
            average = feature.mean((2, 3), keepdim=True)
            # The residual keeps the neck's features in the classification path (the ET-head design).
            cls_logits.append(self.pred_cls[i](self.stem_cls[i](feature, average) + feature))
            reg_distri.append(self.pred_reg[i](self.stem_reg[i](feature, average)))
        return dfl_head_outputs(cls_logits, reg_distri, self.strides, self.reg_max, self.training,
                                self.grid_cell_scale, self.grid_cell_offset)

    def get_post_prediction_callback(self, conf: float = 0.01, iou: float = 0.7, max_predictions: int = 300,
                                     nms_top_k: int = 1000, multi_label_per_box: bool = True,
                                     class_agnostic_nms: bool = False,
                                     nms_type: str = "iterative") -> PPYoloEPostPredictionCallback:
        """NMS post-processing of this head's eval/tracing output (defaults: the recipes' validation values)."""
        return PPYoloEPostPredictionCallback(score_threshold=conf, nms_threshold=iou, nms_top_k=nms_top_k,
                                             max_predictions=max_predictions,
                                             multi_label_per_box=multi_label_per_box,
                                             class_agnostic_nms=class_agnostic_nms, nms_type=nms_type)


class PPYoloE(CustomizableDetector):
    """A PP-YOLOE detector (built by the ``ppyoloe_*`` factories): ``CSPResNetBackbone`` -> ``PPYoloECSPPAN`` ->
    ``PPYoloEHead`` at the given multipliers, assembled as a :class:`CustomizableDetector` (parts ``backbone``,
    ``neck``, ``heads``; ``head_prefix = "heads"``)."""

    def __init__(self, depth_mult: float, width_mult: float, num_classes: int = 80, in_channels: int = 3,
                 reg_max: int = 16, activation: str = "silu", use_alpha: bool = False):
        scaled = {"depth_mult": depth_mult, "width_mult": width_mult, "activation": activation}
        super().__init__(
            backbone={"CSPResNetBackbone": {**scaled, "use_alpha": use_alpha}},
            neck={"PPYoloECSPPAN": scaled},
            heads={"PPYoloEHead": {"reg_max": reg_max, "activation": activation}},
            num_classes=num_classes, in_channels=in_channels)
        self.depth_mult, self.width_mult = depth_mult, width_mult

    def super_gradients_key(self, sg_name: str) -> str | None:
        """Our state-dict key for a SuperGradients PP-YOLOE key (the checkpoint loader's hook; rules and SG sources
        in :mod:`super_recipes.detection.ppyoloe.sg_names`); None where we have no place for SG's tensor."""
        # What the rules need from our build: the number of levels (SG's head and PAN indices run the other way)
        # and where the deepest FPN stage keeps its SPP among its blocks (SG names it apart, ``convs.spp``).
        deepest = self.neck.fpn_stages[0][0].blocks
        spp = next((i for i, block in enumerate(deepest) if isinstance(block, PPYoloESPP)), None)
        return ppyoloe_key(sg_name, len(self.neck.out_channels), spp)


def _build(name: str, num_classes: int, in_channels: int, reg_max: int, activation: str,
           use_alpha: bool) -> PPYoloE:
    depth, width = PPYOLOE_SIZES[name]
    return PPYoloE(depth, width, num_classes, in_channels, reg_max, activation, use_alpha)


@register_model("ppyoloe_s")
def ppyoloe_s(num_classes: int = 80, in_channels: int = 3, reg_max: int = 16, activation: str = "silu",
              use_alpha: bool = False) -> PPYoloE:
    """PP-YOLOE-s (depth 0.33, width 0.50): 7.93M params at 80 classes as published (PP-YOLOE report,
    arXiv:2203.16250, Table 2; PaddleDetection model zoo, configs/ppyoloe/README_legacy.md), which counts the
    deployed model: ours after ``prep_model_for_conversion()``, 8.08M while training (RepVGG 1x1 branches)."""
    return _build("ppyoloe_s", num_classes, in_channels, reg_max, activation, use_alpha)


@register_model("ppyoloe_m")
def ppyoloe_m(num_classes: int = 80, in_channels: int = 3, reg_max: int = 16, activation: str = "silu",
              use_alpha: bool = False) -> PPYoloE:
    """PP-YOLOE-m (depth 0.67, width 0.75): 23.43M params at 80 classes as published (PP-YOLOE report,
    arXiv:2203.16250, Table 2; PaddleDetection model zoo, configs/ppyoloe/README_legacy.md), which counts the
    deployed model: ours after ``prep_model_for_conversion()``, 24.13M while training (RepVGG 1x1 branches)."""
    return _build("ppyoloe_m", num_classes, in_channels, reg_max, activation, use_alpha)


@register_model("ppyoloe_l")
def ppyoloe_l(num_classes: int = 80, in_channels: int = 3, reg_max: int = 16, activation: str = "silu",
              use_alpha: bool = False) -> PPYoloE:
    """PP-YOLOE-l (depth 1.0, width 1.0): 52.20M params at 80 classes as published (PP-YOLOE report,
    arXiv:2203.16250, Table 2; PaddleDetection model zoo, configs/ppyoloe/README_legacy.md), which counts the
    deployed model: ours after ``prep_model_for_conversion()``, 54.08M while training (RepVGG 1x1 branches)."""
    return _build("ppyoloe_l", num_classes, in_channels, reg_max, activation, use_alpha)


@register_model("ppyoloe_x")
def ppyoloe_x(num_classes: int = 80, in_channels: int = 3, reg_max: int = 16, activation: str = "silu",
              use_alpha: bool = False) -> PPYoloE:
    """PP-YOLOE-x (depth 1.33, width 1.25): 98.42M params at 80 classes as published (PP-YOLOE report,
    arXiv:2203.16250, Table 2; PaddleDetection model zoo, configs/ppyoloe/README_legacy.md), which counts the
    deployed model: ours after ``prep_model_for_conversion()``, 102.33M while training (RepVGG 1x1 branches)."""
    return _build("ppyoloe_x", num_classes, in_channels, reg_max, activation, use_alpha)
