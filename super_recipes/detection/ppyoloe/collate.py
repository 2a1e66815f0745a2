"""PP-YOLOE's multi-scale collate functions: ``collate_fn: PPYoloECollateFN`` (training) and
``collate_fn: CrowdDetectionPPYoloECollateFN`` (COCO-style evaluation).

```yaml
train_dataloader_params:
  collate_fn:
    PPYoloECollateFN:
      random_resize_sizes: [320, 352, 384, 416, 448, 480, 512, 544, 576, 608, 640, 672, 704, 736, 768]
      random_resize_modes: [0, 1, 2, 3, 4]   # OpenCV codes: nearest, linear, cubic, area, lanczos4
```

Once per batch a side ``S`` is drawn from ``random_resize_sizes`` and an interpolation from
``random_resize_modes`` (python's ``random``, which the data loader seeds), and every image of the batch is
resized to ``S x S`` with ``cv2.resize`` (the aspect ratio is not kept, as PaddleDetection's ``BatchRandomResize``
with ``keep_ratio: false`` and SuperGradients). The targets' ``cx, cy, w, h`` (``LABEL_CXCYWH`` items, the
datasets' default) are scaled by ``S / W`` horizontally and ``S / H`` vertically, crowd targets alike. Without
``random_resize_sizes`` both behave exactly as ``DetectionCollateFN`` / ``CrowdDetectionCollateFN``
(:mod:`super_recipes.detection.collate`).

The crowd variant also rescales each image's letterbox record (``scales``, ``pads``) so that
``original_xy = (input_xy - pad) / scale`` still maps predictions back to the original image; that needs the
same factor on both axes, i.e. square inputs (validation letterboxes to a square ``input_dim``).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch

from super_recipes.detection.collate import CrowdDetectionCollateFN, DetectionCollateFN
from super_recipes.errors import RecipeError
from super_recipes.registry import register_collate_function, to_plain

__all__ = ["INTERPOLATIONS", "PPYoloECollateFN", "CrowdDetectionPPYoloECollateFN", "resize_item"]

# OpenCV interpolation codes (what SuperGradients' recipes list), also accepted by name.
INTERPOLATIONS: dict[str, int] = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR,
                                  "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA,
                                  "lanczos4": cv2.INTER_LANCZOS4}
_SAME_FACTOR_TOLERANCE = 1e-6


def _interpolation(mode: Any) -> int:
    if isinstance(mode, str) and mode.lower() in INTERPOLATIONS:
        return INTERPOLATIONS[mode.lower()]
    if isinstance(mode, int) and not isinstance(mode, bool) and mode in INTERPOLATIONS.values():
        return mode
    raise RecipeError(f"random_resize_modes: unknown interpolation {mode!r}; use OpenCV codes "
                      f"{sorted(INTERPOLATIONS.values())} or names {sorted(INTERPOLATIONS)}.")


def _scaled_targets(targets: Any, sx: float, sy: float) -> np.ndarray:
    rows = np.array(targets.numpy() if isinstance(targets, torch.Tensor) else targets, dtype=np.float32)
    rows = rows.reshape(-1, 5).copy()
    rows[:, 1:5] *= np.array([sx, sy, sx, sy], dtype=np.float32)
    return rows


def resize_item(item: Sequence[Any], size: int, interpolation: int = cv2.INTER_LINEAR,
                letterbox_record: bool = False) -> tuple[Any, ...]:
    """One dataset item ``(image CHW, targets [N, 5] LABEL_CXCYWH, extras)`` resized to ``size x size``.

    ``letterbox_record``: also rescale ``extras['scale']`` / ``extras['pad']`` (needs equal factors on both axes).
    """
    image = torch.as_tensor(item[0], dtype=torch.float32)
    height, width = int(image.shape[-2]), int(image.shape[-1])
    hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
    resized = cv2.resize(hwc, (size, size), interpolation=interpolation)
    if resized.ndim == 2:  # OpenCV drops a single channel
        resized = resized[:, :, None]
    sx, sy = size / width, size / height
    out: list[Any] = [torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))),
                      _scaled_targets(item[1], sx, sy)]
    if len(item) > 2:
        extras = dict(item[2]) if isinstance(item[2], Mapping) else {}
        if "crowd_targets" in extras:
            extras["crowd_targets"] = _scaled_targets(extras["crowd_targets"], sx, sy)
        if letterbox_record:
            if abs(sx - sy) > _SAME_FACTOR_TOLERANCE * max(sx, sy):
                raise ValueError(
                    f"CrowdDetectionPPYoloECollateFN resized a {height}x{width} image to {size}x{size}: the "
                    "letterbox record (one scale per image) cannot describe different horizontal and vertical "
                    "factors. Letterbox validation images to a square input_dim (DetectionPaddedRescale).")
            extras["scale"] = float(extras.get("scale", 1.0)) * sx
            pad = extras.get("pad", (0.0, 0.0))
            extras["pad"] = (float(pad[0]) * sx, float(pad[1]) * sy)
        out.append(extras)
    return tuple(out)


@register_collate_function
class PPYoloECollateFN(DetectionCollateFN):
    """``(images [B, C, S, S], targets [N, 6])`` at a side ``S`` drawn per batch; serves
    ``collate_fn: {PPYoloECollateFN: {random_resize_sizes, random_resize_modes}}`` (see the module docs).

    :param random_resize_sizes: square sides to draw from (multiples of 32 for PP-YOLOE); ``None``: no resizing.
    :param random_resize_modes: interpolations to draw from, OpenCV codes (0 nearest, 1 linear, 2 cubic, 3 area,
        4 lanczos4) or those names; default linear.
    """

    _letterbox_record = False

    def __init__(self, random_resize_sizes: list[int] | None = None, random_resize_modes: list[int] | None = None):
        sizes = to_plain(random_resize_sizes)
        modes = to_plain(random_resize_modes)
        if sizes is not None:
            if isinstance(sizes, int | str) or not sizes or any(
                    isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
                raise RecipeError(f"random_resize_sizes must be a non-empty list of positive ints (square sides), "
                                  f"got {random_resize_sizes!r}.")
            sizes = [int(s) for s in sizes]
        if modes is not None and (isinstance(modes, int | str) or not modes):
            raise RecipeError(f"random_resize_modes must be a non-empty list of interpolations, got "
                              f"{random_resize_modes!r}.")
        self.random_resize_sizes: list[int] | None = sizes
        self.random_resize_modes: list[int] = ([_interpolation(m) for m in modes] if modes is not None
                                               else [cv2.INTER_LINEAR])

    def __call__(self, batch: Sequence[Any]) -> Any:
        if self.random_resize_sizes is not None:
            size = random.choice(self.random_resize_sizes)
            interpolation = random.choice(self.random_resize_modes)
            batch = [resize_item(item, size, interpolation, self._letterbox_record) for item in batch]
        return super().__call__(batch)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(random_resize_sizes={self.random_resize_sizes}, "
                f"random_resize_modes={self.random_resize_modes})")


@register_collate_function
class CrowdDetectionPPYoloECollateFN(PPYoloECollateFN, CrowdDetectionCollateFN):
    """``(images, targets, extras)`` as ``CrowdDetectionCollateFN``, after the optional per-batch resize, with
    ``crowd_targets``, ``scales`` and ``pads`` rescaled to match; serves
    ``collate_fn: CrowdDetectionPPYoloECollateFN`` (COCO evaluation of PP-YOLOE)."""

    _letterbox_record = True
