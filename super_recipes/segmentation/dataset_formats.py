"""Readers for the published segmentation datasets in their own on-disk layouts (recipe key
``dataset_params.*_dataset_params.dataset``): ``CityscapesDataset``, ``PascalVOCSegmentationDataset`` and
``COCOSegmentationDataset``. Every option of :class:`~super_recipes.segmentation.datasets.SegmentationDataset`
(``transforms``, ``ignore_index``, ``max_num_samples``) applies to each. Nothing is downloaded: each error for a
missing folder says where the data is expected and where to get it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from super_recipes.data.coco_json import open_coco
from super_recipes.errors import RecipeError, did_you_mean
from super_recipes.registry import register_dataset, to_plain
from super_recipes.segmentation.datasets import (
    DEFAULT_IGNORE_INDEX,
    SegmentationDataset,
    SegmentationImageError,
    load_index_mask,
)

# The 19 evaluated Cityscapes classes: (labelId stored in *_labelIds.png, name), in trainId order 0..18, as in the
# official cityscapesScripts label table. Every other labelId (unlabeled, ego vehicle, parking, guard rail,
# caravan, trailer...) is not evaluated and becomes ignore_index.
CITYSCAPES_TRAIN_CLASSES: tuple[tuple[int, str], ...] = (
    (7, "road"), (8, "sidewalk"), (11, "building"), (12, "wall"), (13, "fence"), (17, "pole"),
    (19, "traffic light"), (20, "traffic sign"), (21, "vegetation"), (22, "terrain"), (23, "sky"), (24, "person"),
    (25, "rider"), (26, "car"), (27, "truck"), (28, "bus"), (31, "train"), (32, "motorcycle"), (33, "bicycle"),
)
CITYSCAPES_CLASS_NAMES = tuple(name for _, name in CITYSCAPES_TRAIN_CLASSES)

PASCAL_VOC_CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def _split_error(dataset: str, split: str, valid: Sequence[str]) -> RecipeError:
    return RecipeError(f"Unknown {dataset} split '{split}'. {did_you_mean(split, valid)} Valid splits: "
                       f"{', '.join(valid)}".replace("  ", " "))


def cityscapes_label_lut(ignore_index: int = DEFAULT_IGNORE_INDEX) -> np.ndarray:
    """A 256-entry table: ``lut[label_id]`` is the trainId (0..18) or ``ignore_index``."""
    lut = np.full(256, ignore_index, dtype=np.int64)
    for train_id, (label_id, _) in enumerate(CITYSCAPES_TRAIN_CLASSES):
        lut[label_id] = train_id
    return lut


@register_dataset
class CityscapesDataset(SegmentationDataset):
    """Cityscapes in its official layout (``dataset: CityscapesDataset``)::

        <data_dir>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
        <data_dir>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

    The ``labelIds`` masks are mapped to the 19 train ids of the official label table; every other id
    becomes ``ignore_index``. Masks already converted by cityscapesScripts' ``createTrainIdLabelImgs``
    (``*_labelTrainIds.png``, 255 = ignore) are read with ``label_type: trainIds``.

    :param data_dir: the folder holding ``leftImg8bit/`` and ``gtFine/``.
    :param split: ``train``, ``val`` or ``test`` (the public test masks are placeholders).
    :param annotations: ``gtFine`` or ``gtCoarse`` (the coarse set has the same layout and file naming).
    :param label_type: ``labelIds`` or ``trainIds``.
    """

    class_names = list(CITYSCAPES_CLASS_NAMES)
    SPLITS = ("train", "val", "test")

    def __init__(self, data_dir: str = "./data/cityscapes", split: str = "train", annotations: str = "gtFine",
                 label_type: str = "labelIds", transforms: Any = None, ignore_index: int = DEFAULT_IGNORE_INDEX,
                 max_num_samples: int | None = None):
        if split not in self.SPLITS and split not in ("train_extra",):
            raise _split_error("Cityscapes", split, self.SPLITS)
        if label_type not in ("labelIds", "trainIds"):
            raise RecipeError(f"CityscapesDataset.label_type must be labelIds or trainIds, got {label_type!r}.")
        self.data_dir = Path(data_dir).expanduser()
        self.split, self.annotations, self.label_type = split, str(annotations), label_type
        self._lut = cityscapes_label_lut(ignore_index)
        super().__init__(transforms=transforms, ignore_index=ignore_index, max_num_samples=max_num_samples)

    def _setup_samples(self) -> list[tuple[str, str]]:
        images = self.data_dir / "leftImg8bit" / self.split
        masks = self.data_dir / self.annotations / self.split
        for folder in (images, masks):
            if not folder.is_dir():
                raise SegmentationImageError(
                    f"Cityscapes not found: {folder} does not exist. Download leftImg8bit_trainvaltest.zip and "
                    f"gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com (free registration) and "
                    f"unpack both into {self.data_dir}, or set data_dir to where your copy is.")
        suffix = "labelTrainIds" if self.label_type == "trainIds" else "labelIds"
        samples = []
        for image in sorted(images.glob("*/*_leftImg8bit.png")):
            stem = image.name[: -len("_leftImg8bit.png")]
            samples.append((str(image), str(masks / image.parent.name / f"{stem}_{self.annotations}_{suffix}.png")))
        if not samples:
            raise SegmentationImageError(f"Cityscapes: no <city>/*_leftImg8bit.png images in {images}.")
        return samples

    def _load_mask(self, source: Any) -> np.ndarray:
        mask = load_index_mask(source)
        if self.label_type == "trainIds":
            # Converted masks store 255 for ignored pixels; a custom ignore_index still applies.
            return np.where(mask == 255, self.ignore_index, mask) if self.ignore_index != 255 else mask
        if mask.dtype != np.uint8:
            raise SegmentationImageError(f"Mask {source} is not an 8-bit labelIds PNG (dtype {mask.dtype}).")
        mapped = self._lut[mask]
        return mapped.astype(np.uint8) if 0 <= self.ignore_index <= 255 else mapped


@register_dataset
class PascalVOCSegmentationDataset(SegmentationDataset):
    """Pascal VOC 2012 segmentation in its official layout (``dataset: PascalVOCSegmentationDataset``)::

        <data_dir>/JPEGImages/<id>.jpg
        <data_dir>/SegmentationClass/<id>.png          palette PNGs: index = class, 255 = object borders
        <data_dir>/ImageSets/Segmentation/<split>.txt  one <id> per line (train, val, trainval)

    ``data_dir`` is the ``VOCdevkit/VOC2012`` folder. The palette PNGs are read as their indices (not colours);
    the 255 borders (and "difficult" regions) stay ``ignore_index``. 21 classes, background = 0.

    The SBD-augmented training set ("trainaug", 10,582 images): SBD ships its masks as MATLAB ``.mat`` files,
    which this reader does not parse. Use the widely distributed conversion instead: the ``SegmentationClassAug/``
    folder of greyscale index PNGs (borders 255 where VOC has them) placed in ``data_dir``, with its list file, and
    set ``mask_dir: SegmentationClassAug`` and ``split: train_aug`` (``ImageSets/Segmentation/train_aug.txt``).
    List lines may be plain ids or DeepLab-style pairs ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png``.

    :param data_dir: the VOC2012 folder.
    :param split: the list file ``ImageSets/Segmentation/<split>.txt`` (``train``, ``val``, ``trainval``,
        ``train_aug``...).
    :param mask_dir: ``SegmentationClass`` or ``SegmentationClassAug``.
    """

    class_names = list(PASCAL_VOC_CLASS_NAMES)

    def __init__(self, data_dir: str = "./data/VOCdevkit/VOC2012", split: str = "train",
                 mask_dir: str = "SegmentationClass", transforms: Any = None,
                 ignore_index: int = DEFAULT_IGNORE_INDEX, max_num_samples: int | None = None):
        self.data_dir = Path(data_dir).expanduser()
        self.split, self.mask_dir = str(split), self.data_dir / mask_dir
        super().__init__(transforms=transforms, ignore_index=ignore_index, max_num_samples=max_num_samples)

    def _setup_samples(self) -> list[tuple[str, str]]:
        lists = self.data_dir / "ImageSets" / "Segmentation"
        list_file = lists / f"{self.split}.txt"
        if not list_file.is_file():
            if lists.is_dir():
                raise _split_error("Pascal VOC", self.split, sorted(p.stem for p in lists.glob("*.txt")))
            raise SegmentationImageError(
                f"Pascal VOC 2012 not found: {list_file} does not exist. Unpack VOCtrainval_11-May-2012.tar "
                f"(http://host.robots.ox.ac.uk/pascal/VOC/voc2012/) and set data_dir to its VOCdevkit/VOC2012 "
                f"folder.")
        samples = []
        for number, line in enumerate(list_file.read_text().splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) > 2:
                raise RecipeError(f"{list_file}:{number}: expected an image id or 'image mask' paths, got {line!r}.")
            stem = Path(fields[0]).stem
            samples.append((str(self.data_dir / "JPEGImages" / f"{stem}.jpg"), str(self.mask_dir / f"{stem}.png")))
        if not samples:
            raise RecipeError(f"{list_file} lists no images.")
        return samples

    def _load_mask(self, source: Any) -> np.ndarray:
        mask = load_index_mask(source)
        if self.ignore_index != 255:
            return np.where(mask == 255, self.ignore_index, mask)
        return mask


@register_dataset
class COCOSegmentationDataset(SegmentationDataset):
    """COCO instance annotations rendered as semantic masks (``dataset: COCOSegmentationDataset``)::

        <data_dir>/<images_dir>/<file_name>          e.g. images/train2017/000000000009.jpg
        <data_dir>/<json_file>                       e.g. annotations/instances_train2017.json

    Each annotation (polygons or RLE) is rasterised with pycocotools' ``annToMask`` and painted in the order of
    the JSON, later annotations over earlier ones; pixels no annotation covers are background, class 0. Classes
    are ``background`` then the categories sorted by id (1..80 for COCO), or, with ``class_subset``, the named
    categories in that order (1..K); annotations of other categories are not painted (their pixels stay
    background).

    Crowd annotations (``iscrowd: 1``, one RLE over a group of objects) are painted according to ``crowd``:
    ``class`` (default: their category, as a semantic mask sees a crowd of people as people), ``ignore``
    (``ignore_index``: the loss and metrics skip them) or ``skip`` (not painted).

    :param data_dir: root folder; ``images_dir`` and ``json_file`` are relative to it.
    :param images_dir: folder of the images named by ``images[].file_name``.
    :param json_file: the COCO instances JSON.
    :param class_subset: category names to keep (e.g. the 20 VOC classes), or null for all.
    :param crowd: ``class``, ``ignore`` or ``skip``.
    :param skip_empty: drop images without any painted annotation (of the kept classes).
    """

    CROWD_MODES = ("class", "ignore", "skip")

    def __init__(self, data_dir: str = "./data/coco", images_dir: str = "images/train2017",
                 json_file: str = "annotations/instances_train2017.json", class_subset: Sequence[str] | None = None,
                 crowd: str = "class", skip_empty: bool = False, transforms: Any = None,
                 ignore_index: int = DEFAULT_IGNORE_INDEX, max_num_samples: int | None = None):
        if crowd not in self.CROWD_MODES:
            raise RecipeError(f"COCOSegmentationDataset.crowd must be one of {', '.join(self.CROWD_MODES)}, got "
                              f"{crowd!r}. {did_you_mean(str(crowd), self.CROWD_MODES)}".rstrip())
        self.data_dir = Path(data_dir).expanduser()
        self.images_dir, self.json_path = self.data_dir / images_dir, self.data_dir / json_file
        self.class_subset = list(to_plain(class_subset)) if class_subset is not None else None
        self.crowd, self.skip_empty = crowd, bool(skip_empty)
        super().__init__(transforms=transforms, ignore_index=ignore_index, max_num_samples=max_num_samples)

    def _setup_samples(self) -> list[tuple[str, int]]:
        for path, present in ((self.json_path, self.json_path.is_file()), (self.images_dir, self.images_dir.is_dir())):
            if not present:
                raise SegmentationImageError(
                    f"COCOSegmentationDataset: {path} not found (data_dir/json_file = {self.json_path}, "
                    f"data_dir/images_dir = {self.images_dir}). COCO 2017 comes from https://cocodataset.org/#download"
                    f" (train2017.zip, val2017.zip, annotations_trainval2017.zip), unpacked into data_dir.")
        self.coco, categories = open_coco(self.json_path)
        names = [str(c["name"]) for c in categories]
        wanted = names if self.class_subset is None else self.class_subset
        unknown = [name for name in wanted if name not in names]
        if unknown:
            hints = " ".join(did_you_mean(str(name), names) for name in unknown)
            raise RecipeError(f"class_subset names categories {unknown} that {self.json_path} does not have. "
                              f"{hints}".strip())
        by_name = {str(c["name"]): int(c["id"]) for c in categories}
        # category id -> class index (1..K); background is 0.
        self._class_of = {by_name[name]: k for k, name in enumerate(wanted, 1)}
        self.category_ids = [by_name[name] for name in wanted]
        self.class_names = ["background", *wanted]
        samples = []
        for image_id in sorted(self.coco.getImgIds()):
            if self.skip_empty and not self._annotations(image_id):
                continue
            samples.append((str(self.images_dir / self.coco.imgs[image_id]["file_name"]), image_id))
        return samples

    def _annotations(self, image_id: int) -> list[dict[str, Any]]:
        """The annotations of ``image_id`` that are painted, in JSON order."""
        anns = self.coco.imgToAnns.get(image_id, [])
        return [a for a in anns if a["category_id"] in self._class_of and not (a.get("iscrowd") and
                                                                                self.crowd == "skip")]

    def _mask_name(self, source: Any) -> str:
        return f"(the annotations of image id {source} in {self.json_path})"

    def _load_mask(self, source: Any) -> np.ndarray:
        info = self.coco.imgs[source]
        big = not 0 <= self.ignore_index <= 255 or len(self._class_of) > 254
        mask = np.zeros((int(info["height"]), int(info["width"])), np.int64 if big else np.uint8)
        for ann in self._annotations(source):
            try:
                region = self.coco.annToMask(ann).astype(bool)
            except (ValueError, KeyError, TypeError, IndexError) as err:
                raise RecipeError(f"{self.json_path}: annotation {ann.get('id')} of image {source} cannot be "
                                  f"rendered: {err!r}") from None
            crowd_ignored = ann.get("iscrowd") and self.crowd == "ignore"
            mask[region] = self.ignore_index if crowd_ignored else self._class_of[ann["category_id"]]
        return mask
