"""SSD loss: recipe key ``SSDLoss`` (``training_hyperparams.loss``), for ``ssd_lite_mobilenet_v2``.

```yaml
training_hyperparams:
  loss: SSDLoss
  criterion_params: {alpha: 1.0, iou_thresh: 0.5, neg_pos_ratio: 3.0}   # dboxes: optional, see below
```

The model's training output is ``(locations [B, 4, A], confidences [B, C + 1, A], dboxes [A, 4])`` (raw offsets,
class logits with the background at index 0, default boxes ``cx, cy, w, h`` in input pixels); in eval mode it
returns ``(decoded, raw)`` and the raw tuple is used, so the validation loss is the same quantity. Targets are the
training batch's ``[N, 6]``: image index, label (0-based), cx, cy, w, h in input pixels. Boxes without area are
ignored.

Per image (Liu et al. 2016, "SSD", section 2.2, as SuperGradients implements it):

* matching: every default box takes the ground truth it overlaps most, and is positive when that IoU is
  ``> iou_thresh``; each ground truth also claims its best-overlapping default box, whatever the IoU (so no object
  goes unmatched). A positive's class target is ``label + 1`` (0 is the background);
* localisation: smooth L1 (beta 1) summed over the 4 offsets of positives, against the ground truth encoded with
  variances ``scale_xy = 0.1``, ``scale_wh = 0.2`` (:func:`~super_recipes.detection.ssd.anchors.encode_boxes`);
* classification: cross-entropy summed over the positives and the ``neg_pos_ratio x positives`` hardest
  negatives (highest background cross-entropy), the rest of the negatives left out (hard negative mining);
* ``(2 - alpha) * localisation + alpha * classification``, divided by the number of positives; an image without
  positives adds 0. The loss is the mean over the batch.

Logged items (``component_names``): ``smooth_l1`` and ``closs`` (per-positive, unweighted, batch means) and
``total`` (the loss).

``dboxes`` (SuperGradients' argument) is optional: the model hands its default boxes to the loss. When given
(a :class:`~super_recipes.detection.ssd.anchors.DefaultBoxes` or its spec), the model's boxes must be as many,
which catches a loss configured for another anchor set; variances then come from it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from super_recipes.detection.ssd.anchors import build_default_boxes, cxcywh_to_xyxy, encode_boxes
from super_recipes.errors import RecipeError
from super_recipes.registry import register_loss

__all__ = ["SSDLoss", "match_default_boxes"]


def match_default_boxes(gt_boxes: Tensor, gt_labels: Tensor, dboxes: Tensor,
                        iou_thresh: float = 0.5) -> tuple[Tensor, Tensor]:
    """Assign one image's ground truths to default boxes.

    :param gt_boxes: ``[G, 4]`` cx, cy, w, h.
    :param gt_labels: ``[G]`` 0-based labels.
    :param dboxes: ``[A, 4]`` cx, cy, w, h (same units).
    :return: ``(boxes [A, 4], labels [A])``: per default box its ground truth (cx, cy, w, h; the default box itself
        where negative) and its class target (``label + 1``, 0 = background).
    """
    num_anchors = len(dboxes)
    boxes = dboxes.clone()
    labels = torch.zeros(num_anchors, dtype=torch.long, device=dboxes.device)
    if len(gt_boxes) == 0:
        return boxes, labels
    iou = torchvision.ops.box_iou(cxcywh_to_xyxy(gt_boxes), cxcywh_to_xyxy(dboxes))  # [G, A]
    best_iou, best_gt = iou.max(dim=0)
    best_anchor = iou.argmax(dim=1)
    # Each ground truth claims its best default box; 2 beats any IoU so that box passes the threshold. Ground
    # truths sharing a best box: the last one keeps it ("amax" of their indices: deterministic on every device,
    # unlike an indexed assignment with repeated indices).
    order = torch.arange(len(gt_boxes), device=dboxes.device)
    best_gt.scatter_reduce_(0, best_anchor, order, reduce="amax", include_self=False)
    best_iou.index_fill_(0, best_anchor, 2.0)
    positive = best_iou > iou_thresh
    boxes[positive] = gt_boxes[best_gt[positive]]
    labels[positive] = gt_labels[best_gt[positive]].long() + 1
    return boxes, labels


@register_loss("SSDLoss")
class SSDLoss(nn.Module):
    """SSD multibox loss with hard negative mining (see the module docstring).

    :param dboxes: optional default boxes to check the model's against (``DefaultBoxes`` or its spec).
    :param alpha: weight of classification; localisation gets ``2 - alpha``.
    :param iou_thresh: a default box is positive when its best IoU with a ground truth is above this.
    :param neg_pos_ratio: negatives kept per positive (the hardest ones).
    """

    component_names = ["smooth_l1", "closs", "total"]

    def __init__(self, dboxes: Any = None, alpha: float = 1.0, iou_thresh: float = 0.5, neg_pos_ratio: float = 3.0):
        super().__init__()
        if not 0.0 <= float(alpha) <= 2.0:
            raise RecipeError(f"SSDLoss: alpha must lie in [0, 2] (weights alpha and 2 - alpha), got {alpha}.")
        if not 0.0 <= float(iou_thresh) < 1.0 or float(neg_pos_ratio) < 0:
            raise RecipeError(f"SSDLoss: need 0 <= iou_thresh < 1 and neg_pos_ratio >= 0, got {iou_thresh} and "
                              f"{neg_pos_ratio}.")
        self.dboxes = None if dboxes is None else build_default_boxes(dboxes, "criterion_params.dboxes")
        self.scale_xy = self.dboxes.scale_xy if self.dboxes is not None else 0.1
        self.scale_wh = self.dboxes.scale_wh if self.dboxes is not None else 0.2
        self.alpha = float(alpha)
        self.iou_thresh = float(iou_thresh)
        self.neg_pos_ratio = float(neg_pos_ratio)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, iou_thresh={self.iou_thresh}, neg_pos_ratio={self.neg_pos_ratio}"

    def _raw(self, outputs: Any) -> tuple[Tensor, Tensor, Tensor]:
        if isinstance(outputs, tuple | list) and len(outputs) == 2 and isinstance(outputs[1], tuple | list):
            outputs = outputs[1]  # eval mode: (decoded, raw)
        if not (isinstance(outputs, tuple | list) and len(outputs) == 3
                and all(isinstance(o, Tensor) for o in outputs)):
            raise RecipeError("SSDLoss expects the SSD-Lite output (locations, confidences, dboxes) or the eval pair "
                              f"(decoded, raw); got {type(outputs).__name__}. Is the model an SSD?")
        locations, confidences, dboxes = outputs
        if self.dboxes is not None and len(self.dboxes) != dboxes.shape[0]:
            raise RecipeError(
                f"SSDLoss: criterion_params.dboxes has {len(self.dboxes)} default boxes but the model predicts "
                f"{dboxes.shape[0]} (another anchor set or input size?); leave dboxes out to use the model's.")
        return locations, confidences, dboxes

    def forward(self, outputs: Any, targets: Tensor,
                crowd_targets: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(loss, items)``; ``crowd_targets`` is ignored (crowd regions are neither positives nor mined)."""
        locations, confidences, dboxes = self._raw(outputs)
        locations, confidences, dboxes = locations.float(), confidences.float(), dboxes.float()
        batch = locations.shape[0]
        targets = targets.to(device=locations.device, dtype=torch.float32).reshape(-1, 6)
        targets = targets[(targets[:, 4] > 0) & (targets[:, 5] > 0)]
        matched_boxes, labels = [], []
        for image in range(batch):
            own = targets[targets[:, 0] == image]
            boxes, image_labels = match_default_boxes(own[:, 2:6], own[:, 1], dboxes, self.iou_thresh)
            matched_boxes.append(boxes)
            labels.append(image_labels)
        target_offsets = encode_boxes(torch.stack(matched_boxes), dboxes, self.scale_xy, self.scale_wh)  # [B, A, 4]
        labels = torch.stack(labels)  # [B, A]
        positive = labels > 0
        num_positive = positive.sum(dim=1)

        smooth_l1 = F.smooth_l1_loss(locations.transpose(1, 2), target_offsets, reduction="none").sum(dim=2)
        smooth_l1 = (smooth_l1 * positive).sum(dim=1)

        cross_entropy = F.cross_entropy(confidences, labels, reduction="none")  # [B, A]
        negative_loss = cross_entropy.detach().masked_fill(positive, float("-inf"))
        rank = negative_loss.argsort(dim=1, descending=True).argsort(dim=1)
        num_negative = (self.neg_pos_ratio * num_positive).clamp(max=labels.shape[1])
        hard_negative = (rank < num_negative[:, None]) & ~positive
        closs = (cross_entropy * (positive | hard_negative)).sum(dim=1)

        has_positive = (num_positive > 0).float()
        per_positive = has_positive / num_positive.clamp(min=1).float()
        smooth_l1, closs = smooth_l1 * per_positive, closs * per_positive
        loss = ((2 - self.alpha) * smooth_l1 + self.alpha * closs).mean()
        items = torch.stack((smooth_l1.mean(), closs.mean(), loss)).detach()
        return loss, items
