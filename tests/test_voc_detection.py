"""Pascal VOC detection on tiny real-format VOCdevkit folders (JPEGs, VOC XML, ImageSets lists), the
``DetectionTargetsFormat`` names, and the guide's custom-dataset example ported with its input/output formats.

Every expected box is computed here from the numbers written into the XML (VOC: 1-based inclusive pixels, so
``x1 = xmin - 1``, ``x2 = xmax``), never by the code under test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from super_recipes.data import dataloaders
from super_recipes.detection.box_formats import TARGET_FORMATS
from super_recipes.detection.datasets import DetectionDataset, DetectionImageError
from super_recipes.detection.targets_format import DetectionTargetsFormat
from super_recipes.detection.transforms import (
    DetectionPaddedRescale,
    DetectionStandardize,
    DetectionTargetsFormatTransform,
)
from super_recipes.detection.voc import VOC_CLASSES, PascalVOCDetectionDataset
from super_recipes.errors import RecipeError
from super_recipes.registry import register_dataset

# (width, height), then objects: (name, xmin, ymin, xmax, ymax, difficult, truncated), VOC's 1-based pixels.
Obj = tuple[str, float, float, float, float, int, int]
VOC2007: dict[str, tuple[tuple[int, int], list[Obj]]] = {
    "000005": ((120, 90), [("chair", 10, 20, 50, 80, 0, 0), ("person", 60, 10, 110, 85, 0, 1),
                           ("bottle", 5, 5, 15, 30, 1, 0)]),
    "000007": ((100, 80), [("car", 1, 1, 100, 80, 0, 1)]),  # the whole image: x1 = 0, x2 = W
    "000009": ((96, 96), [("horse", 20, 30, 70, 90, 0, 0), ("dog", 40, 10, 90, 50, 0, 0)]),
    "000012": ((110, 70), [("cat", 30, 15, 80, 60, 0, 0)]),
    "000016": ((80, 100), [("bicycle", 10, 20, 70, 95, 0, 0), ("person", 50, 5, 75, 40, 1, 1)]),
    # test
    "000001": ((120, 90), [("dog", 30, 20, 100, 85, 0, 0), ("person", 5, 5, 30, 60, 1, 0)]),
    "000004": ((100, 75), [("bird", 20, 20, 60, 50, 1, 0)]),  # only a difficult object
    "000006": ((90, 90), [("pottedplant", 10, 40, 40, 85, 0, 0), ("diningtable", 35, 50, 88, 88, 0, 1)]),
}
VOC2012: dict[str, tuple[tuple[int, int], list[Obj]]] = {
    "2008_000008": ((120, 100), [("horse", 50, 40, 115, 98, 0, 0), ("person", 60, 10, 100, 70, 0, 0)]),
    "2008_000015": ((100, 90), [("bottle", 40.0, 20.0, 60.0, 80.0, 0, 0), ("tvmonitor", 5, 5, 45, 40, 1, 0)]),
    "2008_000019": ((90, 110), [("dog", 10, 40, 80, 105, 0, 1)]),
    "2008_000023": ((110, 80), [("bottle", 2, 3, 20, 75, 0, 0), ("tvmonitor", 30, 10, 100, 70, 0, 0)]),
}
LISTS = {
    "2007": {"train": ["000005", "000009", "000016"], "val": ["000007", "000012"],
             "trainval": ["000005", "000007", "000009", "000012", "000016"], "test": ["000001", "000004", "000006"]},
    "2012": {"train": ["2008_000008", "2008_000019"], "val": ["2008_000015", "2008_000023"],
             "trainval": ["2008_000008", "2008_000015", "2008_000019", "2008_000023"]},
}
YEARS = {"2007": VOC2007, "2012": VOC2012}


def _voc_xml(folder: str, image_id: str, size: tuple[int, int], objects: list[Obj]) -> str:
    width, height = size
    parts = [f"<annotation>\n\t<folder>{folder}</folder>\n\t<filename>{image_id}.jpg</filename>\n"
             "\t<source>\n\t\t<database>The VOC Database</database>\n\t\t<annotation>PASCAL VOC</annotation>\n"
             f"\t</source>\n\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n"
             "\t\t<depth>3</depth>\n\t</size>\n\t<segmented>0</segmented>\n"]
    for name, xmin, ymin, xmax, ymax, difficult, truncated in objects:
        parts.append(f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n"
                     f"\t\t<truncated>{truncated}</truncated>\n\t\t<difficult>{difficult}</difficult>\n"
                     f"\t\t<bndbox>\n\t\t\t<xmin>{xmin}</xmin>\n\t\t\t<ymin>{ymin}</ymin>\n"
                     f"\t\t\t<xmax>{xmax}</xmax>\n\t\t\t<ymax>{ymax}</ymax>\n\t\t</bndbox>\n")
        if name == "person":  # VOC person layout parts: nested <name>/<bndbox> that are not objects
            parts.append("\t\t<part>\n\t\t\t<name>head</name>\n\t\t\t<bndbox>\n\t\t\t\t<xmin>1</xmin>\n"
                         "\t\t\t\t<ymin>1</ymin>\n\t\t\t\t<xmax>3</xmax>\n\t\t\t\t<ymax>3</ymax>\n"
                         "\t\t\t</bndbox>\n\t\t</part>\n")
        parts.append("\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


def _draw(size: tuple[int, int], objects: list[Obj], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    width, height = size
    image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    for name, xmin, ymin, xmax, ymax, *_ in objects:
        colour = [int(v) for v in (40 + 9 * VOC_CLASSES.index(name), 255 - 11 * VOC_CLASSES.index(name), 200)]
        cv2.rectangle(image, (int(xmin) - 1, int(ymin) - 1), (int(xmax) - 1, int(ymax) - 1), colour, -1)
    return image


def write_voc_detection(root: Path) -> Path:
    """A tiny VOCdevkit (VOC2007 with trainval/test lists, VOC2012 with trainval lists) as the official tarballs
    unpack; returns the folder to pass as ``data_dir`` (the one holding ``VOCdevkit``)."""
    for year, images in YEARS.items():
        base = root / "VOCdevkit" / f"VOC{year}"
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        for seed, (image_id, (size, objects)) in enumerate(images.items()):
            assert cv2.imwrite(str(base / "JPEGImages" / f"{image_id}.jpg"), _draw(size, objects, seed))
            (base / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(f"VOC{year}", image_id, size, objects))
        for name, ids in LISTS[year].items():
            (base / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
            # the per-class lists the devkit ships next to them ("<class>_<list>.txt": id and +1/-1/0)
            (base / "ImageSets" / "Main" / f"dog_{name}.txt").write_text("".join(f"{i} -1\n" for i in ids))
    # An XML of the action/layout tasks that no Main list names: never read.
    extra = root / "VOCdevkit" / "VOC2012" / "Annotations" / "2008_000099.xml"
    extra.write_text(_voc_xml("VOC2012", "2008_000099", (50, 50), [("person", 1, 1, 40, 40, 0, 0)]))
    return root


def _expected(year: str, image_id: str, difficult: bool) -> np.ndarray:
    """[N, 5] x1, y1, x2, y2, label from the written XML numbers (1-based inclusive -> continuous)."""
    _, objects = YEARS[year][image_id]
    rows = [[xmin - 1, ymin - 1, xmax, ymax, VOC_CLASSES.index(name)]
            for name, xmin, ymin, xmax, ymax, diff, _ in objects if bool(diff) == difficult]
    return np.asarray(rows, np.float32).reshape(-1, 5)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    return write_voc_detection(tmp_path_factory.mktemp("voc"))


def test_reads_boxes_labels_and_difficult_as_in_the_xml(voc_root):
    ds = PascalVOCDetectionDataset(data_dir=str(voc_root), image_sets=["2007_trainval", "2007_test"],
                                   ignore_empty_annotations=False)
    ids = LISTS["2007"]["trainval"] + LISTS["2007"]["test"]
    assert ds.sample_names == [f"VOC2007/{i}" for i in ids] and len(ds) == 8
    for index, image_id in enumerate(ids):
        annotation = ds.annotation(index)
        np.testing.assert_allclose(annotation["target"], _expected("2007", image_id, difficult=False))
        np.testing.assert_allclose(annotation["crowd_target"], _expected("2007", image_id, difficult=True))
        size = VOC2007[image_id][0]
        assert annotation["original_shape"] == (size[1], size[0]) and annotation["image_id"] == index
        sample = ds.get_sample(index)
        assert sample.image.shape == (size[1], size[0], 3) and sample.image.dtype == np.uint8
        np.testing.assert_allclose(sample.boxes, _expected("2007", image_id, False)[:, :4])
        np.testing.assert_array_equal(sample.labels, _expected("2007", image_id, False)[:, 4].astype(np.int64))
        np.testing.assert_array_equal(sample.crowd_labels, _expected("2007", image_id, True)[:, 4].astype(np.int64))
    # The full-image box of 000007 (xmin=1..xmax=W) covers [0, W] x [0, H]: no clipping, nothing dropped.
    np.testing.assert_allclose(ds.annotation(1)["target"], [[0, 0, 100, 80, VOC_CLASSES.index("car")]])
    # The drawn rectangle of 000009's horse is where the box says (JPEG tolerance): pixels xmin-1..xmax-1.
    image = ds.get_sample(2).image.astype(int)
    x1, y1, x2, y2 = (int(v) for v in ds.annotation(2)["target"][0, :4])
    assert abs(image[y1 + 2, x1 + 2] - image[y1 + 5, x1 + 5]).max() < 40  # inside: one flat colour
    assert abs(image[y1 + 5, x1 + 5] - image[y2 + 3, x1 + 5]).max() > 60  # below the box: background


def test_class_list_and_custom_classes(voc_root):
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[-1] == "tvmonitor"
    assert list(VOC_CLASSES) == sorted(VOC_CLASSES)  # the devkit's order is alphabetical
    ds = PascalVOCDetectionDataset(data_dir=str(voc_root), image_sets=["2012_trainval"])
    assert ds.class_names == list(VOC_CLASSES) and ds.num_classes == 20
    mine = ["tvmonitor", "bottle", "horse", "person", "dog"]
    custom = PascalVOCDetectionDataset(data_dir=str(voc_root), image_sets=["2012_trainval"], classes=mine)
    assert custom.class_names == mine
    assert custom.annotation(3)["target"][:, 4].tolist() == [1, 0]  # 2008_000023: bottle, tvmonitor
    only = PascalVOCDetectionDataset(data_dir=str(voc_root), image_sets=["2012_trainval"],
                                     class_inclusion_list=["bottle"])
    assert only.class_names == ["bottle"] and len(only) == 2  # images without a bottle are dropped


def test_combines_years_and_lists_in_order(voc_root):
    ds = PascalVOCDetectionDataset(data_dir=str(voc_root))  # default: 07+12 trainval
    assert ds.image_sets == [("2007", "trainval"), ("2012", "trainval")]
    assert ds.sample_names == ([f"VOC2007/{i}" for i in LISTS["2007"]["trainval"]]
                               + [f"VOC2012/{i}" for i in LISTS["2012"]["trainval"]])
    np.testing.assert_allclose(ds.annotation(7)["target"], _expected("2012", "2008_000019", False))
    # Other spellings of the same lists, and data_dir pointing at VOCdevkit itself.
    same = PascalVOCDetectionDataset(data_dir=str(voc_root / "VOCdevkit"), image_sets=[[2007, "train"], "VOC2007/val",
                                                                                      "2012_train", "2012_val"])
    assert sorted(same.sample_names) == sorted(ds.sample_names)
    # A difficult-only image is dropped with ignore_empty_annotations (training), kept without it (evaluation).
    test = PascalVOCDetectionDataset(data_dir=str(voc_root), image_sets=["2007_test"])
    assert test.sample_names == ["VOC2007/000001", "VOC2007/000006"]
    dropped = PascalVOCDetectionDataset(data_dir=str(voc_root), image_sets=["2007_test"], with_difficult=False,
                                        ignore_empty_annotations=False)
    assert len(dropped) == 3 and all(len(dropped.annotation(i)["crowd_target"]) == 0 for i in range(3))


def test_loaders_give_crowd_targets_for_difficult_objects(voc_root):
    small = [{"DetectionPaddedRescale": {"input_dim": [64, 64]}}, "DetectionStandardize",
             {"DetectionTargetsFormatTransform": {"output_format": "LABEL_CXCYWH"}}]
    val = dataloaders.get("pascal_voc_detection_val",
                          dataset_params={"data_dir": str(voc_root), "input_dim": [64, 64], "transforms": small},
                          dataloader_params={"batch_size": 3, "num_workers": 0, "persistent_workers": False})
    assert val.dataset.image_sets == [("2007", "test")] and len(val.dataset) == 3
    images, targets, extras = next(iter(val))
    assert images.shape == (3, 3, 64, 64) and float(images.max()) <= 1.0
    # 000001 (120x90 -> scale 64/120): the dog is a target, the difficult person a crowd target of image 0.
    scale = 64 / 120
    x1, y1, x2, y2 = 29 * scale, 19 * scale, 100 * scale, 85 * scale
    dog = [0, VOC_CLASSES.index("dog"), (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
    torch.testing.assert_close(targets[0], torch.tensor(dog), atol=1e-4, rtol=0)
    crowd = extras["crowd_targets"]
    assert crowd[:, 0].tolist() == [0, 1] and crowd[:, 1].tolist() == [VOC_CLASSES.index("person"),
                                                                       VOC_CLASSES.index("bird")]
    train = dataloaders.get("pascal_voc_detection_train",
                            dataset_params={"data_dir": str(voc_root), "transforms": small},
                            dataloader_params={"batch_size": 4, "num_workers": 0, "persistent_workers": False})
    assert len(train.dataset) == 9 and not train.dataset.with_difficult
    assert all(len(train.dataset.annotation(i)["crowd_target"]) == 0 for i in range(9))


def test_errors_name_the_file(voc_root, tmp_path):
    root = write_voc_detection(tmp_path / "broken")
    devkit = root / "VOCdevkit"
    (devkit / "VOC2007/Annotations/000007.xml").write_text("<annotation><object><name>car</name>")
    with pytest.raises(RecipeError, match=r"000007\.xml is not valid XML"):
        PascalVOCDetectionDataset(data_dir=str(root), image_sets=["2007_val"])
    (devkit / "VOC2007/Annotations/000007.xml").write_text(_voc_xml("VOC2007", "000007", *VOC2007["000007"]))
    (devkit / "VOC2007/Annotations/000012.xml").unlink()
    with pytest.raises(RecipeError, match=r"annotation .*000012\.xml is missing"):
        PascalVOCDetectionDataset(data_dir=str(root), image_sets=["2007_train", "2007_val"])
    (devkit / "VOC2007/JPEGImages/000009.jpg").unlink()
    with pytest.raises(DetectionImageError, match=r"000009\.jpg"):
        PascalVOCDetectionDataset(data_dir=str(root), image_sets=["2007_train"])
    xml = devkit / "VOC2012/Annotations/2008_000019.xml"
    xml.write_text(xml.read_text().replace("<name>dog</name>", "<name>dgo</name>"))
    with pytest.raises(RecipeError, match=r"2008_000019\.xml, object 1: class 'dgo'.*Did you mean.*dog"):
        PascalVOCDetectionDataset(data_dir=str(root), image_sets=["2012_train"])
    xml = devkit / "VOC2012/Annotations/2008_000008.xml"
    xml.write_text(xml.read_text().replace("<xmin>50</xmin>", "<xmin>fifty</xmin>"))
    with pytest.raises(RecipeError, match=r"2008_000008\.xml, object 1 \(horse\): bndbox needs numeric"):
        PascalVOCDetectionDataset(data_dir=str(root), image_sets=["2012_train"])
    with pytest.raises(RecipeError, match=r"test\.txt not found \(VOC 2012 has no public test labels\)"):
        PascalVOCDetectionDataset(data_dir=str(voc_root), image_sets=["2012_test"])
    with pytest.raises(RecipeError, match=r"trainvl\.txt not found.*Did you mean.*trainval"):
        PascalVOCDetectionDataset(data_dir=str(voc_root), image_sets=["2007_trainvl"])
    with pytest.raises(RecipeError, match=r"VOC2010 not found.*VOCtrainval_06-Nov-2007\.tar"):
        PascalVOCDetectionDataset(data_dir=str(voc_root), image_sets=["2010_trainval"])
    with pytest.raises(RecipeError, match=r"'trainval' is not '<year>_<list>'"):
        PascalVOCDetectionDataset(data_dir=str(voc_root), image_sets=["trainval"])
    with pytest.raises(RecipeError, match="writes its targets as XYXY_LABEL"):
        PascalVOCDetectionDataset(data_dir=str(voc_root), transforms=[
            {"DetectionTargetsFormatTransform": {"input_format": "XYWH_LABEL"}}])
    with pytest.raises(TypeError):  # class names come from `classes`
        PascalVOCDetectionDataset(data_dir=str(voc_root), class_names=["a"])


# -- DetectionTargetsFormat ---------------------------------------------------------------------------------------
def test_targets_format_names_equal_the_format_strings():
    sg_names = {"LABEL_XYXY", "XYXY_LABEL", "LABEL_NORMALIZED_XYXY", "NORMALIZED_XYXY_LABEL", "LABEL_CXCYWH",
                "CXCYWH_LABEL", "LABEL_NORMALIZED_CXCYWH", "NORMALIZED_CXCYWH_LABEL"}
    assert sg_names | {"LABEL_XYWH", "XYWH_LABEL"} == {m.name for m in DetectionTargetsFormat}
    for member in DetectionTargetsFormat:
        assert member.value == member.name == member and str(member) == f"{member}" == member.name
        assert member.value in TARGET_FORMATS
    assert DetectionTargetsFormat("XYWH_LABEL") is DetectionTargetsFormat.XYWH_LABEL
    assert DetectionTargetsFormat.LABEL_NORMALIZED_CXCYWH.label_first
    assert DetectionTargetsFormat.XYWH_LABEL.box_format == "XYWH"
    transform = DetectionTargetsFormatTransform(input_format=DetectionTargetsFormat.XYWH_LABEL,
                                                output_format=DetectionTargetsFormat.LABEL_CXCYWH)
    assert (transform.input_format, transform.output_format) == ("XYWH_LABEL", "LABEL_CXCYWH")
    with pytest.raises(ValueError, match="Unknown detection target format 'XYWH_LABLE'"):
        DetectionTargetsFormatTransform(input_format="XYWH_LABLE")


# -- the guide's custom dataset, ported ---------------------------------------------------------------------------
MY_CLASSES = ["cat", "dog", "donut"]


@register_dataset
class MyNewDetectionDataset(DetectionDataset):
    """The detection guide's "How to connect your own dataset" example, with our argument names."""

    def __init__(self, data_dir: str, samples_dir: str, targets_dir: str, input_dim: tuple[int, int],
                 transforms: list[Any], max_num_samples: int | None = None,
                 class_inclusion_list: list[str] | None = None, **kwargs: Any):
        self.sample_paths = None
        self.samples_sub_directory = samples_dir
        self.targets_sub_directory = targets_dir
        super().__init__(data_dir=data_dir, input_dim=input_dim, class_inclusion_list=class_inclusion_list,
                         transforms=transforms, all_classes_list=MY_CLASSES, max_num_samples=max_num_samples, **kwargs)

    def _setup_data_source(self) -> int:
        samples_dir = os.path.join(self.data_dir, self.samples_sub_directory)
        labels_dir = os.path.join(self.data_dir, self.targets_sub_directory)
        sample_names = [n for n in sorted(os.listdir(samples_dir)) if n.endswith(".jpg")]
        self.samples_targets_tuples_list = []
        for sample_name in sample_names:
            sample_path = os.path.join(samples_dir, sample_name)
            label_path = os.path.join(labels_dir, sample_name.replace(".jpg", ".txt"))
            if not (os.path.exists(sample_path) and os.path.exists(label_path)):
                raise AssertionError(f"Sample and/or target file(s) not found ({sample_path}, {label_path})")
            self.samples_targets_tuples_list.append((sample_path, label_path))
        return len(self.samples_targets_tuples_list)

    def _load_annotation(self, sample_id: int) -> dict[str, Any]:
        sample_path, target_path = self.samples_targets_tuples_list[sample_id]
        with open(target_path) as targets_file:
            lines = targets_file.read().splitlines()
        target = np.array([x.strip().strip(",").split(",") for x in lines], dtype=np.float32)
        res_target = np.array(target) if len(target) != 0 else np.zeros((0, 5))
        return {"img_path": os.path.join(self.data_dir, sample_path), "target": res_target,
                "resized_img_shape": None}


# Ground truth of the port's images, XYXY pixels + label; each format's file is written by these formulas.
PORT_IMAGES = {"a": ((64, 48), [(4, 6, 30, 40, 0), (30, 10, 60, 44, 2)]), "b": ((40, 80), [(10, 20, 35, 70, 1)])}


def _in_format(box: tuple[float, ...], fmt: str, size: tuple[int, int]) -> list[float]:
    x1, y1, x2, y2, label = box
    width, height = size
    if "XYWH" in fmt and "CXCYWH" not in fmt:
        coords = [x1, y1, x2 - x1, y2 - y1]
    elif "CXCYWH" in fmt:
        coords = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
    else:
        coords = [x1, y1, x2, y2]
    if "NORMALIZED" in fmt:
        coords = [coords[0] / width, coords[1] / height, coords[2] / width, coords[3] / height]
    return [label, *coords] if fmt.startswith("LABEL_") else [*coords, label]


def _write_port(root: Path, fmt: str) -> Path:
    for sub in ("my-data-train/images", "my-data-train/annotations"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, (size, boxes) in PORT_IMAGES.items():
        image = np.full((size[1], size[0], 3), 90, np.uint8)
        assert cv2.imwrite(str(root / "my-data-train/images" / f"{name}.jpg"), image)
        lines = [",".join(f"{v:.6f}" for v in _in_format(box, fmt, size)) + "," for box in boxes]
        (root / "my-data-train/annotations" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("fmt", ["XYWH_LABEL", "LABEL_CXCYWH", "LABEL_NORMALIZED_CXCYWH", "NORMALIZED_XYXY_LABEL",
                                 "XYXY_LABEL", "LABEL_XYXY"])
def test_guide_custom_dataset_ports_with_input_and_output_formats(fmt, tmp_path):
    root = _write_port(tmp_path, fmt)
    # As the guide's my_new_dataset_params.yaml, through the loader machinery (names as a recipe writes them).
    params = {"dataset": "MyNewDetectionDataset", "data_dir": str(root), "samples_dir": "my-data-train/images",
              "targets_dir": "my-data-train/annotations", "input_dim": [64, 64],
              "transforms": [{"DetectionHSV": {"prob": 1.0, "hgain": 5, "sgain": 30, "vgain": 30,
                                               "bgr_channels": [0, 1, 2]}},
                             {"DetectionPaddedRescale": {"input_dim": [64, 64]}},
                             {"DetectionStandardize": {"max_value": 255.0}},
                             {"DetectionTargetsFormatTransform": {"input_format": fmt,
                                                                  "output_format": "LABEL_CXCYWH"}}]}
    loader = dataloaders.get(None, dataset_params=params,
                             dataloader_params={"batch_size": 2, "collate_fn": "DetectionCollateFN"})
    images, targets = next(iter(loader))[:2]
    assert images.shape == (2, 3, 64, 64)
    expected = []
    for index, (size, boxes) in enumerate(PORT_IMAGES.values()):
        scale = min(64 / size[0], 64 / size[1])
        for x1, y1, x2, y2, label in boxes:
            expected.append([index, label, (x1 + x2) / 2 * scale, (y1 + y2) / 2 * scale, (x2 - x1) * scale,
                             (y2 - y1) * scale])
    torch.testing.assert_close(targets, torch.tensor(expected, dtype=torch.float32), atol=1e-3, rtol=0)


def test_guide_port_with_the_enum_in_python_and_mixed_formats_refused(tmp_path):
    root = _write_port(tmp_path, "XYWH_LABEL")
    ds = MyNewDetectionDataset(
        data_dir=str(root), samples_dir="my-data-train/images", targets_dir="my-data-train/annotations",
        input_dim=(64, 64), transforms=[DetectionStandardize(255.0), DetectionTargetsFormatTransform(
            input_format=DetectionTargetsFormat.XYWH_LABEL, output_format=DetectionTargetsFormat.XYXY_LABEL)])
    assert ds.input_format == "XYWH_LABEL"
    _, targets, _ = ds[0]  # no resize: the item is the file's boxes as corners, label last
    np.testing.assert_allclose(targets, [[4, 6, 30, 40, 0], [30, 10, 60, 44, 2]], atol=1e-4)
    with pytest.raises(RecipeError, match="different input formats"):
        MyNewDetectionDataset(
            data_dir=str(root), samples_dir="my-data-train/images", targets_dir="my-data-train/annotations",
            input_dim=(64, 64), transforms=[DetectionPaddedRescale(64),
                                            DetectionTargetsFormatTransform(input_format="XYWH_LABEL"),
                                            DetectionTargetsFormatTransform(input_format="LABEL_CXCYWH")])


# -- the recipe ---------------------------------------------------------------------------------------------------
def test_voc0712_yolox_s_carries_the_published_setup():
    from super_recipes.config.compose import compose_recipe
    from super_recipes.paths import recipes_dir

    cfg, _ = compose_recipe("voc0712_yolox_s")
    hp = cfg.training_hyperparams
    assert cfg.architecture == "yolox_s" and cfg.arch_params.num_classes == 20
    assert (hp.max_epochs, hp.initial_lr, hp.optimizer, hp.lr_mode, hp.cosine_final_lr_ratio) == (
        300, 0.01, "SGD", "cosine", 0.05)
    assert dict(hp.optimizer_params) == {"momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}
    assert (hp.lr_warmup_epochs, hp.lr_cooldown_epochs, hp.ema_params.decay) == (1, 15, 0.9999)
    assert hp.criterion_params.num_classes == 20 and hp.metric_to_watch == "mAP@0.50"
    (metric,) = hp.valid_metrics_list
    assert metric.DetectionMetrics_050.num_cls == 20 and len(metric.DetectionMetrics_050.recall_thres) == 11
    post = metric.DetectionMetrics_050.post_prediction_callback
    assert (post.conf, post.iou) == (0.01, 0.65)
    assert hp.pre_prediction_callback.DetectionMultiscalePrePredictionCallback.multiscale_range == 5
    data = cfg.dataset_params
    assert list(data.train_dataset_params.image_sets) == ["2007_trainval", "2012_trainval"]
    assert list(data.val_dataset_params.image_sets) == ["2007_test"]
    assert data.train_dataloader_params.batch_size == 8 and list(data.train_dataset_params.input_dim) == [640, 640]
    assert (cfg.train_dataloader, cfg.val_dataloader) == ("pascal_voc_detection_train", "pascal_voc_detection_val")
    assert "Published result: none" in (recipes_dir() / "voc0712_yolox_s.yaml").read_text()


def test_detections_on_difficult_objects_count_neither_way(voc_root):
    """The recipe's metric on the val loader: perfect detections plus higher-scored ones on every difficult
    object give mAP 1 (they are ignored); scored without the crowd targets, the latter become false positives."""
    from omegaconf import OmegaConf

    from super_recipes.config.compose import compose_recipe
    from super_recipes.detection.metrics import DetectionMetrics_050

    cfg, _ = compose_recipe("voc0712_yolox_s")
    kwargs = OmegaConf.to_container(cfg.training_hyperparams.valid_metrics_list[0].DetectionMetrics_050)
    kwargs["post_prediction_callback"] = None  # the detections below are already [K, 6] rows
    small = [{"DetectionPaddedRescale": {"input_dim": [64, 64]}}, "DetectionStandardize",
             {"DetectionTargetsFormatTransform": {"output_format": "LABEL_CXCYWH"}}]
    loader = dataloaders.get("pascal_voc_detection_val",
                             dataset_params={"data_dir": str(voc_root), "image_sets": ["2007_test", "2012_val"],
                                             "transforms": small},
                             dataloader_params={"batch_size": 5, "num_workers": 0, "persistent_workers": False})
    images, targets, extras = next(iter(loader))
    assert len(images) == 5 and len(extras["crowd_targets"]) == 3  # person, bird, tvmonitor

    def rows(table: torch.Tensor, score: float, image: int) -> list[list[float]]:
        mine = table[table[:, 0] == image]
        return [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, score, label]
                for _, label, cx, cy, w, h in mine.tolist()]

    detections = [torch.tensor(rows(targets, 0.8, i) + rows(extras["crowd_targets"], 0.9, i)).reshape(-1, 6)
                  for i in range(len(images))]
    with_difficult, without = DetectionMetrics_050(**kwargs), DetectionMetrics_050(**kwargs)
    with_difficult.update(detections, targets, crowd_targets=extras["crowd_targets"])
    without.update(detections, targets)
    assert with_difficult.compute()["mAP@0.50"] == pytest.approx(1.0)
    # tvmonitor (ground truth in 2008_000023, difficult in 2008_000015): its top detection is now a false positive.
    assert without.compute()["mAP@0.50"] < 0.99
