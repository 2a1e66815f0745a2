"""Detection visualisation callbacks: drawings of validation batches in TensorBoard.

Registered callback names (``training_hyperparams.phase_callbacks``): ``DetectionVisualizationCallback`` (a
fixed validation batch every ``freq`` epochs) and ``ExtremeBatchDetectionVisualizationCallback`` (the best or
worst validation batch of the epoch by a metric or a loss item). Drawing itself is
:class:`~super_recipes.detection.drawing.DetectionVisualization`, re-exported here.

Images go to ``<experiment_dir>`` through a TensorBoard writer of their own, opened on rank 0 at the first
drawing, as RGB ``NHWC`` batches at ``global_step = epoch``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from super_recipes.callbacks.base import Callback, PhaseContext
from super_recipes.detection.drawing import DetectionVisualization, undo_standardization
from super_recipes.detection.matching import resolve_post_prediction_callback
from super_recipes.errors import RecipeError, did_you_mean
from super_recipes.metrics import update_metric
from super_recipes.registry import METRICS, build, register_callback

__all__ = ["DetectionVisualization", "DetectionVisualizationCallback", "ExtremeBatchDetectionVisualizationCallback",
           "undo_standardization"]


def _build_metric(spec: Any) -> Any:
    """A metric object used as is, or a spec (name, ``{Name: {kwargs}}``, ``_target_`` node) built."""
    return None if spec is None else build(METRICS, spec, "metric")


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").clone()
    if isinstance(value, (list, tuple)):
        return [_to_cpu(v) for v in value]
    return value


def _first_images(count: int, images: torch.Tensor, preds: Sequence[Any], targets: Any) -> tuple[Any, Any, Any]:
    """The first ``count`` images of a batch with their predictions and targets (rows of ``[N, 6]``)."""
    if isinstance(targets, torch.Tensor) and targets.ndim == 2 and len(targets):
        targets = targets[targets[:, 0] < count]
    return images[:count], list(preds)[:count], targets


class _ImageWriter:
    """A TensorBoard writer opened on first use, in the experiment folder, on rank 0 only."""

    def __init__(self) -> None:
        self._writer: Any = None

    def add(self, context: PhaseContext, tag: str, drawings: list[np.ndarray]) -> None:
        if not drawings or context.experiment_dir is None or not context.is_rank_zero:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(context.experiment_dir))
        rgb = np.stack([d[:, :, ::-1] for d in drawings])  # drawings are BGR, TensorBoard shows RGB
        self._writer.add_images(tag, rgb, global_step=context.epoch, dataformats="NHWC")
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _DrawingCallback(Callback):
    order = 230

    def __init__(self, post_prediction_callback: Any, classes: Sequence[str] | None, freq: int,
                 target_format: str, image_scale: float):
        self.post_prediction_callback = resolve_post_prediction_callback(post_prediction_callback)
        self.classes = list(classes) if classes is not None else None
        self.freq = max(1, int(freq))
        self.target_format = target_format
        self.image_scale = image_scale
        self._images = _ImageWriter()

    def _draw(self, images: torch.Tensor, preds: Sequence[Any], targets: Any) -> list[np.ndarray]:
        return DetectionVisualization.visualize_batch(images, preds, targets, self.classes,
                                                      image_scale=self.image_scale, target_format=self.target_format)

    def on_training_end(self, context: PhaseContext) -> None:
        self._images.close()


@register_callback
class DetectionVisualizationCallback(_DrawingCallback):
    """Every ``freq`` epochs, draws validation batch ``batch_idx`` (ground truth and post-processed
    predictions) and logs it to TensorBoard under ``detection/batch_<batch_idx>``.

    Serves ``phase_callbacks: [{DetectionVisualizationCallback: {post_prediction_callback, freq, batch_idx,
    classes, last_img_idx_in_batch}}]``. ``post_prediction_callback`` turns the model output into per-image
    ``[K, 6]`` predictions; ``last_img_idx_in_batch`` is the index of the last image drawn (``-1``: all).
    """

    def __init__(self, post_prediction_callback: Any, freq: int = 1, batch_idx: int = 0,
                 classes: Sequence[str] | None = None, last_img_idx_in_batch: int = -1,
                 target_format: str = "LABEL_CXCYWH", image_scale: float = 1.0):
        super().__init__(post_prediction_callback, classes, freq, target_format, image_scale)
        self.batch_idx = batch_idx
        self.last_img_idx_in_batch = last_img_idx_in_batch

    def on_validation_batch_end(self, context: PhaseContext) -> None:
        if not context.is_rank_zero or context.epoch % self.freq or context.batch_idx != self.batch_idx:
            return
        images = context.inputs
        count = len(images) if self.last_img_idx_in_batch < 0 else min(self.last_img_idx_in_batch + 1, len(images))
        preds = self.post_prediction_callback(context.preds)
        drawings = self._draw(*_first_images(count, images, preds, context.targets))
        self._images.add(context, f"detection/batch_{self.batch_idx}", drawings)


@register_callback
class ExtremeBatchDetectionVisualizationCallback(_DrawingCallback):
    """Logs, at the end of every ``freq``-th validation, the drawing of the epoch's best (``max: true``) or
    worst (``max: false``) batch by a per-batch score, under ``detection/extreme_batch_<max|min>_<name>``.

    Serves ``phase_callbacks: [{ExtremeBatchDetectionVisualizationCallback: {metric: ..., max: false, ...}}]``.
    The score is either ``metric`` (a metric spec or object, computed afresh on each batch alone;
    ``metric_component_name`` picks one value of a metric that returns a dict) or ``loss_to_monitor`` (a loss
    item name, as in ``loss_logging_items_names``). ``max_images`` caps the images drawn (-1: all).
    """

    def __init__(self, post_prediction_callback: Any, classes: Sequence[str] | None = None, metric: Any = None,
                 metric_component_name: str | None = None, loss_to_monitor: str | None = None, max: bool = False,
                 freq: int = 1, max_images: int = -1, target_format: str = "LABEL_CXCYWH",
                 image_scale: float = 1.0):
        super().__init__(post_prediction_callback, classes, freq, target_format, image_scale)
        if (metric is None) == (loss_to_monitor is None):
            raise RecipeError("ExtremeBatchDetectionVisualizationCallback needs exactly one of metric or "
                              "loss_to_monitor.")
        self.metric = _build_metric(metric)
        if self.metric is not None and hasattr(self.metric, "sync_on_compute"):
            self.metric.sync_on_compute = False  # scored on one process's batch: never wait for other ranks
        self.metric_component_name = metric_component_name
        self.loss_to_monitor = loss_to_monitor
        self.max = bool(max)
        self.max_images = max_images
        name = loss_to_monitor or metric_component_name or type(self.metric).__name__
        self.tag = f"detection/extreme_batch_{'max' if self.max else 'min'}_{name}"
        self._best: dict[str, Any] | None = None

    def _active(self, context: PhaseContext) -> bool:
        return context.is_rank_zero and context.epoch % self.freq == 0

    def on_validation_loader_start(self, context: PhaseContext) -> None:
        self._best = None

    def _score(self, context: PhaseContext) -> float:
        if self.loss_to_monitor is not None:
            if self.loss_to_monitor not in context.loss_names:
                hint = did_you_mean(self.loss_to_monitor, context.loss_names)
                raise RecipeError(f"loss_to_monitor '{self.loss_to_monitor}' is not a loss item. {hint} "
                                  f"Loss items: {context.loss_names}")
            return float(context.loss_items[context.loss_names.index(self.loss_to_monitor)])
        metric = self.metric.to(context.inputs.device) if hasattr(self.metric, "to") else self.metric
        metric.reset()  # the score of this batch alone
        update_metric(metric, context.preds, context.targets, context.batch_extras)
        value = metric.compute()
        if isinstance(value, dict):
            if self.metric_component_name not in value:
                raise RecipeError(f"metric_component_name '{self.metric_component_name}' is not one of the "
                                  f"metric's values {sorted(value)}.")
            value = value[self.metric_component_name]
        return float(value)

    def on_validation_batch_end(self, context: PhaseContext) -> None:
        if not self._active(context):
            return
        score = self._score(context)
        if math.isnan(score):
            return
        if self._best is not None and not (score > self._best["score"] if self.max else score < self._best["score"]):
            return
        count = len(context.inputs) if self.max_images < 0 else min(self.max_images, len(context.inputs))
        preds = self.post_prediction_callback(context.preds)
        images, preds, targets = _first_images(count, context.inputs, preds, context.targets)
        self._best = {"score": score, "batch_idx": context.batch_idx, "images": _to_cpu(images),
                      "preds": _to_cpu(preds), "targets": _to_cpu(targets)}

    def on_validation_loader_end(self, context: PhaseContext) -> None:
        if not self._active(context) or self._best is None:
            return
        best, self._best = self._best, None
        self._images.add(context, self.tag, self._draw(best["images"], best["preds"], best["targets"]))
