"""PP-YOLOE and YOLO-NAS post-processing: recipe key ``PPYoloEPostPredictionCallback``.

```yaml
valid_metrics_list:
  - DetectionMetrics_050_095:
      post_prediction_callback:
        PPYoloEPostPredictionCallback: {score_threshold: 0.01, nms_threshold: 0.7, nms_top_k: 1000,
                                        max_predictions: 300}
```

Takes the eval output ``((pred_bboxes, pred_scores), raw)`` or the tracing output ``(pred_bboxes, pred_scores)``
of a distribution-focal head (:mod:`super_recipes.detection.dfl_outputs`) and applies
:func:`~super_recipes.detection.postprocessing.select_detections`.
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

__all__ = ["PPYoloEPostPredictionCallback", "decoded_boxes_and_scores"]


def decoded_boxes_and_scores(outputs: Any, who: str) -> tuple[Tensor, Tensor]:
    """``(pred_bboxes [B, A, 4], pred_scores [B, A, C])`` from an eval or tracing output of a DFL head."""
    candidate = outputs
    if isinstance(candidate, tuple | list) and len(candidate) == 2 and isinstance(candidate[0], tuple | list):
        candidate = candidate[0]  # eval: (decoded, raw)
    if (isinstance(candidate, tuple | list) and len(candidate) == 2 and all(isinstance(t, Tensor) for t in candidate)
            and candidate[0].dim() == 3 and candidate[0].shape[-1] == 4):
        return candidate[0], candidate[1]
    raise ValueError(f"{who} expects the eval output ((pred_bboxes, pred_scores), raw) or the tracing output "
                     f"(pred_bboxes, pred_scores) of a PP-YOLOE / YOLO-NAS model; got {describe_outputs(outputs)}. "
                     "Is the model in train mode?")


@register_processing("PPYoloEPostPredictionCallback")
class PPYoloEPostPredictionCallback(DetectionPostPredictionCallback):
    """Threshold, top-k, NMS and a cap on detections per image (see :mod:`super_recipes.detection.postprocessing`).

    :param score_threshold: keep (box, class) candidates whose class score is ``>= score_threshold``.
    :param nms_threshold: IoU above which the lower-scored box of a pair is suppressed.
    :param nms_top_k: most candidates per image handed to NMS.
    :param max_predictions: most detections kept per image.
    :param multi_label_per_box: a box may be reported once per class passing the threshold.
    :param class_agnostic_nms: suppress overlapping boxes across classes too.
    :param nms_type: ``iterative`` or ``matrix``.
    """

    def __init__(self, score_threshold: float = 0.01, nms_threshold: float = 0.7, nms_top_k: int = 1000,
                 max_predictions: int = 300, multi_label_per_box: bool = True, class_agnostic_nms: bool = False,
                 nms_type: NMS_Type | str = NMS_Type.ITERATIVE):
        super().__init__()
        self.nms_type = check_post_processing_args(score_threshold, nms_threshold, nms_type, nms_top_k,
                                                   max_predictions)
        self.score_threshold, self.nms_threshold = float(score_threshold), float(nms_threshold)
        self.nms_top_k, self.max_predictions = int(nms_top_k), int(max_predictions)
        self.multi_label_per_box, self.class_agnostic_nms = bool(multi_label_per_box), bool(class_agnostic_nms)

    def extra_repr(self) -> str:
        return (f"score_threshold={self.score_threshold}, nms_threshold={self.nms_threshold}, "
                f"nms_top_k={self.nms_top_k}, max_predictions={self.max_predictions}, "
                f"multi_label_per_box={self.multi_label_per_box}, class_agnostic_nms={self.class_agnostic_nms}, "
                f"nms_type={self.nms_type.value!r}")

    @torch.no_grad()
    def forward(self, outputs: Any, device: str | torch.device | None = None) -> list[Tensor]:
        return self.select(outputs, device)

    def boxes_and_scores(self, outputs: Any) -> tuple[Tensor, Tensor]:
        return decoded_boxes_and_scores(outputs, type(self).__name__)

    def selection(self) -> SelectionSettings:
        return SelectionSettings(self.score_threshold, self.nms_threshold, self.nms_type, self.multi_label_per_box,
                                 self.class_agnostic_nms, self.nms_top_k, self.max_predictions)

