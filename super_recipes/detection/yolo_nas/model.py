"""YOLO-NAS detectors for the recipe key ``architecture``: ``yolo_nas_s``, ``yolo_nas_m`` and ``yolo_nas_l``.

Each is a :class:`~super_recipes.detection.customizable.CustomizableDetector` (the thin subclass :class:`YoloNAS`)
of three registered parts (``DETECTION_MODULES``, usable in a ``CustomizableDetector``'s ``arch_params``):

* ``YoloNASBackbone``: QARepVGG stem (stride 2), four stages (QARepVGG downsample + CSP of QARepVGG
  bottlenecks), SPP context module; outputs strides 4, 8, 16, 32;
* ``YoloNASPANNeckWithC2``: two up stages (each also taking the next higher-resolution map, "C2") and two down
  stages; outputs strides 8, 16, 32;
* ``NDFLHeads``: per level a 1x1 stem, a 3x3 classification and a 3x3 regression branch, class logits and
  ``4 x (reg_max + 1)`` distance-distribution logits (reg_max 16).

Widths and depths are the published ones (SuperGradients' ``yolo_nas_{s,m,l}_arch_params.yaml``), as are the
BatchNorm settings (eps 1e-3, momentum 0.03). ``arch_params``: ``num_classes`` (80), ``in_channels`` (3),
``bn_eps``, ``bn_momentum``, ``inplace_act``.

Outputs (through :func:`~super_recipes.detection.dfl_outputs.dfl_head_outputs`, as the guide describes):
``model.train()``: the 6-tuple ``(cls_scores, reg_distri, anchors, anchor_points, num_anchors_list,
stride_tensor)`` :class:`~super_recipes.detection.ppyoloe.loss.PPYoloELoss` consumes; ``model.eval()``:
``((pred_bboxes [B, A, 4] xyxy pixels, pred_scores [B, A, C]), raw 6-tuple)``; traced or exported: ``(pred_bboxes,
pred_scores)``. ``model.get_post_prediction_callback(conf=, iou=)`` returns a
:class:`~super_recipes.detection.ppyoloe.postprocess.PPYoloEPostPredictionCallback`.
``model.prep_model_for_conversion()`` fuses every QARepVGG block into one convolution (same outputs in eval mode).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from super_recipes.detection.customizable import CustomizableDetector
from super_recipes.detection.dfl_outputs import dfl_head_outputs
from super_recipes.detection.yolo_nas.blocks import (
    SPP,
    ConvBNReLU,
    QARepVGGBlock,
    YoloNASDownStage,
    YoloNASStage,
    YoloNASStem,
    YoloNASUpStage,
    width_multiplier,
)
from super_recipes.detection.yolo_nas.sg_names import yolo_nas_key
from super_recipes.errors import RecipeError
from super_recipes.registry import register_detection_module, register_model

__all__ = ["YoloNAS", "YoloNASBackbone", "YoloNASPANNeckWithC2", "YoloNASDFLHead", "NDFLHeads", "YOLO_NAS_SIZES",
           "yolo_nas_parts", "count_parameters", "qarepvgg_placeholder_parameters"]


def _check_keys(what: str, given: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise RecipeError(f"{what}: unknown key(s) {unknown}; expected some of {list(allowed)}.")


@register_detection_module("YoloNASBackbone")
class YoloNASBackbone(nn.Module):
    """Stem + stages + SPP (``YoloNASBackbone`` in ``arch_params``). ``stages``: one mapping per stage with
    ``out_channels``, ``num_blocks``, ``hidden_channels``, ``concat_intermediates``. Returns the outputs of stages
    1-3 and of the SPP (strides 4, 8, 16, 32); ``out_channels`` lists their widths."""

    def __init__(self, in_channels: int, stem_channels: int, stages: Sequence[Mapping[str, Any]],
                 context_channels: int, context_kernel_sizes: Sequence[int] = (5, 9, 13)):
        super().__init__()
        if len(stages) != 4:
            raise RecipeError(f"YoloNASBackbone: expected 4 stages, got {len(stages)}.")
        self.stem = YoloNASStem(in_channels, stem_channels)
        channels = stem_channels
        built = []
        for stage in stages:
            _check_keys("YoloNASBackbone stage", stage,
                        ["out_channels", "num_blocks", "hidden_channels", "concat_intermediates"])
            built.append(YoloNASStage(channels, **stage))
            channels = stage["out_channels"]
        self.stage1, self.stage2, self.stage3, self.stage4 = built
        self.context_module = SPP(channels, context_channels, tuple(context_kernel_sizes))
        self.out_channels = [stages[0]["out_channels"], stages[1]["out_channels"], stages[2]["out_channels"],
                             context_channels]

    def forward(self, x: Tensor) -> list[Tensor]:
        c2 = self.stage1(self.stem(x))
        c3 = self.stage2(c2)
        c4 = self.stage3(c3)
        return [c2, c3, c4, self.context_module(self.stage4(c4))]


@register_detection_module("YoloNASPANNeckWithC2")
class YoloNASPANNeckWithC2(nn.Module):
    """PAN neck over the backbone's four maps ``[c2, c3, c4, c5]`` (``YoloNASPANNeckWithC2`` in ``arch_params``):
    ``neck1`` up (c5 with skips c4, c3), ``neck2`` up (with skips c3, c2) -> p3, ``neck3`` down -> p4, ``neck4``
    down -> p5. Each ``neckN`` is a mapping of ``out_channels``, ``num_blocks``, ``hidden_channels`` (and optionally
    ``concat_intermediates``). Returns ``[p3, p4, p5]`` (strides 8, 16, 32)."""

    def __init__(self, in_channels: Sequence[int], neck1: Mapping[str, Any], neck2: Mapping[str, Any],
                 neck3: Mapping[str, Any], neck4: Mapping[str, Any]):
        super().__init__()
        if len(in_channels) != 4:
            raise RecipeError(f"YoloNASPANNeckWithC2: expects 4 backbone maps, got in_channels={list(in_channels)}.")
        keys = ["out_channels", "num_blocks", "hidden_channels", "concat_intermediates"]
        for name, spec in (("neck1", neck1), ("neck2", neck2), ("neck3", neck3), ("neck4", neck4)):
            _check_keys(f"YoloNASPANNeckWithC2.{name}", spec, keys)
        c2, c3, c4, c5 = in_channels
        self.neck1 = YoloNASUpStage([c5, c4, c3], **neck1)
        self.neck2 = YoloNASUpStage([self.neck1.out_channels[1], c3, c2], **neck2)
        self.neck3 = YoloNASDownStage([self.neck2.out_channels[1], self.neck2.out_channels[0]], **neck3)
        self.neck4 = YoloNASDownStage([self.neck3.out_channels, self.neck1.out_channels[0]], **neck4)
        self.out_channels = [self.neck2.out_channels[1], self.neck3.out_channels, self.neck4.out_channels]

    def forward(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        c2, c3, c4, c5 = inputs
        n1_inter, x = self.neck1([c5, c4, c3])
        n2_inter, p3 = self.neck2([x, c3, c2])
        p4 = self.neck3([p3, n2_inter])
        return [p3, p4, self.neck4([p4, n1_inter])]


class YoloNASDFLHead(nn.Module):
    """One level's head: 1x1 stem, a 3x3 ConvBNReLU per branch (an extra grouped one first when
    ``first_conv_group_size`` > 0), ``cls_pred`` (class logits, bias at the 0.01 prior) and ``reg_pred``
    (``4 * (reg_max + 1)`` distribution logits). Returns ``(reg_distri, cls_logits)``."""

    def __init__(self, in_channels: int, num_classes: int, inter_channels: int, width_mult: float, stride: int,
                 reg_max: int = 16, first_conv_group_size: int = 0, prior_prob: float = 0.01):
        super().__init__()
        inter = width_multiplier(inter_channels, width_mult, 8)
        self.stride = stride
        groups = 0 if first_conv_group_size == 0 else (1 if first_conv_group_size == -1
                                                        else inter // first_conv_group_size)
        self.stem = ConvBNReLU(in_channels, inter, 1)

        def branch() -> nn.Sequential:
            first = [ConvBNReLU(inter, inter, 3, groups=groups)] if groups else []
            return nn.Sequential(*first, ConvBNReLU(inter, inter, 3))

        self.cls_convs, self.reg_convs = branch(), branch()
        self.cls_pred = nn.Conv2d(inter, num_classes, 1)
        self.reg_pred = nn.Conv2d(inter, 4 * (reg_max + 1), 1)
        # Nearly every location is background: start every class probability at the prior, not 0.5 (focal trick).
        nn.init.constant_(self.cls_pred.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.stem(x)
        return self.reg_pred(self.reg_convs(x)), self.cls_pred(self.cls_convs(x))


@register_detection_module("NDFLHeads")
class NDFLHeads(nn.Module):
    """The YOLO-NAS heads over ``in_channels`` (one per level; ``NDFLHeads`` in ``arch_params``): ``heads_list``
    holds one mapping per level (``inter_channels``, ``width_mult``, ``stride``, optional
    ``first_conv_group_size``); anchors are ``grid_cell_scale`` strides wide, centred ``grid_cell_offset`` into
    each cell. Returns the mode-dependent outputs of :func:`dfl_head_outputs`."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, heads_list: Sequence[Mapping[str, Any]],
                 reg_max: int = 16, grid_cell_scale: float = 5.0, grid_cell_offset: float = 0.5):
        super().__init__()
        if len(heads_list) != len(in_channels):
            raise RecipeError(f"NDFLHeads: {len(heads_list)} heads for {len(in_channels)} feature maps "
                              f"(in_channels={list(in_channels)}).")
        self.num_classes, self.reg_max = num_classes, reg_max
        self.grid_cell_scale, self.grid_cell_offset = grid_cell_scale, grid_cell_offset
        for spec in heads_list:
            _check_keys("NDFLHeads head", spec, ["inter_channels", "width_mult", "stride", "first_conv_group_size"])
        self.heads = nn.ModuleList(YoloNASDFLHead(c, num_classes, reg_max=reg_max, **spec)
                                   for c, spec in zip(in_channels, heads_list, strict=True))
        self.strides = [head.stride for head in self.heads]

    def forward(self, features: Sequence[Tensor]) -> Any:
        reg, cls = zip(*(head(f) for head, f in zip(self.heads, features, strict=True)), strict=True)
        return dfl_head_outputs(list(cls), list(reg), self.strides, self.reg_max, self.training,
                                grid_cell_size=self.grid_cell_scale, grid_cell_offset=self.grid_cell_offset)

    def get_post_prediction_callback(self, conf: float = 0.01, iou: float = 0.7, max_predictions: int = 300,
                                     nms_top_k: int = 1000, **kwargs: Any) -> nn.Module:
        """NMS for this head's eval/tracing output (the metrics' ``post_prediction_callback``)."""
        from super_recipes.detection.ppyoloe.postprocess import PPYoloEPostPredictionCallback

        return PPYoloEPostPredictionCallback(score_threshold=conf, nms_threshold=iou, nms_top_k=nms_top_k,
                                             max_predictions=max_predictions, **kwargs)


class YoloNAS(CustomizableDetector):
    """A YOLO-NAS detector (``CustomizableDetector`` of ``YoloNASBackbone``, ``YoloNASPANNeckWithC2`` and
    ``NDFLHeads``); built by the ``yolo_nas_*`` factories (recipe key ``architecture``)."""

    def super_gradients_key(self, sg_name: str) -> str | None:
        """Our state-dict key for a SuperGradients YOLO-NAS key (the checkpoint loader's hook; rules and SG sources
        in :mod:`super_recipes.detection.yolo_nas.sg_names`); None where we have no place for SG's tensor."""
        return yolo_nas_key(sg_name)


def _stage(out_channels: int, num_blocks: int, hidden_channels: int, concat: bool) -> dict[str, Any]:
    return {"out_channels": out_channels, "num_blocks": num_blocks, "hidden_channels": hidden_channels,
            "concat_intermediates": concat}


def _neck(out_channels: int, num_blocks: int, hidden_channels: int) -> dict[str, Any]:
    return {"out_channels": out_channels, "num_blocks": num_blocks, "hidden_channels": hidden_channels}


# Per size, as published (SuperGradients yolo_nas_{s,m,l}_arch_params.yaml): backbone stages (out, blocks, hidden,
# concat intermediates), neck stages 1-4 (out, blocks, hidden), head width multiplier (of 128/256/512).
YOLO_NAS_SIZES: dict[str, dict[str, Any]] = {
    "yolo_nas_s": {
        "stages": [_stage(96, 2, 32, False), _stage(192, 3, 64, False), _stage(384, 5, 96, False),
                   _stage(768, 2, 192, False)],
        "neck": [_neck(192, 2, 64), _neck(96, 2, 48), _neck(192, 2, 64), _neck(384, 2, 64)],
        "head_width": 0.5,
    },
    "yolo_nas_m": {
        "stages": [_stage(96, 2, 64, True), _stage(192, 3, 128, True), _stage(384, 5, 256, True),
                   _stage(768, 2, 384, False)],
        "neck": [_neck(192, 2, 192), _neck(96, 3, 64), _neck(192, 2, 192), _neck(384, 3, 256)],
        "head_width": 0.75,
    },
    "yolo_nas_l": {
        "stages": [_stage(96, 2, 96, True), _stage(192, 3, 128, True), _stage(384, 5, 256, True),
                   _stage(768, 2, 512, True)],
        "neck": [_neck(192, 4, 128), _neck(96, 4, 128), _neck(192, 4, 128), _neck(384, 4, 256)],
        "head_width": 1.0,
    },
}


def yolo_nas_parts(name: str, reg_max: int = 16) -> dict[str, Any]:
    """The ``backbone``, ``neck`` and ``heads`` specs of a published size, in ``CustomizableDetector`` form (a
    starting point for a custom variant: edit the returned mappings and pass them to ``CustomizableDetector``)."""
    size = YOLO_NAS_SIZES[name]
    neck1, neck2, neck3, neck4 = size["neck"]
    heads = [{"inter_channels": c, "width_mult": size["head_width"], "first_conv_group_size": 0, "stride": s}
             for c, s in ((128, 8), (256, 16), (512, 32))]
    return {
        "backbone": {"YoloNASBackbone": {"stem_channels": 48, "stages": [dict(s) for s in size["stages"]],
                                         "context_channels": 768, "context_kernel_sizes": [5, 9, 13]}},
        "neck": {"YoloNASPANNeckWithC2": {"neck1": dict(neck1), "neck2": dict(neck2), "neck3": dict(neck3),
                                          "neck4": dict(neck4)}},
        "heads": {"NDFLHeads": {"heads_list": heads, "reg_max": reg_max}},
    }


def _build(name: str, num_classes: int, in_channels: int, reg_max: int, bn_eps: float | None,
           bn_momentum: float | None, inplace_act: bool) -> YoloNAS:
    return YoloNAS(**yolo_nas_parts(name, reg_max), num_classes=num_classes, in_channels=in_channels, bn_eps=bn_eps,
                   bn_momentum=bn_momentum, inplace_act=inplace_act)


# Parameter counts. SuperGradients' published counts are of its training-form modules, which also register an unused
# ``rbr_reparam`` 3x3 convolution (with bias) per QARepVGG block before fusing; we create that convolution only when
# fusing, so our training form is smaller by exactly those parameters (``qarepvgg_placeholder_parameters``).
# Sources: LW-DETR (Chen et al. 2024, arXiv:2406.03459), Table 3, "#Params" of YOLO-NAS-s/m/l measured with the
# official implementation: 19.0M / 51.1M / 66.9M; SuperGradients' notebook yolo_nas_custom_dataset_fine_tuning_with_qat
# (its trainer's log, 5 classes): YoloNAS_S 19.02M, and 12.15M after its QAT conversion (fused).


@register_model("yolo_nas_s")
def yolo_nas_s(num_classes: int = 80, in_channels: int = 3, reg_max: int = 16, bn_eps: float | None = 1e-3,
               bn_momentum: float | None = 0.03, inplace_act: bool = True) -> YoloNAS:
    """YOLO-NAS S (published COCO val mAP@0.50:0.95 47.5).

    Parameters at 80 classes, measured: 12.88M training form, 12.18M fused (``prep_model_for_conversion``),
    19.05M counted as SuperGradients does (training form + its ``rbr_reparam`` placeholders). Published: 19.0M
    (LW-DETR, arXiv:2406.03459, Table 3; SuperGradients' form) and 19.02M / 12.15M fused at 5 classes
    (SuperGradients' notebook yolo_nas_custom_dataset_fine_tuning_with_qat; ours: 19.02M / 12.14M).
    """
    return _build("yolo_nas_s", num_classes, in_channels, reg_max, bn_eps, bn_momentum, inplace_act)


@register_model("yolo_nas_m")
def yolo_nas_m(num_classes: int = 80, in_channels: int = 3, reg_max: int = 16, bn_eps: float | None = 1e-3,
               bn_momentum: float | None = 0.03, inplace_act: bool = True) -> YoloNAS:
    """YOLO-NAS M (published COCO val mAP@0.50:0.95 51.55).

    Parameters at 80 classes, measured: 33.86M training form, 31.91M fused, 51.18M counted as SuperGradients does.
    Published: 51.1M (LW-DETR, arXiv:2406.03459, Table 3; SuperGradients' training form with placeholders).
    """
    return _build("yolo_nas_m", num_classes, in_channels, reg_max, bn_eps, bn_momentum, inplace_act)


@register_model("yolo_nas_l")
def yolo_nas_l(num_classes: int = 80, in_channels: int = 3, reg_max: int = 16, bn_eps: float | None = 1e-3,
               bn_momentum: float | None = 0.03, inplace_act: bool = True) -> YoloNAS:
    """YOLO-NAS L (published COCO val mAP@0.50:0.95 52.22).

    Parameters at 80 classes, measured: 44.53M training form, 42.00M fused, 66.98M counted as SuperGradients does.
    Published: 66.9M (LW-DETR, arXiv:2406.03459, Table 3; SuperGradients' training form with placeholders).
    """
    return _build("yolo_nas_l", num_classes, in_channels, reg_max, bn_eps, bn_momentum, inplace_act)


def qarepvgg_placeholder_parameters(model: nn.Module) -> int:
    """Parameters SuperGradients' QARepVGG blocks register but do not use before fusing (a 3x3 conv with bias per
    block): what separates its published training-form counts from ours."""
    return sum(b.out_channels * (b.in_channels * 9 + 1) for b in model.modules()
               if isinstance(b, QARepVGGBlock) and not b.fused)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())

