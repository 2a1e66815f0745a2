"""Detection drawings: JPEG files, TensorBoard images from the visualisation callbacks, extreme-batch choice."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchmetrics

from super_recipes.callbacks.base import PhaseContext
from super_recipes.detection.visualization import (
    DetectionVisualization,
    DetectionVisualizationCallback,
    ExtremeBatchDetectionVisualizationCallback,
)
from super_recipes.errors import RecipeError
from super_recipes.registry import CALLBACKS, build

GREY = 0.5  # standardised background: 127/128 once drawn


class IdentityPostPrediction:
    """Stands in for a model's post-prediction callback: the 'model output' already is per-image [K, 6]."""

    def __init__(self, min_confidence: float = 0.0):
        self.min_confidence = min_confidence

    def __call__(self, preds: list) -> list:
        return [p[p[:, 4] >= self.min_confidence] for p in preds]


class MeanConfidence(torchmetrics.Metric):
    """A per-batch score for the extreme-batch test: mean prediction confidence, as a dict of one value."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, preds: list, targets: torch.Tensor) -> None:
        for p in preds:
            self.total += p[:, 4].sum()
            self.count += len(p)

    def compute(self) -> dict:
        return {"confidence": self.total / self.count}


def _batch(size: int = 2, h: int = 64, w: int = 80, fill: float = GREY) -> torch.Tensor:
    return torch.full((size, 3, h, w), fill)


def _read_images(folder: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0})
    accumulator.Reload()
    return {tag: accumulator.Images(tag) for tag in accumulator.Tags()["images"]}


def _decode(event) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(event.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)


def test_visualize_batch_writes_jpegs_with_boxes(tmp_path: Path) -> None:
    preds = [torch.tensor([[10.0, 20.0, 40.0, 50.0, 0.9, 1.0]]), torch.zeros((0, 6))]
    targets = torch.tensor([[0, 2, 60, 30, 20, 20], [1, 0, 40, 32, 30, 30]], dtype=torch.float32)
    drawings = DetectionVisualization.visualize_batch(_batch(), preds, targets, ["cat", "dog", "bird"],
                                                      batch_name="valid", output_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["valid_0.jpg", "valid_1.jpg"]
    for index, drawing in enumerate(drawings):
        saved = cv2.imread(str(tmp_path / f"valid_{index}.jpg"))
        assert saved is not None and saved.shape == (64, 80, 3) == drawing.shape
        assert drawing.dtype == np.uint8

    def changed(image: np.ndarray, y: int, x: int) -> bool:
        return int(np.abs(image[y, x].astype(int) - 128).max()) > 30

    first, second = drawings
    assert changed(first, 35, 10) and changed(first, 49, 25)  # prediction box: left and bottom edges
    assert changed(first, 25, 50) and changed(first, 30, 69)  # ground truth x 50..70, y 20..40
    assert not changed(first, 35, 25) and not changed(first, 60, 75)  # inside the box, background
    assert changed(second, 30, 25) and not changed(second, 30, 40)  # ground truth only
    scaled = DetectionVisualization.visualize_batch(_batch(1), preds[:1], None, None, image_scale=2.0)
    assert scaled[0].shape == (128, 160, 3) and changed(scaled[0], 70, 20)


def test_visualize_batch_undo_and_0_255_images() -> None:
    unscaled = DetectionVisualization.visualize_batch(_batch(1, fill=200.0), None, None, None)
    assert unscaled[0][5, 5].tolist() == [200, 200, 200]
    custom = DetectionVisualization.visualize_batch(
        _batch(1), None, None, None,
        undo_preprocessing_func=lambda t: (t * 100).byte().permute(0, 2, 3, 1).numpy())
    assert custom[0][5, 5].tolist() == [50, 50, 50]


def test_visualization_callback_logs_to_tensorboard(tmp_path: Path) -> None:
    callback = build(CALLBACKS, {"DetectionVisualizationCallback": {
        "post_prediction_callback": {"_target_": f"{__name__}.IdentityPostPrediction", "min_confidence": 0.5},
        "freq": 2, "batch_idx": 1, "classes": ["a", "b"], "last_img_idx_in_batch": 0}})
    assert isinstance(callback.post_prediction_callback, IdentityPostPrediction)
    context = PhaseContext(experiment_dir=tmp_path, targets=torch.tensor([[0, 1, 30, 30, 20, 20]]))
    context.inputs = _batch(3)
    context.preds = [torch.tensor([[5.0, 5.0, 30.0, 30.0, 0.8, 0.0]])] * 3
    for epoch in range(4):
        for batch_idx in range(3):
            context.epoch, context.batch_idx = epoch, batch_idx
            callback.on_validation_batch_end(context)
    callback.on_training_end(context)
    images = _read_images(tmp_path)
    assert list(images) == ["detection/batch_1"]
    events = images["detection/batch_1"]
    assert [e.step for e in events] == [0, 2]
    assert (events[0].height, events[0].width) == (64, 80)  # last_img_idx_in_batch 0: one image
    drawn = _decode(events[0])
    assert drawn.shape == (64, 80, 3) and int(np.abs(drawn[15, 5].astype(int) - 128).max()) > 30


def test_visualization_callback_rank_zero_only(tmp_path: Path) -> None:
    callback = DetectionVisualizationCallback(IdentityPostPrediction(), freq=1)
    context = PhaseContext(experiment_dir=tmp_path, inputs=_batch(1), preds=[torch.zeros((0, 6))],
                           targets=torch.zeros((0, 6)), is_rank_zero=False)
    callback.on_validation_batch_end(context)
    assert not list(tmp_path.iterdir())


def _solid_batches() -> list[torch.Tensor]:
    """Three validation batches of solid BGR colours: blue, green, red."""
    batches = []
    for channel in range(3):
        images = torch.zeros((2, 3, 32, 32))
        images[:, channel] = 1.0
        batches.append(images)
    return batches


def _run_validation(callback, tmp_path: Path, scores: list[float], epoch: int = 0) -> None:
    context = PhaseContext(experiment_dir=tmp_path, epoch=epoch, loss_names=["iou", "cls"],
                           targets=torch.zeros((0, 6)))
    callback.on_validation_loader_start(context)
    for batch_idx, (images, score) in enumerate(zip(_solid_batches(), scores, strict=True)):
        context.batch_idx, context.inputs = batch_idx, images
        context.preds = [torch.tensor([[0.0, 0.0, 4.0, 4.0, score, 0.0]])] * 2
        context.loss_items = torch.tensor([1.0, score])
        callback.on_validation_batch_end(context)
    callback.on_validation_loader_end(context)


def _logged_colour(event) -> int:
    """Which BGR channel fills the centre of the first image of a logged grid."""
    return int(np.argmax(_decode(event)[18, 18]))


def test_extreme_batch_by_loss_item(tmp_path: Path) -> None:
    callback = build(CALLBACKS, {"ExtremeBatchDetectionVisualizationCallback": {
        "post_prediction_callback": IdentityPostPrediction(), "loss_to_monitor": "cls", "max": True,
        "max_images": 1}})
    _run_validation(callback, tmp_path, [0.3, 0.9, 0.5], epoch=0)  # worst loss: batch 1 (green)
    _run_validation(callback, tmp_path, [0.3, 0.1, 0.5], epoch=1)  # batch 2 (red)
    callback.on_training_end(PhaseContext())
    events = _read_images(tmp_path)["detection/extreme_batch_max_cls"]
    assert [e.step for e in events] == [0, 1]
    assert (events[0].height, events[0].width) == (32, 32)
    assert [_logged_colour(e) for e in events] == [1, 2]


def test_extreme_batch_by_metric_component(tmp_path: Path) -> None:
    callback = ExtremeBatchDetectionVisualizationCallback(
        IdentityPostPrediction(), metric={"_target_": f"{__name__}.MeanConfidence"},
        metric_component_name="confidence", max=False, freq=2)
    assert isinstance(callback.metric, MeanConfidence)
    _run_validation(callback, tmp_path, [0.6, 0.7, 0.2], epoch=0)  # lowest confidence: batch 2 (red)
    _run_validation(callback, tmp_path, [0.1, 0.7, 0.2], epoch=1)  # not a logging epoch
    _run_validation(callback, tmp_path, [0.1, 0.7, 0.2], epoch=2)  # batch 0 (blue)
    callback.on_training_end(PhaseContext())
    events = _read_images(tmp_path)["detection/extreme_batch_min_confidence"]
    assert [e.step for e in events] == [0, 2]
    assert [_logged_colour(e) for e in events] == [2, 0]
    # Two images per batch: a grid wider than one image.
    assert events[0].width > 32


def test_extreme_batch_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="exactly one"):
        ExtremeBatchDetectionVisualizationCallback(IdentityPostPrediction())
    callback = ExtremeBatchDetectionVisualizationCallback(IdentityPostPrediction(), loss_to_monitor="clss")
    with pytest.raises(RecipeError, match="Did you mean: cls"):
        _run_validation(callback, tmp_path, [0.1, 0.2, 0.3])
