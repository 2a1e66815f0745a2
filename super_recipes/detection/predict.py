"""Inference on images: ``model.predict(source, conf, iou)`` and ``load_model_for_prediction(checkpoint)``.

The model's own preprocessing is replayed with the dataset transforms (``DetectionPaddedRescale`` letterbox,
``DetectionStandardize``), so predictions see exactly what validation saw, and boxes go back to the pixels of
the image as given through the recorded letterbox (``original_xy = (input_xy - pad) / scale``). The
preprocessing comes from ``model.processing_params`` (set by ``model.set_dataset_processing_params(...)``),
which :func:`load_model_for_prediction` fills in from the checkpoint's recipe.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from super_recipes.detection.datasets import load_image
from super_recipes.detection.drawing import DetectionVisualization
from super_recipes.detection.sample import DetectionSample
from super_recipes.detection.transforms import DetectionPaddedRescale, DetectionStandardize
from super_recipes.image_sources import collect_images, in_order, unique_file_names
from super_recipes.models.from_checkpoint import model_from_checkpoint, set_processing_params

logger = logging.getLogger(__name__)

# What the COCO YOLOX recipe feeds the model: 640x640 letterbox on grey 114, pixels / 255.
DEFAULT_PROCESSING: dict[str, Any] = {"class_names": None, "input_dim": (640, 640), "pad_value": 114,
                                      "standardize": 255.0}


@dataclass
class ImageDetectionPrediction:
    """Detections of one image, in that image's pixels: ``boxes`` ``[K, 4]`` x1, y1, x2, y2, ``scores`` ``[K]``,
    ``labels`` ``[K]`` class indices into ``class_names``."""

    image: np.ndarray  # HWC uint8 BGR, as given
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str] | None = None
    source: str | None = None  # the file it was read from, when there was one
    name: str = "image"

    def __len__(self) -> int:
        return len(self.boxes)

    def label_names(self) -> list[str]:
        """Class name of every detection (the index as text when the model has no class names)."""
        return [self.class_names[i] if self.class_names and 0 <= i < len(self.class_names) else str(i)
                for i in self.labels.tolist()]

    def draw(self, box_thickness: int = 2) -> np.ndarray:
        """A copy of the image with the detections drawn (class-coloured boxes, name and score)."""
        rows = np.concatenate([self.boxes, self.scores[:, None], self.labels[:, None]], axis=1)
        return DetectionVisualization.draw_image(self.image, rows, None, self.class_names,
                                                 box_thickness=box_thickness)

    def save(self, folder: str | Path, file_name: str | None = None) -> Path:
        """Write the drawing to ``folder/<name>.jpg`` (or ``file_name``); returns the path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (file_name or f"{self.name}.jpg")
        if not cv2.imwrite(str(path), self.draw()):
            raise OSError(f"Could not write {path}")
        return path


@dataclass
class ImagesDetectionPrediction:
    """Detections of several images, in the order of the source; iterable and indexable."""

    predictions: list[ImageDetectionPrediction] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.predictions)

    def __iter__(self) -> Iterator[ImageDetectionPrediction]:
        return iter(self.predictions)

    def __getitem__(self, index: int) -> ImageDetectionPrediction:
        return self.predictions[index]

    def save(self, folder: str | Path) -> list[Path]:
        """Write every drawing to ``folder`` (one ``<name>.jpg`` each, names made unique); returns the paths."""
        names = unique_file_names((prediction.name for prediction in self.predictions), ".jpg")
        return [prediction.save(folder, name) for prediction, name in zip(self.predictions, names, strict=True)]


def _processing(model: torch.nn.Module) -> dict[str, Any]:
    params = {**DEFAULT_PROCESSING, **(getattr(model, "processing_params", None) or {})}
    input_dim = params["input_dim"]
    params["input_dim"] = (int(input_dim), int(input_dim)) if isinstance(input_dim, int) else tuple(input_dim)
    standardize = params.get("standardize")
    # True means the usual pixels / 255; False/None/0 feeds 0..255 pixels.
    params["standardize"] = 255.0 if standardize is True else (float(standardize) if standardize else None)
    return params


def _post_processor(model: torch.nn.Module, conf: float, iou: float, max_predictions: int) -> Any:
    if hasattr(model, "get_post_prediction_callback"):
        try:
            return model.get_post_prediction_callback(conf=conf, iou=iou, max_predictions=max_predictions)
        except TypeError:  # an owner's signature without max_predictions
            return model.get_post_prediction_callback(conf=conf, iou=iou)
    from super_recipes.detection.yolox.postprocess import YoloXPostPredictionCallback

    return YoloXPostPredictionCallback(conf=conf, iou=iou, max_predictions=max_predictions)


@torch.no_grad()
def predict(model: torch.nn.Module, source: Any, conf: float = 0.25, iou: float = 0.7, max_predictions: int = 300,
            batch_size: int = 8, device: str | torch.device | None = None
            ) -> ImageDetectionPrediction | ImagesDetectionPrediction:
    """Detect objects in ``source`` with ``model`` (see :class:`DetectionPredictMixin.predict`)."""
    sources, single = collect_images(source, read=load_image)
    items = [(in_order(item, "BGR"), item.path, item.name) for item in sources]  # the datasets' order
    params = _processing(model)
    letterbox = DetectionPaddedRescale(params["input_dim"], pad_value=params["pad_value"])
    standardize = DetectionStandardize(params["standardize"]) if params["standardize"] else None
    post = _post_processor(model, conf, iou, max_predictions)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    results = []
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            samples = []
            for image, _, _ in chunk:
                sample = letterbox(DetectionSample(image=image, original_shape=image.shape[:2]))
                samples.append(standardize(sample) if standardize else sample)
            batch = torch.from_numpy(np.stack([s.image.astype(np.float32, copy=False) for s in samples]))
            batch = batch.permute(0, 3, 1, 2).contiguous().to(device)
            for (image, path, name), sample, rows in zip(chunk, samples, post(model(batch)), strict=True):
                results.append(_to_original(image, sample, rows, params["class_names"], path, name))
    finally:
        model.train(was_training)
    return results[0] if single else ImagesDetectionPrediction(results)


def _to_original(image: np.ndarray, sample: DetectionSample, rows: torch.Tensor, class_names: Any,
                 path: str | None, name: str) -> ImageDetectionPrediction:
    rows = rows.detach().to("cpu", torch.float32).numpy().reshape(-1, 6) if rows is not None else np.zeros((0, 6))
    pad = np.array([sample.pad[0], sample.pad[1]] * 2, dtype=np.float32)
    boxes = (rows[:, :4] - pad) / np.float32(sample.scale)
    h, w = image.shape[:2]
    boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
    return ImageDetectionPrediction(image=image, boxes=boxes, scores=rows[:, 4].astype(np.float32),
                                    labels=rows[:, 5].astype(np.int64),
                                    class_names=list(class_names) if class_names else None, source=path, name=name)


class DetectionPredictMixin:
    """Gives a detection model ``predict()``; the model class inherits it (``class YoloX(DetectionPredictMixin,
    nn.Module)``) and keeps its preprocessing in ``self.processing_params``."""

    def predict(self, source: Any, conf: float = 0.25, iou: float = 0.7, max_predictions: int = 300,
                batch_size: int = 8, device: str | torch.device | None = None
                ) -> ImageDetectionPrediction | ImagesDetectionPrediction:
        """Detect objects in ``source``: an image path, a folder of images, a list of paths/arrays, a numpy
        array (HWC BGR uint8, as ``cv2.imread`` gives; NHWC for several), a PIL image (RGB) or a tensor (CHW or
        BCHW, BGR, 0..255 or [0, 1]). Keeps detections above ``conf`` after class-wise NMS at ``iou``. Returns an
        :class:`ImageDetectionPrediction` for one image, else an :class:`ImagesDetectionPrediction`; boxes are
        in the pixels of the image as given."""
        return predict(self, source, conf=conf, iou=iou, max_predictions=max_predictions,  # type: ignore[arg-type]
                       batch_size=batch_size, device=device)

    def set_dataset_processing_params(self, **kwargs: Any) -> None:
        """Remember how inputs are prepared (class names, preprocessing...) for ``predict``; merged into
        ``processing_params``, and ``class_names`` also set as an attribute."""
        self.processing_params.update(kwargs)  # type: ignore[attr-defined]
        if "class_names" in kwargs:
            names = kwargs["class_names"]
            self.class_names = list(names) if names is not None else None


def load_model_for_prediction(checkpoint_path: str | Path, device: str | torch.device = "cpu",
                              use_ema: bool = True) -> torch.nn.Module:
    """Rebuild the model a super_recipes checkpoint was trained as (its recipe's ``architecture`` and
    ``arch_params``), load its weights (the EMA weights when the checkpoint has them and ``use_ema``), set its
    preprocessing and class names from the recipe's validation dataset, and return it in eval mode. An exported
    ``.onnx`` file (``python -m super_recipes.export``) gives its ONNX Runtime wrapper, with the same ``predict``."""
    from super_recipes.export import is_exported_file

    if is_exported_file(checkpoint_path):
        from super_recipes.export.runtime import load_onnx_for_prediction

        return load_onnx_for_prediction(checkpoint_path, device=device)  # an exported file: ONNX Runtime runs it
    model, recipe = model_from_checkpoint(checkpoint_path, use_ema)
    set_processing_params(model, processing_params_from_recipe(recipe))
    return model.to(device).eval()


def processing_params_from_recipe(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """``input_dim``, ``pad_value``, ``standardize`` and ``class_names`` of the recipe's validation dataset
    (``dataset_params.val_dataset_params``: what the model was validated on)."""
    data = (recipe.get("dataset_params") or {}).get("val_dataset_params") or {}
    transforms = data.get("transforms") or []
    params: dict[str, Any] = {"input_dim": data.get("input_dim") or DEFAULT_PROCESSING["input_dim"],
                              "pad_value": DEFAULT_PROCESSING["pad_value"], "standardize": None}
    for spec in transforms if isinstance(transforms, list) else [transforms]:
        name, kwargs = (spec, {}) if isinstance(spec, str) else next(iter(spec.items()))
        if name == "DetectionPaddedRescale":
            params["input_dim"] = kwargs.get("input_dim", params["input_dim"])
            params["pad_value"] = kwargs.get("pad_value", params["pad_value"])
        elif name == "DetectionStandardize":
            params["standardize"] = float((kwargs or {}).get("max_value", 255.0))
    params["class_names"] = _class_names(data)
    return params


def _class_names(data: Mapping[str, Any]) -> list[str] | None:
    # The checkpoint keeps only the recipe: read the names where the dataset would, without building it.
    if data.get("class_inclusion_list"):
        return list(data["class_inclusion_list"])
    if data.get("class_names"):
        return list(data["class_names"])
    if data.get("dataset") == "ShapesDetectionDataset":
        from super_recipes.detection.synthetic import CLASS_NAMES

        return list(CLASS_NAMES)
    root = Path(str(data.get("data_dir", ".")))
    candidates = [root / "annotations" / str(data.get("json_file", "")), root / str(data.get("json_file", "")),
                  root / str(data.get("json_annotation_file", ""))]
    for path in candidates:
        if path.is_file() and path.suffix == ".json":
            categories = json.loads(path.read_text()).get("categories") or []
            # COCO category ids become contiguous labels in id order (as the datasets number them).
            return [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
    logger.warning("No class names found in the checkpoint's recipe; detections are labelled by class index.")
    return None
