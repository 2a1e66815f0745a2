"""SSD post-processing: the SSD-Lite eval output -> per-image boxes after NMS.

Serves the detection metrics' and callbacks' ``post_prediction_callback`` (``valid_metrics_list``,
``phase_callbacks``) of the ``coco2017_ssd_lite_mobilenet_v2`` recipe, e.g. ``{SSDPostPredictCallback: {conf:
0.001, iou: 0.6}}`` (processing registry) or a ``_target_`` node; also built by
``model.get_post_prediction_callback(conf=, iou=)``.

The model's decoded output is ``[B, A, 5 + C]``: ``cx, cy, w, h`` in input pixels, the best class probability,
then the ``C`` class probabilities (softmax over background + classes, background dropped), the layout of
SuperGradients' SSD. Candidates are scored by their class probability. (SuperGradients multiplies it by the best
class probability once more, which squares the top score; ranking within a class is the same, so we keep the
plain probability, which ``conf`` then thresholds directly.) Classes come out 0-based, background excluded.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from super_recipes.detection.ssd.anchors import cxcywh_to_xyxy
from super_recipes.errors import RecipeError
from super_recipes.registry import register_processing

__all__ = ["SSDPostPredictCallback"]


@register_processing("SSDPostPredictCallback")
class SSDPostPredictCallback(DetectionPostPredictionCallback):
    """Score threshold, NMS and max-predictions over an SSD eval output (recipe: ``post_prediction_callback``).

    :param conf: keep candidates whose class probability is ``>= conf``.
    :param iou: NMS IoU threshold (unused by matrix NMS).
    :param classes: keep only these class indices (0-based); ``None`` keeps all.
    :param max_predictions: most boxes kept per image, best first.
    :param nms_type: ``iterative`` or ``matrix`` (:class:`~super_recipes.detection.postprocessing.NMS_Type`).
    :param multi_label_per_box: every class above ``conf`` makes its own candidate (else the best class only).
    :param nms_top_k: most candidates per image handed to NMS.
    :param class_agnostic_nms: suppress overlapping boxes across classes too.

    Called on ``(decoded, raw)`` or ``decoded``; returns one float ``[K, 6]`` tensor per image: ``x1, y1, x2, y2,
    confidence, class`` in input pixels.
    """

    def __init__(self, conf: float = 0.001, iou: float = 0.6, classes: Sequence[int] | None = None,
                 max_predictions: int = 300, nms_type: NMS_Type | str = NMS_Type.ITERATIVE,
                 multi_label_per_box: bool = True, nms_top_k: int = 1000, class_agnostic_nms: bool = False):
        super().__init__()
        self.nms_type = check_post_processing_args(conf, iou, nms_type, nms_top_k, max_predictions)
        self.conf = float(conf)
        self.iou = float(iou)
        self.classes = None if classes is None else [int(c) for c in classes]
        self.max_predictions = int(max_predictions)
        self.multi_label_per_box = bool(multi_label_per_box)
        self.nms_top_k = int(nms_top_k)
        self.class_agnostic_nms = bool(class_agnostic_nms)

    def extra_repr(self) -> str:
        return (f"conf={self.conf}, iou={self.iou}, classes={self.classes}, max_predictions={self.max_predictions}, "
                f"nms_type={self.nms_type.value}, multi_label_per_box={self.multi_label_per_box}, "
                f"nms_top_k={self.nms_top_k}, class_agnostic_nms={self.class_agnostic_nms}")

    def forward(self, outputs: Any, device: str | torch.device | None = None) -> list[Tensor]:
        detections = self.select(outputs)
        if self.classes is not None:
            wanted = torch.tensor(self.classes, dtype=torch.float32, device=detections[0].device
                                  if detections else None)
            detections = [rows[torch.isin(rows[:, 5], wanted)] for rows in detections]
        if device is not None:
            detections = [rows.to(device) for rows in detections]
        return detections

    def boxes_and_scores(self, outputs: Any) -> tuple[Tensor, Tensor]:
        # The training output is a 3-tuple of raw maps; only the eval pair (decoded, raw) or decoded will do.
        decoded = (outputs[0] if len(outputs) == 2 else None) if isinstance(outputs, tuple | list) else outputs
        if not isinstance(decoded, Tensor) or decoded.dim() != 3 or decoded.shape[-1] < 6:
            raise RecipeError(
                "SSDPostPredictCallback expects the eval-mode SSD output, (decoded, raw) or decoded [B, A, 5 + C]; "
                f"got {describe_outputs(outputs)}. Is the model in train mode?"
            )
        return cxcywh_to_xyxy(decoded[..., :4].float()), decoded[..., 5:].float()

    def selection(self) -> SelectionSettings:
        return SelectionSettings(self.conf, self.iou, self.nms_type, self.multi_label_per_box, self.class_agnostic_nms,
                                 self.nms_top_k, self.max_predictions)
