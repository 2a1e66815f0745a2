"""Collate functions for detection items ``(image, targets, extras)``.

Registered names (``dataloader_params.collate_fn``): ``DetectionCollateFN`` -> ``(images, targets)`` and
``CrowdDetectionCollateFN`` -> ``(images, targets, extras)``. Targets of all images are concatenated into one
``[N, 6]`` float32 tensor whose first column is the image's index in the batch, since images hold different
numbers of boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from super_recipes.registry import register_collate_function


def _stack_images(items: Sequence[Any]) -> torch.Tensor:
    images = [torch.as_tensor(item[0], dtype=torch.float32) for item in items]
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise ValueError(f"Detection images in one batch must have the same size, got {sorted(shapes)}: "
                         "end the transforms with DetectionPaddedRescale (or DetectionPadIfNeeded).")
    return torch.stack(images)


def batch_targets(per_image: Sequence[Any]) -> torch.Tensor:
    """Per-image ``[n_i, 5]`` targets -> one ``[sum n_i, 6]`` float32 tensor (batch index, then the 5 columns)."""
    rows = []
    for index, targets in enumerate(per_image):
        targets = torch.as_tensor(targets, dtype=torch.float32).reshape(-1, 5)
        rows.append(torch.cat([torch.full((len(targets), 1), float(index)), targets], dim=1))
    return torch.cat(rows) if rows else torch.zeros((0, 6), dtype=torch.float32)


@register_collate_function
class DetectionCollateFN:
    """``(images [B, C, H, W] float32, targets [N, 6] float32)``; serves ``collate_fn: DetectionCollateFN``."""

    def __call__(self, batch: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return _stack_images(batch), batch_targets([item[1] for item in batch])

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@register_collate_function
class CrowdDetectionCollateFN(DetectionCollateFN):
    """``(images, targets, extras)``; serves ``collate_fn: CrowdDetectionCollateFN`` (COCO-style evaluation).

    ``extras``: ``crowd_targets`` ``[M, 6]`` (like targets), ``image_ids`` ``[B]`` int64, ``original_shapes``
    ``[B, 2]`` int64 ``(h, w)``, ``scales`` ``[B]`` float32 and ``pads`` ``[B, 2]`` float32 ``(left, top)``:
    what a metric needs to map predictions back to the original image (``(xy - pad) / scale``).
    """

    def __call__(self, batch: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        images, targets = super().__call__(batch)
        extras = [item[2] if len(item) > 2 else {} for item in batch]
        batched = {
            "crowd_targets": batch_targets([e.get("crowd_targets", ()) for e in extras]),
            "image_ids": torch.tensor([int(e.get("image_id", -1)) for e in extras], dtype=torch.int64),
            "original_shapes": torch.tensor([list(e.get("original_shape", (0, 0))) for e in extras],
                                            dtype=torch.int64).reshape(-1, 2),
            "scales": torch.tensor([float(e.get("scale", 1.0)) for e in extras], dtype=torch.float32),
            "pads": torch.tensor([list(e.get("pad", (0.0, 0.0))) for e in extras], dtype=torch.float32).reshape(-1, 2),
        }
        return images, targets, batched
