"""From matched detections to AP, precision, recall and F1 per class and IoU threshold, as COCOeval accumulates.

Serves the ``DetectionMetrics*`` metrics (recipe key ``valid_metrics_list``) at ``compute()``. Every class is
processed at once: detections are laid out class by class ("segments") and per-class scans become global
scans with the segment's offset removed.

COCOeval's accumulation for one class and IoU threshold: detections of every image sorted by descending score
(stable, images in ascending id order), cumulative true and false positives (ignored detections add to
neither), ``recall = tp / num_gt``, ``precision = tp / (tp + fp + eps)``, precision made non-increasing from the
right, then read at the first detection whose recall reaches each recall threshold (0 past the last one);
AP is the mean over the recall thresholds. Classes without (non-crowd) ground truth get no AP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from super_recipes.detection.matching import FALSE_POSITIVE, TRUE_POSITIVE, stable_argsort

_EPS = 2.220446049250313e-16  # numpy's spacing(1), the guard COCOeval adds to tp + fp


@dataclass
class PerClassResults:
    """``[T, C]`` tensors (T IoU thresholds, C classes); NaN where a class has no ground truth."""

    ap: torch.Tensor
    precision: torch.Tensor
    recall: torch.Tensor
    f1: torch.Tensor
    has_gt: torch.Tensor  # [C] bool
    best_score_threshold: float | None = None
    best_class_score_thresholds: torch.Tensor | None = None  # [C]


def coco_order(scores: torch.Tensor, classes: torch.Tensor, image_keys: torch.Tensor) -> torch.Tensor:
    """Permutation laying detections out by class, then descending score, ties by image key then arrival.

    Detections arrive image by image, already in descending score order within an image: the order COCOeval
    concatenates them in before its stable sort by score.
    """
    order = stable_argsort(image_keys)
    order = order[stable_argsort(scores[order], descending=True)]
    return order[stable_argsort(classes[order])]


def accumulate(scores: torch.Tensor, classes: torch.Tensor, status: torch.Tensor, image_keys: torch.Tensor,
               gt_per_class: torch.Tensor, recall_thresholds: torch.Tensor, score_threshold: float,
               best_threshold_grid: torch.Tensor | None = None) -> PerClassResults:
    """Per-class, per-threshold metrics of detections ``status [N, T]`` (see :mod:`matching`)."""
    num_classes = len(gt_per_class)
    order = coco_order(scores, classes, image_keys)
    scores, classes, status = scores[order], classes[order], status[order].T  # status: [T, N]
    num_dets = len(scores)
    counts = torch.bincount(classes, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    segment_start = starts[classes]  # [N]
    tp = _segment_cumsum(status == TRUE_POSITIVE, segment_start)  # [T, N]
    fp = _segment_cumsum(status == FALSE_POSITIVE, segment_start)
    num_gt = gt_per_class.to(torch.float64)
    has_gt = gt_per_class > 0

    precision_curve = tp.double() / (tp.double() + fp.double() + _EPS)
    # Non-increasing from the right within each class: later classes are shifted below every value of
    # earlier ones, so one global reversed cummax never crosses a class boundary (error ~1e-14).
    shift = 2.0 * classes.to(torch.float64)
    interpolated = (precision_curve - shift).flip(-1).cummax(-1).values.flip(-1) + shift

    # Recall threshold r is first reached at the first detection with tp >= n(r), the least n with
    # float(n / num_gt) >= r, found exactly in integers so ties with COCOeval's float compare never differ.
    needed = _least_tp_reaching(recall_thresholds, gt_per_class)  # [C, R]
    stride = num_dets + 1
    keys = tp + classes * stride  # non-decreasing along N
    queries = (needed + torch.arange(num_classes, device=needed.device)[:, None] * stride).flatten()
    position = torch.searchsorted(keys, queries.expand(len(tp), -1).contiguous())  # [T, C*R]
    position = position.view(len(tp), num_classes, -1)
    reached = position < (starts + counts)[None, :, None]
    if num_dets:
        picked = interpolated.gather(1, position.clamp(max=num_dets - 1).flatten(1)).view_as(position)
        q = torch.where(reached, picked, 0.0)  # precision 0 past the last recall reached, as COCOeval
    else:
        q = torch.zeros(position.shape, dtype=torch.float64, device=position.device)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=q.device)
    ap = torch.where(has_gt, q.mean(-1), nan)

    at_threshold = torch.bincount(classes[scores >= score_threshold], minlength=num_classes)  # [C]
    precision, recall, f1 = _prf(tp, fp, starts, at_threshold[None, :], num_gt[:, None])  # [T, C, 1]
    results = PerClassResults(ap=ap, precision=torch.where(has_gt, precision[..., 0], nan),
                              recall=torch.where(has_gt, recall[..., 0], nan),
                              f1=torch.where(has_gt, f1[..., 0], nan), has_gt=has_gt)
    if best_threshold_grid is not None:
        _best_thresholds(results, scores, classes, tp, fp, starts, num_gt, best_threshold_grid)
    return results


def _segment_cumsum(flags: torch.Tensor, segment_start: torch.Tensor) -> torch.Tensor:
    total = torch.cumsum(flags, dim=-1)
    before = torch.nn.functional.pad(total, (1, 0))[:, segment_start]  # running count before the segment
    return total - before


def _least_tp_reaching(recall_thresholds: torch.Tensor, gt_per_class: torch.Tensor) -> torch.Tensor:
    num_gt = gt_per_class.clamp(min=1).to(torch.float64)[:, None]
    guess = torch.ceil(recall_thresholds[None, :] * num_gt).long() - 1
    needed = guess + 2
    # float rounding moves the answer by at most one from the real-number guess: test from the top down
    for n in (guess + 1, guess):
        needed = torch.where((n >= 0) & (n / num_gt >= recall_thresholds[None, :]), n, needed)
    return needed


def _prf(tp: torch.Tensor, fp: torch.Tensor, starts: torch.Tensor, kept: torch.Tensor, num_gt: torch.Tensor,
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Precision, recall, F1 ``[T, C, S]`` when class ``c`` keeps its ``kept[s, c]`` best detections."""
    kept = kept.T  # [C, S]
    last = (starts[:, None] + kept - 1).clamp(min=0)
    if tp.shape[1]:
        tp_at = torch.where(kept > 0, tp[:, last], 0).to(torch.float64)
        fp_at = torch.where(kept > 0, fp[:, last], 0).to(torch.float64)
    else:
        tp_at = fp_at = torch.zeros(tp.shape[0], *kept.shape, dtype=torch.float64, device=tp.device)
    precision = tp_at / (tp_at + fp_at).clamp(min=1)
    recall = tp_at / num_gt.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=_EPS)
    return precision, recall, f1


def _best_thresholds(results: PerClassResults, scores: torch.Tensor, classes: torch.Tensor, tp: torch.Tensor,
                     fp: torch.Tensor, starts: torch.Tensor, num_gt: torch.Tensor, grid: torch.Tensor) -> None:
    """The grid value that maximises F1 (mean over IoU thresholds; over classes with ground truth for the
    overall one); the lowest such value on ties."""
    num_classes = len(num_gt)
    grid = grid.to(scores)
    # kept[s, c]: detections of class c scored at least grid[s]
    above = torch.searchsorted(grid, scores, right=True)  # how many grid values each score reaches
    histogram = torch.zeros(num_classes, len(grid) + 1, dtype=torch.long, device=scores.device)
    histogram.index_put_((classes, above), torch.ones_like(above), accumulate=True)
    kept = histogram.flip(-1).cumsum(-1).flip(-1)[:, 1:].T  # [S, C]
    _, _, f1 = _prf(tp, fp, starts, kept, num_gt[:, None])  # [T, C, S]
    f1 = f1.mean(0)  # [C, S]
    results.best_class_score_thresholds = torch.where(
        results.has_gt, grid[f1.argmax(-1)], torch.tensor(float("nan"), dtype=grid.dtype, device=grid.device))
    if results.has_gt.any():
        results.best_score_threshold = float(grid[f1[results.has_gt].mean(0).argmax()])
