"""``ShapesSegmentationDataset``: the built-in offline segmentation set (recipe ``dataset:
ShapesSegmentationDataset``, loaders ``shapes_segmentation_train`` / ``shapes_segmentation_val``).

Filled shapes (circle, square, triangle) at random positions, sizes and rotations, possibly overlapping (a
later shape hides an earlier one), on textured backgrounds (a shaded base colour with a stripe pattern and
per-pixel noise). Each class has its own hue, jittered, on low-saturation backgrounds, so a tiny model learns the
set in a minute; the shapes' outlines are what it has to get right. The mask is exactly the drawn pixels: every
shape is rasterised once, without anti-aliasing, and that one pixel set colours the image and labels the mask.

Sample ``i`` of a split is generated in ``__getitem__`` from ``numpy.random.default_rng([seed, split, i])``, so
building the dataset costs nothing, splits never share an image, and every process and run sees the same data.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from super_recipes.errors import RecipeError, did_you_mean
from super_recipes.registry import register_dataset
from super_recipes.segmentation.datasets import DEFAULT_IGNORE_INDEX, SegmentationDataset

CLASS_NAMES = ("background", "circle", "square", "triangle")
SPLITS = {"train": 0, "val": 1, "test": 2}
_HUES = {1: 0, 2: 60, 3: 120}  # OpenCV hue (0..180) per shape class: red, green, blue
RADIUS_RANGE = (0.1, 0.25)  # circumradius as a fraction of the image side
NOISE = 14  # per-pixel background noise amplitude (uint8 levels)
_SHIFT = 4  # cv2 sub-pixel bits: small shapes keep their geometry


def _unit_outline(label: int) -> np.ndarray:
    corners = {1: 48, 2: 4, 3: 3}[label]
    phase = {1: 0.0, 2: np.pi / 4, 3: -np.pi / 2}[label]
    angles = phase + 2 * np.pi * np.arange(corners) / corners
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


_OUTLINES = {label: _unit_outline(label) for label in _HUES}
_AREA_SCALE = {1: 0.9, 2: 0.95, 3: 1.2}  # similar areas per class, so size says little about the class


def shape_pixels(polygon: np.ndarray, size: int) -> np.ndarray:
    """The ``[size, size]`` boolean mask of the pixels ``polygon`` (``[N, 2]`` x, y in pixels) covers, as drawn
    by the dataset (cv2 ``fillPoly``, 8-connected, no anti-aliasing)."""
    canvas = np.zeros((size, size), np.uint8)
    points = np.round(np.asarray(polygon) * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(canvas, [points], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return canvas.astype(bool)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    u = rng.random(9)  # one draw for every scalar: numpy's per-call overhead dominates at this size
    base = (60 + 140 * u[0] + 30 * (u[1:4] - 0.5)).astype(np.float32)  # greyish: no class hue in the background
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    slope = np.float32(60) * (u[4:6] - 0.5).astype(np.float32)
    # Stripes at a random angle and period: edges the model must not mistake for shape outlines.
    angle, period, contrast = np.pi * u[6], 4 + 12 * u[7], np.float32(8 + 22 * u[8])
    step = np.arange(size, dtype=np.float32) * np.float32(2 * np.pi / period)
    stripes = np.sin(step[None, :] * np.float32(np.cos(angle)) + step[:, None] * np.float32(np.sin(angle)))
    plane = ramp[:, None] * slope[0] + ramp[None, :] * slope[1] + contrast * np.sign(stripes)
    image = rng.random((size, size, 3), dtype=np.float32)  # uniform noise: 4x cheaper than normal draws
    image *= 2 * NOISE
    image += plane[:, :, None]
    image += base - NOISE
    np.clip(image, 0, 255, out=image)
    return image.astype(np.uint8)


def _colour(rng: np.random.Generator, label: int) -> np.ndarray:
    hsv = np.array([[[(_HUES[label] + rng.integers(-8, 9)) % 180, rng.integers(150, 256), rng.integers(130, 256)]]],
                   dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]


def draw_shapes_sample(seed: int, split: str, index: int, image_size: int = 64, max_shapes: int = 4
                       ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Sample ``index`` of ``split``: an HWC uint8 RGB image, its ``[H, W]`` uint8 mask and the drawn shapes in
    drawing order (``label``, ``polygon`` in pixels, ``colour``). The same arguments always give the same result.
    """
    rng = np.random.default_rng([int(seed), SPLITS[split], int(index)])
    size = int(image_size)
    image = _background(rng, size)
    mask = np.zeros((size, size), np.uint8)
    shapes = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        label = int(rng.integers(1, len(CLASS_NAMES)))
        radius = rng.uniform(*RADIUS_RANGE) * size * _AREA_SCALE[label]
        centre = rng.uniform(radius * 0.5, size - radius * 0.5, 2)  # may run a little off the image
        angle = rng.uniform(0, 2 * np.pi)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        polygon = centre + _OUTLINES[label] @ rotation.T * radius
        pixels = shape_pixels(polygon, size)
        colour = _colour(rng, label)
        # A little noise inside the shape too, so the colour of a class is a range, not one value.
        image[pixels] = np.clip(colour.astype(np.int16) + rng.integers(-10, 11, (int(pixels.sum()), 3)), 0,
                                255).astype(np.uint8)
        mask[pixels] = label
        shapes.append({"label": label, "polygon": polygon, "colour": colour})
    return image, mask, shapes


@register_dataset
class ShapesSegmentationDataset(SegmentationDataset):
    """Built-in offline segmentation set (``dataset: ShapesSegmentationDataset``): 4 classes (background,
    circle, square, triangle), generated per item from a seed.

    :param split: ``train``, ``val`` or ``test``; each split draws from its own random stream.
    :param num_samples: images in the split.
    :param image_size: side of the square images, in pixels.
    :param max_shapes: each image has 1..max_shapes shapes.
    :param seed: changes every image of every split.
    :param transforms: joint transforms (see :mod:`.transforms`).
    """

    class_names = list(CLASS_NAMES)

    def __init__(self, split: str = "train", num_samples: int = 4000, image_size: int = 64, max_shapes: int = 4,
                 seed: int = 0, transforms: Any = None, ignore_index: int = DEFAULT_IGNORE_INDEX):
        if split not in SPLITS:
            raise RecipeError(f"Unknown shapes segmentation split '{split}'. {did_you_mean(split, SPLITS)} "
                              f"Valid splits: {', '.join(SPLITS)}".replace("  ", " "))
        if num_samples < 0 or image_size < 16 or max_shapes < 1:
            raise RecipeError(f"ShapesSegmentationDataset needs num_samples >= 0, image_size >= 16 and max_shapes "
                              f">= 1, got {num_samples}, {image_size}, {max_shapes}.")
        self.split, self.num_samples, self.image_size = split, int(num_samples), int(image_size)
        self.max_shapes, self.seed = int(max_shapes), int(seed)
        super().__init__(transforms=transforms, ignore_index=ignore_index)

    def _setup_samples(self) -> range:
        return range(self.num_samples)  # nothing on disk: a sample is its index

    def load_sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask, _ = draw_shapes_sample(self.seed, self.split, self.samples[index], self.image_size,
                                            self.max_shapes)
        return image, mask
