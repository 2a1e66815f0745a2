"""PP-YOLOE / YOLO-NAS loss: recipe key ``PPYoloELoss`` (``training_hyperparams.loss``; alias ``ppyoloe_loss``).

```yaml
training_hyperparams:
  loss: PPYoloELoss
  criterion_params:
    num_classes: ${arch_params.num_classes}
    reg_max: 16                       # must match the head's
    use_static_assigner: false        # YOLO-NAS; PP-YOLOE starts with true and switches with
                                      # PPYoloETrainingStageSwitchCallback
    classification_loss_weight: 1.0
    iou_loss_weight: 2.5
    dfl_loss_weight: 0.5
```

Input: the head's training 6-tuple ``(cls_scores [B, A, C] sigmoid probabilities, reg_distri [B, A, 4 *
(reg_max + 1)] logits, anchors [A, 4] xyxy pixels, anchor_points [A, 2] pixels, num_anchors_list, stride_tensor
[A, 1])``, or the eval output ``(decoded, raw 6-tuple)`` whose raw part is used (the validation loss is the same
quantity). Targets: the training batch's ``[N, 6]`` (image index, label, cx, cy, w, h in input pixels).

As PP-YOLOE (Xu et al. 2022) and SuperGradients: boxes are decoded in stride units (the expectation of the
softmax over ``reg_max + 1`` bins gives the l, t, r, b distances from the anchor point); anchors are assigned by
ATSS (top 9 per level on the ``anchors`` boxes) while ``use_static_assigner`` is on, else by the task-aligned
assigner (top 13, alpha 1, beta 6) (:mod:`.assigners`). Then, with ``S`` the sum of the soft targets over the
batch (at least 1; while training under DDP, the mean over the ranks of that sum, as SuperGradients does; in
evaluation, with gradients off, each rank's own):

* ``cls``: varifocal loss (alpha 0.75, gamma 2) of the probabilities against the IoU-aware soft targets; with
  ``use_varifocal_loss: false`` the focal loss (gamma 2; alpha 0.25 during the static stage, none after) against
  the same soft targets, i.e. the BCE against them weighted by ``|p - target|^2``, as SuperGradients. Sum / S.
* ``iou``: ``1 - GIoU`` of each foreground anchor's box with its ground truth, weighted by its soft target. Sum / S.
* ``dfl``: distribution focal loss: the cross entropy of the two bins around each target distance (in stride
  units, clamped to ``[0, reg_max - 0.01]``), weighted by the distance to the other bin, averaged over the four
  sides, weighted by the soft target. Sum / S.

The loss is ``classification_loss_weight * cls + iou_loss_weight * iou + dfl_loss_weight * dfl``. The logged
items (``component_names``) are ``cls, iou, dfl`` **unweighted** and ``total`` (the weighted sum, the returned
loss). Everything runs in float32 with autocast off. An image without boxes gives only the classification loss
(all negatives); a batch without boxes gives ``iou = dfl = 0``. ``crowd_targets`` is accepted and ignored.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from super_recipes.detection.dfl_outputs import distances_to_boxes, distribution_to_distances
from super_recipes.detection.ppyoloe.assigners import (
    Assignment,
    ATSSAssigner,
    TaskAlignedAssigner,
    pad_targets,
)
from super_recipes.errors import RecipeError
from super_recipes.registry import register_loss

VARIFOCAL_ALPHA = 0.75
FOCAL_GAMMA = 2.0
STATIC_FOCAL_ALPHA = 0.25


@register_loss("PPYoloELoss")
class PPYoloELoss(torch.nn.Module):
    """PP-YOLOE loss (recipe key ``PPYoloELoss``; also YOLO-NAS's): see the module docs.

    :param num_classes: number of classes of the head.
    :param use_varifocal_loss: varifocal classification loss (else focal loss against the same soft targets).
    :param use_static_assigner: ATSS assignment (else task-aligned); ``PPYoloETrainingStageSwitchCallback``
        turns it off at ``static_assigner_end_epoch``.
    :param reg_max: the head's distribution has ``reg_max + 1`` bins per side.
    :param classification_loss_weight: weight of ``cls`` in the total.
    :param iou_loss_weight: weight of ``iou`` (GIoU) in the total.
    :param dfl_loss_weight: weight of ``dfl`` in the total.
    """

    component_names = ["cls", "iou", "dfl", "total"]

    def __init__(self, num_classes: int, use_varifocal_loss: bool = True, use_static_assigner: bool = True,
                 reg_max: int = 16, classification_loss_weight: float = 1.0, iou_loss_weight: float = 2.5,
                 dfl_loss_weight: float = 0.5):
        super().__init__()
        if int(num_classes) < 1 or int(reg_max) < 1:
            raise RecipeError(f"PPYoloELoss needs num_classes >= 1 and reg_max >= 1, got num_classes={num_classes}, "
                              f"reg_max={reg_max}.")
        weights = {"classification_loss_weight": classification_loss_weight, "iou_loss_weight": iou_loss_weight,
                   "dfl_loss_weight": dfl_loss_weight}
        negative = {k: v for k, v in weights.items() if float(v) < 0}
        if negative:
            raise RecipeError(f"PPYoloELoss: loss weights must be >= 0, got {negative}.")
        self.num_classes = int(num_classes)
        self.use_varifocal_loss = bool(use_varifocal_loss)
        self.use_static_assigner = bool(use_static_assigner)
        self.reg_max = int(reg_max)
        self.classification_loss_weight = float(classification_loss_weight)
        self.iou_loss_weight = float(iou_loss_weight)
        self.dfl_loss_weight = float(dfl_loss_weight)
        self.static_assigner = ATSSAssigner(topk=9)
        self.assigner = TaskAlignedAssigner(topk=13, alpha=1.0, beta=6.0)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, use_varifocal_loss={self.use_varifocal_loss}, "
                f"use_static_assigner={self.use_static_assigner}, reg_max={self.reg_max}, "
                f"weights(cls, iou, dfl)=({self.classification_loss_weight}, {self.iou_loss_weight}, "
                f"{self.dfl_loss_weight})")

    def forward(self, outputs: Any, targets: torch.Tensor,
                crowd_targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, items)`` with items ``[cls, iou, dfl, total]`` (see the module docs)."""
        scores, distri, anchors, points, num_anchors_list, strides = self._unpack(outputs)
        # Logs, softmax and box arithmetic in half precision lose the small IoU differences the assigners rank.
        with torch.autocast(device_type=scores.device.type, enabled=False):
            return self._loss(scores.float(), distri.float(), anchors.float(), points.float(),
                              [int(n) for n in num_anchors_list], strides.float().reshape(-1, 1),
                              torch.as_tensor(targets).to(device=scores.device, dtype=torch.float32))

    # ------------------------------------------------------------------------------------------------ pieces
    def decode(self, distri: torch.Tensor, points_s: torch.Tensor) -> torch.Tensor:
        """xyxy boxes ``[B, A, 4]`` in stride units from the logits ``[B, A, 4 * (reg_max + 1)]`` and the anchor
        points ``[A, 2]`` in stride units (as the head decodes them in eval mode)."""
        return distances_to_boxes(points_s, distribution_to_distances(distri, self.reg_max))

    def assign(self, outputs: Any, targets: torch.Tensor) -> Assignment:
        """The assignment alone, boxes in input pixels (for inspection and tests); uses the current assigner."""
        scores, distri, anchors, points, num_anchors_list, strides = self._unpack(outputs)
        strides = strides.float().reshape(-1, 1)
        with torch.no_grad():
            pred_boxes = self.decode(distri.detach().float(), points.float() / strides) * strides
            labels, boxes, mask = pad_targets(torch.as_tensor(targets).float().to(scores.device), scores.shape[0])
            return self._assign(scores.detach().float(), pred_boxes, anchors.float(), points.float(),
                                [int(n) for n in num_anchors_list], labels, boxes, mask)

    def _assign(self, scores: torch.Tensor, pred_boxes: torch.Tensor, anchors: torch.Tensor, points: torch.Tensor,
                num_anchors_list: list[int], labels: torch.Tensor, boxes: torch.Tensor,
                mask: torch.Tensor) -> Assignment:
        if self.use_static_assigner:
            return self.static_assigner(anchors, num_anchors_list, labels, boxes, mask, self.num_classes,
                                        pred_boxes=pred_boxes)
        return self.assigner(scores, pred_boxes, points, labels, boxes, mask, self.num_classes)

    def _loss(self, scores: torch.Tensor, distri: torch.Tensor, anchors: torch.Tensor, points: torch.Tensor,
              num_anchors_list: list[int], strides: torch.Tensor,
              targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        points_s = points / strides
        pred_boxes = self.decode(distri, points_s)  # stride units
        labels, boxes, mask = pad_targets(targets, scores.shape[0])
        assignment = self._assign(scores.detach(), pred_boxes.detach() * strides, anchors, points,
                                  num_anchors_list, labels, boxes, mask)
        target_scores = assignment.scores
        assigned_boxes = assignment.boxes / strides  # stride units, like the predictions

        score_sum = target_scores.sum()
        if scores.requires_grad and torch.is_grad_enabled() and _distributed():
            # Training under DDP: every rank normalises by the mean over ranks, as SuperGradients (the sum carries
            # no gradient). Not when evaluating (no grad): ranks may see different numbers of validation batches,
            # and rank 0 evaluates alone after training, so a collective there could wait forever.
            torch.distributed.all_reduce(score_sum, op=torch.distributed.ReduceOp.SUM)
            score_sum = score_sum / torch.distributed.get_world_size()
        score_sum = score_sum.clamp(min=1.0)

        if self.use_varifocal_loss:
            cls_loss = varifocal_loss(scores, target_scores, assignment.labels)
        else:
            cls_loss = focal_loss(scores, target_scores, STATIC_FOCAL_ALPHA if self.use_static_assigner else None)
        cls_loss = cls_loss / score_sum

        # Foreground anchors only; with none, the empty sums still keep the graph connected (zero gradients).
        image, anchor = assignment.fg.nonzero(as_tuple=True)
        weight = target_scores[image, anchor].sum(-1)
        fg_boxes = assigned_boxes[image, anchor]
        iou_loss = ((1.0 - giou(pred_boxes[image, anchor], fg_boxes)) * weight).sum() / score_sum
        side_targets = box_to_distances(points_s[anchor], fg_boxes).clamp(0, self.reg_max - 0.01)
        dfl = distribution_focal_loss(distri[image, anchor].reshape(-1, 4, self.reg_max + 1), side_targets)
        dfl_loss = (dfl * weight).sum() / score_sum

        total = (self.classification_loss_weight * cls_loss + self.iou_loss_weight * iou_loss
                 + self.dfl_loss_weight * dfl_loss)
        return total, torch.stack([cls_loss, iou_loss, dfl_loss, total]).detach()

    def _unpack(self, outputs: Any) -> tuple[Any, ...]:
        # Eval mode gives ((pred_bboxes, pred_scores), raw 6-tuple): the loss reads the raw part.
        if isinstance(outputs, (tuple, list)) and len(outputs) == 2 and isinstance(outputs[1], (tuple, list)):
            outputs = outputs[1]
        if not isinstance(outputs, (tuple, list)) or len(outputs) != 6:
            raise RecipeError(
                "PPYoloELoss expects the head's training output (cls_scores, reg_distri, anchors, anchor_points, "
                "num_anchors_list, stride_tensor) or the eval output (decoded, raw); got "
                f"{type(outputs).__name__}{f' of {len(outputs)}' if isinstance(outputs, (tuple, list)) else ''}. "
                "Is the model a PP-YOLOE / YOLO-NAS detector?")
        scores, distri = outputs[0], outputs[1]
        if scores.dim() != 3 or scores.shape[-1] != self.num_classes:
            raise RecipeError(f"PPYoloELoss(num_classes={self.num_classes}) got class scores of shape "
                              f"{list(scores.shape)}, expected [B, A, {self.num_classes}]. Check num_classes in "
                              "criterion_params against the model's.")
        if distri.dim() != 3 or distri.shape[-1] != 4 * (self.reg_max + 1):
            raise RecipeError(f"PPYoloELoss(reg_max={self.reg_max}) got reg_distri of shape {list(distri.shape)}, "
                              f"expected [B, A, {4 * (self.reg_max + 1)}]. Set reg_max in criterion_params to the "
                              "head's.")
        return tuple(outputs)


# SuperGradients 3.0's recipes name it ``loss: {ppyoloe_loss: {...}}`` (later ones ``PPYoloELoss``).
register_loss("ppyoloe_loss")(PPYoloELoss)


def _distributed() -> bool:
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


# ---------------------------------------------------------------------------------------------- loss terms
def varifocal_loss(scores: torch.Tensor, target_scores: torch.Tensor, labels: torch.Tensor,
                   alpha: float = VARIFOCAL_ALPHA, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Summed varifocal loss (Zhang et al. 2021) of probabilities ``[B, A, C]`` against soft targets.

    The assigned class of a foreground anchor (``labels`` ``[B, A]``, ``C`` = background) is weighted by its
    target, every other entry by ``alpha * p^gamma``; the BCE is against the soft target (0 for negatives). As
    in VarifocalNet and SuperGradients the weight is not detached.
    """
    num_classes = scores.shape[-1]
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive.scatter_(-1, labels.clamp(max=num_classes - 1).unsqueeze(-1), (labels < num_classes).unsqueeze(-1))
    weight = torch.where(positive, target_scores, alpha * scores.pow(gamma))
    return (F.binary_cross_entropy(scores, target_scores, reduction="none") * weight).sum()


def focal_loss(scores: torch.Tensor, target_scores: torch.Tensor, alpha: float | None = None,
               gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Summed focal loss of probabilities against soft targets: BCE weighted by ``|p - t|^gamma`` (and alpha)."""
    weight = (scores - target_scores).abs().pow(gamma)
    if alpha is not None:
        weight = weight * (alpha * target_scores + (1 - alpha) * (1 - target_scores))
    return (F.binary_cross_entropy(scores, target_scores, reduction="none") * weight).sum()


def giou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Generalised IoU (Rezatofighi et al. 2019) of aligned xyxy boxes ``[K, 4]`` -> ``[K]``."""
    inter = (torch.minimum(boxes1[:, 2:], boxes2[:, 2:]) - torch.maximum(boxes1[:, :2], boxes2[:, :2]))
    inter = inter.clamp(min=0).prod(-1)
    area1 = (boxes1[:, 2:] - boxes1[:, :2]).prod(-1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).prod(-1)
    union = area1 + area2 - inter + eps
    hull = (torch.maximum(boxes1[:, 2:], boxes2[:, 2:]) - torch.minimum(boxes1[:, :2], boxes2[:, :2])).prod(-1)
    hull = hull + eps
    return inter / union - (hull - union) / hull


def box_to_distances(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Distances l, t, r, b ``[B, A, 4]`` from points ``[A, 2]`` to the sides of xyxy boxes ``[B, A, 4]``."""
    return torch.cat([points - boxes[..., :2], boxes[..., 2:] - points], dim=-1)


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DFL (Li et al. 2020, GFL): logits ``[K, 4, R + 1]``, distances ``[K, 4]`` in ``[0, R)`` -> ``[K]``.

    The cross entropy of the two bins around the target, each weighted by its closeness; mean over the sides.
    """
    left = target.long()
    right_weight = target - left.to(target.dtype)
    log_probs = logits.log_softmax(-1)
    left_nll = -torch.gather(log_probs, -1, left.unsqueeze(-1)).squeeze(-1)
    right_nll = -torch.gather(log_probs, -1, (left + 1).unsqueeze(-1)).squeeze(-1)
    return (left_nll * (1 - right_weight) + right_nll * right_weight).mean(-1)
