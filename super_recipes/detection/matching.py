"""Per-image matching of detections to ground truth, as COCOeval does it, in batched torch ops, and the reading
of post-processed predictions shared by the metrics and the COCO callback.

Serves the ``DetectionMetrics*`` metrics (recipe key ``valid_metrics_list``) and ``CocoEvaluationCallback``
(``phase_callbacks``). Everything here runs on the device of its inputs; only the number of matching rounds is
read back (one small sync per round).

COCOeval's matching, per image, class and IoU threshold ``t``: detections are visited by descending score
(stable); each takes the unmatched regular ground-truth box of highest IoU, ``IoU >= t`` (ties: the last such
box), and when none qualifies, a crowd region with ``intersection / detection area >= t``; a detection that lands
on a crowd region is *ignored* (neither true nor false positive), and crowd regions may absorb any number of
detections. :func:`greedy_match` reproduces that sequential greedy result with a few parallel rounds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from super_recipes.registry import PROCESSING, resolve_callable

# The status of a detection at one IoU threshold, stored per detection and threshold.
FALSE_POSITIVE, TRUE_POSITIVE, IGNORED = 0, 1, 2


def resolve_post_prediction_callback(spec: Any, where: str = "post_prediction_callback") -> Callable[[Any], Any]:
    """``post_prediction_callback``: the registry's object-spec grammar (a registered name such as
    ``YoloXPostPredictionCallback``, a dotted path, ``{Name: {kwargs}}``, a ``_target_`` node, or the object).

    ``None`` means the predictions are already per-image ``[K, 6]`` tensors.
    """
    callback = resolve_callable(PROCESSING, spec, where)
    return _identity if callback is None else callback


def _identity(preds: Any) -> Any:
    return preds


def detection_rows(prediction: Any) -> torch.Tensor:
    """One image's post-processed predictions as a float ``[K, 6]`` tensor (``None`` or empty: no rows)."""
    rows = torch.as_tensor(prediction if prediction is not None else [])
    if rows.numel() == 0:
        return torch.zeros((0, 6), dtype=torch.float32, device=rows.device)
    return rows.reshape(-1, rows.shape[-1])[:, :6]


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def group_positions(keys: torch.Tensor) -> torch.Tensor:
    """For keys sorted ascending: the position of each element within its run of equal keys."""
    first = torch.searchsorted(keys, keys, side="left")
    return torch.arange(len(keys), device=keys.device) - first


def stable_argsort(values: torch.Tensor, descending: bool = False) -> torch.Tensor:
    return torch.sort(values, descending=descending, stable=True).indices


def pad_by_image(image_index: torch.Tensor, num_images: int, *columns: torch.Tensor,
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
    """Scatter rows grouped by ``image_index`` into ``[num_images, max_rows, ...]`` tensors.

    Rows keep their relative order inside an image (COCOeval's tie-breaks depend on it). Returns the validity
    mask ``[B, R]``, the padded columns, and each row's position in its image.
    """
    order = stable_argsort(image_index)
    sorted_index = image_index[order]
    position = torch.empty_like(image_index)
    position[order] = group_positions(sorted_index)
    rows = int(position.max()) + 1 if len(position) else 0
    valid = torch.zeros(num_images, rows, dtype=torch.bool, device=image_index.device)
    valid[image_index, position] = True
    padded = []
    for column in columns:
        out = column.new_zeros((num_images, rows, *column.shape[1:]))
        out[image_index, position] = column
        padded.append(out)
    return valid, tuple(padded), position


def pairwise_overlaps(dets: torch.Tensor, gts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched ``(IoU, intersection / detection area)`` of ``[B, D, 4]`` and ``[B, G, 4]`` XYXY boxes.

    Computed in float64 so that a box pair lying exactly on a threshold is decided as pycocotools decides it.
    """
    dets, gts = dets.double(), gts.double()
    top_left = torch.maximum(dets[:, :, None, :2], gts[:, None, :, :2])
    bottom_right = torch.minimum(dets[:, :, None, 2:], gts[:, None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    det_area = ((dets[..., 2] - dets[..., 0]) * (dets[..., 3] - dets[..., 1]))[:, :, None]
    gt_area = ((gts[..., 2] - gts[..., 0]) * (gts[..., 3] - gts[..., 1]))[:, None, :]
    overlapping = inter > 0  # disjoint or degenerate pairs score 0, never 0/0
    iou = torch.where(overlapping, inter / torch.where(overlapping, det_area + gt_area - inter, 1.0), 0.0)
    ioa = torch.where(overlapping, inter / torch.where(overlapping, det_area, 1.0), 0.0)
    return iou, ioa


def greedy_match(iou: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Which detections COCOeval's greedy pass matches to a regular box: ``[B, T, D]`` bool.

    ``iou`` is ``[B, D, G]`` with detections in visiting order (descending score) along ``D`` and ``-1`` for
    pairs that may not match (other class, padding). Instead of a loop over detections, each round lets every
    open detection propose its best free box, and accepts a proposal when no *earlier* open detection could
    take that box (its IoU with it reaches the threshold): taking other boxes never changes a detection's best
    free box, so accepted proposals are exactly what the sequential pass decides. The first open detection is
    always accepted; the number of rounds is the depth of chains of detections competing for the same boxes
    (about the number of duplicates per object), not the number of detections.
    """
    num_images, num_dets, num_gts = iou.shape
    num_thresholds = len(thresholds)
    matched = torch.zeros(num_images, num_thresholds, num_dets, dtype=torch.bool, device=iou.device)
    if num_dets == 0 or num_gts == 0:
        return matched
    # Most detections of a real model reach no box even at the lowest threshold: drop them first (order kept),
    # since the rounds cost grows with the square of the detections per image.
    hopeful = (iou >= thresholds.min()).any(-1)  # [B, D]
    image, det = hopeful.nonzero(as_tuple=True)
    if len(det) == 0:
        return matched
    valid, (compact,), position = pad_by_image(image, num_images, iou[image, det])
    matched[image, :, det] = _greedy_rounds(torch.where(valid[..., None], compact, -1.0),
                                            thresholds)[image, :, position]
    return matched


def _greedy_rounds(iou: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    num_images, num_dets, num_gts = iou.shape
    num_thresholds = len(thresholds)
    matched = torch.zeros(num_images, num_thresholds, num_dets, dtype=torch.bool, device=iou.device)
    iou = iou[:, None].expand(-1, num_thresholds, -1, -1)
    reaches = iou >= thresholds.to(iou)[None, :, None, None]  # [B, T, D, G]
    earlier = torch.ones(num_dets, num_dets, dtype=torch.bool, device=iou.device).triu(1)  # [j, k]: j < k
    # One spare column receives the writes of rejected proposals, so a scatter never needs a mask.
    taken = torch.zeros(num_images, num_thresholds, num_gts + 1, dtype=torch.bool, device=iou.device)
    open_dets = reaches.any(-1)
    while bool(open_dets.any()):
        candidates = reaches & ~taken[:, :, None, :num_gts]
        open_dets &= candidates.any(-1)  # no free box now means none later: an unmatched detection
        value = torch.where(candidates, iou, -1.0)
        best = num_gts - 1 - value.flip(-1).argmax(-1)  # the last box among equal IoUs, as COCOeval
        contested = reaches.gather(3, best[:, :, None, :].expand(-1, -1, num_dets, -1))  # [b, t, j, k]
        blocked = (contested & open_dets[..., :, None] & earlier).any(2)
        accepted = open_dets & ~blocked
        matched |= accepted
        taken.scatter_(2, torch.where(accepted, best, num_gts), True)
        open_dets &= ~accepted
    return matched


def match_image_batch(det_boxes: torch.Tensor, det_labels: torch.Tensor, det_valid: torch.Tensor,
                      gt_boxes: torch.Tensor, gt_labels: torch.Tensor, gt_valid: torch.Tensor,
                      crowd_boxes: torch.Tensor, crowd_labels: torch.Tensor, crowd_valid: torch.Tensor,
                      thresholds: torch.Tensor) -> torch.Tensor:
    """Status (``FALSE_POSITIVE``/``TRUE_POSITIVE``/``IGNORED``) of each detection per threshold: ``[B, D, T]``.

    Detections must be in descending score order along ``D`` within each image (stable for ties); classes
    never interact because pairs of different labels are masked out.
    """
    num_images, num_dets = det_labels.shape
    status = torch.zeros(num_images, num_dets, len(thresholds), dtype=torch.int8, device=det_labels.device)
    if num_dets == 0:
        return status
    pairable = det_valid[:, :, None] & gt_valid[:, None, :] & (det_labels[:, :, None] == gt_labels[:, None, :])
    iou, _ = pairwise_overlaps(det_boxes, gt_boxes)
    matched = greedy_match(torch.where(pairable, iou, -1.0), thresholds).transpose(1, 2)  # [B, D, T]
    status[matched] = TRUE_POSITIVE
    if crowd_valid.any():
        same = det_valid[:, :, None] & crowd_valid[:, None, :] & (det_labels[:, :, None] == crowd_labels[:, None, :])
        _, ioa = pairwise_overlaps(det_boxes, crowd_boxes)
        best_ioa = torch.where(same, ioa, -1.0).amax(-1)  # crowd regions are never used up
        on_crowd = best_ioa[..., None] >= thresholds.to(best_ioa)
        status[on_crowd & ~matched] = IGNORED
    return status
