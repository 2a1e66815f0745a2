"""YOLOX losses: recipe keys ``YoloXDetectionLoss`` and ``YoloXFastDetectionLoss`` (``training_hyperparams.loss``).

```yaml
training_hyperparams:
  loss: YoloXFastDetectionLoss
  criterion_params: {strides: [8, 16, 32], num_classes: 80}   # use_l1, center_sampling_radius, iou_type
```

The model's training output is a list of raw maps ``[B, 1, H/s, W/s, 5 + C]`` per stride ``s`` (x, y, w, h,
objectness logit, class logits); in eval mode it returns ``(decoded, raw)`` and the raw list is used, so the
validation loss is the same quantity. A box decodes as ``xy = (raw_xy + cell) * s``, ``wh = exp(raw_wh) * s``.
Targets are the training batch's ``[N, 6]`` (image index, label, cx, cy, w, h in input pixels).

Anchors are matched to boxes by SimOTA (:mod:`.simota`). Then, normalised by the number of foreground anchors
(at least 1): the IoU loss ``1 - IoU^2`` (``iou_type: iou``, YOLOX's default) or ``1 - GIoU`` on foreground
anchors; objectness BCE on every anchor (foreground = 1); class BCE on foreground anchors against
``one_hot * IoU`` of the match; with ``use_l1`` (switched on for the last epochs by
``YoloXTrainingStageSwitchCallback``) the L1 distance of the raw regression to the encoded box. The loss is
``5 * iou + obj + cls + l1``; the logged items are ``iou, obj, cls, l1`` (unweighted), ``num_fg`` (foreground
anchors in the batch) and ``total``. An image without boxes contributes only objectness (all negatives).

Crowd regions never become positives: the training collate function gives no crowd boxes, and a
``crowd_targets`` argument, if a caller passes one, is accepted and ignored (crowd anchors then simply count
as background for objectness, as in YOLOX).

``YoloXFastDetectionLoss`` assigns all images of the batch at once (padded tensors, no Python loop) and gives
the same assignments and values as ``YoloXDetectionLoss``, which assigns one image and one box at a time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from super_recipes.detection.yolox.simota import (
    Assignment,
    Predictions,
    assign_batched,
    assign_reference,
    box_iou,
    empty_assignment,
    prepare,
)
from super_recipes.errors import RecipeError
from super_recipes.registry import register_loss

IOU_LOSS_WEIGHT = 5.0
IOU_TYPES = ("iou", "giou")


@register_loss("YoloXDetectionLoss")
class YoloXDetectionLoss(torch.nn.Module):
    """YOLOX loss with SimOTA assignment, one image at a time (the readable reference; see the module docs).

    :param strides: output stride of each raw map, in the model's order.
    :param num_classes: number of classes (the maps carry ``5 + num_classes`` channels).
    :param use_l1: add the L1 regression loss (YOLOX turns it on with mosaic off, for the last epochs).
    :param center_sampling_radius: candidates lie within ``radius * stride`` of a box centre (or in the box).
    :param iou_type: ``iou`` (loss ``1 - IoU^2``) or ``giou`` (loss ``1 - GIoU``).
    """

    component_names = ["iou", "obj", "cls", "l1", "num_fg", "total"]

    def __init__(self, strides: Sequence[int] = (8, 16, 32), *, num_classes: int, use_l1: bool = False,
                 center_sampling_radius: float = 2.5, iou_type: str = "iou"):
        super().__init__()
        if iou_type not in IOU_TYPES:
            raise RecipeError(f"{type(self).__name__}: iou_type must be one of {IOU_TYPES}, got {iou_type!r}.")
        self.strides = tuple(int(s) for s in strides)
        self.num_classes = int(num_classes)
        self.use_l1 = bool(use_l1)
        self.center_sampling_radius = float(center_sampling_radius)
        self.iou_type = iou_type

    def extra_repr(self) -> str:
        return (f"strides={self.strides}, num_classes={self.num_classes}, use_l1={self.use_l1}, "
                f"center_sampling_radius={self.center_sampling_radius}, iou_type={self.iou_type!r}")

    def forward(self, preds: Any, targets: torch.Tensor,
                crowd_targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, items)``; ``crowd_targets`` is ignored (see the module docstring)."""
        raw, cells, strides = self._flatten(_raw_maps(preds, len(self.strides)))
        # Box arithmetic, exp and logs in half precision would overflow or lose the small IoU differences.
        with torch.autocast(device_type=raw.device.type, enabled=False):
            return self._loss(raw.float(), cells, strides, targets)

    def _assign(self, targets: torch.Tensor, preds: Predictions) -> Assignment:
        return assign_reference(targets, preds, self.center_sampling_radius)

    def assign(self, preds: Any, targets: torch.Tensor) -> Assignment:
        """The SimOTA assignment alone (for inspection and tests)."""
        raw, cells, strides = self._flatten(_raw_maps(preds, len(self.strides)))
        raw = raw.detach().float()
        return self._assign(_as_targets(targets, raw), self._predictions(raw, cells, strides))

    def _predictions(self, raw: torch.Tensor, cells: torch.Tensor, strides: torch.Tensor) -> Predictions:
        # Anchor points sit at cell centres; the decoded box is (raw + cell) * stride.
        centres = (cells + 0.5) * strides[:, None]
        return prepare(_decode(raw[..., :4], cells, strides), raw[..., 4], raw[..., 5:], centres, strides)

    def _loss(self, raw: torch.Tensor, cells: torch.Tensor, strides: torch.Tensor,
              targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets = _as_targets(targets, raw)
        boxes = _decode(raw[..., :4], cells, strides)
        with torch.no_grad():
            if len(targets):
                assignment = self._assign(targets, self._predictions(raw.detach(), cells, strides))
            else:
                assignment = empty_assignment(raw.shape[0], raw.shape[1], raw)
        fg = assignment.fg
        num_fg = max(int(fg.sum()), 1)
        matched = box_iou(boxes[fg], assignment.boxes, generalized=self.iou_type == "giou")
        if self.iou_type == "giou":
            iou_loss = (1 - matched.clamp(-1.0, 1.0)).sum() / num_fg
        else:
            iou_loss = (1 - matched.pow(2)).sum() / num_fg
        obj_loss = F.binary_cross_entropy_with_logits(raw[..., 4], fg.to(raw.dtype), reduction="sum") / num_fg
        cls_target = F.one_hot(assignment.labels, self.num_classes).to(raw.dtype) * assignment.ious[:, None]
        cls_loss = F.binary_cross_entropy_with_logits(raw[..., 5:][fg], cls_target, reduction="sum") / num_fg
        if self.use_l1:
            anchor = fg.nonzero()[:, 1]
            encoded = encode_boxes(assignment.boxes, cells[anchor], strides[anchor])
            l1_loss = (raw[..., :4][fg] - encoded).abs().sum() / num_fg
        else:
            l1_loss = raw.new_zeros(())
        total = IOU_LOSS_WEIGHT * iou_loss + obj_loss + cls_loss + l1_loss
        items = torch.stack([iou_loss, obj_loss, cls_loss, l1_loss, raw.new_tensor(float(fg.sum())), total])
        return total, items.detach()

    def _flatten(self, maps: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, A, 5 + C]`` over all levels, the cell ``(x, y)`` ``[A, 2]`` and stride ``[A]`` of each anchor."""
        channels = self.num_classes + 5
        flat, cells, strides = [], [], []
        for level, (stride, raw_map) in enumerate(zip(self.strides, maps, strict=True)):
            if raw_map.dim() < 4 or raw_map.shape[-1] != channels or math.prod(raw_map.shape[1:-1]) != (
                    raw_map.shape[-3] * raw_map.shape[-2]):
                raise RecipeError(
                    f"{type(self).__name__}(num_classes={self.num_classes}) expects raw maps [B, 1, H, W, "
                    f"{channels}]; map {level} has shape {list(raw_map.shape)}. Check num_classes in "
                    "criterion_params against the model's.")
            height, width = raw_map.shape[-3], raw_map.shape[-2]
            ys, xs = torch.meshgrid(torch.arange(height, device=raw_map.device),
                                    torch.arange(width, device=raw_map.device), indexing="ij")
            flat.append(raw_map.reshape(raw_map.shape[0], height * width, channels))
            cells.append(torch.stack([xs, ys], dim=-1).reshape(-1, 2))
            strides.append(torch.full((height * width,), stride, device=raw_map.device))
        return torch.cat(flat, 1), torch.cat(cells).float(), torch.cat(strides).float()


@register_loss("YoloXFastDetectionLoss")
class YoloXFastDetectionLoss(YoloXDetectionLoss):
    """:class:`YoloXDetectionLoss` with the assignment of the whole batch done at once (same results, faster)."""

    def _assign(self, targets: torch.Tensor, preds: Predictions) -> Assignment:
        return assign_batched(targets, preds, self.center_sampling_radius)


def _raw_maps(preds: Any, num_levels: int) -> list[torch.Tensor]:
    # Eval mode gives (decoded, raw maps): the loss always reads the raw maps.
    if isinstance(preds, (tuple, list)) and len(preds) == 2 and isinstance(preds[1], (tuple, list)):
        preds = preds[1]
    if not isinstance(preds, (tuple, list)) or len(preds) != num_levels:
        raise RecipeError(f"The YOLOX loss expects a list of {num_levels} raw maps (one per stride), got "
                          f"{type(preds).__name__}{f' of {len(preds)}' if isinstance(preds, (tuple, list)) else ''}.")
    return list(preds)


def _as_targets(targets: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(targets).to(device=like.device, dtype=like.dtype).reshape(-1, 6)


def _decode(raw_box: torch.Tensor, cells: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    scale = strides[:, None]
    return torch.cat([(raw_box[..., :2] + cells) * scale, raw_box[..., 2:].exp() * scale], dim=-1)


def encode_boxes(boxes: torch.Tensor, cells: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """The raw regression that decodes to ``boxes`` (cx, cy, w, h) at these anchors: the L1 loss target."""
    scale = strides[:, None]
    return torch.cat([boxes[:, :2] / scale - cells, torch.log(boxes[:, 2:] / scale + 1e-8)], dim=-1)
