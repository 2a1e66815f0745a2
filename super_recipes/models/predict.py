"""Classifying images: :func:`predict` and :func:`load_model_for_prediction` (a checkpoint or an exported
``.onnx`` file), the classification side of ``python -m super_recipes.predict``.

Each image is prepared as the recipe's validation transforms prepared theirs (``model.processing_params``:
``resize`` (an int sets the short side, as torchvision's ``Resize``; bilinear with antialiasing), ``crop`` (a
centre crop), then pixels in [0, 1] and ``mean`` / ``std``), filled from the recipe by
:func:`processing_params_from_recipe` when the model comes from a checkpoint. The result per image is a
:class:`ClassificationPrediction`: the class probabilities (softmax of the logits), the best class and its name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from super_recipes.errors import RecipeError
from super_recipes.image_sources import collect_images, unique_file_names

logger = logging.getLogger("super_recipes")

__all__ = ["ClassificationPrediction", "ImagesClassificationPrediction", "load_model_for_prediction", "predict",
           "processing_params_from_recipe"]


@dataclass
class ClassificationPrediction:
    """The class probabilities of one image (``probabilities`` float32 ``[C]``, summing to 1)."""

    image: np.ndarray  # HWC uint8, as given (BGR, unless `channels` says RGB)
    probabilities: np.ndarray
    class_names: list[str] | None = None
    source: str | None = None
    name: str = "image"
    channels: str = "BGR"

    class_id = property(lambda self: int(self.probabilities.argmax()), doc="the most probable class")
    confidence = property(lambda self: float(self.probabilities.max()), doc="its probability")

    def label_name(self, class_id: int | None = None) -> str:
        """The name of ``class_id`` (default: the predicted class); the index as text without names."""
        index = self.class_id if class_id is None else int(class_id)
        names = self.class_names or []
        return str(names[index]) if index < len(names) else str(index)

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` most probable classes as ``(name, probability)``, best first."""
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(self.label_name(int(i)), float(self.probabilities[i])) for i in order]

    def draw(self) -> np.ndarray:
        """A copy of the image, in its channel order, with the predicted class and probability written on it."""
        drawn = np.ascontiguousarray(self.image.copy())
        text = f"{self.label_name()} {100 * self.confidence:.1f}%"
        scale = max(0.4, min(drawn.shape[:2]) / 500)
        (width, height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cv2.rectangle(drawn, (0, 0), (width + 8, height + 10), (0, 0, 0), -1)
        cv2.putText(drawn, text, (4, height + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
        return drawn

    def save(self, folder: str | Path, file_name: str | None = None) -> Path:
        """Write the labelled image to ``folder/<name>.jpg`` (or ``file_name``); returns its path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (file_name or f"{self.name}.jpg")
        drawing = self.draw()
        if not cv2.imwrite(str(path), drawing[:, :, ::-1] if self.channels == "RGB" else drawing):
            raise OSError(f"Could not write {path}")
        return path


@dataclass
class ImagesClassificationPrediction:
    """Predictions of several images, in the order of the source; iterable and indexable."""

    predictions: list[ClassificationPrediction] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.predictions)

    def __iter__(self) -> Iterator[ClassificationPrediction]:
        return iter(self.predictions)

    def __getitem__(self, index: int) -> ClassificationPrediction:
        return self.predictions[index]

    def save(self, folder: str | Path) -> list[Path]:
        """Write every labelled image to ``folder`` (names made unique); returns the paths."""
        names = unique_file_names((prediction.name for prediction in self.predictions), ".jpg")
        return [p.save(folder, name) for p, name in zip(self.predictions, names, strict=True)]


def preprocess(image: np.ndarray, channels: str, params: Mapping[str, Any]) -> torch.Tensor:
    """``[3, h, w]`` float32 model input for one HWC uint8 image, as ``params`` (``processing_params``) say."""
    from torchvision.transforms.v2 import functional as TF

    rgb = image[:, :, ::-1] if channels == "BGR" else image
    tensor = torch.from_numpy(np.ascontiguousarray(rgb) if rgb.flags.writeable else rgb.copy()).permute(2, 0, 1)
    if params.get("resize"):
        size = params["resize"]
        size = [int(size)] if isinstance(size, int) else [int(v) for v in size]
        tensor = TF.resize(tensor, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    if params.get("crop"):
        crop = params["crop"]
        tensor = TF.center_crop(tensor, [int(crop)] * 2 if isinstance(crop, int) else [int(v) for v in crop])
    tensor = tensor.to(torch.float32) / 255.0
    if params.get("mean") is not None or params.get("std") is not None:
        mean = torch.as_tensor(params.get("mean") or (0.0, 0.0, 0.0), dtype=torch.float32).reshape(-1, 1, 1)
        std = torch.as_tensor(params.get("std") or (1.0, 1.0, 1.0), dtype=torch.float32).reshape(-1, 1, 1)
        tensor = (tensor - mean) / std
    return tensor


def _logits(output: Any) -> torch.Tensor:
    while isinstance(output, tuple | list):  # GoogLeNet-like auxiliary outputs: the main one comes first
        output = output[0]
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        raise RecipeError("A classification model must return logits [B, C], got "
                          f"{type(output).__name__}{tuple(getattr(output, 'shape', ()))}.")
    return output


@torch.no_grad()
def predict(model: torch.nn.Module, source: Any, batch_size: int = 8, device: str | torch.device | None = None,
            channels: str = "BGR") -> ClassificationPrediction | ImagesClassificationPrediction:
    """Classify ``source`` (a path, folder, list, array, PIL image or tensor; ``channels`` gives an array's or
    tensor's order) with ``model``; one :class:`ClassificationPrediction` for a single image, else a list."""
    items, single = collect_images(source, channels.upper())
    params = dict(getattr(model, "processing_params", None) or {})
    names = params.get("class_names") or getattr(model, "class_names", None)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    inputs = [preprocess(image, order, params) for image, _, _, order in items]
    results = []
    try:
        start = 0
        while start < len(items):  # one forward pass per run of equal input sizes, at most batch_size long
            end = start + 1
            while end < len(items) and end - start < batch_size and inputs[end].shape == inputs[start].shape:
                end += 1
            probabilities = _logits(model(torch.stack(inputs[start:end]).to(device))).float().softmax(dim=1)
            for offset, (image, path, name, order) in enumerate(items[start:end]):
                results.append(ClassificationPrediction(image, probabilities[offset].cpu().numpy(),
                                                        list(names) if names else None, path, name, order))
            start = end
    finally:
        model.train(was_training)
    return results[0] if single else ImagesClassificationPrediction(results)


class ClassificationPredictMixin:
    """``model.predict(source)`` for a classifier class (the exported-file wrapper uses it)."""

    def predict(self, source: Any, batch_size: int = 8, device: str | torch.device | None = None,
                channels: str = "BGR") -> ClassificationPrediction | ImagesClassificationPrediction:
        return predict(self, source, batch_size, device, channels)  # type: ignore[arg-type]


def load_model_for_prediction(checkpoint: str | Path | Mapping[str, Any], device: str | torch.device = "cpu",
                              use_ema: bool = True) -> torch.nn.Module:
    """Rebuild the classifier a super_recipes checkpoint was trained as (recipe ``architecture`` and
    ``arch_params``; EMA weights when present and ``use_ema``), with the preprocessing and class names of its
    recipe's validation dataset, in eval mode on ``device``; an exported ``.onnx`` file gives its ONNX Runtime
    wrapper (:mod:`super_recipes.export.runtime`) with the same ``predict``."""
    from super_recipes.export import is_exported_file

    if is_exported_file(checkpoint):
        from super_recipes.export.runtime import load_onnx_for_prediction

        return load_onnx_for_prediction(checkpoint, device=device)
    from super_recipes.models.from_checkpoint import model_from_checkpoint, set_processing_params

    model, recipe = model_from_checkpoint(checkpoint, use_ema)
    set_processing_params(model, processing_params_from_recipe(recipe))
    return model.to(device).eval()


def processing_params_from_recipe(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """``resize`` / ``crop`` / ``mean`` / ``std`` / ``class_names`` of a classification recipe's validation
    dataset (its ``Resize``, ``CenterCrop`` and ``Normalize`` transforms by name; without ``Normalize``, pixels
    in [0, 1])."""
    from super_recipes.segmentation.predict import validation_transforms

    params: dict[str, Any] = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    for name, kwargs in validation_transforms(recipe):
        if name == "Resize":
            params["resize"] = kwargs.get("size")
        elif name == "CenterCrop":
            params["crop"] = kwargs.get("size")
        elif name == "Normalize":
            params["mean"], params["std"] = tuple(kwargs["mean"]), tuple(kwargs["std"])
    params["class_names"] = _class_names(dict((recipe.get("dataset_params") or {}).get("val_dataset_params") or {}))
    return params


def _class_names(data: Mapping[str, Any]) -> list[str] | None:
    # The checkpoint keeps only the recipe: the names from it, the dataset class, or an image folder's classes.
    if data.get("class_names"):
        return [str(name) for name in data["class_names"]]
    if data.get("dataset"):
        from super_recipes.registry import DATASETS

        try:
            names = getattr(DATASETS.get(str(data["dataset"])), "class_names", None)
        except RecipeError:
            names = None
        if isinstance(names, list | tuple) and names:
            return [str(name) for name in names]
    root = data.get("root")
    if root and Path(str(root)).is_dir():
        folders = sorted(p.name for p in Path(str(root)).iterdir() if p.is_dir())
        if folders:
            return folders
    logger.warning("No class names found in the checkpoint's recipe; classes are named by index.")
    return None
