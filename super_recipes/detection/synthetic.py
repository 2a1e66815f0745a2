"""The built-in offline detection set, *shapes detection* (recipe ``dataset: ShapesDetectionDataset``, loaders
``shapes_detection_train`` / ``shapes_detection_val``).

Coloured shapes (circle, square, triangle, star; each class has its own hue, jittered) at random positions,
sizes and rotations on noisy shaded backgrounds: 1-5 objects per image that may overlap a little, and now and
then a crowd region (a cluster of tiny shapes annotated as one ``iscrowd`` box). The set is generated once from
a seed and written to disk in COCO format, ``<root>/images/<split>/*.jpg`` and
``<root>/annotations/instances_<split>.json``, so it is read by the same code as COCO itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from super_recipes.data.shapes import _OUTLINES
from super_recipes.detection.dataset_formats import COCOFormatDetectionDataset
from super_recipes.errors import RecipeError
from super_recipes.registry import register_dataset

logger = logging.getLogger("super_recipes")

GENERATOR_VERSION = 1  # bump when drawing changes, so existing folders are regenerated
CLASS_NAMES = ("circle", "square", "triangle", "star")
_HUES = (0, 60, 120, 28)  # OpenCV hue (0..180): red, green, blue, yellow: colour is a cue, shape the other
SIZE_RANGE = (0.125, 0.4)  # box side as a fraction of the image side: 20..64 px on 160 px images
MAX_OBJECTS = 5
MAX_OVERLAP_IOU = 0.3  # some overlap, but no object is hidden behind another
CROWD_PROBABILITY = 0.05
_SHIFT = 4  # cv2 sub-pixel bits: small shapes keep their geometry
JPEG_QUALITY = 92


def _iou(box: np.ndarray, others: list[np.ndarray]) -> float:
    if not others:
        return 0.0
    b = np.asarray(others)
    w = (np.minimum(box[2], b[:, 2]) - np.maximum(box[0], b[:, 0])).clip(0)
    h = (np.minimum(box[3], b[:, 3]) - np.maximum(box[1], b[:, 1])).clip(0)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    return float((inter / (area + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter)).max())


def _colour(rng: np.random.Generator, label: int) -> tuple[int, int, int]:
    hsv = np.array([[[(_HUES[label] + rng.integers(-6, 7)) % 180, rng.integers(170, 256), rng.integers(170, 256)]]],
                   dtype=np.uint8)
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _polygon(rng: np.random.Generator, label: int, center: np.ndarray, radius: float) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return center + _OUTLINES[CLASS_NAMES[label]] @ rotation.T * radius


def _fill(image: np.ndarray, polygon: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    points = np.round(polygon * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(image, [points], colour, lineType=cv2.LINE_AA, shift=_SHIFT)
    # cv2 puts pixel i's centre at i; boxes use continuous coordinates where pixel i covers [i, i + 1).
    return np.concatenate([polygon.min(0), polygon.max(0)]) + 0.5


def draw_shapes_image(seed: int, split: str, index: int, image_size: int) -> tuple[np.ndarray, list[dict]]:
    """Image ``index`` of ``split`` (HWC uint8 BGR) and its objects: ``label``, ``box`` (XYXY), ``polygon``,
    ``iscrowd``. The same arguments always give the same result."""
    rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index])
    size = image_size
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    direction = rng.uniform(-1, 1, 2) * 30
    base = rng.uniform(50, 190) + rng.uniform(-20, 20, 3)  # low saturation, so every class hue stands out
    shade = ramp[None, :, None] * direction[0] + ramp[:, None, None] * direction[1]
    noise = rng.integers(-18, 19, (size, size, 3), dtype=np.int16)
    image = np.clip(base + shade + noise, 0, 255).astype(np.uint8)
    objects: list[dict] = []
    if rng.random() < CROWD_PROBABILITY:
        label, region = int(rng.integers(len(CLASS_NAMES))), size * 0.3
        corner = rng.uniform(2, size - region - 2, 2)
        bounds = [_fill(image, _polygon(rng, label, corner + rng.uniform(4, region - 4, 2), rng.uniform(2.5, 4)),
                        _colour(rng, label)) for _ in range(int(rng.integers(8, 15)))]
        box = np.concatenate([np.min(bounds, 0)[:2], np.max(bounds, 0)[2:]])
        objects.append({"label": label, "box": box, "polygon": None, "iscrowd": 1})
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        for _attempt in range(10):
            label = int(rng.integers(len(CLASS_NAMES)))
            radius = rng.uniform(*SIZE_RANGE) * size / 2
            center = rng.uniform(radius + 1, size - radius - 1, 2)
            polygon = _polygon(rng, label, center, radius)
            box = np.concatenate([polygon.min(0), polygon.max(0)]) + 0.5
            if _iou(box, [o["box"] for o in objects]) <= MAX_OVERLAP_IOU:
                _fill(image, polygon, _colour(rng, label))
                objects.append({"label": label, "box": box, "polygon": polygon + 0.5, "iscrowd": 0})
                break
    return image, objects


def _annotation(obj: dict, ann_id: int, image_id: int) -> dict[str, Any]:
    x1, y1, x2, y2 = (round(float(v), 2) for v in obj["box"])
    polygon = obj["polygon"] if obj["polygon"] is not None else np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
    return {"id": ann_id, "image_id": image_id, "category_id": obj["label"] + 1,
            "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
            "area": round(float(cv2.contourArea(polygon.astype(np.float32))), 2), "iscrowd": obj["iscrowd"],
            "segmentation": [[round(float(v), 2) for v in polygon.reshape(-1)]]}


def _generation_info(split: str, num_images: int, image_size: int, seed: int) -> dict[str, Any]:
    return {"generator": "super_recipes shapes detection", "version": GENERATOR_VERSION, "split": split,
            "num_images": int(num_images), "image_size": int(image_size), "seed": int(seed)}


def _write_split(folder: Path, info: dict[str, Any]) -> None:
    (folder / "images").mkdir(parents=True)
    images, annotations = [], []
    for index in range(info["num_images"]):
        image, objects = draw_shapes_image(info["seed"], info["split"], index, info["image_size"])
        name = f"{index:06d}.jpg"
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        (folder / "images" / name).write_bytes(encoded.tobytes())
        images.append({"id": index + 1, "file_name": name, "width": image.shape[1], "height": image.shape[0]})
        annotations += [_annotation(obj, len(annotations) + k + 1, index + 1) for k, obj in enumerate(objects)]
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(CLASS_NAMES)]
    content = {"info": info, "licenses": [], "images": images, "annotations": annotations, "categories": categories}
    (folder / "instances.json").write_text(json.dumps(content, separators=(",", ":")))


def _is_complete(json_path: Path, images: Path, info: dict[str, Any]) -> bool:
    try:
        stored = json.loads(json_path.read_text()).get("info")
        return stored == info and len(os.listdir(images)) == info["num_images"]
    except (OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Across processes (DDP ranks build their loaders at the same time), one generates and the others wait."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic renames still keep a folder from being half-written
        yield
        return
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_shapes_detection_dataset(root: str | Path = "./data/shapes_detection", split: str = "train",
                                    num_images: int = 2000, image_size: int = 160, seed: int = 0) -> Path:
    """Write split ``split`` of the shapes detection set under ``root`` unless an identical one is there.

    Idempotent and atomic: the split is generated in a temporary folder next to its destination and moved in,
    the JSON last, so an interrupted run leaves no half-written split that looks complete. Returns ``root``.
    """
    if int(num_images) < 1 or int(image_size) < 32:
        raise RecipeError(f"Shapes detection needs num_images >= 1 and image_size >= 32, got {num_images}/"
                          f"{image_size}.")
    root = Path(root).expanduser()
    info = _generation_info(split, num_images, image_size, seed)
    json_path, images = root / "annotations" / f"instances_{split}.json", root / "images" / split
    if _is_complete(json_path, images, info):
        return root
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / f".{split}.lock"):
        if _is_complete(json_path, images, info):  # another process wrote it while this one waited
            return root
        for stale in root.glob(f".{split}-tmp-*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        start = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{split}-tmp-", dir=root))
        try:
            _write_split(tmp, info)
            json_path.unlink(missing_ok=True)  # the JSON marks a complete split: drop it before the images
            if images.exists():
                shutil.rmtree(images)
            images.parent.mkdir(parents=True, exist_ok=True)
            json_path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / "images", images)
            os.replace(tmp / "instances.json", json_path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Generated the shapes detection %s split (%d images of %d px) in %s in %.1f s", split, num_images,
                image_size, root, time.perf_counter() - start)
    return root


@register_dataset
class ShapesDetectionDataset(COCOFormatDetectionDataset):
    """Built-in offline detection set (``dataset: ShapesDetectionDataset``), generated on first use.

    :param data_dir: where the set is written (``images/<split>/``, ``annotations/instances_<split>.json``).
    :param split: ``train``, ``val`` or any name; each split has its own images.
    :param num_images: images in the split.
    :param image_size: side of the square images, in pixels.
    :param seed: changes every image; the same seed always gives the same files.
    """

    _supplied_args = ("images_dir", "json_annotation_file")

    def __init__(self, data_dir: str = "./data/shapes_detection", split: str = "train", num_images: int = 2000,
                 image_size: int = 160, seed: int = 0, **kwargs: Any):
        ensure_shapes_detection_dataset(data_dir, split, num_images, image_size, seed)
        super().__init__(data_dir=data_dir, images_dir=f"images/{split}",
                         json_annotation_file=f"annotations/instances_{split}.json", **kwargs)
