"""YOLOX post-processing: decoded predictions -> per-image boxes after NMS.

Serves the detection metrics' and callbacks' ``post_prediction_callback`` (``valid_metrics_list``,
``phase_callbacks``), e.g. ``{_target_: super_recipes.detection.yolox.postprocess.YoloXPostPredictionCallback,
conf: 0.001, iou: 0.6}``; also built by ``model.get_post_prediction_callback(conf=, iou=)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import Tensor

from super_recipes.registry import register_processing

__all__ = ["YoloXPostPredictionCallback"]


@register_processing("YoloXPostPredictionCallback")
class YoloXPostPredictionCallback:
    """Confidence filter, top-k and NMS over a YOLOX eval output.

    :param conf: keep boxes whose confidence (objectness x best class score, as YOLOX scores) is ``>= conf``.
    :param iou: NMS IoU threshold.
    :param max_predictions: most boxes kept per image, highest confidence first.
    :param nms_top_k: most candidates per image handed to NMS (its cost grows with their square).
    :param classagnostic_nms: suppress overlapping boxes across classes too (default: only within a class).

    Called on ``(decoded, raw)`` or ``decoded`` (``[B, N, C + 5]``: ``cx, cy, w, h`` pixels, objectness, class
    scores in [0, 1]); returns one float ``[K, 6]`` tensor per image: ``x1, y1, x2, y2, confidence, class``.
    """

    def __init__(self, conf: float = 0.001, iou: float = 0.6, max_predictions: int = 300, nms_top_k: int = 1000,
                 classagnostic_nms: bool = False):
        self.conf = conf
        self.iou = iou
        self.max_predictions = max_predictions
        self.nms_top_k = nms_top_k
        self.classagnostic_nms = classagnostic_nms

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(conf={self.conf}, iou={self.iou}, max_predictions={self.max_predictions}, "
                f"nms_top_k={self.nms_top_k}, classagnostic_nms={self.classagnostic_nms})")

    def __call__(self, outputs: Any) -> list[Tensor]:
        decoded = outputs[0] if isinstance(outputs, tuple | list) else outputs
        if not isinstance(decoded, Tensor) or decoded.dim() != 3 or decoded.shape[-1] < 6:
            raise ValueError(
                "YoloXPostPredictionCallback expects the eval-mode YOLOX output, (decoded, raw) or decoded "
                f"[B, N, C + 5]; got {_describe(outputs)}. Is the model in train mode?"
            )
        # NMS and pixel coordinates in float32, whatever precision the model ran in.
        decoded = decoded.float()
        num_images, num_anchors = decoded.shape[:2]
        if num_anchors == 0:
            return [decoded.new_zeros((0, 6)) for _ in range(num_images)]
        class_scores, classes = decoded[..., 5:].max(dim=-1)
        scores = decoded[..., 4] * class_scores
        # Top-k first (one batched op), then the threshold: the same rows as thresholding first.
        top_scores, top_index = scores.topk(min(self.nms_top_k, num_anchors), dim=1)
        top_boxes = _cxcywh_to_xyxy(decoded[..., :4].gather(1, top_index[..., None].expand(-1, -1, 4)))
        top_classes = classes.gather(1, top_index)
        passing = top_scores >= self.conf
        results = []
        for i in range(num_images):
            keep = passing[i]
            boxes, image_scores, labels = top_boxes[i][keep], top_scores[i][keep], top_classes[i][keep]
            if self.classagnostic_nms:
                kept = torchvision.ops.nms(boxes, image_scores, self.iou)
            else:
                kept = torchvision.ops.batched_nms(boxes, image_scores, labels, self.iou)
            kept = kept[: self.max_predictions]
            results.append(torch.cat((boxes[kept], image_scores[kept, None], labels[kept, None].float()), dim=1))
        return results


def _cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    center, size = boxes[..., :2], boxes[..., 2:]
    return torch.cat((center - size / 2, center + size / 2), dim=-1)


def _describe(outputs: Any) -> str:
    if isinstance(outputs, Tensor):
        return f"a tensor of shape {tuple(outputs.shape)}"
    if isinstance(outputs, tuple | list):
        return f"a {type(outputs).__name__} of {[_describe(o) for o in outputs]}"
    return type(outputs).__name__
