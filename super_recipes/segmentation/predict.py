"""Inference on images: ``model.predict(source)`` / :func:`predict` and :func:`load_model_for_prediction`.

The model sees what validation fed it: the image resized as the validation ``SegRescale`` did (bilinear,
antialiased, to the same output size), scaled to [0, 1] and normalised as ``SegNormalize`` did, in RGB order
(the datasets' order). Its logits are resized (bilinear) back to the image as given, and each pixel gets the
class of its largest logit, or, for a binary model (one output channel), 1 where ``sigmoid(logit) >
threshold``. So ``mask`` always has the original height and width.

Colour order of the inputs follows :mod:`super_recipes.detection.predict`: files are read with ``cv2`` and
kept BGR; numpy arrays (HWC, NHWC) and tensors (CHW, BCHW, 0..255 or [0, 1]) are BGR unless
``channels="RGB"`` is passed; PIL images are RGB. ``prediction.image`` is the image as given.

The preprocessing comes from ``model.processing_params`` (``model.set_dataset_processing_params(...)``): keys
``class_names``, one of ``scale_factor`` / ``short_size`` / ``long_size`` / ``size`` (as ``SegRescale``), and
``mean`` / ``std`` (as ``SegNormalize``; None: no normalisation). :func:`load_model_for_prediction` fills them
in from the validation dataset of the recipe stored in the checkpoint. Without any, a model with an
``eval_size`` (the published models) is fed its long side at ``max(eval_size)`` pixels, others the image at its
size, with the ImageNet normalisation.
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
import torch.nn.functional as F

from super_recipes.errors import RecipeError
from super_recipes.image_sources import collect_images, unique_file_names
from super_recipes.models.from_checkpoint import model_from_checkpoint, set_processing_params
from super_recipes.segmentation.predict_mixin import SegmentationPredictMixin  # noqa: F401  (public here too)
from super_recipes.segmentation.visualization import (
    BINARY_PALETTE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    overlay_mask,
    segmentation_palette,
)

logger = logging.getLogger(__name__)

RESCALE_MODES = ("scale_factor", "short_size", "long_size", "size")
# Transforms of a validation list that change nothing predict must replay (or cannot apply to a lone image).
_NOT_REPLAYED = {"SegToTensor", "SegPadToSize", "SegRandomCrop", "SegRandomFlip", "SegRandomRescale", "SegColorJitter"}


@dataclass
class SegmentationPrediction:
    """The class mask of one image: ``mask`` int64 ``[H, W]`` at the image's own size, values indexing
    ``class_names`` (a binary model gives 0 background / 1 foreground)."""

    image: np.ndarray  # HWC uint8, as given (BGR, unless `channels` says RGB)
    mask: np.ndarray
    class_names: list[str] | None = None
    source: str | None = None  # the file it was read from, when there was one
    name: str = "image"
    num_classes: int = 0  # the model's output channels (1: binary)
    channels: str = "BGR"

    binary = property(lambda self: self.num_classes == 1, doc="one output channel: 0 background, 1 foreground")

    def label_names(self) -> list[str]:
        """Name of every class index the mask can hold (the index as text when there are no names)."""
        count = max(2 if self.binary else self.num_classes, int(self.mask.max(initial=0)) + 1)
        names = list(self.class_names or [])
        if self.binary and len(names) == 1:
            names = ["background", *names]  # the one name of a binary model is its foreground's
        return [names[i] if i < len(names) else str(i) for i in range(count)]

    def class_fractions(self) -> dict[str, float]:
        """``{class name: fraction of the pixels}`` for the classes present, largest first."""
        values, counts = np.unique(self.mask, return_counts=True)
        names = self.label_names()
        order = np.argsort(-counts, kind="stable")
        return {names[int(values[i])]: float(counts[i]) / self.mask.size for i in order}

    def draw(self, alpha: float = 0.5, palette: Any = None) -> np.ndarray:
        """A copy of the image, in its channel order, with each class blended in its colour at ``alpha``
        (:func:`~super_recipes.segmentation.visualization.segmentation_palette`); a binary background is not
        drawn."""
        bgr = self.image[:, :, ::-1] if self.channels == "RGB" else self.image
        colors = segmentation_palette(len(self.label_names()),
                                      BINARY_PALETTE if self.binary and palette is None else palette)
        drawn = overlay_mask(np.ascontiguousarray(bgr), self.mask, colors, alpha, ignore_index=None,
                             skip_classes=(0,) if self.binary else ())
        return np.ascontiguousarray(drawn[:, :, ::-1]) if self.channels == "RGB" else drawn

    def save(self, folder: str | Path, file_name: str | None = None, alpha: float = 0.5,
             save_mask: bool = False) -> Path:
        """Write the overlay to ``folder/<name>.png`` (or ``file_name``; PNG keeps the colours exact) and, with
        ``save_mask``, the class indices as ``<stem>_mask.png`` (uint8; 16-bit past 255 classes); returns the
        overlay's path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (file_name or f"{self.name}.png")
        drawing = self.draw(alpha)
        if not cv2.imwrite(str(path), drawing[:, :, ::-1] if self.channels == "RGB" else drawing):
            raise OSError(f"Could not write {path}")
        mask_path = path.with_name(f"{path.stem}_mask.png")
        dtype = np.uint8 if self.mask.max(initial=0) <= 255 else np.uint16
        if save_mask and not cv2.imwrite(str(mask_path), self.mask.astype(dtype)):
            raise OSError(f"Could not write {mask_path}")
        return path


@dataclass
class ImagesSegmentationPrediction:
    """Masks of several images, in the order of the source; iterable and indexable."""

    predictions: list[SegmentationPrediction] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.predictions)

    def __iter__(self) -> Iterator[SegmentationPrediction]:
        return iter(self.predictions)

    def __getitem__(self, index: int) -> SegmentationPrediction:
        return self.predictions[index]

    def save(self, folder: str | Path, alpha: float = 0.5, save_mask: bool = False) -> list[Path]:
        """Write every overlay to ``folder`` (one ``<name>.png`` each, names made unique); returns the paths."""
        names = unique_file_names((prediction.name for prediction in self.predictions), ".png")
        return [prediction.save(folder, name, alpha, save_mask)
                for prediction, name in zip(self.predictions, names, strict=True)]


# ------------------------------------------------------------------------------------------- preprocessing
def processing_params(model: torch.nn.Module) -> dict[str, Any]:
    """The preprocessing ``predict`` applies for ``model``: its ``processing_params`` over the defaults."""
    given = dict(getattr(model, "processing_params", None) or {})
    params: dict[str, Any] = {"class_names": getattr(model, "class_names", None), "mean": IMAGENET_MEAN,
                              "std": IMAGENET_STD, **{mode: None for mode in RESCALE_MODES}}
    if not any(given.get(mode) is not None for mode in RESCALE_MODES):
        eval_size = getattr(model, "eval_size", None)
        if eval_size:  # a published model: fed at its evaluation resolution
            params["long_size"] = int(max(eval_size))
    params.update(given)
    modes = [mode for mode in RESCALE_MODES if params.get(mode) is not None]
    if len(modes) > 1:
        raise RecipeError(f"processing_params set several rescales ({', '.join(modes)}); keep one of "
                          f"{', '.join(RESCALE_MODES)}.")
    if params.get("class_names") is not None:
        params["class_names"] = [str(name) for name in params["class_names"]]
    return params


def _rescaler(params: Mapping[str, Any]) -> Any:
    from super_recipes.segmentation.transforms import SegRescale

    # The same class validation used: the output size is computed (and rounded) exactly as it was.
    mode = next((m for m in RESCALE_MODES if params.get(m) is not None), None)
    return SegRescale(**{mode: params[mode]}) if mode else None


def preprocess(image: np.ndarray, channels: str, params: Mapping[str, Any], rescaler: Any = None) -> torch.Tensor:
    """``[3, h, w]`` float32 model input for one HWC uint8 image (``channels``: its order, BGR or RGB)."""
    from torchvision.transforms.v2 import functional as TF

    rgb = image[:, :, ::-1] if channels == "BGR" else image
    # A copy when needed: torch must not share a caller's read-only array (a PIL image's, a memory map...).
    rgb = np.ascontiguousarray(rgb) if rgb.flags.writeable else rgb.copy()
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)
    if rescaler is not None:
        size = list(rescaler.output_size(*tensor.shape[-2:]))
        if size != list(tensor.shape[-2:]):
            # What SegRescale does to the uint8 image: bilinear with antialiasing.
            tensor = TF.resize(tensor, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    tensor = tensor.to(torch.float32) / 255.0
    if params.get("mean") is not None or params.get("std") is not None:
        mean = torch.as_tensor(params.get("mean") or (0.0, 0.0, 0.0), dtype=torch.float32).reshape(-1, 1, 1)
        std = torch.as_tensor(params.get("std") or (1.0, 1.0, 1.0), dtype=torch.float32).reshape(-1, 1, 1)
        tensor = (tensor - mean) / std
    return tensor


def _main_logits(output: Any) -> torch.Tensor:
    while isinstance(output, (list, tuple)):  # a model left in training mode returns (main, aux...)
        output = output[0]
    if not isinstance(output, torch.Tensor) or output.ndim != 4:
        raise RecipeError("A segmentation model must return logits [B, C, H, W], got "
                          f"{type(output).__name__}{tuple(getattr(output, 'shape', ()))}.")
    return output


@torch.no_grad()
def predict(model: torch.nn.Module, source: Any, batch_size: int = 8, device: str | torch.device | None = None,
            channels: str = "BGR", threshold: float = 0.5) -> SegmentationPrediction | ImagesSegmentationPrediction:
    """Segment ``source`` with ``model`` (see :meth:`SegmentationPredictMixin.predict`)."""
    items, single = collect_images(source, channels.upper())
    params = processing_params(model)
    rescaler = _rescaler(params)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    # One forward pass takes images of one input size: runs of equal sizes, at most batch_size long.
    sizes = [tuple(rescaler.output_size(*image.shape[:2])) if rescaler else image.shape[:2]
             for image, *_ in items]
    results = []
    try:
        start = 0
        while start < len(items):
            end = start + 1
            while end < len(items) and end - start < batch_size and sizes[end] == sizes[start]:
                end += 1
            batch = torch.stack([preprocess(image, order, params, rescaler) for image, _, _, order in items[start:end]])
            logits = _main_logits(model(batch.to(device))).float()
            for offset, (image, path, name, order) in enumerate(items[start:end]):
                mask = _to_mask(logits[offset:offset + 1], image.shape[:2], threshold)
                results.append(SegmentationPrediction(image=image, mask=mask, class_names=params["class_names"],
                                                      source=path, name=name, num_classes=logits.shape[1],
                                                      channels=order))
            start = end
    finally:
        model.train(was_training)
    return results[0] if single else ImagesSegmentationPrediction(results)


def _to_mask(logits: torch.Tensor, size: tuple[int, int], threshold: float) -> np.ndarray:
    """``[1, C, h, w]`` logits -> int64 ``[H, W]`` classes at the original ``size``."""
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    if logits.shape[1] == 1:
        mask = torch.sigmoid(logits[0, 0]) > threshold
    else:
        mask = logits[0].argmax(dim=0)
    return mask.to("cpu", torch.int64).numpy()


# --------------------------------------------------------------------------------------------- checkpoints
def load_model_for_prediction(checkpoint: str | Path | Mapping[str, Any], device: str | torch.device = "cpu",
                              use_ema: bool = True) -> torch.nn.Module:
    """Rebuild the segmentation model a super_recipes checkpoint was trained as (its recipe's ``architecture``
    and ``arch_params``, after the recipe's ``imports``), load its weights (the EMA weights when present and
    ``use_ema``), set its preprocessing and class names from the recipe's validation dataset
    (:func:`processing_params_from_recipe`) and return it in eval mode on ``device``.

    ``checkpoint``: the file, or its already loaded dict (``super_recipes.engine.checkpoints.load_checkpoint``).
    An exported ``.onnx`` file gives its ONNX Runtime wrapper (:mod:`super_recipes.export.runtime`), with the same
    ``predict``.
    """
    from super_recipes.export import is_exported_file

    if is_exported_file(checkpoint):
        from super_recipes.export.runtime import load_onnx_for_prediction

        return load_onnx_for_prediction(checkpoint, device=device)  # an exported file: ONNX Runtime runs it
    model, recipe = model_from_checkpoint(checkpoint, use_ema)
    set_processing_params(model, processing_params_from_recipe(recipe))
    return model.to(device).eval()


def processing_params_from_recipe(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """``class_names``, the rescale (``scale_factor`` / ``short_size`` / ``long_size`` / ``size``) and
    ``mean`` / ``std`` of the recipe's validation dataset (``dataset_params.val_dataset_params``: what the model
    was validated on). No ``SegRescale`` there means full resolution (``scale_factor: 1.0``); no
    ``SegNormalize``, pixels in [0, 1] (``mean``/``std`` None). A recipe without ``transforms`` there (its
    loader's defaults applied) gives the class names only, and predict's defaults apply."""
    if "transforms" not in _val_params(recipe):
        logger.warning("The checkpoint's recipe lists no validation transforms; predict uses its defaults "
                       "(ImageNet normalisation, the model's evaluation size).")
        return {"class_names": _class_names(_val_params(recipe))}
    params: dict[str, Any] = {mode: None for mode in RESCALE_MODES}
    params.update({"mean": None, "std": None, "class_names": _class_names(_val_params(recipe))})
    rescaled = False
    for name, kwargs in validation_transforms(recipe):
        if name == "SegRescale":
            params.update({mode: None for mode in RESCALE_MODES})
            params.update({k: v for k, v in kwargs.items() if k in RESCALE_MODES})
            rescaled = True
        elif name == "SegNormalize":
            params["mean"] = list(kwargs.get("mean", IMAGENET_MEAN))
            params["std"] = list(kwargs.get("std", IMAGENET_STD))
        elif name not in _NOT_REPLAYED:
            logger.warning("Validation transform %s is not replayed by predict (it knows SegRescale and "
                           "SegNormalize).", name)
    if not rescaled:
        params["scale_factor"] = 1.0
    return params


def validation_transforms(recipe: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(class name, kwargs)`` of each spec (a name, ``{Name: {kwargs}}`` or ``_target_`` node) in the recipe's
    ``dataset_params.val_dataset_params.transforms``; dotted names are shortened to the class name."""
    specs = _val_params(recipe).get("transforms") or []
    out = []
    for spec in specs if isinstance(specs, list) else [specs]:
        if isinstance(spec, str):
            name, kwargs = spec, {}
        elif isinstance(spec, Mapping) and "_target_" in spec:
            name, kwargs = str(spec["_target_"]), {k: v for k, v in spec.items() if k != "_target_"}
        elif isinstance(spec, Mapping) and len(spec) == 1:
            name, kwargs = next(iter(spec.items()))
        else:
            continue
        out.append((str(name).rsplit(".", 1)[-1], dict(kwargs or {})))
    return out


def _val_params(recipe: Mapping[str, Any]) -> dict[str, Any]:
    return dict((recipe.get("dataset_params") or {}).get("val_dataset_params") or {})


def _class_names(data: Mapping[str, Any]) -> list[str] | None:
    # The checkpoint keeps only the recipe: read the names where the dataset would, without building it.
    if data.get("class_names"):
        return [str(name) for name in data["class_names"]]
    if data.get("binary"):
        return ["background", "foreground"]
    if data.get("dataset"):
        from super_recipes.registry import DATASETS

        try:
            names = getattr(DATASETS.get(str(data["dataset"])), "class_names", None)
        except RecipeError:
            names = None
        if isinstance(names, (list, tuple)) and names:
            return [str(name) for name in names]
    logger.warning("No class names found in the checkpoint's recipe; classes are named by index.")
    return None
