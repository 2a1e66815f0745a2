"""The official COCO evaluation of each validation pass (recipe key ``training_hyperparams.phase_callbacks``:
``{CocoEvaluationCallback: {post_prediction_callback: ...}}``).

Validation predictions are mapped back to the original images (``original = (input - pad) / scale``, with the
batch extras ``image_ids``, ``scales``, ``pads`` and, for clipping, ``original_shapes``), their contiguous class
indices back to COCO category ids, and pycocotools' ``COCOeval`` scores them against the original annotations.
Its 12 summary numbers are logged and added to the validation results as ``valid/COCO/AP``, ``valid/COCO/AP50``,
``valid/COCO/AP75``, ``valid/COCO/APs``, ``valid/COCO/APm``, ``valid/COCO/APl``, ``valid/COCO/AR1``,
``valid/COCO/AR10``, ``valid/COCO/AR100``, ``valid/COCO/ARs``, ``valid/COCO/ARm``, ``valid/COCO/ARl``, so they
reach ``metrics.csv``, TensorBoard and ``metric_to_watch`` (``COCO/AP``). Under DDP the detections of every rank
are gathered to rank 0, which evaluates and shares the numbers with the other ranks.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from super_recipes.callbacks.base import Callback, PhaseContext
from super_recipes.detection.matching import detection_rows, resolve_post_prediction_callback
from super_recipes.errors import RecipeError
from super_recipes.registry import register_callback

logger = logging.getLogger("super_recipes")

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@register_callback("CocoEvaluationCallback")
class CocoEvaluationCallback(Callback):
    """Run pycocotools' COCOeval (bbox) on every validation pass; see the module docstring.

    :param post_prediction_callback: raw model output -> per-image ``[K, 6]`` tensors (``x1, y1, x2, y2,
        confidence, class`` in input pixels); an object, a dotted path or a ``_target_`` node; ``None`` when
        the model already returns that.
    :param annotation_file: a COCO JSON to evaluate against; default: the ``coco`` object of the validation
        dataset (found through ``.dataset`` wrappers), with its ``category_ids`` (index -> COCO id).
    :param category_ids: COCO id of each class index; default: the dataset's ``category_ids``, else the
        annotation file's category ids in ascending order.
    :param clip_boxes: clip boxes to the original image (needs the ``original_shapes`` extra) before scoring.
    :param prefix: key prefix of the results (``valid/<prefix>/AP``...).
    :param verbose: also log pycocotools' summary table.
    """

    def __init__(self, post_prediction_callback: Any = None, annotation_file: str | None = None,
                 category_ids: Sequence[int] | None = None, clip_boxes: bool = True, prefix: str = "COCO",
                 verbose: bool = False):
        self.post_prediction_callback = resolve_post_prediction_callback(post_prediction_callback)
        self.annotation_file = annotation_file
        self.category_ids = list(category_ids) if category_ids is not None else None
        self.clip_boxes = clip_boxes
        self.prefix = prefix
        self.verbose = verbose
        self._ground_truth: Any = None
        self._rows: list[np.ndarray] = []
        self._image_ids: list[np.ndarray] = []

    @property
    def component_names(self) -> list[str]:
        """The keys this callback adds (without the ``valid/`` prefix)."""
        return [f"{self.prefix}/{name}" for name in COCO_STAT_NAMES]

    def on_validation_loader_start(self, context: PhaseContext) -> None:
        self._rows, self._image_ids = [], []
        if self._ground_truth is None:
            self._ground_truth = self._load_ground_truth(context)

    def on_validation_batch_end(self, context: PhaseContext) -> None:
        extras = context.batch_extras or {}
        if extras.get("image_ids") is None:
            raise RecipeError("CocoEvaluationCallback needs the batch extra 'image_ids' (with 'scales' and 'pads'): "
                              "use a collate function that returns the extras, such as CrowdDetectionCollateFN.")
        rows, image_ids = predictions_to_coco_rows(
            self.post_prediction_callback(context.preds), extras["image_ids"], extras.get("scales"),
            extras.get("pads"), extras.get("original_shapes") if self.clip_boxes else None, self._class_to_id)
        self._rows.append(rows)
        self._image_ids.append(image_ids)

    def on_validation_loader_end(self, context: PhaseContext) -> None:
        rows = np.concatenate(self._rows) if self._rows else np.zeros((0, 7))
        image_ids = np.concatenate(self._image_ids) if self._image_ids else np.zeros(0, dtype=np.int64)
        self._rows, self._image_ids = [], []
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized() and (
            torch.distributed.get_world_size() > 1)
        if distributed:
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (rows, image_ids))
            rows = np.concatenate([r for r, _ in gathered])
            image_ids = np.concatenate([i for _, i in gathered])
        stats = None
        if not distributed or torch.distributed.get_rank() == 0:
            stats, table = evaluate_coco(self._ground_truth, rows, image_ids, self._category_list())
            if self.verbose:
                logger.info(table)
        if distributed:
            shared = [stats]
            torch.distributed.broadcast_object_list(shared, src=0)
            stats = shared[0]
        results = {f"valid/{self.prefix}/{name}": float(v) for name, v in zip(COCO_STAT_NAMES, stats, strict=True)}
        context.metrics.update(results)  # the loader's results dict: it becomes part of the epoch record
        logger.info(f"{self.prefix} evaluation of {len(set(image_ids.tolist()))} images: "
                    + ", ".join(f"{name} {v:.4f}" for name, v in zip(COCO_STAT_NAMES, stats, strict=True)))

    def _load_ground_truth(self, context: PhaseContext) -> Any:
        from pycocotools.coco import COCO

        if self.annotation_file is not None:
            with contextlib.redirect_stdout(io.StringIO()):
                source = COCO(self.annotation_file)
            dataset = None
        else:
            dataset = _find_coco_dataset(context)
            source = dataset.coco
        if self.category_ids is None:
            found = getattr(dataset, "category_ids", None) if dataset is not None else None
            self.category_ids = list(found) if found is not None else sorted(source.getCatIds())
        # COCOeval writes flags into the annotation dicts: evaluate a copy, leave the dataset's own intact.
        ground_truth = COCO()
        ground_truth.dataset = {**source.dataset, "annotations": [dict(a) for a in source.dataset["annotations"]]}
        with contextlib.redirect_stdout(io.StringIO()):
            ground_truth.createIndex()
        return ground_truth

    def _class_to_id(self, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(self._category_list(), dtype=np.int64)
        known = (classes >= 0) & (classes < len(ids))
        return known, ids[np.where(known, classes, 0)]

    def _category_list(self) -> list[int]:
        ids = self.category_ids
        if isinstance(ids, Mapping):  # {index: coco id}
            return [int(ids[i]) for i in sorted(ids)]
        return [int(i) for i in ids or []]


def _find_coco_dataset(context: PhaseContext) -> Any:
    loader = getattr(context.trainer, "full_valid_loader", None)
    dataset = getattr(loader, "dataset", None)
    while dataset is not None and not hasattr(dataset, "coco"):
        dataset = getattr(dataset, "dataset", None)  # Subset, shard and other wrappers
    if dataset is None:
        raise RecipeError("CocoEvaluationCallback found no COCO annotations: the validation dataset has no `coco` "
                          "attribute; pass annotation_file=<instances json>.")
    return dataset


def predictions_to_coco_rows(predictions: Sequence[Any], image_ids: Any, scales: Any, pads: Any,
                             original_shapes: Any, class_to_id: Any) -> tuple[np.ndarray, np.ndarray]:
    """``[K, 7]`` float64 rows ``image_id, x, y, w, h, score, category_id`` in original pixels, and the ids.

    ``class_to_id(classes) -> (known mask, ids)``; detections of unknown classes are dropped.
    """
    ids = torch.as_tensor(image_ids).reshape(-1).cpu().long()
    num_images = len(ids)
    per_image = [detection_rows(p).detach().cpu().double() for p in predictions]
    dets = torch.cat(per_image) if per_image else torch.zeros(0, 6, dtype=torch.float64)
    image = torch.repeat_interleave(torch.arange(len(per_image)), torch.tensor([len(p) for p in per_image]))
    scale = _per_image(scales, num_images, 1.0)  # [B, 2]: x and y scale
    pad = _per_image(pads, num_images, 0.0)  # [B, 2]: left, top
    boxes = (dets[:, :4] - pad[image].repeat(1, 2)) / scale[image].repeat(1, 2)
    if original_shapes is not None:
        hw = torch.as_tensor(original_shapes).reshape(num_images, 2).cpu().double()
        hw = torch.where(hw > 0, hw, float("inf"))  # (0, 0): shape unknown, nothing to clip to
        limits = hw.flip(1)[image].repeat(1, 2)  # w, h, w, h
        boxes = torch.minimum(boxes.clamp(min=0), limits)
    known, category = class_to_id(dets[:, 5].round().long().numpy())
    rows = np.stack([ids[image].double().numpy(), boxes[:, 0].numpy(), boxes[:, 1].numpy(),
                     (boxes[:, 2] - boxes[:, 0]).numpy(), (boxes[:, 3] - boxes[:, 1]).numpy(),
                     dets[:, 4].numpy(), category.astype(np.float64)], axis=1)
    return rows[known], ids.numpy()


def _per_image(values: Any, num_images: int, default: float) -> torch.Tensor:
    if values is None:
        return torch.full((num_images, 2), default, dtype=torch.float64)
    values = torch.as_tensor(values).cpu().double().reshape(num_images, -1)
    return values.expand(-1, 2) if values.shape[1] == 1 else values[:, :2]


def evaluate_coco(ground_truth: Any, rows: np.ndarray, image_ids: np.ndarray, category_ids: Sequence[int],
                  ) -> tuple[list[float], str]:
    """COCOeval (bbox) of ``rows`` on the images ``image_ids``: its 12 stats and its printed summary."""
    from pycocotools.cocoeval import COCOeval

    if len(rows) == 0:  # COCO.loadRes refuses an empty result list; nothing detected scores 0
        return [0.0] * len(COCO_STAT_NAMES), "no detections"
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(rows), "bbox")
        # Only the images validated (max_valid_batches may stop early) and the classes the model predicts.
        evaluator.params.imgIds = sorted(set(image_ids.tolist()))
        evaluator.params.catIds = sorted(set(category_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats], output.getvalue()
