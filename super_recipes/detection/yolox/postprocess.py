"""YOLOX post-processing: decoded predictions -> per-image boxes after NMS.

Serves the detection metrics' and callbacks' ``post_prediction_callback`` (``valid_metrics_list``,
``phase_callbacks``), e.g. ``{_target_: super_recipes.detection.yolox.postprocess.YoloXPostPredictionCallback,
conf: 0.001, iou: 0.6}``; also built by ``model.get_post_prediction_callback(conf=, iou=)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from super_recipes.detection.postprocessing import (
    DetectionPostPredictionCallback,
    NMS_Type,
    SelectionSettings,
    check_post_processing_args,
    describe_outputs,
)
from super_recipes.registry import register_processing

__all__ = ["YoloXPostPredictionCallback"]


@register_processing("YoloXPostPredictionCallback")
class YoloXPostPredictionCallback(DetectionPostPredictionCallback):
    """Confidence filter, top-k and NMS over a YOLOX eval output.

    :param conf: keep boxes whose confidence (objectness x class score, as YOLOX scores) is ``>= conf``.
    :param iou: NMS IoU threshold.
    :param max_predictions: most boxes kept per image, highest confidence first.
    :param nms_top_k: most candidates per image handed to NMS (its cost grows with their square).
    :param classagnostic_nms: suppress overlapping boxes across classes too (default: only within a class).
    :param multi_label_per_box: report a box once per class whose confidence passes ``conf`` (default: its best
        class only, as YOLOX evaluates).
    :param nms_type: ``iterative`` or ``matrix`` (:mod:`super_recipes.detection.postprocessing`).

    Called on ``(decoded, raw)`` or ``decoded`` (``[B, N, C + 5]``: ``cx, cy, w, h`` pixels, objectness, class
    scores in [0, 1]); returns one float ``[K, 6]`` tensor per image: ``x1, y1, x2, y2, confidence, class``.
    """

    def __init__(self, conf: float = 0.001, iou: float = 0.6, max_predictions: int = 300, nms_top_k: int = 1000,
                 classagnostic_nms: bool = False, multi_label_per_box: bool = False,
                 nms_type: NMS_Type | str = NMS_Type.ITERATIVE):
        super().__init__()
        self.nms_type = check_post_processing_args(conf, iou, nms_type, nms_top_k, max_predictions)
        self.conf = conf
        self.iou = iou
        self.max_predictions = max_predictions
        self.nms_top_k = nms_top_k
        self.classagnostic_nms = classagnostic_nms
        self.multi_label_per_box = multi_label_per_box

    def extra_repr(self) -> str:
        return (f"conf={self.conf}, iou={self.iou}, max_predictions={self.max_predictions}, "
                f"nms_top_k={self.nms_top_k}, classagnostic_nms={self.classagnostic_nms}, "
                f"multi_label_per_box={self.multi_label_per_box}, nms_type={self.nms_type.value!r}")

    @torch.no_grad()
    def forward(self, outputs: Any, device: str | torch.device | None = None) -> list[Tensor]:
        return self.select(outputs, device)

    def boxes_and_scores(self, outputs: Any) -> tuple[Tensor, Tensor]:
        decoded = outputs[0] if isinstance(outputs, tuple | list) else outputs
        if not isinstance(decoded, Tensor) or decoded.dim() != 3 or decoded.shape[-1] < 6:
            raise ValueError(
                "YoloXPostPredictionCallback expects the eval-mode YOLOX output, (decoded, raw) or decoded "
                f"[B, N, C + 5]; got {describe_outputs(outputs)}. Is the model in train mode?"
            )
        decoded = decoded.float()
        return _cxcywh_to_xyxy(decoded[..., :4]), decoded[..., 4:5] * decoded[..., 5:]  # YOLOX: objectness x class

    def selection(self) -> SelectionSettings:
        return SelectionSettings(self.conf, self.iou, self.nms_type, self.multi_label_per_box, self.classagnostic_nms,
                                 self.nms_top_k, self.max_predictions)


def _cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    center, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat((center - size / 2, center + size / 2), dim=-1)

