"""The detection dataset base class (recipe key ``dataset_params.*_dataset_params.dataset``): users subclass
:class:`DetectionDataset`; the built-in formats (COCO 2017, COCO-format JSON, YOLO/Darknet, the synthetic shapes
set) live in :mod:`.dataset_formats` and :mod:`.synthetic`, imported at the end of this module to register them.

Annotations are checked once at construction: boxes are clipped to the image, boxes with a side of 1 px or less
are dropped (one warning per dataset says how many, in which files), images without boxes are dropped when
``ignore_empty_annotations``, and missing image files stop the run before training, with their paths.
A file that exists but cannot be decoded raises :class:`DetectionImageError` naming it when it is loaded: the
run stops loudly rather than training on a silently substituted sample.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from super_recipes.detection.sample import DetectionSample
from super_recipes.errors import RecipeError, did_you_mean
from super_recipes.registry import TRANSFORMS, build, to_plain

logger = logging.getLogger("super_recipes")
MIN_BOX_SIDE = 1.0  # px: thinner boxes carry no signal and give IoU-based losses zero or NaN gradients
# Annotations are in the stored pixel orientation (COCO, YOLO); applying EXIF rotation would misplace every box.
_IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


class DetectionImageError(RecipeError, RuntimeError):
    """An image that is missing or cannot be decoded; the message names the file."""


def _as_targets(value: Any, what: str) -> np.ndarray:
    array = np.asarray(value if value is not None else [], dtype=np.float32)
    if array.size == 0:
        return np.zeros((0, 5), np.float32)
    if array.ndim != 2 or array.shape[1] != 5:
        raise RecipeError(f"{what} must be an [N, 5] array (x1, y1, x2, y2, label), got shape {array.shape}.")
    return array.copy()


class DetectionDataset(torch.utils.data.Dataset):
    """Base class of detection datasets: subclass it, implement :meth:`_setup_data_source` and
    :meth:`_load_annotation`, register it with ``@register_dataset`` and name it in ``dataset: MyDataset``.

    :param data_dir: root folder of the data.
    :param input_dim: ``[h, w]`` the transforms produce (kept for them and for callbacks).
    :param transforms: transform specs (``DetectionMosaic``, ``{DetectionPaddedRescale: {...}}``, ...).
    :param class_names: names of the label indices, when the source does not define them.
    :param ignore_empty_annotations: drop images without (non-crowd) boxes at construction.
    :param max_num_samples: keep at most this many samples (the first ones that pass the filters).
    :param cache_annotations: keep every annotation in memory (else re-read in ``__getitem__``).
    :param output_format: target format when the transforms end without a ``to_item`` transform.
    :param class_inclusion_list: keep only these classes, renumbered ``0..K-1`` in this order.
    :param all_classes_list: SuperGradients' name for ``class_names``.

    Subclasses whose ``__init__`` takes ``**kwargs`` expose the base arguments in their signature (minus those
    listed in ``_supplied_args``, which they pass themselves), so recipe typos are named and refused.
    """

    _supplied_args: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__signature__ = _merged_signature(cls)

    def __init__(self, data_dir: str, input_dim: list[int] | None = None, transforms: Any = None,
                 class_names: list[str] | None = None, ignore_empty_annotations: bool = True,
                 max_num_samples: int | None = None, cache_annotations: bool = True,
                 output_format: str = "LABEL_CXCYWH", class_inclusion_list: list[str] | None = None,
                 all_classes_list: list[str] | None = None):
        if all_classes_list is not None and class_names is not None and list(all_classes_list) != list(class_names):
            raise RecipeError(f"{type(self).__name__}: all_classes_list and class_names name different classes; give "
                              "one of them.")
        class_names = class_names if class_names is not None else all_classes_list  # SuperGradients' name
        self.data_dir = Path(data_dir).expanduser()
        self.input_dim = tuple(int(v) for v in input_dim) if input_dim is not None else None
        self.transforms: list[Any] = build_detection_transforms(transforms)
        self.class_names: list[str] = list(class_names or [])
        self.ignore_empty_annotations = bool(ignore_empty_annotations)
        self.max_num_samples = max_num_samples
        self.cache_annotations = bool(cache_annotations)
        self.output_format = _checked_format(output_format)
        self.input_format = _annotation_format(self.transforms)
        self._dropped: dict[str, int] = {}
        self._warned_lazily = False
        num_available = int(self._setup_data_source())
        self.original_class_names = list(self.class_names)
        self.included_class_indices, self._label_map = self._class_mapping(class_inclusion_list)
        self._sample_ids, self._annotations = self._select_samples(num_available)
        self._warn_dropped()
        if not self._sample_ids:
            raise RecipeError(f"{type(self).__name__} at {self.data_dir} has no samples left ({num_available} found; "
                              "see ignore_empty_annotations, class_inclusion_list and max_num_samples).")

    # -- to implement -------------------------------------------------------------------------------------------
    def _setup_data_source(self) -> int:
        """Index the source (may set ``self.class_names``); return the number of raw samples."""
        raise NotImplementedError

    def _load_annotation(self, sample_id: int) -> dict[str, Any]:
        """Raw sample ``sample_id``: ``img_path``, ``target`` ``[N, 5]`` (x1, y1, x2, y2, label; pixels), and
        optionally ``crowd_target`` ``[M, 5]``, ``image_id`` (default: ``sample_id``), ``original_shape`` (h, w).
        A ``DetectionTargetsFormatTransform(input_format=...)`` among the transforms names another layout for
        ``target`` / ``crowd_target`` (``XYWH_LABEL``, ``LABEL_NORMALIZED_CXCYWH``...), converted on loading."""
        raise NotImplementedError

    # -- public API ---------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self._sample_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, np.ndarray, dict[str, Any]]:
        return self.to_item(self.apply_transforms(self.get_sample(index)))

    def annotation(self, index: int) -> dict[str, Any]:
        """The checked annotation of sample ``index`` (labels renumbered, boxes clipped, degenerate ones dropped)."""
        if self._annotations is not None:
            return self._annotations[index]
        return self._prepared_annotation(self._sample_ids[index])

    def get_sample(self, index: int) -> DetectionSample:
        """Sample ``index`` as loaded from disk, before transforms (``scale`` 1, ``pad`` (0, 0))."""
        annotation = self.annotation(index)
        image = load_image(annotation["img_path"])
        target, crowd = annotation["target"], annotation["crowd_target"]
        if annotation["original_shape"] is None:  # the source gave no size: clip to the decoded image
            target = self._clean_boxes(target.copy(), image.shape[:2], annotation["img_path"])
            crowd = self._clean_boxes(crowd.copy(), image.shape[:2], annotation["img_path"])
            self._warn_dropped(lazily=True)
        return DetectionSample(
            image=image, boxes=target[:, :4].copy(), labels=target[:, 4].astype(np.int64),
            crowd_boxes=crowd[:, :4].copy(), crowd_labels=crowd[:, 4].astype(np.int64),
            image_id=int(annotation["image_id"]), original_shape=(int(image.shape[0]), int(image.shape[1])),
        )

    def get_random_samples(self, count: int) -> list[DetectionSample]:
        """``count`` random raw samples, for transforms that combine images (mosaic, mixup)."""
        return [self.get_sample(random.randrange(len(self))) for _ in range(count)]

    def apply_transforms(self, sample: DetectionSample) -> DetectionSample:
        """Run the transforms in order; one with ``additional_samples_count > 0`` also gets that many samples."""
        for transform in self.transforms:
            count = int(getattr(transform, "additional_samples_count", 0) or 0)
            sample = transform(sample, self.get_random_samples(count)) if count > 0 else transform(sample)
        return sample

    def to_item(self, sample: DetectionSample) -> tuple[torch.Tensor, np.ndarray, dict[str, Any]]:
        """``(image, targets, extras)``: by the last transform's ``to_item`` when it has one."""
        if self.transforms and hasattr(self.transforms[-1], "to_item"):
            return self.transforms[-1].to_item(sample)
        from super_recipes.detection.transforms import sample_to_item

        return sample_to_item(sample, self.output_format)

    # -- construction -------------------------------------------------------------------------------------------
    def _class_mapping(self, inclusion: list[str] | None) -> tuple[list[int], np.ndarray | None]:
        if inclusion is None:
            return list(range(len(self.class_names))), None
        inclusion = list(dict.fromkeys(to_plain(inclusion)))
        if not self.class_names:
            raise RecipeError(f"class_inclusion_list needs class names, but {type(self).__name__} has none: "
                              "pass class_names.")
        unknown = [name for name in inclusion if name not in self.class_names]
        if unknown:
            hints = " ".join(did_you_mean(str(name), self.class_names) for name in unknown)
            raise RecipeError(f"class_inclusion_list names unknown classes {unknown}. {hints}".strip())
        indices = [self.class_names.index(name) for name in inclusion]
        label_map = np.full(len(self.class_names), -1, dtype=np.int64)
        label_map[indices] = np.arange(len(indices))
        self.class_names = inclusion
        return indices, label_map

    def _select_samples(self, num_available: int) -> tuple[list[int], list[dict[str, Any]] | None]:
        limit = num_available if self.max_num_samples is None else min(num_available, int(self.max_num_samples))
        if not (self.cache_annotations or self.ignore_empty_annotations):
            return list(range(limit)), None
        ids, annotations, missing = [], [], []
        for sample_id in range(num_available):
            if len(ids) >= limit:
                break
            annotation = self._prepared_annotation(sample_id)
            if self.ignore_empty_annotations and len(annotation["target"]) == 0:
                continue
            if not os.path.isfile(annotation["img_path"]):
                missing.append(annotation["img_path"])
            ids.append(sample_id)
            annotations.append(annotation)
        if missing:
            raise DetectionImageError(f"{len(missing)} image file(s) named by the annotations of "
                                      f"{type(self).__name__} are missing, e.g. {', '.join(missing[:3])}")
        return ids, annotations if self.cache_annotations else None

    def _prepared_annotation(self, sample_id: int) -> dict[str, Any]:
        raw = self._load_annotation(sample_id)
        what = f"{type(self).__name__}._load_annotation({sample_id})"
        if not isinstance(raw, Mapping) or "img_path" not in raw or "target" not in raw:
            raise RecipeError(f"{what} must return a dict with at least 'img_path' and 'target'.")
        path, shape = str(raw["img_path"]), raw.get("original_shape")
        shape = (int(shape[0]), int(shape[1])) if shape is not None else None
        target, crowd = (self._clean_boxes(self._remap(self._to_xyxy_label(
            _as_targets(raw.get(key), f"{what}['{key}']"), path, shape), path), shape, path)
            for key in ("target", "crowd_target"))
        image_id = raw.get("image_id")
        return {"img_path": path, "target": target, "crowd_target": crowd, "original_shape": shape,
                "image_id": sample_id if image_id is None else int(image_id)}

    def _to_xyxy_label(self, target: np.ndarray, path: str, shape: tuple[int, int] | None) -> np.ndarray:
        """Raw targets in ``self.input_format`` (a DetectionTargetsFormatTransform's ``input_format``) ->
        ``XYXY_LABEL`` pixels, the layout everything below and every transform works in."""
        if self.input_format == "XYXY_LABEL" or not len(target):
            return target
        from super_recipes.detection.box_formats import targets_to_xyxy_label

        if shape is None and "NORMALIZED" in self.input_format:
            shape = load_image(path).shape[:2]  # normalised annotations without a size: the image on disk has it
        return targets_to_xyxy_label(target, self.input_format, shape)

    def _remap(self, target: np.ndarray, path: str) -> np.ndarray:
        labels = target[:, 4].astype(np.int64)
        num = len(self.original_class_names)
        if num and len(labels) and (labels.min() < 0 or labels.max() >= num):
            raise RecipeError(f"Labels of {path} must lie in 0..{num - 1} (the class names), got {labels.tolist()}")
        if self._label_map is None:
            return target
        new = self._label_map[labels]
        target[:, 4] = new
        return target[new >= 0]

    def _clean_boxes(self, target: np.ndarray, shape: tuple[int, int] | None, path: str) -> np.ndarray:
        if shape is not None:
            target[:, [0, 2]] = target[:, [0, 2]].clip(0, shape[1])
            target[:, [1, 3]] = target[:, [1, 3]].clip(0, shape[0])
        keep = ((target[:, 2] - target[:, 0]) > MIN_BOX_SIDE) & ((target[:, 3] - target[:, 1]) > MIN_BOX_SIDE)
        if not keep.all():
            self._dropped[path] = self._dropped.get(path, 0) + int((~keep).sum())
        return target[keep]

    def _warn_dropped(self, lazily: bool = False) -> None:
        if not self._dropped or (lazily and self._warned_lazily):
            return
        self._warned_lazily = lazily
        files = sorted(self._dropped)
        more = f" and {len(files) - 5} more" if len(files) > 5 else ""
        logger.warning(
            "%s: dropped %d degenerate box(es) (side <= %g px after clipping to the image) in %d file(s): %s%s",
            type(self).__name__, sum(self._dropped.values()), MIN_BOX_SIDE, len(files), ", ".join(files[:5]), more)
        self._dropped.clear()


def _annotation_format(transforms: list[Any]) -> str:
    from super_recipes.detection.transforms import annotation_input_format

    try:
        return annotation_input_format(transforms)
    except ValueError as err:
        raise RecipeError(str(err)) from None


def _checked_format(output_format: str) -> str:
    from super_recipes.detection.box_formats import split_target_format

    try:
        split_target_format(output_format)
    except ValueError as err:
        raise RecipeError(str(err)) from None
    return str(output_format).upper()


def load_image(path: str) -> np.ndarray:
    """HWC uint8 BGR image; :class:`DetectionImageError` naming ``path`` when it is missing or undecodable."""
    image = cv2.imread(str(path), _IMREAD_FLAGS)
    if image is None:
        reason = "does not exist" if not os.path.exists(path) else "cannot be decoded (corrupt or not an image)"
        raise DetectionImageError(f"Image {path} {reason}. Fix or remove it (and its annotation).")
    return image


def build_detection_transforms(specs: Any) -> list[Any]:
    """Transform specs (names, ``{Name: {kwargs}}``, ``_target_`` nodes) or built callables -> list of callables."""
    specs = to_plain(specs)
    if specs is None:
        return []
    specs = specs if isinstance(specs, list) else [specs]
    return [spec if callable(spec) else build(TRANSFORMS, spec, f"transforms[{i}]") for i, spec in enumerate(specs)]


def _merged_signature(cls: type) -> inspect.Signature | None:
    """``cls.__init__``'s own arguments plus, when it takes ``**kwargs``, its parent's (keyword-only)."""
    try:
        own = list(inspect.signature(cls.__dict__["__init__"]).parameters.values())[1:]
        if not any(p.kind is p.VAR_KEYWORD for p in own):
            return None  # an explicit signature: inspect reads it from __init__ as usual
        parent = next(base for base in cls.__mro__[1:] if issubclass(base, DetectionDataset))
        variadic = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        kept = [p for p in own if p.kind not in variadic]  # still positional first, then keyword-only
        skip = {p.name for p in kept} | set(cls.__dict__.get("_supplied_args", ()))
        inherited = [p.replace(kind=p.KEYWORD_ONLY) for p in inspect.signature(parent).parameters.values()
                     if p.name not in skip and p.kind not in variadic]
        return inspect.Signature([*kept, *inherited])
    except (TypeError, ValueError):  # an __init__ inspect cannot read: argument checks are skipped, as before
        return None


# The built-in datasets register on import, and the registry imports only this module on demand.
from super_recipes.detection import dataset_formats  # noqa: E402,F401
