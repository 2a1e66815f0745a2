"""Detection metrics (recipe key ``valid_metrics_list``): ``DetectionMetrics`` and the fixed-threshold variants
``DetectionMetrics_050``, ``DetectionMetrics_075`` and ``DetectionMetrics_050_095``.

``compute()`` returns a dict; each key is usable as ``metric_to_watch`` and is logged as ``valid/<key>``:

* ``mAP@0.50:0.95`` (or ``mAP@0.50`` for one threshold): COCOeval's bbox AP, area "all". With the defaults it
  equals pycocotools' ``stats[0]`` (``stats[1]``/``stats[2]`` for 0.50/0.75) on the same boxes: 101 recall
  points, greedy matching in score order, crowd regions absorbing detections (intersection over detection area)
  that then count as neither true nor false positives, at most ``top_k_predictions`` (100) detections per image
  *and class* (COCOeval applies ``maxDets`` per image and category), the mean over classes that have non-crowd
  ground truth (the others are left out, as COCOeval's ``-1`` entries are; ``-1`` when no class has any).
* ``Precision@...``, ``Recall@...``, ``F1@...``: the detections scored at least ``score_thres`` (after the top-k
  cut), un-interpolated ``tp / (tp + fp)`` and ``tp / num_gt`` per class and IoU threshold (precision 0 for a
  class without such detections), F1 per class and threshold from those two, each averaged over thresholds and
  the classes with ground truth. ``score_thres`` never changes the mAP.
* ``AP@..._<class name>`` per class when ``include_classwise_ap`` (NaN for a class without ground truth).
* ``Best_score_threshold`` (and ``Best_score_threshold_<class name>``) when ``calc_best_score_thresholds``: the
  value of the grid 0.00, 0.01, ..., 1.00 that maximises F1 (mean over IoU thresholds and classes).

Departures from COCOeval, all opt-in: ``top_k_per_class=False`` keeps the ``top_k_predictions`` best detections
per image over all classes (the YOLO/SuperGradients habit), ``recall_thres`` other recall points,
``iou_thres`` other thresholds. Boxes are compared in the model's input pixels (COCOeval uses the original
image); the :class:`~super_recipes.detection.coco_evaluation.CocoEvaluationCallback` gives the official numbers.

Each image is matched during ``update`` on the device; only per-detection results (score, class, status per
threshold, image key) and ground-truth counts are kept, in torchmetrics states gathered across DDP ranks, so
every image counts once whatever the number of processes.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchmetrics
from torchmetrics.utilities import dim_zero_cat

from super_recipes.detection.matching import (
    cxcywh_to_xyxy,
    detection_rows,
    group_positions,
    match_image_batch,
    pad_by_image,
    resolve_post_prediction_callback,
    stable_argsort,
)
from super_recipes.detection.precision_recall import accumulate
from super_recipes.errors import RecipeError
from super_recipes.registry import register_metric, to_plain

_STATES = {"scores": torch.float64, "classes": torch.long, "status": torch.int8, "image_keys": torch.long}


def iou_thresholds(iou_thres: float | Sequence[float]) -> np.ndarray:
    """One threshold, ``[lo, hi]`` in 0.05 steps both included (as COCOeval builds 0.50:0.95), or a list."""
    values = to_plain(iou_thres)
    if isinstance(values, int | float):
        return np.array([float(values)])
    values = [float(v) for v in values]
    if len(values) == 2:
        low, high = values
        return np.linspace(low, high, int(np.round((high - low) / 0.05)) + 1, endpoint=True)
    return np.array(values)


@register_metric("DetectionMetrics")
class DetectionMetrics(torchmetrics.Metric):
    """COCO-style mAP with precision, recall and F1 at a confidence threshold (see the module docstring).

    :param num_cls: number of classes (labels ``0..num_cls-1``; other labels are ignored).
    :param post_prediction_callback: turns the raw model output into a list (one per image) of ``[K, 6]``
        tensors ``x1, y1, x2, y2, confidence, class`` in input pixels; an object, dotted path or ``_target_``
        node; ``None`` when the model already returns that.
    :param normalize_targets: targets (and crowd targets) are in ``0..1``: scaled by the input size, taken from
        the batch extra ``input_dim`` or else the ``input_dim`` argument (``[h, w]``).
    :param iou_thres: one IoU threshold or ``[lo, hi]`` (0.05 steps, inclusive).
    :param score_thres: confidence above which precision, recall and F1 are measured (not the mAP).
    :param top_k_predictions: keep at most this many detections per image and class (``None``: all).
    :param top_k_per_class: ``False`` applies ``top_k_predictions`` per image over all classes instead.
    :param recall_thres: recall points of the AP (default 101 points, 0 to 1).
    :param include_classwise_ap: also report ``AP@..._<class name>`` per class.
    :param class_names: names used in per-class keys (default: the class index).
    :param calc_best_score_thresholds: also report the confidence threshold maximising F1.
    :param input_dim: ``[h, w]`` of the model input, for ``normalize_targets``.
    """

    accepts_batch_extras = True
    full_state_update = False
    higher_is_better = True

    def __init__(self, num_cls: int, post_prediction_callback: Any = None, normalize_targets: bool = False,
                 iou_thres: float | Sequence[float] = (0.5, 0.95), score_thres: float = 0.1,
                 top_k_predictions: int | None = 100, top_k_per_class: bool = True,
                 recall_thres: Sequence[float] | None = None, include_classwise_ap: bool = False,
                 class_names: Sequence[str] | None = None, calc_best_score_thresholds: bool = False,
                 input_dim: Sequence[int] | None = None):
        super().__init__()
        self.num_cls = int(num_cls)
        self.post_prediction_callback = resolve_post_prediction_callback(post_prediction_callback)
        self.normalize_targets = normalize_targets
        thresholds = iou_thresholds(iou_thres)
        self.iou_thresholds = thresholds.tolist()
        # COCOeval caps a threshold just below 1 so that IoU == 1 still matches at 1.0.
        self._matching_thresholds = np.minimum(thresholds, 1 - 1e-10).tolist()
        self.recall_thresholds = (np.linspace(0.0, 1.0, 101, endpoint=True) if recall_thres is None
                                  else np.asarray(to_plain(recall_thres), dtype=np.float64)).tolist()
        self.score_thres = float(score_thres)
        self.top_k_predictions = top_k_predictions
        self.top_k_per_class = top_k_per_class
        self.include_classwise_ap = include_classwise_ap
        self.class_names = [str(n) for n in class_names] if class_names is not None else [
            str(i) for i in range(self.num_cls)]
        if len(self.class_names) != self.num_cls:
            raise RecipeError(f"class_names has {len(self.class_names)} names but num_cls is {self.num_cls}.")
        self.calc_best_score_thresholds = calc_best_score_thresholds
        self.input_dim = tuple(to_plain(input_dim)) if input_dim is not None else None
        low, high = thresholds[0], thresholds[-1]
        self.suffix = f"@{low:.2f}" if len(thresholds) == 1 else f"@{low:.2f}:{high:.2f}"
        for name in _STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.add_state("gt_per_class", default=torch.zeros(self.num_cls, dtype=torch.long), dist_reduce_fx="sum")
        self._images_seen = 0  # stands in for image ids (only to order tied scores); never reset
        self._seed_states()

    @property
    def component_names(self) -> list[str]:
        """The keys ``compute()`` returns, known before any update."""
        names = [f"{kind}{self.suffix}" for kind in ("mAP", "Precision", "Recall", "F1")]
        if self.include_classwise_ap:
            names += [f"AP{self.suffix}_{n}" for n in self.class_names]
        if self.calc_best_score_thresholds:
            names += ["Best_score_threshold"] + [f"Best_score_threshold_{n}" for n in self.class_names]
        return names

    def _seed_states(self) -> None:
        # A typed empty entry in every list state: a DDP rank that saw no image then still gathers tensors of
        # the right dtype and rank (torchmetrics would substitute a 1-D float tensor).
        num_thresholds = len(self.iou_thresholds)
        for name, dtype in _STATES.items():
            shape = (0, num_thresholds) if name == "status" else (0,)
            getattr(self, name).append(torch.zeros(shape, dtype=dtype, device=self.device))

    def reset(self) -> None:
        super().reset()
        self._seed_states()

    def update(self, preds: Any, targets: torch.Tensor, crowd_targets: torch.Tensor | None = None,
               image_ids: Any = None, input_dim: Any = None, **extras: Any) -> None:
        """Match one batch. ``targets``/``crowd_targets``: ``[N, 6]`` (image index, label, cx, cy, w, h).

        ``image_ids`` (optional) order tied scores across images as COCOeval does (ascending id); the other
        batch extras (``original_shapes``, ``scales``, ``pads``...) are accepted and not needed.
        """
        predictions = self.post_prediction_callback(preds)
        num_images = len(predictions)
        device = self.device
        scale = self._target_scale(input_dim) if self.normalize_targets else None
        boxes, scores, labels, image = self._predictions(predictions, device)
        gt_valid, (gt_boxes, gt_labels), _ = self._targets(targets, num_images, scale, device)
        crowd_valid, (crowd_boxes, crowd_labels), _ = self._targets(crowd_targets, num_images, scale, device)
        det_valid, (det_boxes, det_labels), position = pad_by_image(image, num_images, boxes, labels)
        status = match_image_batch(det_boxes, det_labels, det_valid, gt_boxes, gt_labels, gt_valid,
                                   crowd_boxes, crowd_labels, crowd_valid,
                                   torch.tensor(self._matching_thresholds, dtype=torch.float64, device=device))
        keys = _image_keys(image_ids, num_images, device)
        keys = keys[image] if keys is not None else image + self._images_seen
        self._images_seen += num_images
        self.scores.append(scores)
        self.classes.append(labels)
        self.status.append(status[image, position])
        self.image_keys.append(keys)
        # out of place: the state may have been created under inference mode (reset inside validation)
        self.gt_per_class = self.gt_per_class + torch.bincount(gt_labels[gt_valid], minlength=self.num_cls)

    def _target_scale(self, input_dim: Any) -> torch.Tensor:
        dim = input_dim if input_dim is not None else self.input_dim
        if dim is None:
            raise RecipeError("DetectionMetrics(normalize_targets=True) needs the input size: pass input_dim=[h, w] "
                              "or let the collate function provide the batch extra 'input_dim'.")
        h, w = torch.as_tensor(dim, dtype=torch.float64).reshape(-1, 2)[0].tolist()
        return torch.tensor([w, h, w, h], dtype=torch.float64, device=self.device)

    def _predictions(self, predictions: Sequence[Any], device: torch.device,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Kept detections, image by image in descending score order: boxes, scores, labels, image index."""
        per_image = [detection_rows(p).to(device) for p in predictions]
        dets = torch.cat(per_image).double() if per_image else torch.zeros((0, 6), dtype=torch.float64,
                                                                          device=device)
        image = torch.repeat_interleave(torch.arange(len(per_image), device=device),
                                        torch.tensor([len(p) for p in per_image], device=device))
        labels = dets[:, 5].round().long()
        keep = (labels >= 0) & (labels < self.num_cls)
        dets, image, labels = dets[keep], image[keep], labels[keep]
        order = stable_argsort(dets[:, 4], descending=True)
        order = order[stable_argsort(image[order])]  # by image, descending score inside (stable on ties)
        dets, image, labels = dets[order], image[order], labels[order]
        if self.top_k_predictions is not None:
            group = image * self.num_cls + labels if self.top_k_per_class else image
            by_group = stable_argsort(group)
            rank = torch.empty_like(group)
            rank[by_group] = group_positions(group[by_group])
            keep = rank < self.top_k_predictions
            dets, image, labels = dets[keep], image[keep], labels[keep]
        return dets[:, :4], dets[:, 4], labels, image

    def _targets(self, targets: torch.Tensor | None, num_images: int, scale: torch.Tensor | None,
                 device: torch.device) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        if targets is None:
            targets = torch.zeros((0, 6), dtype=torch.float64, device=device)
        targets = torch.as_tensor(targets).to(device=device, dtype=torch.float64).reshape(-1, 6)
        image, labels = targets[:, 0].long(), targets[:, 1].long()
        keep = (image >= 0) & (image < num_images) & (labels >= 0) & (labels < self.num_cls)
        boxes = targets[keep, 2:] * scale if scale is not None else targets[keep, 2:]
        return pad_by_image(image[keep], num_images, cxcywh_to_xyxy(boxes), labels[keep])

    def compute(self) -> dict[str, torch.Tensor]:
        states = {name: dim_zero_cat(getattr(self, name)) for name in _STATES}
        device = states["scores"].device
        grid = torch.linspace(0, 1, 101, dtype=torch.float64) if self.calc_best_score_thresholds else None
        results = accumulate(
            states["scores"], states["classes"], states["status"].reshape(-1, len(self.iou_thresholds)),
            states["image_keys"], self.gt_per_class,
            torch.tensor(self.recall_thresholds, dtype=torch.float64, device=device), self.score_thres,
            grid.to(device) if grid is not None else None)
        has_gt = results.has_gt
        out: dict[str, torch.Tensor] = {}
        for kind, values in (("mAP", results.ap), ("Precision", results.precision), ("Recall", results.recall),
                             ("F1", results.f1)):
            out[f"{kind}{self.suffix}"] = values[:, has_gt].mean() if has_gt.any() else values.new_tensor(-1.0)
        if self.include_classwise_ap:
            for name, ap in zip(self.class_names, results.ap.mean(0), strict=True):
                out[f"AP{self.suffix}_{name}"] = ap
        if self.calc_best_score_thresholds:
            best = results.best_score_threshold
            out["Best_score_threshold"] = torch.tensor(-1.0 if best is None else best, dtype=torch.float64)
            for name, value in zip(self.class_names, results.best_class_score_thresholds, strict=True):
                out[f"Best_score_threshold_{name}"] = value
        return {k: v.float() for k, v in out.items()}


def _image_keys(image_ids: Any, num_images: int, device: torch.device) -> torch.Tensor | None:
    if image_ids is None:
        return None
    try:
        keys = torch.as_tensor(image_ids, device=device).reshape(-1).long()
    except (TypeError, ValueError, RuntimeError):  # non-numeric ids: arrival order instead
        return None
    return keys if len(keys) == num_images else None


def _fixed_threshold_variant(name: str, iou_thres: float | tuple[float, float]) -> type[DetectionMetrics]:
    def __init__(self: DetectionMetrics, *args: Any, **kwargs: Any) -> None:
        DetectionMetrics.__init__(self, *args, iou_thres=iou_thres, **kwargs)

    label = iou_thresholds(iou_thres)
    span = f"{label[0]:.2f}" if len(label) == 1 else f"{label[0]:.2f}:{label[-1]:.2f}"
    cls = type(name, (DetectionMetrics,), {
        "__init__": __init__, "__module__": __name__, "__qualname__": name,
        "__doc__": f"``DetectionMetrics`` at IoU {span} (keys ``mAP@{span}``...); the same arguments, "
                   f"``iou_thres`` excepted."})
    # The recipe checks arguments against this signature: a misspelt or fixed argument is refused by name.
    parameters = inspect.signature(DetectionMetrics).parameters
    cls.__signature__ = inspect.Signature([p for n, p in parameters.items() if n != "iou_thres"])
    return register_metric(name)(cls)


DetectionMetrics_050 = _fixed_threshold_variant("DetectionMetrics_050", 0.5)
DetectionMetrics_075 = _fixed_threshold_variant("DetectionMetrics_075", 0.75)
DetectionMetrics_050_095 = _fixed_threshold_variant("DetectionMetrics_050_095", (0.5, 0.95))
