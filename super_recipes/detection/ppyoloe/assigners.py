"""Label assigners of ``PPYoloELoss`` (recipe key ``PPYoloELoss``): ATSS (static) and task-aligned (TAL).

Both work on a whole batch at once with the ground truth padded to ``[B, n, ...]`` (:func:`pad_targets`), and
return an :class:`Assignment`: per anchor the assigned class (``num_classes`` for background), box (xyxy, the
units of the boxes given) and soft classification target ``[B, A, C]`` (zero rows for background).

* :class:`ATSSAssigner` (Zhang et al. 2020, used by PP-YOLOE for its first epochs): on each pyramid level the
  ``topk`` anchors whose centres are closest to the box centre are candidates; those whose IoU with the box
  exceeds mean + std of the candidates' IoUs, and whose centre lies inside the box, are positives. The soft
  target is the IoU of the *predicted* box with its ground truth (1 when no prediction is given).
* :class:`TaskAlignedAssigner` (TOOD, Feng et al. 2021, PP-YOLOE after the static stage): the alignment metric
  ``score^alpha * IoU(pred, gt)^beta`` ranks the anchors whose centre is inside the box; the ``topk`` best are
  positives. The soft target is the metric rescaled so that each box's best anchor gets that box's best IoU.

In both, an anchor chosen by several boxes keeps the one it overlaps most (anchor box IoU for ATSS, predicted
box IoU for TAL), chosen among the boxes that selected it (SuperGradients/PaddleDetection take the argmax over
all boxes, which can hand the anchor to a box that did not select it; both agree whenever the best-overlapping
box is one of the selecting ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from super_recipes.errors import RecipeError


@dataclass
class Assignment:
    """One batch's assignment: ``labels`` ``[B, A]`` (``num_classes`` = background), ``boxes`` ``[B, A, 4]``
    xyxy, ``scores`` ``[B, A, C]`` soft targets, ``fg`` ``[B, A]`` bool, ``gt_index`` ``[B, A]`` (padded index)."""

    labels: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    fg: torch.Tensor
    gt_index: torch.Tensor


def pad_targets(targets: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[N, 6]`` (image index, label, cx, cy, w, h) -> labels ``[B, n]``, xyxy boxes ``[B, n, 4]``, mask ``[B, n]``.

    ``n`` is the most boxes any image has; padding rows have label 0, a zero box and mask False. No per-image loop.
    """
    targets = targets.reshape(-1, 6)
    device = targets.device
    image = targets[:, 0].long()
    if len(targets) and (int(image.min()) < 0 or int(image.max()) >= batch_size):
        raise RecipeError(f"PPYoloELoss: target image indices must lie in [0, {batch_size}) for a batch of "
                          f"{batch_size} predictions, got {int(image.min())}..{int(image.max())}. Targets are "
                          "[N, 6] rows (image index, label, cx, cy, w, h).")
    counts = torch.bincount(image, minlength=batch_size)
    num_max = int(counts.max()) if len(targets) else 0
    labels = torch.zeros(batch_size, num_max, dtype=torch.long, device=device)
    boxes = torch.zeros(batch_size, num_max, 4, dtype=targets.dtype, device=device)
    mask = torch.zeros(batch_size, num_max, dtype=torch.bool, device=device)
    if num_max:
        order = torch.argsort(image, stable=True)
        image = image[order]
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(image), device=device) - starts[image]
        rows = targets[order]
        centre, size = rows[:, 2:4], rows[:, 4:6]
        labels[image, slot] = rows[:, 1].long()
        boxes[image, slot] = torch.cat([centre - size / 2, centre + size / 2], dim=-1)
        mask[image, slot] = True
    return labels, boxes, mask


def pairwise_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """IoU of xyxy boxes ``[B, n, 4]`` with ``[B, L, 4]`` (or ``[L, 4]``, shared by the batch) -> ``[B, n, L]``."""
    if boxes2.dim() == 2:
        boxes2 = boxes2.unsqueeze(0)
    a, b = boxes1.unsqueeze(2), boxes2.unsqueeze(1)
    inter = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter + eps)


def points_in_boxes(points: torch.Tensor, boxes: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Whether each point ``[L, 2]`` lies strictly inside each box ``[B, n, 4]`` -> ``[B, n, L]`` bool."""
    p = points[None, None]
    b = boxes.unsqueeze(2)
    margins = torch.cat([p - b[..., :2], b[..., 2:] - p], dim=-1)
    return margins.amin(dim=-1) > eps


def _resolve_conflicts(positive: torch.Tensor, overlaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep, for every anchor, only the selecting box with the largest overlap -> (fg ``[B, A]``, index ``[B, A]``)."""
    fg = positive.any(dim=1)
    gt_index = torch.where(positive, overlaps, overlaps.new_tensor(-1.0)).argmax(dim=1)
    return fg, gt_index


def _gather_assignment(fg: torch.Tensor, gt_index: torch.Tensor, gt_labels: torch.Tensor, gt_boxes: torch.Tensor,
                       soft: torch.Tensor, num_classes: int) -> Assignment:
    """Labels, boxes and ``one_hot(label) * soft`` targets of the chosen boxes; ``soft`` is ``[B, A]``."""
    labels = torch.gather(gt_labels, 1, gt_index)
    labels = torch.where(fg, labels, torch.full_like(labels, num_classes))
    boxes = torch.gather(gt_boxes, 1, gt_index.unsqueeze(-1).expand(-1, -1, 4))
    # one_hot(label) * soft without a [B, A, C + 1] one-hot: background rows scatter a zero.
    scores = soft.new_zeros(*labels.shape, num_classes)
    scores.scatter_(-1, labels.clamp(max=num_classes - 1).unsqueeze(-1), (soft * fg).unsqueeze(-1))
    return Assignment(labels=labels, boxes=boxes, scores=scores, fg=fg, gt_index=gt_index)


def empty_assignment(batch_size: int, num_anchors: int, num_classes: int, like: torch.Tensor) -> Assignment:
    """Every anchor background (a batch without boxes)."""
    return Assignment(
        labels=torch.full((batch_size, num_anchors), num_classes, dtype=torch.long, device=like.device),
        boxes=like.new_zeros(batch_size, num_anchors, 4),
        scores=like.new_zeros(batch_size, num_anchors, num_classes),
        fg=torch.zeros(batch_size, num_anchors, dtype=torch.bool, device=like.device),
        gt_index=torch.zeros(batch_size, num_anchors, dtype=torch.long, device=like.device))


def _check_classes(gt_labels: torch.Tensor, gt_mask: torch.Tensor, num_classes: int) -> None:
    valid = gt_labels[gt_mask]
    if len(valid) and (int(valid.min()) < 0 or int(valid.max()) >= num_classes):
        raise RecipeError(f"PPYoloELoss(num_classes={num_classes}) got target labels "
                          f"{int(valid.min())}..{int(valid.max())}; check num_classes against the dataset's.")


class ATSSAssigner:
    """Adaptive training sample selection, PP-YOLOE's static assigner (recipe key ``PPYoloELoss``, first epochs).

    :param topk: candidates per pyramid level and box (closest anchor centres); PP-YOLOE uses 9.
    """

    def __init__(self, topk: int = 9, eps: float = 1e-9):
        self.topk = int(topk)
        self.eps = eps

    def __repr__(self) -> str:
        return f"ATSSAssigner(topk={self.topk})"

    @torch.no_grad()
    def __call__(self, anchors: torch.Tensor, num_anchors_list: list[int], gt_labels: torch.Tensor,
                 gt_boxes: torch.Tensor, gt_mask: torch.Tensor, num_classes: int,
                 pred_boxes: torch.Tensor | None = None) -> Assignment:
        """Assign anchors ``[A, 4]`` (xyxy, levels in ``num_anchors_list`` order) to padded boxes.

        ``pred_boxes`` ``[B, A, 4]`` (same units as the boxes) make the soft targets IoU(pred, gt), else 1.
        """
        batch_size, num_max = gt_boxes.shape[:2]
        num_anchors = anchors.shape[0]
        if sum(num_anchors_list) != num_anchors:
            raise RecipeError(f"ATSSAssigner: num_anchors_list {list(num_anchors_list)} sums to "
                              f"{sum(num_anchors_list)} but there are {num_anchors} anchors.")
        if num_max == 0:
            return empty_assignment(batch_size, num_anchors, num_classes, gt_boxes)
        _check_classes(gt_labels, gt_mask, num_classes)
        ious = pairwise_iou(gt_boxes, anchors)  # [B, n, A]
        gt_centres = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
        anchor_centres = (anchors[:, :2] + anchors[:, 2:]) / 2
        distances = (gt_centres.unsqueeze(2) - anchor_centres[None, None]).norm(dim=-1)  # [B, n, A]

        # The k closest anchor centres on every level are candidates (k capped by the level's size).
        candidate = torch.zeros_like(ious, dtype=torch.bool)
        start = 0
        for count in num_anchors_list:
            k = min(self.topk, count)
            if k:
                idx = distances[..., start:start + count].topk(k, dim=-1, largest=False).indices + start
                candidate.scatter_(-1, idx, True)
            start += count
        num_candidates = candidate.sum(-1, keepdim=True).clamp(min=1).to(ious.dtype)
        cand_ious = torch.where(candidate, ious, torch.zeros_like(ious))
        mean = cand_ious.sum(-1, keepdim=True) / num_candidates
        # Unbiased std, as torch.std (and the reference implementations); one candidate has no spread.
        var = (torch.where(candidate, ious - mean, torch.zeros_like(ious)) ** 2).sum(-1, keepdim=True)
        std = (var / (num_candidates - 1).clamp(min=1)).sqrt()
        positive = candidate & (ious > mean + std) & points_in_boxes(anchor_centres, gt_boxes, self.eps)
        positive &= gt_mask.unsqueeze(-1)

        fg, gt_index = _resolve_conflicts(positive, ious)
        if pred_boxes is None:
            soft = fg.to(gt_boxes.dtype)
        else:
            pred_ious = pairwise_iou(gt_boxes, pred_boxes)  # [B, n, A]
            soft = torch.gather(pred_ious, 1, gt_index.unsqueeze(1)).squeeze(1) * fg
        return _gather_assignment(fg, gt_index, gt_labels, gt_boxes, soft, num_classes)


class TaskAlignedAssigner:
    """Task-aligned assignment (TOOD), PP-YOLOE's assigner after the static stage (recipe key ``PPYoloELoss``).

    :param topk: positives per box at most; PP-YOLOE uses 13.
    :param alpha: power of the predicted class score in the alignment metric (1.0).
    :param beta: power of the predicted box IoU in the alignment metric (6.0).
    """

    def __init__(self, topk: int = 13, alpha: float = 1.0, beta: float = 6.0, eps: float = 1e-9):
        self.topk = int(topk)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.eps = eps

    def __repr__(self) -> str:
        return f"TaskAlignedAssigner(topk={self.topk}, alpha={self.alpha}, beta={self.beta})"

    @torch.no_grad()
    def __call__(self, pred_scores: torch.Tensor, pred_boxes: torch.Tensor, anchor_points: torch.Tensor,
                 gt_labels: torch.Tensor, gt_boxes: torch.Tensor, gt_mask: torch.Tensor,
                 num_classes: int) -> Assignment:
        """Assign from predicted probabilities ``[B, A, C]`` and boxes ``[B, A, 4]`` (units of ``gt_boxes``)."""
        batch_size, num_anchors, _ = pred_scores.shape
        num_max = gt_boxes.shape[1]
        if num_max == 0:
            return empty_assignment(batch_size, num_anchors, num_classes, gt_boxes)
        _check_classes(gt_labels, gt_mask, num_classes)
        ious = pairwise_iou(gt_boxes, pred_boxes)  # [B, n, A]
        # The predicted probability of each box's class at every anchor: [B, n, A].
        class_scores = torch.gather(pred_scores.transpose(1, 2), 1,
                                    gt_labels.unsqueeze(-1).expand(-1, -1, num_anchors))
        metric = class_scores.pow(self.alpha) * ious.pow(self.beta)
        inside = points_in_boxes(anchor_points, gt_boxes, self.eps)
        k = min(self.topk, num_anchors)
        top = (metric * inside).topk(k, dim=-1).indices
        chosen = torch.zeros_like(inside).scatter_(-1, top, True)
        positive = chosen & inside & gt_mask.unsqueeze(-1)

        fg, gt_index = _resolve_conflicts(positive, ious)
        keep = F.one_hot(gt_index, num_max).transpose(1, 2).bool() & fg.unsqueeze(1)  # [B, n, A]
        # Rescale: each box's best metric maps to that box's best IoU among its positives.
        metric = metric * keep
        best_metric = metric.amax(-1, keepdim=True)
        best_iou = (ious * keep).amax(-1, keepdim=True)
        soft = (metric / (best_metric + self.eps) * best_iou).amax(dim=1)
        return _gather_assignment(fg, gt_index, gt_labels, gt_boxes, soft, num_classes)
