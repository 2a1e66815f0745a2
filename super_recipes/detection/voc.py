"""Pascal VOC detection (recipe keys ``dataset: PascalVOCDetectionDataset`` and the loaders
``pascal_voc_detection_train`` / ``pascal_voc_detection_val``).

Reads the layout the official tarballs unpack to, nothing converted or downloaded::

    <data_dir>/VOCdevkit/VOC2007/JPEGImages/000005.jpg
                                /Annotations/000005.xml
                                /ImageSets/Main/{train,val,trainval,test}.txt
    <data_dir>/VOCdevkit/VOC2012/...            (same folders; no test list: its labels were never released)

(``data_dir`` may also be the ``VOCdevkit`` folder itself). ``image_sets`` combines lists, e.g.
``[2007_trainval, 2012_trainval]`` ("07+12", the usual training set) or ``[2007_test]`` (the usual validation
set). VOC XML boxes are 1-based inclusive pixel indices: ``xmin = 1`` is the first column and ``xmax = W`` the
last, so in our continuous convention (:mod:`super_recipes.detection.box_formats`: pixel ``i`` covers
``[i, i + 1)``) a box is ``x1 = xmin - 1``, ``y1 = ymin - 1``, ``x2 = xmax``, ``y2 = ymax`` (detectron2 reads
VOC the same way). Objects marked ``difficult`` are kept apart as crowd boxes (``crowd_boxes`` /
``crowd_labels``, the ``crowd_targets`` of an item): the detection metrics neither reward nor penalise
detections on them and do not count them as ground truth to find, as the VOC devkit ignores them.

The loaders read their defaults from ``recipes/dataset_params/pascal_voc_detection_dataset_params.yaml`` (07+12
trainval for training, 07 test for validation, YOLOX augmentation at 640x640).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from super_recipes.detection.dataloaders import _group_loader
from super_recipes.detection.datasets import DetectionDataset
from super_recipes.errors import RecipeError, did_you_mean
from super_recipes.registry import register_dataset, to_plain

# The 20 classes in the devkit's (alphabetical) order: label k is VOC_CLASSES[k].
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
VOC_DOWNLOAD = ("VOCtrainval_06-Nov-2007.tar and VOCtest_06-Nov-2007.tar "
                "(http://host.robots.ox.ac.uk/pascal/VOC/voc2007/), VOCtrainval_11-May-2012.tar "
                "(http://host.robots.ox.ac.uk/pascal/VOC/voc2012/)")
_IMAGE_SET = re.compile(r"^(?:VOC)?(\d{4})[_/ ]([A-Za-z0-9_-]+)$")


def parse_image_set(spec: Any) -> tuple[str, str]:
    """``"2007_trainval"``, ``"VOC2012/val"`` or ``[2007, "test"]`` -> ``("2007", "trainval")``."""
    spec = to_plain(spec)
    if isinstance(spec, (list, tuple)) and len(spec) == 2:
        return str(spec[0]).removeprefix("VOC"), str(spec[1])
    match = _IMAGE_SET.match(str(spec).strip())
    if match is None:
        raise RecipeError(f"image_sets entry {spec!r} is not '<year>_<list>' (e.g. 2007_trainval, 2012_val, "
                          f"2007_test) or a [year, list] pair.")
    return match.group(1), match.group(2)


def _text(node: ET.Element, tag: str) -> str | None:
    child = node.find(tag)
    return None if child is None or child.text is None else child.text.strip()


@register_dataset
class PascalVOCDetectionDataset(DetectionDataset):
    """Pascal VOC in the official ``VOCdevkit`` layout (``dataset: PascalVOCDetectionDataset``).

    :param data_dir: the folder holding ``VOCdevkit/`` (or ``VOCdevkit`` itself).
    :param image_sets: lists to combine, ``<year>_<list>`` each (``2007_trainval``, ``2012_trainval``,
        ``2007_test``...), read from ``VOC<year>/ImageSets/Main/<list>.txt``; samples keep this order.
    :param classes: class names in label order (default the 20 VOC classes); an object of another name is an
        error naming the XML file. Set it for your own data annotated in VOC XML (LabelImg, CVAT exports).
    :param with_difficult: keep ``difficult`` objects as crowd targets (ignored by the metrics); false drops
        them (training never uses crowd targets, so the training split drops them).

    Every :class:`~super_recipes.detection.datasets.DetectionDataset` option applies. ``image_id`` of a sample
    is its index; ``sample_names[i]`` says which file it is (``VOC2007/000005``).
    """

    _supplied_args = ("class_names",)  # the classes come from `classes`

    def __init__(self, data_dir: str = "./data/pascal_voc",
                 image_sets: Sequence[Any] = ("2007_trainval", "2012_trainval"),
                 classes: Sequence[str] | None = None, with_difficult: bool = True, **kwargs: Any):
        image_sets = to_plain(image_sets)
        if isinstance(image_sets, str):
            image_sets = [image_sets]
        self.image_sets = [parse_image_set(spec) for spec in image_sets or []]
        if not self.image_sets:
            raise RecipeError("PascalVOCDetectionDataset: image_sets is empty; name at least one list, e.g. "
                              "[2007_trainval, 2012_trainval].")
        self.devkit_dir = _devkit_dir(Path(data_dir).expanduser())
        self.with_difficult = bool(with_difficult)
        names = list(to_plain(classes)) if classes is not None else list(VOC_CLASSES)
        self._label_of = {name: index for index, name in enumerate(names)}
        super().__init__(data_dir=data_dir, class_names=names, **kwargs)

    @property
    def sample_names(self) -> list[str]:
        """``VOC<year>/<id>`` of each sample, in item order."""
        return [f"{self._entries[i][0].name}/{self._entries[i][1]}" for i in self._sample_ids]

    # -- DetectionDataset -------------------------------------------------------------------------------------
    def _setup_data_source(self) -> int:
        if self.input_format != "XYXY_LABEL":  # the XML is read into pixel corners: another input_format is a slip
            raise RecipeError(f"PascalVOCDetectionDataset writes its targets as XYXY_LABEL (read from the XML); "
                              f"its DetectionTargetsFormatTransform names input_format {self.input_format}: drop "
                              f"input_format (output_format chooses the items' layout).")
        self._entries: list[tuple[Path, str]] = []
        for year, name in self.image_sets:
            year_dir = self.devkit_dir / f"VOC{year}"
            list_file = year_dir / "ImageSets" / "Main" / f"{name}.txt"
            if not year_dir.is_dir():
                found = sorted(p.name for p in self.devkit_dir.glob("VOC*") if p.is_dir())
                raise RecipeError(
                    f"PascalVOCDetectionDataset: {year_dir} not found (image set {year}_{name}; found "
                    f"{found or 'no VOC<year> folder'} in {self.devkit_dir}). Unpack {VOC_DOWNLOAD} into "
                    f"the folder given as data_dir, or set data_dir to where your VOCdevkit is.")
            if not list_file.is_file():
                lists = sorted(p.stem for p in list_file.parent.glob("*.txt") if "_" not in p.stem)
                hint = " (VOC 2012 has no public test labels)" if name == "test" and year == "2012" else ""
                raise RecipeError(f"PascalVOCDetectionDataset: image list {list_file} not found{hint}. Lists in "
                                  f"{list_file.parent}: {lists or 'none'}. {did_you_mean(name, lists)}".strip())
            ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
            self._entries += [(year_dir, image_id) for image_id in ids]
        return len(self._entries)

    def _load_annotation(self, sample_id: int) -> dict[str, Any]:
        year_dir, image_id = self._entries[sample_id]
        xml_path = year_dir / "Annotations" / f"{image_id}.xml"
        if not xml_path.is_file():
            raise RecipeError(f"PascalVOCDetectionDataset: annotation {xml_path} is missing (listed in an "
                              f"ImageSets/Main list of {year_dir.name}).")
        try:
            root = ET.parse(xml_path).getroot()
        except ET.ParseError as err:
            raise RecipeError(f"PascalVOCDetectionDataset: {xml_path} is not valid XML ({err}).") from None
        boxes: list[list[float]] = []
        difficult: list[list[float]] = []
        for number, obj in enumerate(root.iter("object"), 1):
            row = self._object_row(obj, xml_path, number)
            if _text(obj, "difficult") not in (None, "", "0"):
                if self.with_difficult:
                    difficult.append(row)
            else:
                boxes.append(row)
        return {"img_path": str(year_dir / "JPEGImages" / f"{image_id}.jpg"), "target": boxes,
                "crowd_target": difficult, "image_id": sample_id, "original_shape": _image_size(root)}

    def _object_row(self, obj: ET.Element, xml_path: Path, number: int) -> list[float]:
        name = _text(obj, "name")
        if name not in self._label_of:
            raise RecipeError(f"PascalVOCDetectionDataset: {xml_path}, object {number}: class {name!r} is not "
                              f"one of the classes {list(self._label_of)}. "
                              f"{did_you_mean(str(name), list(self._label_of))}".strip())
        box = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(_text(box, tag)) for tag in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError, AttributeError):
            raise RecipeError(f"PascalVOCDetectionDataset: {xml_path}, object {number} ({name}): bndbox needs "
                              f"numeric xmin, ymin, xmax, ymax.") from None
        # 1-based inclusive pixel indices -> continuous corners (see the module doc).
        return [xmin - 1.0, ymin - 1.0, xmax, ymax, float(self._label_of[name])]


def _devkit_dir(data_dir: Path) -> Path:
    nested = data_dir / "VOCdevkit"
    return nested if nested.is_dir() else data_dir


def _image_size(root: ET.Element) -> tuple[int, int] | None:
    """``(h, w)`` from ``<size>``; ``None`` (the decoded image decides) when absent or zero, as in a few files."""
    size = root.find("size")
    try:
        height, width = int(float(_text(size, "height"))), int(float(_text(size, "width")))
    except (TypeError, ValueError, AttributeError):
        return None
    return (height, width) if height > 0 and width > 0 else None


pascal_voc_detection_train = _group_loader("pascal_voc_detection_dataset_params", "train",
                                           "pascal_voc_detection_train")
pascal_voc_detection_val = _group_loader("pascal_voc_detection_dataset_params", "val", "pascal_voc_detection_val")
