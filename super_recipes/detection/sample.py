"""The detection sample that transforms read and write (see :mod:`super_recipes.detection`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float32)


def _empty_labels() -> np.ndarray:
    return np.zeros((0,), dtype=np.int64)


@dataclass
class DetectionSample:
    """One image and its boxes, as they move through the detection transforms."""

    image: np.ndarray  # HWC uint8, BGR
    boxes: np.ndarray = field(default_factory=_empty_boxes)  # [N, 4] float32 XYXY pixels
    labels: np.ndarray = field(default_factory=_empty_labels)  # [N] int64
    crowd_boxes: np.ndarray = field(default_factory=_empty_boxes)
    crowd_labels: np.ndarray = field(default_factory=_empty_labels)
    image_id: int = -1
    original_shape: tuple[int, int] = (0, 0)  # (h, w) of the image on disk
    scale: float = 1.0  # original_xy = (input_xy - pad) / scale
    pad: tuple[float, float] = (0.0, 0.0)  # (left, top)
