"""Detection datasets for standard on-disk formats (recipe key ``dataset_params.*_dataset_params.dataset``):
``COCODetectionDataset`` (the COCO 2017 layout), ``COCOFormatDetectionDataset`` (any COCO-format JSON) and
``YoloDarknetFormatDetectionDataset`` (``images/`` + ``labels/*.txt``). Every option of
:class:`~super_recipes.detection.datasets.DetectionDataset` applies to each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from super_recipes.data.coco_json import open_coco
from super_recipes.detection.datasets import DetectionDataset, DetectionImageError
from super_recipes.errors import RecipeError
from super_recipes.image_sources import IMAGE_SUFFIXES
from super_recipes.registry import register_dataset


@register_dataset
class COCOFormatDetectionDataset(DetectionDataset):
    """A dataset described by a COCO-format JSON (``dataset: COCOFormatDetectionDataset``).

    :param data_dir: root folder; ``images_dir`` and ``json_annotation_file`` are relative to it.
    :param images_dir: folder of the images named by ``images[].file_name``.
    :param json_annotation_file: the COCO JSON (``images``, ``annotations`` with ``bbox`` ``[x, y, w, h]``,
        ``categories``).
    :param with_crowd: keep ``iscrowd: 1`` boxes as crowd targets (evaluation ignores detections on them);
        false drops them.

    Sparse category ids become contiguous labels in id order: ``class_names[i]`` is the name of the i-th
    smallest id, ``category_ids[i]`` the id itself (what COCO-API evaluation needs back), and ``coco`` is the
    ``pycocotools.coco.COCO`` index. ``image_id`` of each sample is the JSON image id.
    """

    _supplied_args = ("class_names",)  # the names come from the JSON

    def __init__(self, data_dir: str, images_dir: str, json_annotation_file: str, with_crowd: bool = True,
                 **kwargs: Any):
        self.images_dir = Path(data_dir).expanduser() / images_dir
        self.json_path = Path(data_dir).expanduser() / json_annotation_file
        self.with_crowd = bool(with_crowd)
        super().__init__(data_dir=data_dir, **kwargs)
        self.category_ids: list[int] = [self._all_category_ids[i] for i in self.included_class_indices]

    def _missing_message(self, path: Path) -> str:
        return (f"{type(self).__name__}: {path} not found. Expected data_dir/json_annotation_file = {self.json_path} "
                f"and data_dir/images_dir = {self.images_dir}.")

    def _setup_data_source(self) -> int:
        for path, present in ((self.json_path, self.json_path.is_file()), (self.images_dir, self.images_dir.is_dir())):
            if not present:
                raise RecipeError(self._missing_message(path))
        self.coco, categories = open_coco(self.json_path)
        self._all_category_ids = [int(c["id"]) for c in categories]
        self._label_of = {cid: i for i, cid in enumerate(self._all_category_ids)}
        self.class_names = [str(c["name"]) for c in categories]
        self._image_ids = sorted(self.coco.getImgIds())
        return len(self._image_ids)

    def _load_annotation(self, sample_id: int) -> dict[str, Any]:
        image_id = self._image_ids[sample_id]
        info = self.coco.imgs[image_id]
        boxes: list[list[float]] = []
        crowd: list[list[float]] = []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if ann["category_id"] not in self._label_of:
                raise RecipeError(f"{self.json_path}: annotation {ann.get('id')} has category_id "
                                  f"{ann['category_id']}, which is not in 'categories'.")
            x, y, w, h = (float(v) for v in ann["bbox"])
            row = [x, y, x + w, y + h, float(self._label_of[ann["category_id"]])]
            (crowd if ann.get("iscrowd", 0) else boxes).append(row)
        shape = (info["height"], info["width"]) if "height" in info and "width" in info else None
        return {"img_path": str(self.images_dir / info["file_name"]), "target": boxes,
                "crowd_target": crowd if self.with_crowd else [], "image_id": image_id, "original_shape": shape}


@register_dataset
class COCODetectionDataset(COCOFormatDetectionDataset):
    """COCO 2017 in its official layout (``dataset: COCODetectionDataset``): ``<data_dir>/<subdir>/*.jpg`` and
    ``<data_dir>/annotations/<json_file>``.

    :param subdir: ``images/train2017`` or ``images/val2017``.
    :param json_file: ``instances_train2017.json`` or ``instances_val2017.json``.
    """

    _supplied_args = ("images_dir", "json_annotation_file")

    def __init__(self, data_dir: str = "./data/coco", subdir: str = "images/train2017",
                 json_file: str = "instances_train2017.json", **kwargs: Any):
        super().__init__(data_dir=data_dir, images_dir=subdir, json_annotation_file=f"annotations/{json_file}",
                         **kwargs)

    def _missing_message(self, path: Path) -> str:
        root = self.json_path.parent.parent
        return (f"COCO 2017 not found: {path} does not exist. Download train2017.zip, val2017.zip and "
                f"annotations_trainval2017.zip from https://cocodataset.org/#download and unpack them so that "
                f"{root} holds annotations/instances_{{train,val}}2017.json and images/{{train,val}}2017/*.jpg, "
                f"or set data_dir in the dataset params to where your copy is.")


@register_dataset
class YoloDarknetFormatDetectionDataset(DetectionDataset):
    """Images with YOLO/Darknet labels (``dataset: YoloDarknetFormatDetectionDataset``).

    :param data_dir: root folder.
    :param classes: class names; line ``k cx cy w h`` of a label file is a box of ``classes[k]``, coordinates
        normalised by the image size.
    :param images_dir: folder of the images (``.jpg``, ``.png``, ...) under ``data_dir``.
    :param labels_dir: folder of ``<image stem>.txt`` under ``data_dir``; a missing file is an image
        without boxes.
    """

    _supplied_args = ("class_names",)

    def __init__(self, data_dir: str, classes: list[str], images_dir: str = "images", labels_dir: str = "labels",
                 **kwargs: Any):
        self.images_dir = Path(data_dir).expanduser() / images_dir
        self.labels_dir = Path(data_dir).expanduser() / labels_dir
        super().__init__(data_dir=data_dir, class_names=list(classes), **kwargs)

    def _setup_data_source(self) -> int:
        if not self.images_dir.is_dir():
            raise RecipeError(f"{type(self).__name__}: images folder {self.images_dir} not found "
                              f"(data_dir/images_dir).")
        self._images = sorted(p for p in self.images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        return len(self._images)

    def _load_annotation(self, sample_id: int) -> dict[str, Any]:
        from PIL import Image, UnidentifiedImageError

        path = self._images[sample_id]
        try:
            with Image.open(path) as image:  # reads the header only
                width, height = image.size
        except (OSError, UnidentifiedImageError) as err:
            raise DetectionImageError(f"Image {path} cannot be read: {err}") from None
        label_file = self.labels_dir / f"{path.stem}.txt"
        rows = []
        if label_file.is_file():
            for number, line in enumerate(label_file.read_text().splitlines(), 1):
                fields = line.split()
                if not fields:
                    continue
                try:
                    if len(fields) != 5:
                        raise ValueError(f"expected 5 fields, got {len(fields)}")
                    rows.append([float(v) for v in fields])
                except ValueError as err:
                    raise RecipeError(f"{label_file}:{number}: expected 'class cx cy w h' (normalised), got "
                                      f"{line!r} ({err}).") from None
        target = np.zeros((len(rows), 5), np.float32)
        if rows:
            labels, cx, cy, w, h = np.asarray(rows, np.float32).T
            target[:] = np.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
                                  (cy + h / 2) * height, labels], axis=1)
        return {"img_path": str(path), "target": target, "image_id": sample_id, "original_shape": (height, width)}


# The built-in synthetic set is a COCO-format dataset; importing it here registers it with the others.
from super_recipes.detection import synthetic  # noqa: E402,F401
