"""Detection augmentations that combine several images: mosaic and mixup (YOLOX style).

Registered transform names: ``DetectionMosaic`` and ``DetectionMixup``. Both declare
``additional_samples_count`` (3 and 1); the dataset base class then calls them as ``t(sample, extra_samples)``
with that many other samples of the dataset. Switching them off (``enable_mosaic = False``,
``enable_mixup = False`` or ``close()``, as the YOLOX stage-switch callback does for the last epochs) also
drops the count to 0, so the dataset stops loading extra images it would not use.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import cv2
import numpy as np

from super_recipes.detection.augmentations import MIN_AUGMENTED_BOX_SIDE
from super_recipes.detection.box_formats import as_hw, box_candidates, clip_boxes, map_sample_boxes, min_side_mask
from super_recipes.detection.sample import DetectionSample
from super_recipes.registry import register_transform


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    resized = cv2.resize(image, (max(width, 1), max(height, 1)), interpolation=cv2.INTER_LINEAR)
    return resized[:, :, None] if image.ndim == 3 and resized.ndim == 2 else resized


def _canvas(height: int, width: int, like: np.ndarray, value: float) -> np.ndarray:
    return np.full((height, width, *like.shape[2:]), value, dtype=like.dtype)


def _extras(extra_samples: Sequence[DetectionSample] | None, needed: int, who: str) -> list[DetectionSample]:
    extra_samples = list(extra_samples or [])
    if len(extra_samples) < needed:
        raise ValueError(f"{who} needs {needed} extra samples (additional_samples_count), got {len(extra_samples)}.")
    return extra_samples[:needed]


@register_transform
class DetectionMosaic:
    """Four images tiled around a random centre on a ``2 * input_dim`` canvas (YOLOX mosaic).

    Serves ``transforms: [{DetectionMosaic: {input_dim, prob, enable_mosaic, border_value}}]``. Each image is
    resized to fit ``input_dim`` (keeping its aspect ratio) and placed with one corner on the centre, drawn
    uniformly in the middle half of the canvas; what falls off the canvas is cut, its boxes are clipped and
    those left thinner than 2 px are dropped. Follow it with ``DetectionRandomAffine(target_size=input_dim)``,
    which crops the canvas back to ``input_dim``.
    """

    def __init__(self, input_dim: int | Sequence[int], prob: float = 1.0, enable_mosaic: bool = True,
                 border_value: float = 114):
        self.input_dim = as_hw(input_dim)
        self.prob = prob
        self.enable_mosaic = enable_mosaic
        self.border_value = border_value

    @property
    def additional_samples_count(self) -> int:
        return 3 if self.enable_mosaic else 0

    def close(self) -> None:
        """Stop making mosaics (the last, clean epochs of a YOLOX schedule)."""
        self.enable_mosaic = False

    def __call__(self, sample: DetectionSample,
                 extra_samples: Sequence[DetectionSample] | None = None) -> DetectionSample:
        if not self.enable_mosaic or random.random() >= self.prob:
            return sample
        tiles = [sample, *_extras(extra_samples, 3, "DetectionMosaic")]
        dim_h, dim_w = self.input_dim
        canvas_h, canvas_w = 2 * dim_h, 2 * dim_w
        center_y = int(random.uniform(0.5 * dim_h, 1.5 * dim_h))
        center_x = int(random.uniform(0.5 * dim_w, 1.5 * dim_w))
        canvas = _canvas(canvas_h, canvas_w, sample.image, self.border_value)
        placed: list[tuple[np.ndarray, ...]] = []
        for corner, tile in enumerate(tiles):
            h, w = tile.image.shape[:2]
            ratio = min(dim_h / h, dim_w / w)
            new_w, new_h = max(round(w * ratio), 1), max(round(h * ratio), 1)
            resized = _resize(tile.image, new_w, new_h)
            # Tiles 0..3 sit top-left, top-right, bottom-left, bottom-right of the centre.
            left = center_x - new_w if corner in (0, 2) else center_x
            top = center_y - new_h if corner in (0, 1) else center_y
            x1, y1 = max(left, 0), max(top, 0)
            x2, y2 = min(left + new_w, canvas_w), min(top + new_h, canvas_h)
            canvas[y1:y2, x1:x2] = resized[y1 - top:y2 - top, x1 - left:x2 - left]
            # Per-axis factors of the actual (rounded) resize keep boxes on the pixels they cover.
            factors = np.array([new_w / w, new_h / h] * 2, dtype=np.float32)
            offset = np.array([left, top] * 2, dtype=np.float32)
            placed.append((tile.boxes * factors + offset, tile.labels,
                           tile.crowd_boxes * factors + offset, tile.crowd_labels))

        def gather(which: int) -> tuple[np.ndarray, np.ndarray]:
            boxes = clip_boxes(np.concatenate([p[which] for p in placed]).reshape(-1, 4), canvas_h, canvas_w)
            labels = np.concatenate([p[which + 1] for p in placed]).astype(np.int64)
            keep = min_side_mask(boxes, MIN_AUGMENTED_BOX_SIDE)
            return boxes[keep], labels[keep]

        (boxes, labels), (crowd_boxes, crowd_labels) = gather(0), gather(2)
        mosaic = map_sample_boxes(sample, canvas, lambda b, lab: (b, lab))
        mosaic.boxes, mosaic.labels, mosaic.crowd_boxes, mosaic.crowd_labels = boxes, labels, crowd_boxes, crowd_labels
        return mosaic


@register_transform
class DetectionMixup:
    """Blend a second, scale-jittered image 50/50 into the sample and add its boxes (YOLOX mixup).

    Serves ``transforms: [{DetectionMixup: {input_dim, mixup_scale, prob, enable_mixup, flip_prob}}]``. The
    extra image is letterboxed into ``input_dim`` (top-left, ``border_value`` around it), zoomed by a factor
    drawn from ``mixup_scale``, mirrored with probability ``flip_prob``, and a window the size of the sample's
    image is cut from it at a random position. Its boxes follow, are clipped to the window and kept by the
    YOLOX candidate rule (wider and taller than 2 px, more than 10% of their area left, aspect below 20).
    """

    def __init__(self, input_dim: int | Sequence[int], mixup_scale: Sequence[float] = (0.5, 1.5),
                 prob: float = 1.0, enable_mixup: bool = True, flip_prob: float = 0.5, border_value: float = 114):
        self.input_dim = as_hw(input_dim)
        self.mixup_scale = (float(mixup_scale[0]), float(mixup_scale[1]))
        self.prob = prob
        self.enable_mixup = enable_mixup
        self.flip_prob = flip_prob
        self.border_value = border_value

    @property
    def additional_samples_count(self) -> int:
        return 1 if self.enable_mixup else 0

    def close(self) -> None:
        """Stop mixing (the last, clean epochs of a YOLOX schedule)."""
        self.enable_mixup = False

    def __call__(self, sample: DetectionSample,
                 extra_samples: Sequence[DetectionSample] | None = None) -> DetectionSample:
        if not self.enable_mixup or random.random() >= self.prob:
            return sample
        (other,) = _extras(extra_samples, 1, "DetectionMixup")
        jitter = random.uniform(*self.mixup_scale)
        flip = random.random() < self.flip_prob
        dim_h, dim_w = self.input_dim
        h, w = other.image.shape[:2]
        ratio = min(dim_h / h, dim_w / w)
        fit_w, fit_h = max(round(w * ratio), 1), max(round(h * ratio), 1)
        letterbox = _canvas(dim_h, dim_w, sample.image, self.border_value)
        letterbox[:fit_h, :fit_w] = _resize(other.image, fit_w, fit_h)
        zoom_w, zoom_h = max(round(dim_w * jitter), 1), max(round(dim_h * jitter), 1)
        zoomed = _resize(letterbox, zoom_w, zoom_h)
        if flip:
            zoomed = zoomed[:, ::-1]
        target_h, target_w = sample.image.shape[:2]
        padded = _canvas(max(zoom_h, target_h), max(zoom_w, target_w), sample.image, self.border_value)
        padded[:zoom_h, :zoom_w] = zoomed
        off_y = random.randint(0, padded.shape[0] - target_h)
        off_x = random.randint(0, padded.shape[1] - target_w)
        window = padded[off_y:off_y + target_h, off_x:off_x + target_w]
        factors = np.array([fit_w / w * zoom_w / dim_w, fit_h / h * zoom_h / dim_h] * 2, dtype=np.float32)

        def move(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            zoomed_boxes = np.asarray(boxes, np.float32).reshape(-1, 4) * factors
            if flip:
                zoomed_boxes = np.stack([zoom_w - zoomed_boxes[:, 2], zoomed_boxes[:, 1],
                                         zoom_w - zoomed_boxes[:, 0], zoomed_boxes[:, 3]], axis=1)
            shifted = zoomed_boxes - np.array([off_x, off_y, off_x, off_y], dtype=np.float32)
            clipped = clip_boxes(shifted, target_h, target_w)
            return clipped, box_candidates(shifted, clipped)

        boxes, keep = move(other.boxes)
        crowd_boxes, crowd_keep = move(other.crowd_boxes)
        blended = (0.5 * sample.image.astype(np.float32) + 0.5 * window.astype(np.float32)).astype(sample.image.dtype)
        mixed = map_sample_boxes(sample, blended, lambda b, lab: (b, lab))
        mixed.boxes = np.concatenate([mixed.boxes, boxes[keep]])
        mixed.labels = np.concatenate([mixed.labels, np.asarray(other.labels, np.int64)[keep]])
        mixed.crowd_boxes = np.concatenate([mixed.crowd_boxes, crowd_boxes[crowd_keep]])
        mixed.crowd_labels = np.concatenate([mixed.crowd_labels, np.asarray(other.crowd_labels, np.int64)[crowd_keep]])
        return mixed
