"""What an exported graph's preprocessing does for a model: its task and the resize / normalisation its
validation used (``model.processing_params``, filled from the recipe when a model is loaded from a checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from super_recipes.export.graph import Preprocessing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TASKS = ("classification", "detection", "segmentation")


def model_task(model: nn.Module) -> str:
    """``detection`` / ``segmentation`` for the models of those task packages (or with their predict mixins),
    else ``classification``."""
    names = {cls.__name__ for cls in type(model).__mro__}
    module = type(model).__module__
    if "DetectionPredictMixin" in names or module.startswith("super_recipes.detection"):
        return "detection"
    if "SegmentationPredictMixin" in names or module.startswith("super_recipes.segmentation"):
        return "segmentation"
    return "classification"


def _hw(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    values = [int(v) for v in size]
    return (values[-2], values[-1]) if len(values) >= 2 else (values[0], values[0])


def preprocessing_for(model: nn.Module, task: str, input_size: Sequence[int] | None,
                      image_size: Sequence[int] | None) -> Preprocessing:
    """The :class:`Preprocessing` of ``model`` for uint8 images of ``image_size`` (default: the input size)."""
    if task == "detection":
        from super_recipes.detection.predict import _processing

        params = _processing(model)
        model_hw = _hw(input_size) or tuple(params["input_dim"])
        image_hw = _hw(image_size) or model_hw
        scale = min(model_hw[0] / image_hw[0], model_hw[1] / image_hw[1])
        return Preprocessing(image_hw, model_hw, letterbox_scale=scale, pad_value=float(params["pad_value"]),
                             divide=params["standardize"])
    if task == "segmentation":
        from super_recipes.segmentation.predict import _rescaler, processing_params

        params = processing_params(model)
        image_hw = _hw(image_size) or _hw(input_size) or _hw(getattr(model, "eval_size", None)) or (512, 512)
        rescaler = _rescaler(params)
        model_hw = _hw(input_size) or (tuple(rescaler.output_size(*image_hw)) if rescaler else image_hw)
        return Preprocessing(image_hw, model_hw, resize=model_hw, divide=255.0, mean=_tuple(params.get("mean")),
                             std=_tuple(params.get("std")))
    params = dict(getattr(model, "processing_params", None) or {})
    crop = _hw(params.get("crop"))
    model_hw = _hw(input_size) or crop or (224, 224)
    image_hw = _hw(image_size) or model_hw
    resize = _resized_short_side(image_hw, params["resize"]) if params.get("resize") else model_hw
    return Preprocessing(image_hw, model_hw, resize=resize, crop=model_hw if resize != model_hw else None,
                         divide=255.0, mean=_tuple(params.get("mean", IMAGENET_MEAN)),
                         std=_tuple(params.get("std", IMAGENET_STD)))


def _resized_short_side(image_hw: tuple[int, int], size: int | Sequence[int]) -> tuple[int, int]:
    """torchvision ``Resize(size)``: an int sets the short side (the long one keeps the aspect ratio)."""
    if not isinstance(size, int):
        return _hw(size)  # type: ignore[return-value]
    h, w = image_hw
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def _tuple(values: Any) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)
