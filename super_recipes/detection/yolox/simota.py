"""SimOTA label assignment for YOLOX (Ge et al., 2021, "YOLOX: Exceeding YOLO Series in 2021", section 2.2).

Serves the assignment step of the ``YoloXDetectionLoss`` / ``YoloXFastDetectionLoss`` recipe losses. For every
ground-truth box the anchors (one point per feature-map cell) whose centre lies inside the box or within
``radius * stride`` of the box centre are candidates. A pair cost ``cls + 3 * (-log IoU) + 1e5 * (not in both
the box and the centre region)`` ranks them; each box takes its ``k`` cheapest candidates, ``k`` being the
integer part of the sum of its 10 best IoUs (at least 1); an anchor claimed by several boxes keeps the cheapest.

:func:`assign_per_image` follows that description literally, one image and one box at a time: it is the
reference. :func:`assign_batched` does the whole batch at once on padded ``[B, G, A]`` tensors and returns the
same assignment: both share the cost arithmetic, and ties (equal costs, which the ``1e5`` term makes likely among
anchors outside the centre region) go to the lowest anchor or box index in both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IOU_COST_WEIGHT = 3.0
OUTSIDE_COST = 100000.0  # pushes candidates outside "box and centre region" behind every candidate inside it
TOP_IOUS_FOR_K = 10


@dataclass
class Assignment:
    """The foreground anchors of a batch and the ground truth each one learns, in ``fg.nonzero()`` order."""

    fg: torch.Tensor  # [B, A] bool
    gt_index: torch.Tensor  # [F] index of the matched box within its image's targets
    boxes: torch.Tensor  # [F, 4] matched boxes, cx, cy, w, h pixels
    labels: torch.Tensor  # [F] int64
    ious: torch.Tensor  # [F] IoU of the anchor's predicted box with its match (the class target's soft label)


@dataclass
class Predictions:
    """Per-anchor quantities the assignment reads, computed once for the whole batch (no gradient)."""

    boxes: torch.Tensor  # [B, A, 4] decoded boxes, cx, cy, w, h pixels
    log_p: torch.Tensor  # [B, A, C] log of the joint score sqrt(sigmoid(cls) * sigmoid(obj))
    log_1mp: torch.Tensor  # [B, A, C] log(1 - joint score), clamped like torch's BCE
    neg_sum: torch.Tensor  # [B, A] -sum_c log(1 - p_c): the cls cost of an all-negative target
    centres: torch.Tensor  # [A, 2] anchor points, pixels
    strides: torch.Tensor  # [A]


def prepare(boxes: torch.Tensor, obj_logits: torch.Tensor, cls_logits: torch.Tensor, centres: torch.Tensor,
            strides: torch.Tensor) -> Predictions:
    """The assignment inputs; the score is YOLOX's joint one, so the cost prefers confident *and* correct anchors."""
    log_p = 0.5 * (torch.nn.functional.logsigmoid(cls_logits) + torch.nn.functional.logsigmoid(obj_logits)[..., None])
    # torch's binary_cross_entropy clamps its logs at -100; doing the same keeps saturated scores finite.
    log_1mp = torch.log1p(-log_p.exp()).clamp(min=-100.0)
    return Predictions(boxes, log_p, log_1mp, -log_1mp.sum(-1), centres, strides)


def box_iou(a: torch.Tensor, b: torch.Tensor, generalized: bool = False) -> torch.Tensor:
    """IoU (or GIoU) of cx, cy, w, h boxes, broadcasting over the leading dimensions."""
    a1, a2 = a[..., :2] - a[..., 2:] / 2, a[..., :2] + a[..., 2:] / 2
    b1, b2 = b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2
    inter = (torch.minimum(a2, b2) - torch.maximum(a1, b1)).clamp(min=0).prod(-1)
    union = a[..., 2:].prod(-1) + b[..., 2:].prod(-1) - inter
    iou = inter / union.clamp(min=1e-16)
    if not generalized:
        return iou
    hull = (torch.maximum(a2, b2) - torch.minimum(a1, b1)).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-16)


def pairwise_iou(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """``[..., G, 4]`` x ``[..., A, 4]`` -> ``[..., G, A]``."""
    return box_iou(gt[..., :, None, :], pred[..., None, :, :])


def prior_masks(gt: torch.Tensor, centres: torch.Tensor, strides: torch.Tensor,
                radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., G, A]`` masks: anchor point strictly inside the box, and within ``radius * stride`` of its centre."""
    offset = centres - gt[..., :, None, :2]  # [..., G, A, 2]
    in_box = (offset.abs() < gt[..., :, None, 2:] / 2).all(-1)
    in_centre = (offset.abs() < (radius * strides)[:, None]).all(-1)
    return in_box, in_centre


def pair_cost(ious: torch.Tensor, in_both: torch.Tensor, labels: torch.Tensor, log_p: torch.Tensor,
              log_1mp: torch.Tensor, neg_sum: torch.Tensor) -> torch.Tensor:
    """SimOTA cost ``[..., G, A]``; ``log_p``/``log_1mp`` ``[..., A, C]``, ``labels`` ``[..., G]``.

    The class cost is the BCE summed over classes against the one-hot label, rewritten as the all-negative sum
    corrected at the label, so no ``[G, A, C]`` tensor is built (80 classes x 8400 anchors x every box).
    """
    index = labels[..., None, :].expand(*log_p.shape[:-1], labels.shape[-1])  # [..., A, G]
    at_label = (log_p.gather(-1, index) - log_1mp.gather(-1, index)).transpose(-1, -2)  # [..., G, A]
    cls_cost = neg_sum[..., None, :] - at_label
    return cls_cost + IOU_COST_WEIGHT * -torch.log(ious + 1e-8) + OUTSIDE_COST * (~in_both).to(ious.dtype)


def dynamic_k(candidate_ious: torch.Tensor) -> torch.Tensor:
    """``floor(sum of the 10 best IoUs)``, at least 1, per box (``[..., G, A]`` -> ``[..., G]``)."""
    top = candidate_ious.topk(min(TOP_IOUS_FOR_K, candidate_ious.shape[-1]), dim=-1).values
    # In float64 the sum of <= 10 float32 values is exact, hence independent of summation order and padding.
    return top.double().sum(-1).long().clamp(min=1)


def assign_per_image(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, preds: Predictions, image: int,
                     radius: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image: ``fg`` ``[A]`` bool, matched box index ``[F]`` and IoU ``[F]`` (anchor order)."""
    num_anchors = preds.centres.shape[0]
    fg = torch.zeros(num_anchors, dtype=torch.bool, device=gt_boxes.device)
    nothing = (fg, gt_labels.new_zeros(0), gt_boxes.new_zeros(0))
    if len(gt_boxes) == 0:
        return nothing
    in_box, in_centre = prior_masks(gt_boxes, preds.centres, preds.strides, radius)
    candidates = (in_box | in_centre).any(0).nonzero().squeeze(1)
    if len(candidates) == 0:
        return nothing
    ious = pairwise_iou(gt_boxes, preds.boxes[image, candidates])
    cost = pair_cost(ious, (in_box & in_centre)[:, candidates], gt_labels, preds.log_p[image, candidates],
                     preds.log_1mp[image, candidates], preds.neg_sum[image, candidates])
    ks = dynamic_k(ious).tolist()
    matching = torch.zeros_like(cost, dtype=torch.bool)
    for g, k in enumerate(ks):
        matching[g, cost[g].argsort(stable=True)[:k]] = True
    shared = matching.sum(0) > 1
    if shared.any():
        matching[:, shared] = False
        matching[cost[:, shared].argmin(0), shared.nonzero().squeeze(1)] = True
    matched_columns = matching.any(0)
    gt_index = matching[:, matched_columns].int().argmax(0)
    fg[candidates[matched_columns]] = True
    return fg, gt_index, ious[gt_index, matched_columns.nonzero().squeeze(1)]


def assign_reference(targets: torch.Tensor, preds: Predictions, radius: float) -> Assignment:
    """The batch, one image at a time (``targets`` ``[N, 6]``: image index, label, cx, cy, w, h)."""
    fgs, indices, boxes, labels, ious = [], [], [], [], []
    for image in range(preds.boxes.shape[0]):
        mine = targets[targets[:, 0] == image]
        fg, gt_index, iou = assign_per_image(mine[:, 2:6], mine[:, 1].long(), preds, image, radius)
        fgs.append(fg)
        indices.append(gt_index)
        boxes.append(mine[gt_index, 2:6])
        labels.append(mine[gt_index, 1].long())
        ious.append(iou)
    return Assignment(torch.stack(fgs), torch.cat(indices), torch.cat(boxes), torch.cat(labels), torch.cat(ious))


def lowest_k(cost: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
    """Mask of the ``ks[..., g]`` smallest entries of each row of ``cost``, ties going to the lowest index.

    ``topk`` alone breaks ties arbitrarily; its k-th value is exact though, so take everything below it and, of
    the entries equal to it, as many as are still needed in index order (what a stable sort would pick).
    """
    values = cost.topk(int(ks.max()), dim=-1, largest=False).values
    kth = values.gather(-1, (ks - 1)[..., None])
    below = cost < kth
    needed = ks - below.sum(-1)
    tied = cost == kth
    return below | (tied & (tied.cumsum(-1) <= needed[..., None]))


def assign_batched(targets: torch.Tensor, preds: Predictions, radius: float) -> Assignment:
    """The whole batch at once on boxes padded to ``[B, G_max]``: no Python loop over images or boxes."""
    batch, device = preds.boxes.shape[0], preds.boxes.device
    image = targets[:, 0].long()
    order = image.argsort(stable=True)  # keeps each image's boxes in their given order, as the reference does
    targets, image = targets[order], image[order]
    counts = torch.bincount(image, minlength=batch)
    slot = torch.arange(len(image), device=device) - (counts.cumsum(0) - counts)[image]
    width = max(int(counts.max()) if len(image) else 0, 1)
    gt = targets.new_zeros(batch, width, 4)
    gt[image, slot] = targets[:, 2:6]
    labels = torch.zeros(batch, width, dtype=torch.long, device=device)
    labels[image, slot] = targets[:, 1].long()
    valid = torch.zeros(batch, width, dtype=torch.bool, device=device)
    valid[image, slot] = True

    in_box, in_centre = prior_masks(gt, preds.centres, preds.strides, radius)
    in_box, in_centre = in_box & valid[..., None], in_centre & valid[..., None]
    candidate = (in_box | in_centre).any(1)  # [B, A]
    ious = pairwise_iou(gt, preds.boxes)  # [B, G, A]
    cost = pair_cost(ious, in_box & in_centre, labels, preds.log_p, preds.log_1mp, preds.neg_sum)
    usable = candidate[:, None, :] & valid[..., None]
    cost = cost.masked_fill(~usable, float("inf"))
    ks = dynamic_k(ious.masked_fill(~candidate[:, None, :], 0.0))
    matching = lowest_k(cost, ks) & usable
    claims = matching.sum(1)  # [B, A]
    gt_index = torch.where(claims > 1, cost.argmin(1), matching.int().argmax(1))
    fg = claims > 0
    gt_index = gt_index[fg]
    rows = fg.nonzero()[:, 0]
    return Assignment(fg, gt_index, gt[rows, gt_index], labels[rows, gt_index],
                      ious[rows, gt_index, fg.nonzero()[:, 1]])


def empty_assignment(batch: int, num_anchors: int, like: torch.Tensor) -> Assignment:
    """No foreground anywhere (a batch without targets)."""
    return Assignment(torch.zeros(batch, num_anchors, dtype=torch.bool, device=like.device),
                      torch.zeros(0, dtype=torch.long, device=like.device), like.new_zeros(0, 4),
                      torch.zeros(0, dtype=torch.long, device=like.device), like.new_zeros(0))
