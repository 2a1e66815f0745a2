"""Detection transforms over :class:`~super_recipes.detection.sample.DetectionSample`, and the final conversion
of a sample into a dataset item.

Registered transform names (recipe keys under a detection dataset's ``transforms:``):

* here: ``DetectionPaddedRescale``, ``DetectionLongestMaxSize``, ``DetectionPadIfNeeded``,
  ``DetectionStandardize``, ``DetectionTargetsFormatTransform``;
* in :mod:`.augmentations`: ``DetectionRandomAffine``, ``DetectionHSV``, ``DetectionHorizontalFlip``,
  ``DetectionVerticalFlip``;
* in :mod:`.mixing`: ``DetectionMosaic``, ``DetectionMixup``.

Importing this module registers them all (the transform registry imports it on demand). A transform is called
``t(sample) -> sample``; one that declares ``additional_samples_count > 0`` is called
``t(sample, extra_samples)``. The resize and pad transforms keep the sample's letterbox record up to date, so
that ``original_xy = (input_xy - pad) / scale`` holds after any chain of them; padding goes bottom/right unless
``DetectionPadIfNeeded(padding_mode="center")`` says otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import cv2
import numpy as np
import torch

from super_recipes.detection.augmentations import (
    DetectionHorizontalFlip,
    DetectionHSV,
    DetectionRandomAffine,
    DetectionVerticalFlip,
)
from super_recipes.detection.box_formats import (
    TARGET_FORMATS,
    as_hw,
    boxes_from_targets,
    clip_boxes,
    convert_boxes,
    map_sample_boxes,
    min_side_mask,
    split_target_format,
    targets_from_boxes,
)
from super_recipes.detection.mixing import DetectionMixup, DetectionMosaic
from super_recipes.detection.sample import DetectionSample
from super_recipes.registry import register_transform

__all__ = [
    "TARGET_FORMATS", "DetectionHSV", "DetectionHorizontalFlip", "DetectionLongestMaxSize", "DetectionMixup",
    "DetectionMosaic", "DetectionPadIfNeeded", "DetectionPaddedRescale", "DetectionRandomAffine",
    "DetectionStandardize", "DetectionTargetsFormatTransform", "DetectionVerticalFlip", "annotation_input_format",
    "boxes_from_targets", "convert_boxes", "sample_to_item", "targets_from_boxes",
]

DEFAULT_OUTPUT_FORMAT = "LABEL_CXCYWH"
# What DetectionDataset._load_annotation returns unless a DetectionTargetsFormatTransform names another.
DEFAULT_INPUT_FORMAT = "XYXY_LABEL"


def _rescaled(sample: DetectionSample, ratio: float, canvas_hw: tuple[int, int] | None = None,
              pad_value: float = 114) -> DetectionSample:
    """``sample`` resized by ``ratio`` (both axes), optionally pasted top-left on a ``canvas_hw`` canvas."""
    image = sample.image
    h, w = image.shape[:2]
    new_w, new_h = max(round(w * ratio), 1), max(round(h * ratio), 1)
    if (new_w, new_h) != (w, h):
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        image = resized[:, :, None] if image.ndim == 3 and resized.ndim == 2 else resized
    if canvas_hw is not None:
        canvas = np.full((*canvas_hw, *image.shape[2:]), pad_value, dtype=image.dtype)
        canvas[:new_h, :new_w] = image[:canvas_hw[0], :canvas_hw[1]]
        image = canvas
    out_h, out_w = image.shape[:2]

    def scale_boxes(boxes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The recorded ratio (not the rounded pixel size) moves the boxes, so mapping back is exact.
        moved = clip_boxes(boxes * np.float32(ratio), out_h, out_w)
        keep = min_side_mask(moved)
        return moved[keep], labels[keep]

    out = map_sample_boxes(sample, image, scale_boxes)
    return replace(out, scale=float(sample.scale) * ratio,
                   pad=(float(sample.pad[0]) * ratio, float(sample.pad[1]) * ratio))


@register_transform
class DetectionPaddedRescale:
    """Letterbox to ``input_dim``: resize keeping the aspect ratio to fit, pad bottom/right with ``pad_value``.

    Serves ``transforms: [{DetectionPaddedRescale: {input_dim: [640, 640], pad_value: 114}}]``; the usual
    last geometric step of training and the whole geometry of validation. Records the resize in
    ``sample.scale`` (bottom/right padding leaves ``pad`` as it was, rescaled).
    """

    def __init__(self, input_dim: int | Sequence[int], pad_value: float = 114):
        self.input_dim = as_hw(input_dim)
        self.pad_value = pad_value

    def __call__(self, sample: DetectionSample) -> DetectionSample:
        h, w = sample.image.shape[:2]
        ratio = min(self.input_dim[0] / h, self.input_dim[1] / w)
        return _rescaled(sample, ratio, self.input_dim, self.pad_value)


@register_transform
class DetectionLongestMaxSize:
    """Resize keeping the aspect ratio so the image fits ``max_height x max_width`` (up or down), no padding.

    Serves ``transforms: [{DetectionLongestMaxSize: {max_height: 640, max_width: 640}}]``; records ``scale``.
    """

    def __init__(self, max_height: int, max_width: int):
        self.max_height, self.max_width = int(max_height), int(max_width)

    def __call__(self, sample: DetectionSample) -> DetectionSample:
        h, w = sample.image.shape[:2]
        return _rescaled(sample, min(self.max_height / h, self.max_width / w))


@register_transform
class DetectionPadIfNeeded:
    """Pad with ``pad_value`` up to at least ``min_height x min_width``.

    Serves ``transforms: [{DetectionPadIfNeeded: {min_height: 640, min_width: 640, pad_value: 114}}]``.
    ``padding_mode``: ``bottom_right`` (default, the pixels keep their coordinates) or ``center`` (the added
    left/top margins are recorded in ``sample.pad``).
    """

    def __init__(self, min_height: int, min_width: int, pad_value: float = 114, padding_mode: str = "bottom_right"):
        if padding_mode not in ("bottom_right", "center"):
            raise ValueError(f"padding_mode must be 'bottom_right' or 'center', got {padding_mode!r}.")
        self.min_height, self.min_width = int(min_height), int(min_width)
        self.pad_value = pad_value
        self.padding_mode = padding_mode

    def __call__(self, sample: DetectionSample) -> DetectionSample:
        h, w = sample.image.shape[:2]
        extra_h, extra_w = max(self.min_height - h, 0), max(self.min_width - w, 0)
        if not (extra_h or extra_w):
            return sample
        top, left = (extra_h // 2, extra_w // 2) if self.padding_mode == "center" else (0, 0)
        widths = [(top, extra_h - top), (left, extra_w - left)] + [(0, 0)] * (sample.image.ndim - 2)
        image = np.pad(sample.image, widths, mode="constant", constant_values=self.pad_value)
        shift = np.array([left, top, left, top], dtype=np.float32)
        out = map_sample_boxes(sample, image, lambda boxes, labels: (boxes + shift, labels))
        return replace(out, pad=(float(sample.pad[0]) + left, float(sample.pad[1]) + top))


@register_transform
class DetectionStandardize:
    """Image -> float32 divided by ``max_value`` (``[0, 1]`` for 8-bit images); boxes untouched.

    Serves ``transforms: [..., DetectionStandardize]``; put colour augmentations (``DetectionHSV``) before it.
    """

    def __init__(self, max_value: float = 255.0):
        self.max_value = float(max_value)

    def __call__(self, sample: DetectionSample) -> DetectionSample:
        return replace(sample, image=sample.image.astype(np.float32) / np.float32(self.max_value))


@register_transform
class DetectionTargetsFormatTransform:
    """Chooses the format of the item's targets (``output_format``) and names the format the dataset's
    ``_load_annotation`` writes its ``target`` in (``input_format``); the sample passes through unchanged.

    Serves ``transforms: [..., {DetectionTargetsFormatTransform: {input_format: XYWH_LABEL, output_format:
    LABEL_CXCYWH}}]`` as the last transform. ``output_format``: the dataset converts the final sample with
    :func:`sample_to_item` (or :meth:`to_item`). ``input_format`` (default ``XYXY_LABEL``, what every built-in
    dataset writes): :class:`~super_recipes.detection.datasets.DetectionDataset` reads it from its transforms
    (:func:`annotation_input_format`) and converts each raw ``target`` / ``crowd_target`` to ``XYXY_LABEL``
    pixels when it loads them, before any transform runs, so the augmentations always see pixel corners.
    Formats: the :class:`~super_recipes.detection.targets_format.DetectionTargetsFormat` names or their strings
    (``LABEL_CXCYWH``, ``XYXY_LABEL``, ``LABEL_NORMALIZED_CXCYWH``, ``XYWH_LABEL``...; see
    :mod:`super_recipes.detection.box_formats`). Normalised output formats divide by the final image's size,
    normalised input formats by the image on disk; ``input_dim`` is accepted for SuperGradients recipes and only
    checked against the final size.
    """

    def __init__(self, output_format: str = DEFAULT_OUTPUT_FORMAT, input_dim: int | Sequence[int] | None = None,
                 input_format: str = DEFAULT_INPUT_FORMAT):
        for value in (output_format, input_format):
            split_target_format(value)  # refuse unknown formats when the recipe is built
        self.output_format = str(output_format).upper()
        self.input_format = str(input_format).upper()
        self.input_dim = None if input_dim is None else as_hw(input_dim)

    def __call__(self, sample: DetectionSample) -> DetectionSample:
        if self.input_dim is not None and tuple(sample.image.shape[:2]) != self.input_dim:
            raise ValueError(f"DetectionTargetsFormatTransform expected an image of size {self.input_dim}, got "
                             f"{tuple(sample.image.shape[:2])}: add DetectionPaddedRescale before it.")
        return sample

    def to_item(self, sample: DetectionSample) -> tuple[torch.Tensor, np.ndarray, dict[str, Any]]:
        return sample_to_item(sample, self.output_format)


def annotation_input_format(transforms: Sequence[Any]) -> str:
    """The format a dataset's raw annotations are in: the ``input_format`` of its
    :class:`DetectionTargetsFormatTransform` (``XYXY_LABEL`` without one)."""
    formats = {str(t.input_format).upper() for t in transforms if isinstance(t, DetectionTargetsFormatTransform)}
    if len(formats) > 1:
        raise ValueError(f"The DetectionTargetsFormatTransforms of one dataset name different input formats "
                         f"{sorted(formats)}: the annotations are in one format.")
    return formats.pop() if formats else DEFAULT_INPUT_FORMAT


def sample_to_item(sample: DetectionSample,
                   output_format: str = DEFAULT_OUTPUT_FORMAT) -> tuple[torch.Tensor, np.ndarray, dict[str, Any]]:
    """The dataset item of a transformed sample: ``(image, targets, extras)``.

    ``image``: float32 CHW tensor, channels in the sample's order (BGR), values as the transforms left them
    (0..255 unless ``DetectionStandardize`` ran). ``targets``: float32 ``[N, 5]`` in ``output_format``.
    ``extras``: ``crowd_targets`` (same format), ``image_id``, ``original_shape``, ``scale``, ``pad``.
    """
    image = sample.image if sample.image.ndim == 3 else sample.image[:, :, None]
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).to(torch.float32)
    shape = image.shape[:2]
    extras = {
        "crowd_targets": targets_from_boxes(sample.crowd_boxes, sample.crowd_labels, output_format, shape),
        "image_id": int(sample.image_id),
        "original_shape": (int(sample.original_shape[0]), int(sample.original_shape[1])),
        "scale": float(sample.scale),
        "pad": (float(sample.pad[0]), float(sample.pad[1])),
    }
    return tensor, targets_from_boxes(sample.boxes, sample.labels, output_format, shape), extras
