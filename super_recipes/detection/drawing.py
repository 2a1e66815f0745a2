"""Drawing detection batches: ground truth and predictions over the input images (used by the visualisation
callbacks in :mod:`super_recipes.detection.visualization`, and usable on its own)."""

from __future__ import annotations

import colorsys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from super_recipes.detection.box_formats import boxes_from_targets

GT_COLOR = (0, 255, 0)  # BGR green


def class_color(class_id: int) -> tuple[int, int, int]:
    """A stable, well-spread BGR colour per class (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((class_id * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


def undo_standardization(images: torch.Tensor) -> np.ndarray:
    """Batch ``[B, C, H, W]`` float -> ``[B, H, W, C]`` uint8, channels unchanged (BGR in this package).

    Multiplies by 255 when the batch lies within ``[0, 1]`` (after ``DetectionStandardize``); a batch already
    in 0..255 (YOLOX recipes feed unscaled pixels) is only rounded, so both pipelines draw correctly by default.
    """
    array = images.detach().to("cpu", torch.float32).numpy()
    if array.size and float(array.max()) <= 1.0:
        array = array * 255.0
    return np.ascontiguousarray(np.clip(np.rint(array), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1))


def _as_numpy(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float32).numpy()
    return np.asarray(value, dtype=np.float32)


def _class_name(class_names: Sequence[str] | None, class_id: int) -> str:
    if class_names is not None and 0 <= class_id < len(class_names):
        return str(class_names[class_id])
    return str(class_id)


def _corners(box: np.ndarray, scale: float) -> tuple[tuple[int, int], tuple[int, int]]:
    # Box edges are continuous coordinates; the last pixel inside a box is at x2 - 1.
    x1, y1, x2, y2 = (float(v) * scale for v in box[:4])
    return (round(x1), round(y1)), (max(round(x2) - 1, round(x1)), max(round(y2) - 1, round(y1)))


class DetectionVisualization:
    """Draws a batch: ground truth as thin green boxes blended at ``gt_alpha``, predictions as class-coloured
    boxes labelled with class name and confidence."""

    @staticmethod
    def draw_image(image: np.ndarray, predictions: Any, targets_xyxy: Any, class_names: Sequence[str] | None,
                   image_scale: float = 1.0, gt_alpha: float = 0.4, box_thickness: int = 2) -> np.ndarray:
        """One HWC uint8 BGR image with ``targets_xyxy`` (``[N, 5]``: x1, y1, x2, y2, label) and
        ``predictions`` (``[K, 6]``: x1, y1, x2, y2, confidence, class) drawn on a copy."""
        image = image if image.ndim == 3 else image[:, :, None]
        if image.shape[2] == 1:
            image = image.repeat(3, axis=2)
        image = np.array(image[:, :, :3], dtype=np.uint8, order="C")  # a copy: never draw on the caller's array
        if image_scale != 1.0:
            h, w = image.shape[:2]
            size = (max(round(w * image_scale), 1), max(round(h * image_scale), 1))
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        targets = _as_numpy(targets_xyxy)
        if targets is not None and len(targets):
            overlay = image.copy()
            for row in targets:
                cv2.rectangle(overlay, *_corners(row, image_scale), GT_COLOR, 1)
            image = cv2.addWeighted(overlay, gt_alpha, image, 1.0 - gt_alpha, 0.0)
        preds = _as_numpy(predictions)
        font, font_scale = cv2.FONT_HERSHEY_SIMPLEX, 0.35
        for row in preds if preds is not None else ():
            class_id = int(row[5])
            color = class_color(class_id)
            top_left, bottom_right = _corners(row, image_scale)
            cv2.rectangle(image, top_left, bottom_right, color, box_thickness)
            text = f"{_class_name(class_names, class_id)} {float(row[4]):.2f}"
            (text_w, text_h), baseline = cv2.getTextSize(text, font, font_scale, 1)
            # Above the box when there is room, else just inside its top edge.
            y_text = top_left[1] - 2 if top_left[1] - text_h - baseline - 2 >= 0 else top_left[1] + text_h + 2
            cv2.rectangle(image, (top_left[0], y_text - text_h - 1), (top_left[0] + text_w, y_text + baseline - 1),
                          color, cv2.FILLED)
            cv2.putText(image, text, (top_left[0], y_text), font, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
        return image

    @staticmethod
    def visualize_batch(images: torch.Tensor, predictions: Sequence[Any] | None, targets: Any,
                        class_names: Sequence[str] | None = None, batch_name: str = "batch",
                        output_dir: str | Path | None = None, image_scale: float = 1.0,
                        checkpoint_dir: str | Path | None = None, gt_alpha: float = 0.4,
                        undo_preprocessing_func: Callable[[torch.Tensor], Any] | None = None,
                        box_thickness: int = 2, target_format: str = "LABEL_CXCYWH") -> list[np.ndarray]:
        """Draw every image of a batch; returns the HWC uint8 BGR drawings.

        ``images``: ``[B, C, H, W]`` float batch, turned into uint8 HWC by ``undo_preprocessing_func``
        (default :func:`undo_standardization`). ``predictions``: per image a ``[K, 6]`` tensor (x1, y1, x2, y2,
        confidence, class) or None. ``targets``: ``[N, 6]`` (batch index, then 5 columns in ``target_format``,
        default label, cx, cy, w, h) in input pixels. When ``output_dir`` (or its alias ``checkpoint_dir``) is
        given, each drawing is also saved there as ``<batch_name>_<i>.jpg``.
        """
        undo = undo_preprocessing_func or undo_standardization
        pictures = [np.asarray(p) for p in undo(images)]
        all_targets = _as_numpy(targets)
        drawings = []
        for index, picture in enumerate(pictures):
            image_targets = None
            if all_targets is not None and len(all_targets):
                rows = all_targets[all_targets[:, 0] == index, 1:6]
                boxes, labels = boxes_from_targets(rows, target_format, picture.shape[:2])
                image_targets = np.concatenate([boxes, labels[:, None]], axis=1)
            image_preds = predictions[index] if predictions is not None and index < len(predictions) else None
            drawings.append(DetectionVisualization.draw_image(picture, image_preds, image_targets, class_names,
                                                              image_scale, gt_alpha, box_thickness))
        folder = output_dir or checkpoint_dir
        if folder is not None:
            folder = Path(folder)
            folder.mkdir(parents=True, exist_ok=True)
            for index, drawing in enumerate(drawings):
                cv2.imwrite(str(folder / f"{batch_name}_{index}.jpg"), drawing)
        return drawings
