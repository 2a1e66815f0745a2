"""Box and target formats shared by the detection transforms, metrics and visualisation.

Box formats (4 numbers per box, pixels unless ``NORMALIZED_``): ``XYXY`` (corners), ``XYWH`` (top-left corner,
size), ``CXCYWH`` (centre, size), ``NORMALIZED_XYXY`` and ``NORMALIZED_CXCYWH`` (divided by the image width and
height). Target formats put a label before or after a box format: ``LABEL_CXCYWH``, ``XYXY_LABEL``,
``LABEL_NORMALIZED_CXCYWH``... (any box format with ``LABEL_`` in front or ``_LABEL`` behind).

Pixel coordinates are continuous: pixel ``i`` covers ``[i, i + 1)``, so a box over pixel columns ``a..b``
(inclusive) has ``x1 = a`` and ``x2 = b + 1``. The functions accept numpy arrays and torch tensors alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BOX_FORMATS = ("XYXY", "XYWH", "CXCYWH", "NORMALIZED_XYXY", "NORMALIZED_CXCYWH")
TARGET_FORMATS = tuple(f"LABEL_{f}" for f in BOX_FORMATS) + tuple(f"{f}_LABEL" for f in BOX_FORMATS)


def split_target_format(target_format: str) -> tuple[bool, str]:
    """``"LABEL_CXCYWH"`` -> ``(True, "CXCYWH")``: whether the label comes first, and the box format."""
    name = str(target_format).upper()
    if name.startswith("LABEL_") and name[6:] in BOX_FORMATS:
        return True, name[6:]
    if name.endswith("_LABEL") and name[:-6] in BOX_FORMATS:
        return False, name[:-6]
    raise ValueError(f"Unknown detection target format {target_format!r}; expected one of {list(TARGET_FORMATS)}.")


def _stack(columns: list[Any], like: Any) -> Any:
    if isinstance(like, np.ndarray):
        return np.stack(columns, axis=-1).astype(like.dtype, copy=False)
    import torch

    return torch.stack(columns, dim=-1)


def _image_wh(box_format: str, image_shape: tuple[int, int] | None) -> tuple[float, float]:
    if image_shape is None:
        raise ValueError(f"Box format {box_format} needs the image shape (h, w) to convert.")
    return float(image_shape[1]), float(image_shape[0])


def _to_xyxy(boxes: Any, box_format: str, image_shape: tuple[int, int] | None) -> Any:
    a, b, c, d = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    if box_format.startswith("NORMALIZED_"):
        w, h = _image_wh(box_format, image_shape)
        a, b, c, d = a * w, b * h, c * w, d * h
        box_format = box_format[len("NORMALIZED_"):]
    if box_format == "XYXY":
        return _stack([a, b, c, d], boxes)
    if box_format == "XYWH":
        return _stack([a, b, a + c, b + d], boxes)
    return _stack([a - c / 2, b - d / 2, a + c / 2, b + d / 2], boxes)  # CXCYWH


def _from_xyxy(boxes: Any, box_format: str, image_shape: tuple[int, int] | None) -> Any:
    x1, y1, x2, y2 = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    base = box_format[len("NORMALIZED_"):] if box_format.startswith("NORMALIZED_") else box_format
    if base == "XYXY":
        cols = [x1, y1, x2, y2]
    elif base == "XYWH":
        cols = [x1, y1, x2 - x1, y2 - y1]
    else:
        cols = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
    if base != box_format:
        w, h = _image_wh(box_format, image_shape)
        cols = [cols[0] / w, cols[1] / h, cols[2] / w, cols[3] / h]
    return _stack(cols, boxes)


def convert_boxes(boxes: Any, from_format: str, to_format: str, image_shape: tuple[int, int] | None = None) -> Any:
    """Convert ``[..., 4]`` boxes between :data:`BOX_FORMATS`; ``image_shape`` ``(h, w)`` for normalised ones."""
    from_format, to_format = str(from_format).upper(), str(to_format).upper()
    for name in (from_format, to_format):
        if name not in BOX_FORMATS:
            raise ValueError(f"Unknown box format {name!r}; expected one of {list(BOX_FORMATS)}.")
    if from_format == to_format:
        return boxes
    return _from_xyxy(_to_xyxy(boxes, from_format, image_shape), to_format, image_shape)


def targets_from_boxes(boxes: np.ndarray, labels: np.ndarray, target_format: str,
                       image_shape: tuple[int, int]) -> np.ndarray:
    """XYXY pixel ``boxes`` ``[N, 4]`` and ``labels`` ``[N]`` -> float32 ``[N, 5]`` targets in ``target_format``."""
    label_first, box_format = split_target_format(target_format)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    converted = convert_boxes(boxes, "XYXY", box_format, image_shape)
    label_col = np.asarray(labels, dtype=np.float32).reshape(-1, 1)
    parts = [label_col, converted] if label_first else [converted, label_col]
    return np.concatenate(parts, axis=1).astype(np.float32, copy=False)


def boxes_from_targets(targets: Any, target_format: str, image_shape: tuple[int, int] | None = None) -> tuple[Any, Any]:
    """``[N, 5]`` targets in ``target_format`` -> (XYXY pixel boxes ``[N, 4]``, labels ``[N]``)."""
    label_first, box_format = split_target_format(target_format)
    labels, boxes = (targets[:, 0], targets[:, 1:5]) if label_first else (targets[:, 4], targets[:, 0:4])
    return convert_boxes(boxes, box_format, "XYXY", image_shape), labels


def targets_to_xyxy_label(targets: Any, target_format: str,
                          image_shape: tuple[int, int] | None = None) -> np.ndarray:
    """``[N, 5]`` targets in ``target_format`` -> float32 ``[N, 5]`` ``XYXY_LABEL`` pixel targets (the layout a
    dataset's ``_load_annotation`` hands to :class:`~super_recipes.detection.datasets.DetectionDataset`)."""
    array = np.asarray(targets, dtype=np.float32).reshape(-1, 5)
    boxes, labels = boxes_from_targets(array, target_format, image_shape)
    return np.concatenate([np.asarray(boxes, np.float32), np.asarray(labels, np.float32)[:, None]], axis=1)


def clip_boxes(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """XYXY boxes clipped to the image ``[0, width] x [0, height]``."""
    out = boxes.astype(np.float32, copy=True).reshape(-1, 4)
    np.clip(out[:, 0::2], 0, width, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, height, out=out[:, 1::2])
    return out


def min_side_mask(boxes: np.ndarray, min_side: float = 0.0) -> np.ndarray:
    """Boxes that still have an area and whose width and height are at least ``min_side``."""
    boxes = boxes.reshape(-1, 4)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return (w > 0) & (h > 0) & (w >= min_side) & (h >= min_side)


def box_candidates(before: np.ndarray, after: np.ndarray, wh_thr: float = 2.0, ar_thr: float = 20.0,
                   area_thr: float = 0.1) -> np.ndarray:
    """Boxes worth keeping after an augmentation moved/clipped them (the YOLOX rule).

    ``before`` holds the boxes as they would be without clipping (scaled by the augmentation's zoom), ``after``
    the clipped result: a kept box is wider and taller than ``wh_thr`` pixels, keeps more than ``area_thr`` of
    its area and is not more elongated than ``ar_thr``.
    """
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    aspect = np.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + 1e-16) > area_thr) & (aspect < ar_thr)


def as_hw(size: Any) -> tuple[int, int]:
    """``640`` or ``[480, 640]`` -> ``(h, w)``."""
    if isinstance(size, (int, float)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def map_sample_boxes(sample: Any, image: np.ndarray, fn: Any) -> Any:
    """A copy of ``sample`` with ``image`` and both its object and crowd boxes passed through
    ``fn(boxes, labels) -> (boxes, labels)``: crowd regions must move exactly as the objects do."""
    from dataclasses import replace

    boxes, labels = fn(np.asarray(sample.boxes, np.float32).reshape(-1, 4), np.asarray(sample.labels, np.int64))
    crowd_boxes, crowd_labels = fn(np.asarray(sample.crowd_boxes, np.float32).reshape(-1, 4),
                                   np.asarray(sample.crowd_labels, np.int64))
    return replace(sample, image=image, boxes=boxes.astype(np.float32, copy=False),
                   labels=labels.astype(np.int64, copy=False), crowd_boxes=crowd_boxes.astype(np.float32, copy=False),
                   crowd_labels=crowd_labels.astype(np.int64, copy=False))
