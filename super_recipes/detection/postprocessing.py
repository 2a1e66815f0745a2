"""Post-processing shared by the detector families: decoded boxes and class scores -> per-image detections.

Serves the ``post_prediction_callback`` of detection metrics and callbacks through each family's callback
(``PPYoloEPostPredictionCallback``, ``SSDPostPredictCallback``...), all built on :func:`select_detections`:

* a score threshold, then the ``nms_top_k`` best candidates per image;
* ``multi_label_per_box``: every class whose score passes the threshold makes a candidate of its own (one box can be
  a "dog" at 0.6 and a "cat" at 0.3), else each box keeps only its best class;
* ``nms_type``: ``iterative`` (greedy NMS, torchvision's kernel) or ``matrix`` (Matrix NMS, Wang et al., SOLOv2
  2020: every score decays by its overlap with better-scored boxes in one matrix operation, nothing is removed
  outright; torchvision has no such op, hence ours);
* ``class_agnostic_nms``: suppress across classes too (default: only within a class);
* at most ``max_predictions`` per image, best first.

The result, per image, is a float ``[K, 6]`` tensor ``x1, y1, x2, y2, confidence, class`` in the input's pixels.
:class:`DetectionPostPredictionCallback` is the base class users subclass for their own detectors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from super_recipes.errors import RecipeError

__all__ = ["DetectionPostPredictionCallback", "NMS_Type", "SelectionSettings", "describe_outputs", "grouped_nms",
           "matrix_nms", "select_detections"]

MATRIX_NMS_KERNELS = ("gaussian", "linear")


class NMS_Type(str, Enum):  # noqa: N801 - SuperGradients' name, which recipes and user code use
    """Which suppression :func:`select_detections` applies: recipe values ``iterative`` or ``matrix``."""

    ITERATIVE = "iterative"
    MATRIX = "matrix"


@dataclass(frozen=True)
class SelectionSettings:
    """The keyword arguments of :func:`select_detections` a callback applies (what an exported graph replays)."""

    score_threshold: float
    nms_threshold: float
    nms_type: NMS_Type = NMS_Type.ITERATIVE
    multi_label_per_box: bool = True
    class_agnostic_nms: bool = False
    nms_top_k: int = 1000
    max_predictions: int = 300


class DetectionPostPredictionCallback(nn.Module, ABC):
    """Base class of post-prediction callbacks: ``forward(outputs, device=None)`` -> one ``[K, 6]`` tensor per
    image (``x1, y1, x2, y2, confidence, class`` in input pixels). Subclass it for a detector of your own and pass
    an instance as the metrics' ``post_prediction_callback``.

    The built-in families split the work in two, which export (``super_recipes.export``) puts inside an ONNX
    graph: :meth:`boxes_and_scores` (the model's output -> xyxy boxes and class scores) and :meth:`selection`
    (the :func:`select_detections` settings)."""

    @abstractmethod
    def forward(self, outputs: Any, device: str | torch.device | None = None) -> list[Tensor]:
        """Model output (eval or tracing mode) -> per-image detections, moved to ``device`` when given."""

    def boxes_and_scores(self, outputs: Any) -> tuple[Tensor, Tensor]:
        """Model output -> boxes ``[B, N, 4]`` (x1, y1, x2, y2 input pixels) and class scores ``[B, N, C]``."""
        raise NotImplementedError(f"{type(self).__name__} does not expose boxes_and_scores (needed for export)")

    def selection(self) -> SelectionSettings:
        """The thresholds, NMS and caps this callback applies to :meth:`boxes_and_scores`."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its selection settings (needed for export)")

    def select(self, outputs: Any, device: str | torch.device | None = None) -> list[Tensor]:
        """:func:`select_detections` over :meth:`boxes_and_scores` with :meth:`selection` (the families' forward)."""
        boxes, scores = self.boxes_and_scores(outputs)
        detections = select_detections(boxes, scores, **asdict(self.selection()))
        return [d.to(device) for d in detections] if device is not None else detections


def describe_outputs(outputs: Any) -> str:
    """What a model returned, in words (tensor shapes, nesting), for errors about the wrong output mode."""
    if isinstance(outputs, Tensor):
        return f"a tensor of shape {tuple(outputs.shape)}"
    if isinstance(outputs, tuple | list):
        return f"a {type(outputs).__name__} of {[describe_outputs(o) for o in outputs]}"
    return type(outputs).__name__


def _checked_nms_type(nms_type: NMS_Type | str) -> NMS_Type:
    try:
        return NMS_Type(str(getattr(nms_type, "value", nms_type)).lower())
    except ValueError:
        raise RecipeError(f"nms_type must be one of {[t.value for t in NMS_Type]}, got {nms_type!r}.") from None


def check_post_processing_args(score_threshold: float, nms_threshold: float, nms_type: NMS_Type | str,
                               nms_top_k: int, max_predictions: int, matrix_nms_kernel: str = "gaussian") -> NMS_Type:
    """Refuse impossible post-processing settings when the callback is built (not at the first validation)."""
    problems = []
    if not 0.0 <= float(score_threshold) <= 1.0:
        problems.append(f"score threshold must lie in [0, 1], got {score_threshold}")
    if not 0.0 <= float(nms_threshold) <= 1.0:
        problems.append(f"NMS IoU threshold must lie in [0, 1], got {nms_threshold}")
    if int(nms_top_k) < 1 or int(max_predictions) < 1:
        problems.append(f"nms_top_k and max_predictions must be >= 1, got {nms_top_k} and {max_predictions}")
    if matrix_nms_kernel not in MATRIX_NMS_KERNELS:
        problems.append(f"matrix_nms_kernel must be one of {MATRIX_NMS_KERNELS}, got {matrix_nms_kernel!r}")
    if problems:
        raise RecipeError("Detection post-processing: " + "; ".join(problems) + ".")
    return _checked_nms_type(nms_type)


def _candidates(boxes: Tensor, scores: Tensor, score_threshold: float, multi_label_per_box: bool,
                nms_top_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """One image's ``(boxes [M, 4], scores [M], labels [M])`` passing the threshold, at most ``nms_top_k``."""
    if multi_label_per_box:
        flat = scores.flatten()
        top = flat.topk(min(nms_top_k, flat.numel())).indices
        top = top[flat[top] >= score_threshold]
        num_classes = scores.shape[1]
        return boxes[top // num_classes], flat[top], top % num_classes
    best, labels = scores.max(dim=1)
    top = best.topk(min(nms_top_k, best.numel())).indices
    top = top[best[top] >= score_threshold]
    return boxes[top], best[top], labels[top]


def matrix_nms(boxes: Tensor, scores: Tensor, labels: Tensor | None, kernel: str = "gaussian",
               sigma: float = 2.0) -> Tensor:
    """Matrix NMS: the decayed scores of boxes sorted by descending score (``labels`` None: across classes).

    Box ``j``'s decay is ``min_i f(iou_ij) / f(c_i)`` over better boxes ``i`` of its class, ``c_i`` being box
    ``i``'s own largest overlap with a better box; ``f(x) = exp(-sigma x^2)`` (gaussian) or ``1 - x`` (linear).
    """
    count = len(scores)
    if count == 0:
        return scores
    iou = torchvision.ops.box_iou(boxes, boxes).triu(diagonal=1)
    if labels is not None:
        iou = iou * (labels[:, None] == labels[None, :])
    compensation = iou.max(dim=0).values[:, None].expand(count, count)  # row i: c_i
    if kernel == "gaussian":
        decay = torch.exp(-sigma * (iou.square() - compensation.square()))
    else:
        decay = (1 - iou) / (1 - compensation).clamp_min(1e-6)
    # Only better boxes (i < j) decay box j; elsewhere the factor is 1.
    decay = torch.where(torch.ones_like(iou, dtype=torch.bool).triu(diagonal=1), decay, torch.ones_like(decay))
    return scores * decay.min(dim=0).values.clamp(max=1.0)


def grouped_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, images: Tensor | None = None,
                labels: Tensor | None = None) -> Tensor:
    """Indices kept by NMS within each image and class (``images`` / ``labels``: a group index per box, None for
    one group), best first, in one call; the export graph runs the same over a whole batch.

    Not ``torchvision.ops.batched_nms``: its offsets (``group * (max + 1)`` on every coordinate) assume boxes at
    coordinates >= 0, and raw boxes stick out of the image, so a box with negative corners landed on the previous
    group's boxes and was suppressed by them. Here boxes first move to start at 0, then images spread along y and
    classes along x: groups never overlap, and offsets stay within ``max(B, C)`` spans, where one offset per
    (image, class) would reach ``B * C`` spans and cost float32 its sub-pixel digits.
    """
    if not torch.jit.is_tracing() and boxes.numel() == 0:  # eager only: a traced graph must keep the ops
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    origin = boxes.min()
    span = boxes.max() - origin + 1.0
    zero = torch.zeros(boxes.shape[0], dtype=boxes.dtype, device=boxes.device)
    shift_y = images.to(boxes.dtype) * span if images is not None else zero
    shift_x = labels.to(boxes.dtype) * span if labels is not None else zero
    shifted = boxes - origin + torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return torchvision.ops.nms(shifted, scores, iou_threshold)


def select_detections(boxes: Tensor, scores: Tensor, *, score_threshold: float, nms_threshold: float,
                      nms_type: NMS_Type | str = NMS_Type.ITERATIVE, multi_label_per_box: bool = True,
                      class_agnostic_nms: bool = False, nms_top_k: int = 1000, max_predictions: int = 300,
                      matrix_nms_kernel: str = "gaussian", matrix_nms_sigma: float = 2.0) -> list[Tensor]:
    """Boxes ``[B, N, 4]`` (xyxy pixels) and class scores ``[B, N, C]`` in [0, 1] -> per image ``[K, 6]``.

    See the module docstring. With matrix NMS, ``nms_threshold`` is not used; decayed scores are re-thresholded
    at ``score_threshold``.
    """
    nms_type = _checked_nms_type(nms_type)
    # NMS and pixel coordinates in float32, whatever precision the model ran in.
    boxes, scores = boxes.float(), scores.float()
    results = []
    for image_boxes, image_scores in zip(boxes, scores, strict=True):
        kept_boxes, kept_scores, kept_labels = _candidates(image_boxes, image_scores, score_threshold,
                                                           multi_label_per_box, nms_top_k)
        if nms_type is NMS_Type.MATRIX:
            order = kept_scores.argsort(descending=True)
            kept_boxes, kept_scores, kept_labels = kept_boxes[order], kept_scores[order], kept_labels[order]
            decayed = matrix_nms(kept_boxes, kept_scores, None if class_agnostic_nms else kept_labels,
                                 matrix_nms_kernel, matrix_nms_sigma)
            order = decayed.argsort(descending=True)
            keep = order[decayed[order] >= score_threshold]
            kept_scores = decayed
        elif class_agnostic_nms:
            keep = torchvision.ops.nms(kept_boxes, kept_scores, nms_threshold)
        else:
            keep = grouped_nms(kept_boxes, kept_scores, nms_threshold, labels=kept_labels)
        keep = keep[:max_predictions]
        results.append(torch.cat((kept_boxes[keep], kept_scores[keep, None], kept_labels[keep, None].float()), dim=1))
    return results
