"""Segmentation data: tiny files in each real on-disk format (Cityscapes, Pascal VOC, COCO, image + mask
folders) read back pixel-exactly, bad data named, the synthetic shapes set and every registered loader
(the joint transforms: test_segmentation_transforms)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from super_recipes import dataloaders
from super_recipes.errors import RecipeError
from super_recipes.segmentation.dataset_formats import (
    CITYSCAPES_CLASS_NAMES,
    CityscapesDataset,
    COCOSegmentationDataset,
    PascalVOCSegmentationDataset,
)
from super_recipes.segmentation.datasets import ImageMaskFolderDataset, SegmentationDataset, SegmentationImageError
from super_recipes.segmentation.synthetic import CLASS_NAMES, ShapesSegmentationDataset, draw_shapes_sample

# pycocotools' decoder, under numpy 2, warns about its own __array__ use; nothing here can change that.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# labelId -> trainId of the evaluated Cityscapes classes, written out here independently of the reader's table.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
# Ids present in the files: evaluated ones plus unlabeled, ego vehicle, parking, guard rail, polegroup, caravan.
CITYSCAPES_IDS_USED = [0, 1, 7, 8, 9, 11, 14, 18, 21, 23, 24, 26, 29, 33]


def _rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)  # PNG: lossless, so pixel values can be compared exactly


def _save_grey(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8), mode="L").save(path)


# -- Cityscapes ---------------------------------------------------------------------------------------------------
def write_cityscapes(root: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Two cities per split, 16x32 frames in the official naming; returns {image path: (rgb, labelIds)}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, cities in (("train", ("aachen", "bremen")), ("val", ("frankfurt",))):
        for city in cities:
            for frame in (19, 20):
                stem = f"{city}_000000_{frame:06d}"
                image, ids = _rgb(rng, 16, 32), rng.choice(CITYSCAPES_IDS_USED, (16, 32)).astype(np.uint8)
                path = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
                _save_rgb(path, image)
                _save_grey(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
                written[str(path)] = (image, ids)
    return written


def _expected_train_ids(ids: np.ndarray, ignore: int = 255) -> np.ndarray:
    return np.vectorize(lambda v: CITYSCAPES_TRAIN_IDS.get(int(v), ignore))(ids).astype(np.int64)


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    written = write_cityscapes(tmp_path)
    dataset = CityscapesDataset(data_dir=str(tmp_path), split="train")
    assert len(dataset) == 4 and dataset.num_classes == 19 and dataset.class_names == list(CITYSCAPES_CLASS_NAMES)
    assert (dataset.class_names[0], dataset.class_names[13], dataset.class_names[18]) == ("road", "car", "bicycle")
    for index, (image_path, _) in enumerate(dataset.samples):
        rgb, ids = written[image_path]
        image, mask = dataset[index]
        assert image.dtype == torch.float32 and image.shape == (3, 16, 32)
        assert torch.equal((image * 255).round().to(torch.uint8), torch.from_numpy(rgb).permute(2, 0, 1))
        assert mask.dtype == torch.int64 and np.array_equal(mask.numpy(), _expected_train_ids(ids))
        assert {0, 255} <= set(mask.unique().tolist())  # road and ignored ids are both in every frame
    assert len(CityscapesDataset(data_dir=str(tmp_path), split="val")) == 2
    custom = CityscapesDataset(data_dir=str(tmp_path), split="val", ignore_index=100)
    _, mask = custom[0]
    assert np.array_equal(mask.numpy(), _expected_train_ids(written[custom.samples[0][0]][1], ignore=100))


def test_cityscapes_errors_name_what_is_missing(tmp_path):
    with pytest.raises(SegmentationImageError, match="leftImg8bit.*cityscapes-dataset.com"):
        CityscapesDataset(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(RecipeError, match="Did you mean: val"):
        CityscapesDataset(data_dir=str(tmp_path), split="vall")
    write_cityscapes(tmp_path)
    lost = tmp_path / "gtFine/train/bremen/bremen_000000_000020_gtFine_labelIds.png"
    lost.unlink()
    with pytest.raises(SegmentationImageError, match=f"1 file.*{lost}"):
        CityscapesDataset(data_dir=str(tmp_path))


# -- Pascal VOC ---------------------------------------------------------------------------------------------------
def voc_palette() -> list[int]:
    """The VOC colour map: bits of the index spread over the high bits of R, G and B."""
    palette = []
    for index in range(256):
        r = g = b = 0
        value = index
        for bit in range(8):
            r |= (value & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette += [r, g, b]
    return palette


def _voc_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Two objects with a 1-pixel 255 border each on a background, like the VOC annotations."""
    mask = np.zeros((h, w), np.uint8)
    for _ in range(2):
        label, y, x = int(rng.integers(1, 21)), int(rng.integers(1, h - 8)), int(rng.integers(1, w - 8))
        mask[y - 1:y + 7, x - 1:x + 7] = 255
        mask[y:y + 6, x:x + 6] = label
    return mask


def write_voc(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A VOC2012 folder: JPEGs, palette PNG masks, train/val lists, plus a SegmentationClassAug variant."""
    rng = np.random.default_rng(seed)
    masks = {}
    ids = [f"2007_{k:06d}" for k in range(5)]
    for k, image_id in enumerate(ids):
        h, w = 20 + 2 * k, 30 - k  # VOC images differ in size
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), _rgb(rng, h, w))
        mask = _voc_mask(rng, h, w)
        png = Image.fromarray(mask, mode="P")
        png.putpalette(voc_palette())
        (root / "SegmentationClass").mkdir(exist_ok=True)
        png.save(root / "SegmentationClass" / f"{image_id}.png")
        _save_grey(root / "SegmentationClassAug" / f"{image_id}.png", np.where(mask == 255, 0, mask))
        masks[image_id] = mask
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(ids[:3]) + "\n")
    (lists / "val.txt").write_text("\n".join(ids[3:]) + "\n")
    (lists / "train_aug.txt").write_text("".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in ids))
    return masks


def test_pascal_voc_reads_palette_indices_and_keeps_borders(tmp_path):
    masks = write_voc(tmp_path)
    with Image.open(tmp_path / "SegmentationClass" / "2007_000000.png") as png:
        assert png.mode == "P"  # a real palette PNG: its RGB colours are not the classes
        assert not np.array_equal(np.array(png.convert("RGB"))[:, :, 0], masks["2007_000000"])
    train = PascalVOCSegmentationDataset(data_dir=str(tmp_path), split="train")
    assert len(train) == 3 and train.num_classes == 21 and train.class_names[15] == "person"
    for index, (_, mask_path) in enumerate(train.samples):
        _, mask = train[index]
        expected = masks[Path(mask_path).stem]
        assert np.array_equal(mask.numpy(), expected) and 255 in mask and mask.max() == 255
    assert [Path(p).stem for p, _ in PascalVOCSegmentationDataset(data_dir=str(tmp_path), split="val").samples] == \
        ["2007_000003", "2007_000004"]
    aug = PascalVOCSegmentationDataset(data_dir=str(tmp_path), split="train_aug", mask_dir="SegmentationClassAug")
    assert len(aug) == 5
    _, mask = aug[4]
    assert np.array_equal(mask.numpy(), np.where(masks["2007_000004"] == 255, 0, masks["2007_000004"]))
    with pytest.raises(RecipeError, match="Did you mean: train"):
        PascalVOCSegmentationDataset(data_dir=str(tmp_path), split="trian")
    with pytest.raises(SegmentationImageError, match="VOCdevkit/VOC2012"):
        PascalVOCSegmentationDataset(data_dir=str(tmp_path / "missing"))


# -- COCO ---------------------------------------------------------------------------------------------------------
def _rle_counts(region: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE of a boolean mask: run lengths in column-major order, starting with zeros."""
    flat = region.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], changes])).tolist()


def write_coco(root: Path) -> tuple[dict, dict[int, np.ndarray]]:
    """Two images; sparse category ids; overlapping polygons, a crowd RLE and an image without annotations."""
    from pycocotools import mask as mask_utils

    h, w = 24, 32
    rng = np.random.default_rng(0)
    (root / "images" / "val2017").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        _save_rgb(root / "images" / "val2017" / name, _rgb(rng, h, w))
    crowd = np.zeros((h, w), bool)
    crowd[15:22, 2:12] = True
    annotations = [  # person, then a car over it, then a crowd of dogs
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[2, 2, 20, 2, 20, 14, 2, 14]]},
        {"id": 2, "image_id": 1, "category_id": 3, "iscrowd": 0, "segmentation": [[12, 6, 28, 8, 24, 18, 10, 16]]},
        {"id": 3, "image_id": 1, "category_id": 18, "iscrowd": 1,
         "segmentation": {"size": [h, w], "counts": _rle_counts(crowd)}},
    ]
    for ann in annotations:
        ann.update(area=1.0, bbox=[0, 0, 1, 1])
    content = {"images": [{"id": 1, "file_name": "a.png", "height": h, "width": w},
                          {"id": 2, "file_name": "b.png", "height": h, "width": w}],
               "annotations": annotations,
               "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]}
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(content))
    regions = {1: mask_utils.decode(mask_utils.frPyObjects(annotations[0]["segmentation"], h, w)).any(2),
               3: mask_utils.decode(mask_utils.frPyObjects(annotations[1]["segmentation"], h, w)).any(2),
               18: crowd}
    assert regions[1].sum() > 100 and (regions[1] & regions[3]).sum() > 10  # the car really covers the person
    return content, regions


def _coco(root: Path, **kwargs) -> COCOSegmentationDataset:
    return COCOSegmentationDataset(data_dir=str(root), images_dir="images/val2017",
                                   json_file="annotations/instances_val2017.json", **kwargs)


def test_coco_renders_semantic_masks_in_annotation_order(tmp_path):
    _, regions = write_coco(tmp_path)
    dataset = _coco(tmp_path)
    assert dataset.class_names == ["background", "person", "car", "dog"] and dataset.num_classes == 4
    expected = np.zeros((24, 32), np.int64)
    for category, label in ((1, 1), (3, 2), (18, 3)):  # later over earlier
        expected[regions[category]] = label
    _, mask = dataset[0]
    assert np.array_equal(mask.numpy(), expected)
    assert dataset[1][1].eq(0).all()  # no annotations: all background
    ignored = _coco(tmp_path, crowd="ignore")[0][1].numpy()
    assert np.array_equal(ignored, np.where(regions[18], 255, expected))
    skipped = np.zeros((24, 32), np.int64)
    skipped[regions[1]], skipped[regions[3]] = 1, 2  # what the crowd covered shows through
    assert np.array_equal(_coco(tmp_path, crowd="skip")[0][1].numpy(), skipped)
    subset = _coco(tmp_path, class_subset=["dog", "person"])
    assert subset.class_names == ["background", "dog", "person"] and subset.category_ids == [18, 1]
    sub_expected = np.zeros((24, 32), np.int64)
    sub_expected[regions[1]] = 2  # the car is not painted: what it covered of the person stays person
    sub_expected[regions[18]] = 1
    assert np.array_equal(subset[0][1].numpy(), sub_expected)
    assert len(_coco(tmp_path, skip_empty=True)) == 1
    with pytest.raises(RecipeError, match="Did you mean: person"):
        _coco(tmp_path, class_subset=["persn"])
    with pytest.raises(RecipeError, match="Did you mean: ignore"):
        _coco(tmp_path, crowd="ignor")
    _save_rgb(tmp_path / "images" / "val2017" / "b.png", np.zeros((24, 40, 3), np.uint8))  # JSON says 32 wide
    with pytest.raises(SegmentationImageError, match="b.png is 40x24 .* image id 2 in .*instances_val2017.json"):
        dataset[1]
    (tmp_path / "images" / "val2017" / "b.png").unlink()
    with pytest.raises(SegmentationImageError, match="b.png"):
        _coco(tmp_path)
    json_path = tmp_path / "annotations" / "instances_val2017.json"
    json_path.write_text(json_path.read_text()[:-40])  # a download cut short
    with pytest.raises(RecipeError, match="instances_val2017.json is not a valid COCO annotation file"):
        _coco(tmp_path)


# -- image + mask folders -----------------------------------------------------------------------------------------
def test_folder_dataset_multiclass_and_binary(tmp_path):
    rng = np.random.default_rng(1)
    classes = rng.integers(0, 3, (12, 10)).astype(np.uint8)
    classes[0, :3] = 255
    _save_rgb(tmp_path / "multi/images/a.png", _rgb(rng, 12, 10))
    cv2.imwrite(str(tmp_path / "multi/images/b.jpg"), _rgb(rng, 12, 10))
    _save_grey(tmp_path / "multi/masks/a.png", classes)
    _save_grey(tmp_path / "multi/masks/b.png", np.zeros((12, 10)))
    _save_grey(tmp_path / "multi/masks/orphan.png", np.zeros((12, 10)))  # a mask without an image is ignored
    multi = ImageMaskFolderDataset(data_dir=str(tmp_path / "multi"), class_names=["bg", "cat", "dog"])
    assert len(multi) == 2 and multi.num_classes == 3
    assert np.array_equal(multi[0][1].numpy(), classes)

    foreground = rng.random((12, 10)) > 0.5
    _save_rgb(tmp_path / "bin/images/x.png", _rgb(rng, 12, 10))
    _save_rgb(tmp_path / "bin/images/y.png", _rgb(rng, 12, 10))
    _save_grey(tmp_path / "bin/masks/x_mask.png", foreground * 255)  # 0/255 image
    _save_grey(tmp_path / "bin/masks/y_mask.png", foreground * 1)  # 0/1 image
    binary = ImageMaskFolderDataset(data_dir=str(tmp_path / "bin"), binary=True, mask_suffix="_mask")
    assert binary.num_classes == 1 and binary.class_names == ["background", "foreground"]
    for index in range(2):
        assert np.array_equal(binary[index][1].numpy(), foreground.astype(np.int64))
    as_stored = ImageMaskFolderDataset(data_dir=str(tmp_path / "bin"), binary=True, mask_suffix="_mask",
                                       mask_threshold=None)
    assert np.array_equal(as_stored[0][1].numpy(), foreground * 255)  # 255 is then ignore_index


def test_folder_dataset_errors_name_the_files(tmp_path):
    with pytest.raises(SegmentationImageError, match="images_dir folder .*nowhere"):
        ImageMaskFolderDataset(data_dir=str(tmp_path / "nowhere"), binary=True)
    with pytest.raises(RecipeError, match="class_names"):
        ImageMaskFolderDataset(data_dir=str(tmp_path))
    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        _save_rgb(tmp_path / f"images/{name}.png", _rgb(rng, 8, 8))
    _save_grey(tmp_path / "masks/a.png", np.full((8, 8), 7))
    with pytest.raises(SegmentationImageError, match="have no mask.*b.png"):
        ImageMaskFolderDataset(data_dir=str(tmp_path), binary=True)
    _save_rgb(tmp_path / "masks/b.png", _rgb(rng, 8, 8))  # a colour mask: not class indices
    (tmp_path / "images/a.png").write_bytes(b"not an image")
    dataset = ImageMaskFolderDataset(data_dir=str(tmp_path), class_names=["bg", "fg"])
    with pytest.raises(SegmentationImageError, match=f"{tmp_path / 'images/a.png'} cannot be decoded"):
        dataset[0]
    with pytest.raises(SegmentationImageError, match="masks/b.png is a colour image"):
        dataset[1]
    _save_rgb(tmp_path / "images/a.png", _rgb(rng, 8, 8))
    with pytest.raises(SegmentationImageError, match=r"masks/a.png holds value\(s\) \[7\].*2 classes"):
        dataset[0]
    _save_rgb(tmp_path / "images/a.png", _rgb(rng, 9, 8))
    with pytest.raises(SegmentationImageError, match="images/a.png is 8x9.*mask"):
        dataset.load_sample(0)


def test_base_class_reads_given_pairs_and_lists_missing_files(tmp_path):
    rng = np.random.default_rng(3)
    _save_rgb(tmp_path / "i.png", _rgb(rng, 6, 6))
    _save_grey(tmp_path / "m.png", np.eye(6))
    dataset = SegmentationDataset(samples=[(str(tmp_path / "i.png"), str(tmp_path / "m.png"))],
                                  class_names=["bg", "line"])
    assert np.array_equal(dataset[0][1].numpy(), np.eye(6))
    with pytest.raises(SegmentationImageError, match="2 file.*gone.png.*gone_mask.png"):
        SegmentationDataset(samples=[(str(tmp_path / "gone.png"), str(tmp_path / "gone_mask.png"))])

    class Mine(SegmentationDataset):  # what a user writes: the pairs, nothing else
        class_names = ["bg", "line"]

        def _setup_samples(self):
            return [(str(tmp_path / "i.png"), str(tmp_path / "m.png"))] * 3

    assert len(Mine(max_num_samples=2)) == 2 and Mine().num_classes == 2
    with pytest.raises(RecipeError, match="_setup_samples"):
        SegmentationDataset()


# -- synthetic shapes ---------------------------------------------------------------------------------------------
def test_shapes_are_deterministic_pixel_exact_and_split_apart():
    train = ShapesSegmentationDataset(split="train", num_samples=40, image_size=64)
    again = ShapesSegmentationDataset(split="train", num_samples=40, image_size=64)
    for index in (0, 7, 39):
        assert all(torch.equal(a, b) for a, b in zip(train[index], again[index], strict=True))
    val = ShapesSegmentationDataset(split="val", num_samples=40)
    other_seed = ShapesSegmentationDataset(split="train", num_samples=40, seed=1)
    assert not torch.equal(train[0][0], val[0][0]) and not torch.equal(train[0][0], other_seed[0][0])
    assert train.class_names == list(CLASS_NAMES) and train.num_classes == 4
    seen = set()
    for index in range(40):
        image, mask, shapes = draw_shapes_sample(0, "train", index, 64, 4)
        expected = np.zeros((64, 64), np.uint8)
        colours = np.zeros((64, 64, 3), np.int16)
        for shape in shapes:  # repaint independently: cv2 without anti-aliasing, later shapes on top
            canvas = np.zeros((64, 64), np.uint8)
            cv2.fillPoly(canvas, [np.round(shape["polygon"] * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
            expected[canvas > 0] = shape["label"]
            colours[canvas > 0] = shape["colour"]
        assert np.array_equal(mask, expected)
        inside = mask > 0  # every labelled pixel has its shape's colour, up to the in-shape noise
        assert np.abs(image[inside].astype(np.int16) - colours[inside]).max() <= 10
        seen |= set(np.unique(mask).tolist())
        assert np.array_equal(train.load_sample(index)[1], mask)
    assert seen == {0, 1, 2, 3}


# -- registered loaders -------------------------------------------------------------------------------------------
def test_every_registered_loader_yields_stacked_batches(tmp_path):
    write_cityscapes(tmp_path / "cityscapes")
    write_voc(tmp_path / "voc")
    write_coco(tmp_path / "coco")
    rng = np.random.default_rng(5)
    for split in ("train", "val"):
        for k in range(2):
            _save_rgb(tmp_path / f"folder/images/{split}/{k}.png", _rgb(rng, 30 + k, 40))
            _save_grey(tmp_path / f"folder/masks/{split}/{k}.png", rng.integers(0, 2, (30 + k, 40)))
    coco = {"images_dir": "images/val2017", "json_file": "annotations/instances_val2017.json"}
    params = {
        "cityscapes": {"data_dir": str(tmp_path / "cityscapes")},
        "pascal_voc_segmentation": {"data_dir": str(tmp_path / "voc")},
        "coco_segmentation": {"data_dir": str(tmp_path / "coco"), **coco, "skip_empty": False},
        "shapes_segmentation": {"num_samples": 4},
        "segmentation_folder": {"data_dir": str(tmp_path / "folder")},
    }
    expected_hw = {("cityscapes", "train"): (1024, 1024), ("cityscapes", "val"): (16, 32),
                   ("pascal_voc_segmentation", "train"): (512, 512), ("pascal_voc_segmentation", "val"): (512, 512),
                   ("coco_segmentation", "train"): (512, 512), ("coco_segmentation", "val"): (640, 640),
                   ("shapes_segmentation", "train"): (64, 64), ("shapes_segmentation", "val"): (64, 64),
                   ("segmentation_folder", "train"): (512, 512), ("segmentation_folder", "val"): (512, 512)}
    torch.manual_seed(0)
    for (group, split), hw in expected_hw.items():
        loader = dataloaders.get(f"{group}_{split}", dataset_params=params[group],
                                 dataloader_params={"batch_size": 2, "num_workers": 0, "drop_last": False})
        images, masks = next(iter(loader))
        assert images.shape == (2, 3, *hw) and images.dtype == torch.float32, (group, split)
        assert masks.shape == (2, *hw) and masks.dtype == torch.int64, (group, split)
        limit = loader.dataset.num_classes
        assert ((masks < limit) | (masks == 255)).all() and (masks >= 0).all(), (group, split)
