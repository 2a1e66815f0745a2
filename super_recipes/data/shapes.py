"""``ShapesClassificationDataset``: an offline classification dataset drawn on the fly, for demos, tests and CI.

Each sample is a coloured geometric shape (circle, square, triangle, star, cross, hexagon) with random size,
position, rotation and colour on a noisy, shaded background. Sample ``i`` of a split is generated in
``__getitem__`` from ``numpy.random.default_rng([seed, split_index, i])``: constructing the dataset costs
nothing, and every process, worker and run sees exactly the same images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import torch

from super_recipes.data.transforms import build_transforms
from super_recipes.errors import RecipeError, did_you_mean
from super_recipes.registry import register_dataset

SPLITS = {"train": 0, "val": 1, "test": 2}
_SUBPIXEL_BITS = 4  # cv2 draws with 1/16-pixel vertex precision, so small shapes keep their geometry
RADIUS_RANGE = (0.22, 0.42)  # circumradius as a fraction of the image side, before the per-class factor
NOISE = 24  # per-pixel background noise amplitude (uint8 levels)
SHADING = 40  # most a background channel changes from the centre to an edge


def _regular_polygon(corners: int, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(corners) / corners
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outline = _regular_polygon(2 * points, -np.pi / 2)
    outline[1::2] *= inner
    return outline


def _cross(half_width: float = 0.34) -> np.ndarray:
    w = half_width
    quarter = np.array([[-w, -1], [w, -1], [w, -w]])
    turn = np.array([[0, -1], [1, 0]])  # 90 degrees
    return np.concatenate([quarter @ np.linalg.matrix_power(turn, k).T for k in range(4)])


# Unit outlines (radius 1 around the origin); the order defines the label of each class.
_OUTLINES: dict[str, np.ndarray] = {
    "circle": _regular_polygon(40),
    "square": _regular_polygon(4, np.pi / 4),
    "triangle": _regular_polygon(3, -np.pi / 2),
    "star": _star(),
    "cross": _cross(),
    "hexagon": _regular_polygon(6),
}
# Circumradius factors that give the classes similar areas, so size alone says little about the class.
_SCALE = {"circle": 0.85, "square": 0.95, "triangle": 1.15, "star": 1.1, "cross": 1.0, "hexagon": 0.9}


@register_dataset
class ShapesClassificationDataset(torch.utils.data.Dataset):
    """Procedural shapes classification dataset (recipe ``dataset: ShapesClassificationDataset``).

    :param split: ``train``, ``val`` or ``test``; each split draws from its own random stream.
    :param num_samples: number of images in the split. Labels cycle through the classes, so they are balanced.
    :param image_size: side of the square RGB images, in pixels.
    :param seed: changes every image of every split.
    :param transforms: transform specs (see :mod:`super_recipes.data.transforms`) applied to the uint8 CHW image;
        the result is always a float32 CHW tensor.
    """

    class_names: tuple[str, ...] = tuple(_OUTLINES)

    def __init__(
        self,
        split: str = "train",
        num_samples: int = 10_000,
        image_size: int = 32,
        seed: int = 0,
        transforms: Any = None,
    ):
        if split not in SPLITS:
            hint = did_you_mean(split, SPLITS)
            raise RecipeError(f"Unknown shapes split '{split}'. {hint} Valid splits: {', '.join(SPLITS)}")
        if num_samples < 0 or image_size < 8:
            raise RecipeError(f"Shapes needs num_samples >= 0 and image_size >= 8, got {num_samples}/{image_size}")
        self.split = split
        self.num_samples = int(num_samples)
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.transforms: Callable = build_transforms(transforms)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < 0:
            index += self.num_samples
        if not 0 <= index < self.num_samples:
            raise IndexError(f"Sample {index} is out of range for {self.num_samples} shapes.")
        image, label = self.draw(index)
        return self.transforms(torch.from_numpy(image).permute(2, 0, 1)), label

    def label(self, index: int) -> int:
        """The class of sample ``index`` without drawing it."""
        return index % self.num_classes

    def draw(self, index: int) -> tuple[np.ndarray, int]:
        """Sample ``index`` as an HWC uint8 RGB array and its label, before transforms."""
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        label = self.label(index)
        name = self.class_names[label]
        size = self.image_size
        # One draw for every scalar: numpy's per-call overhead, not the arithmetic, dominates at this size.
        u = rng.random(12)
        base = np.floor(u[0:3] * 256)
        # Shifting every channel by 128 +- 60 (mod 256) keeps the shape visible on any background colour.
        colour = (base + 68 + np.floor(u[3:6] * 121)) % 256
        radius = size * (RADIUS_RANGE[0] + u[6] * (RADIUS_RANGE[1] - RADIUS_RANGE[0])) * _SCALE[name]
        angle = u[7] * 2 * np.pi
        margin = min(radius, size / 2)
        centre = margin + u[8:10] * (size - 2 * margin)
        image = _background(rng, size, base, (u[10:12] - 0.5) * 2 * SHADING)

        rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
        points = (_OUTLINES[name] @ rotation * radius + centre) * (1 << _SUBPIXEL_BITS)
        cv2.fillPoly(image, [points.round().astype(np.int32)], colour.tolist(), cv2.LINE_AA, _SUBPIXEL_BITS)
        return image, label


def _background(rng: np.random.Generator, size: int, base: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """The base colour, shaded linearly along ``slope`` (change per half image), plus uniform per-pixel noise."""
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    image = rng.random((size, size, 3), dtype=np.float32)
    image *= 2 * NOISE
    image += (ramp[:, None] * np.float32(slope[0]) + ramp[None, :] * np.float32(slope[1]))[:, :, None]
    image += (base - NOISE).astype(np.float32)
    np.clip(image, 0, 255, out=image)
    return image.astype(np.uint8)
