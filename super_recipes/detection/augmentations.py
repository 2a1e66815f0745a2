"""Single-image random detection augmentations: random affine, HSV jitter, flips.

Registered transform names (recipe keys under ``transforms:``): ``DetectionRandomAffine``, ``DetectionHSV``,
``DetectionHorizontalFlip``, ``DetectionVerticalFlip``. Randomness comes from python's ``random`` and numpy's
global generator, which the data loader seeds per batch, so augmentations replay exactly on resume.

These are training augmentations: they leave the sample's ``scale``/``pad`` record alone, since a rotation or a
flip cannot be expressed as a letterbox and only the deterministic resize/pad chain of validation needs it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import cv2
import numpy as np

from super_recipes.detection.box_formats import as_hw, box_candidates, clip_boxes, map_sample_boxes, min_side_mask
from super_recipes.detection.sample import DetectionSample
from super_recipes.registry import register_transform

# Boxes thinner than this after an augmentation crops them are slivers with no object left to learn from.
MIN_AUGMENTED_BOX_SIDE = 2.0


def _symmetric_range(value: float | Sequence[float], center: float = 0.0) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return center - float(value), center + float(value)
    low, high = value
    return float(low), float(high)


def _fill(value: float, channels: int) -> tuple[float, ...]:
    return (float(value),) * max(channels, 1)


@register_transform
class DetectionRandomAffine:
    """Random rotation, zoom, shear and translation into a ``target_size`` output (YOLOX ``random_perspective``).

    Serves ``transforms: [{DetectionRandomAffine: {degrees, translate, scales, shear, target_size, ...}}]``.
    The input's centre goes to a point drawn within ``translate`` (a fraction of the output size) of the output's
    centre, so after ``DetectionMosaic`` (a canvas twice ``input_dim``) this also crops the mosaic to
    ``target_size``. ``degrees`` and ``shear`` (in degrees) are half-ranges or ``(low, high)`` pairs; ``scales``
    is a half-range around 1 or a ``(low, high)`` pair. Boxes follow their four corners (the enclosing box is
    kept), are clipped to the output and, with ``filter_box_candidates``, kept only if wider and taller than
    ``wh_thr`` px, keeping more than ``area_thr`` of their zoomed area and less elongated than ``ar_thr``
    (YOLOX's rule); without it, boxes with a side under 2 px are dropped.
    """

    def __init__(self, degrees: float | Sequence[float] = 10.0, translate: float = 0.1,
                 scales: float | Sequence[float] = 0.1, shear: float | Sequence[float] = 10.0,
                 target_size: int | Sequence[int] | None = None, filter_box_candidates: bool = True,
                 wh_thr: float = 2, ar_thr: float = 20, area_thr: float = 0.1, border_value: float = 114):
        self.degrees = _symmetric_range(degrees)
        self.translate = float(translate)
        self.scales = _symmetric_range(scales, center=1.0)
        self.shear = _symmetric_range(shear)
        self.target_size = None if target_size is None else as_hw(target_size)
        self.filter_box_candidates = filter_box_candidates
        self.wh_thr, self.ar_thr, self.area_thr = wh_thr, ar_thr, area_thr
        self.border_value = border_value

    def _matrix(self, in_h: int, in_w: int, out_h: int, out_w: int) -> tuple[np.ndarray, float]:
        angle = random.uniform(*self.degrees)
        scale = random.uniform(*self.scales)
        shear_x = math.tan(math.radians(random.uniform(*self.shear)))
        shear_y = math.tan(math.radians(random.uniform(*self.shear)))
        tx = random.uniform(0.5 - self.translate, 0.5 + self.translate) * out_w
        ty = random.uniform(0.5 - self.translate, 0.5 + self.translate) * out_h
        center = np.array([[1, 0, -in_w / 2], [0, 1, -in_h / 2], [0, 0, 1]], dtype=np.float64)
        rotate = np.eye(3)
        rotate[:2] = cv2.getRotationMatrix2D((0, 0), angle, scale)
        shear = np.array([[1, shear_x, 0], [shear_y, 1, 0], [0, 0, 1]], dtype=np.float64)
        move = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], dtype=np.float64)
        return (move @ shear @ rotate @ center)[:2], scale

    def __call__(self, sample: DetectionSample) -> DetectionSample:
        image = sample.image
        in_h, in_w = image.shape[:2]
        out_h, out_w = self.target_size or (in_h, in_w)
        matrix, scale = self._matrix(in_h, in_w, out_h, out_w)
        # OpenCV maps pixel centres (integer indices) while boxes use pixel edges (a centre is at i + 0.5).
        pixel_matrix = matrix.copy()
        pixel_matrix[:, 2] += matrix[:, :2] @ np.array([0.5, 0.5]) - 0.5
        channels = image.shape[2] if image.ndim == 3 else 1
        warped = cv2.warpAffine(image, pixel_matrix, (out_w, out_h), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=_fill(self.border_value, channels))
        if image.ndim == 3 and warped.ndim == 2:
            warped = warped[:, :, None]

        def move(boxes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            if len(boxes) == 0:
                return boxes, labels
            corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 4, 2).astype(np.float64)
            moved = corners @ matrix[:, :2].T + matrix[:, 2]
            enclosing = np.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=1)
            clipped = clip_boxes(enclosing, out_h, out_w)
            if self.filter_box_candidates:
                keep = box_candidates(boxes * scale, clipped, self.wh_thr, self.ar_thr, self.area_thr)
            else:
                keep = min_side_mask(clipped, MIN_AUGMENTED_BOX_SIDE)
            return clipped[keep], labels[keep]

        return map_sample_boxes(sample, warped, move)


@register_transform
class DetectionHSV:
    """Random hue/saturation/value shifts (YOLOX ``augment_hsv``); boxes are untouched.

    Serves ``transforms: [{DetectionHSV: {prob, hgain, sgain, vgain}}]``. With probability ``prob``, each of
    H, S and V is independently either left alone or shifted by a uniform draw in ``[-gain, gain]`` (hue in
    OpenCV's 0..179 units, wrapping). ``bgr_channels`` names the three channels holding B, G, R in images with
    more channels. Needs a uint8 image: place it before ``DetectionStandardize``.
    """

    def __init__(self, prob: float = 1.0, hgain: float = 5, sgain: float = 30, vgain: float = 30,
                 bgr_channels: Sequence[int] = (0, 1, 2)):
        self.prob = prob
        self.gains = np.array([hgain, sgain, vgain], dtype=np.float64)
        self.bgr_channels = list(bgr_channels)

    def __call__(self, sample: DetectionSample) -> DetectionSample:
        if random.random() >= self.prob:
            return sample
        if sample.image.dtype != np.uint8:
            raise TypeError("DetectionHSV needs a uint8 image; place it before DetectionStandardize.")
        shifts = np.random.uniform(-1, 1, 3) * self.gains * np.random.randint(0, 2, 3)
        dh, ds, dv = shifts.astype(np.int16)
        bgr = np.ascontiguousarray(sample.image[:, :, self.bgr_channels])
        hue, sat, val = cv2.split(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV))
        # Lookup tables: one pass per channel instead of int16 arithmetic over the whole image.
        levels = np.arange(256, dtype=np.int16)
        hue_lut = ((levels + dh) % 180).astype(np.uint8)
        sat_lut = np.clip(levels + ds, 0, 255).astype(np.uint8)
        val_lut = np.clip(levels + dv, 0, 255).astype(np.uint8)
        hsv = cv2.merge((cv2.LUT(hue, hue_lut), cv2.LUT(sat, sat_lut), cv2.LUT(val, val_lut)))
        image = sample.image.copy()
        image[:, :, self.bgr_channels] = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        return map_sample_boxes(sample, image, lambda b, lab: (b, lab))


@register_transform
class DetectionHorizontalFlip:
    """Mirror left-right with probability ``prob``. Serves ``transforms: [{DetectionHorizontalFlip: {prob}}]``."""

    def __init__(self, prob: float = 0.5):
        self.prob = prob

    def __call__(self, sample: DetectionSample) -> DetectionSample:
        if random.random() >= self.prob:
            return sample
        width = sample.image.shape[1]

        def flip(boxes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1), labels

        return map_sample_boxes(sample, np.ascontiguousarray(sample.image[:, ::-1]), flip)


@register_transform
class DetectionVerticalFlip:
    """Mirror top-bottom with probability ``prob``. Serves ``transforms: [{DetectionVerticalFlip: {prob}}]``."""

    def __init__(self, prob: float = 0.5):
        self.prob = prob

    def __call__(self, sample: DetectionSample) -> DetectionSample:
        if random.random() >= self.prob:
            return sample
        height = sample.image.shape[0]

        def flip(boxes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return np.stack([boxes[:, 0], height - boxes[:, 3], boxes[:, 2], height - boxes[:, 1]], axis=1), labels

        return map_sample_boxes(sample, np.ascontiguousarray(sample.image[::-1]), flip)
