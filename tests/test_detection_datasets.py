"""Detection datasets: COCO parsing on a real COCO subset, user formats, user subclasses from a recipe, the
synthetic shapes set, and bad data (unreadable images, degenerate boxes)."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from super_recipes import dataloaders
from super_recipes.config.compose import compose_recipe, import_user_modules
from super_recipes.detection.dataset_formats import COCODetectionDataset as COCO2017
from super_recipes.detection.dataset_formats import COCOFormatDetectionDataset, YoloDarknetFormatDetectionDataset
from super_recipes.detection.datasets import DetectionImageError
from super_recipes.detection.synthetic import CLASS_NAMES, ShapesDetectionDataset, ensure_shapes_detection_dataset
from super_recipes.errors import RecipeError

TINYCOCO = Path(os.environ.get("TINYCOCO_DIR", Path(__file__).resolve().parents[2] / "shared/data/tinycoco"))


@pytest.fixture(scope="module")
def tinycoco() -> Path:
    if not (TINYCOCO / "annotations" / "instances_train2017.json").is_file():
        pytest.skip(f"the real COCO subset is not at {TINYCOCO} (set TINYCOCO_DIR)")
    return TINYCOCO


def _coco(root: Path, split: str = "train", **kwargs) -> COCO2017:
    return COCO2017(data_dir=str(root), subdir=f"images/{split}2017", json_file=f"instances_{split}2017.json", **kwargs)


def _all_boxes(dataset, key: str = "target") -> np.ndarray:
    return np.concatenate([dataset.annotation(i)[key] for i in range(len(dataset))])


@pytest.mark.parametrize("split, images, non_empty, boxes, crowd", [("train", 32, 30, 288, 4), ("val", 6, 6, 136, 1)])
def test_coco_parsing_counts_classes_and_crowd(tinycoco, split, images, non_empty, boxes, crowd):
    dataset = _coco(tinycoco, split, ignore_empty_annotations=False)
    assert len(dataset) == images and len(_coco(tinycoco, split)) == non_empty
    assert dataset.num_classes == 80 and dataset.class_names[0] == "person"
    assert dataset.class_names[79] == "toothbrush" and dataset.category_ids[79] == 90  # sparse ids 1..90
    assert dataset.category_ids == sorted(dataset.coco.getCatIds())
    assert len(_all_boxes(dataset, "crowd_target")) == crowd and len(_all_boxes(dataset)) + crowd == boxes
    labels = _all_boxes(dataset)[:, 4]
    assert labels.min() >= 0 and labels.max() < 80 and np.array_equal(labels, labels.round())
    first = dataset.annotation(0)
    info = dataset.coco.imgs[first["image_id"]]  # image ids are COCO's, for COCO-API evaluation
    assert first["original_shape"] == (info["height"], info["width"])
    sample = dataset.get_sample(0)
    assert sample.image.shape == (*first["original_shape"], 3) and sample.image.dtype == np.uint8
    assert (sample.scale, sample.pad) == (1.0, (0.0, 0.0))
    assert len(_all_boxes(_coco(tinycoco, split, with_crowd=False), "crowd_target")) == 0


def test_coco_class_inclusion_list_and_max_num_samples(tinycoco):
    data = json.loads((tinycoco / "annotations" / "instances_train2017.json").read_text())
    wanted = {70: "toilet", 1: "person"}
    expected = [a for a in data["annotations"] if a["category_id"] in wanted and not a["iscrowd"]]
    dataset = _coco(tinycoco, class_inclusion_list=["toilet", "person"])
    assert dataset.class_names == ["toilet", "person"] and dataset.category_ids == [70, 1]
    boxes = _all_boxes(dataset)
    assert len(boxes) == len(expected) and set(boxes[:, 4].tolist()) == {0.0, 1.0}
    assert (boxes[:, 4] == 0).sum() == sum(a["category_id"] == 70 for a in expected) == 13
    assert len(dataset) == len({a["image_id"] for a in expected})  # images left empty are dropped
    with pytest.raises(RecipeError, match="Did you mean: person"):
        _coco(tinycoco, class_inclusion_list=["persn"])
    limited = _coco(tinycoco, max_num_samples=5)
    assert len(limited) == 5 and all(len(limited.annotation(i)["target"]) for i in range(5))
    lazy = _coco(tinycoco, max_num_samples=5, cache_annotations=False, ignore_empty_annotations=False)
    assert len(lazy) == 5 and lazy._annotations is None
    assert lazy.annotation(3)["image_id"] == _coco(tinycoco, ignore_empty_annotations=False).annotation(3)["image_id"]


def test_coco_loader_items_map_back_to_the_original_image(tinycoco):
    loader = dataloaders.get("coco2017_val", dataset_params={"data_dir": str(tinycoco)},
                             dataloader_params={"batch_size": 2, "num_workers": 0, "persistent_workers": False})
    images, targets, extras = next(iter(loader))
    assert images.shape == (2, 3, 640, 640) and float(images.max()) <= 1.0  # DetectionStandardize ran
    dataset = loader.dataset
    for b in range(2):
        original = dataset.annotation(b)["target"]
        assert int(extras["image_ids"][b]) == dataset.annotation(b)["image_id"]
        cx, cy, w, h = targets[targets[:, 0] == b][:, 2:].numpy().T
        xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        back = (xyxy - np.tile(extras["pads"][b].numpy(), 2)) / float(extras["scales"][b])
        assert np.allclose(back, original[:, :4], atol=0.05)


def test_coco_train_loader_and_recipe_input_dim(tinycoco):
    loader = dataloaders.get("coco2017_train_yolox", dataset_params={"data_dir": str(tinycoco)},
                             dataloader_params={"batch_size": 4, "num_workers": 0, "persistent_workers": False})
    names = [type(t).__name__ for t in loader.dataset.transforms]
    assert names[:3] == ["DetectionMosaic", "DetectionRandomAffine", "DetectionMixup"]
    images, targets = next(iter(loader))  # DetectionCollateFN: no extras for training
    assert images.shape == (4, 3, 640, 640) and targets.shape[1] == 6 and loader.drop_last
    cfg, _ = compose_recipe("shapes_resnet", ["dataset_params=coco2017_detection_dataset_params",
                                              "dataset_params.train_dataset_params.input_dim=[320,320]"])
    transforms = OmegaConf.to_container(cfg.dataset_params.train_dataset_params.transforms, resolve=True)
    assert transforms[0] == {"DetectionMosaic": {"input_dim": [320, 320], "prob": 1.0}}  # follows input_dim
    assert transforms[1]["DetectionRandomAffine"]["target_size"] == [320, 320]


def test_coco_missing_files_name_the_expected_path(tmp_path, tinycoco):
    with pytest.raises(RecipeError, match=r"instances_val2017\.json.*cocodataset\.org"):
        _coco(tmp_path / "coco", "val")
    with pytest.raises(RecipeError, match="Did you mean: subdir"):
        dataloaders.get("coco2017_val", dataset_params={"data_dir": str(tinycoco), "subdirr": "x"})
    assert "images_dir" not in inspect.signature(COCO2017).parameters


def _write_image(path: Path, h: int = 60, w: int = 80, value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))


def test_coco_format_json_of_your_own_with_bad_boxes_and_images(tmp_path, caplog):
    for name in ("a.png", "b.png", "c.png"):
        _write_image(tmp_path / "imgs" / name)
    content = {
        "images": [{"id": 7, "file_name": "a.png", "height": 60, "width": 80},
                   {"id": 9, "file_name": "b.png", "height": 60, "width": 80},
                   {"id": 11, "file_name": "c.png", "height": 60, "width": 80}],
        "categories": [{"id": 17, "name": "cat"}, {"id": 5, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 17, "bbox": [10, 10, 20, 30], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 5, "bbox": [70, 50, 30, 30], "iscrowd": 0},  # clipped
            {"id": 3, "image_id": 7, "category_id": 5, "bbox": [5, 5, 0.5, 20], "iscrowd": 0},  # degenerate
            {"id": 4, "image_id": 7, "category_id": 17, "bbox": [0, 0, 40, 40], "iscrowd": 1},
            {"id": 5, "image_id": 9, "category_id": 5, "bbox": [90, 10, 10, 10], "iscrowd": 0},  # outside
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(content))
    make = lambda **kw: COCOFormatDetectionDataset(str(tmp_path), "imgs", "ann.json", **kw)  # noqa: E731
    with caplog.at_level(logging.WARNING, logger="super_recipes"):
        dataset = make()
    warnings = [r.getMessage() for r in caplog.records if "degenerate" in r.getMessage()]
    assert len(warnings) == 1 and "2 degenerate" in warnings[0] and "a.png" in warnings[0] and "b.png" in warnings[0]
    assert dataset.class_names == ["car", "cat"] and dataset.category_ids == [5, 17]
    assert len(dataset) == 1  # b.png lost its only box, c.png has none
    ann = dataset.annotation(0)
    assert ann["image_id"] == 7 and ann["target"].tolist() == [[10, 10, 30, 40, 1], [70, 50, 80, 60, 0]]
    assert ann["crowd_target"].tolist() == [[0, 0, 40, 40, 1]]
    image, targets, extras = dataset[0]  # no transforms: the default conversion, LABEL_CXCYWH
    assert image.shape == (3, 60, 80) and targets.tolist()[0] == [1, 20, 25, 20, 30]
    assert extras["crowd_targets"].shape == (1, 5) and extras["original_shape"] == (60, 80)
    assert len(make(ignore_empty_annotations=False)) == 3

    (tmp_path / "imgs" / "a.png").write_bytes(b"not an image")
    with pytest.raises(DetectionImageError, match=r"a\.png.*cannot be decoded"):
        dataset[0]
    (tmp_path / "imgs" / "a.png").unlink()
    with pytest.raises(DetectionImageError, match=r"missing.*a\.png"):
        make()
    with pytest.raises(RecipeError, match="XYXY_LABEL"):
        make(output_format="LABEL_XYZ")


def test_yolo_darknet_format(tmp_path):
    _write_image(tmp_path / "images" / "one.jpg", 50, 100)
    _write_image(tmp_path / "images" / "two.png", 40, 40)
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "one.txt").write_text("1 0.5 0.5 0.2 0.4\n\n0 0.1 0.1 0.1 0.2\n")
    dataset = YoloDarknetFormatDetectionDataset(str(tmp_path), classes=["a", "b"])
    assert len(dataset) == 1 and dataset.class_names == ["a", "b"]  # two.png has no label file: empty
    assert np.allclose(dataset.annotation(0)["target"], [[40, 15, 60, 35, 1], [5, 0, 15, 10, 0]])
    make = lambda **kw: YoloDarknetFormatDetectionDataset(str(tmp_path), ["a", "b"], **kw)  # noqa: E731
    assert len(make(ignore_empty_annotations=False)) == 2
    assert np.allclose(make(class_inclusion_list=["b"]).annotation(0)["target"], [[40, 15, 60, 35, 0]])
    for line, error in (("1 0.5 0.5 0.2", r"one\.txt:1"), ("2 0.5 0.5 0.2 0.2", r"one\.jpg.*0\.\.1")):
        (tmp_path / "labels" / "one.txt").write_text(line)
        with pytest.raises(RecipeError, match=error):
            make()


USER_MODULE = '''
import numpy as np
from super_recipes.detection.datasets import DetectionDataset
from super_recipes.registry import register_dataset

@register_dataset
class ListFileDetection(DetectionDataset):
    """Images listed in a text file, one 'path x1 y1 x2 y2 label' line per box."""
    def __init__(self, data_dir, list_file="boxes.txt", **kwargs):
        self.list_file = list_file
        super().__init__(data_dir=data_dir, **kwargs)

    def _setup_data_source(self):
        lines = (self.data_dir / self.list_file).read_text().split("\\n")
        self.rows = [line.split() for line in lines if line.strip()]
        return len(self.rows)

    def _load_annotation(self, sample_id):
        name, *box = self.rows[sample_id]
        return {"img_path": str(self.data_dir / name), "target": np.array([box], np.float32)}
'''


class _CountExtras:
    """A transform asking for extra samples (as mosaic does): it writes how many it got into a pixel."""

    additional_samples_count = 2

    def __call__(self, sample, extra_samples):
        assert all(s.image.shape == (60, 80, 3) for s in extra_samples)
        sample.image = np.full_like(sample.image, len(extra_samples))
        return sample


def test_user_dataset_subclass_from_a_recipe(tmp_path, monkeypatch):
    for i in range(3):
        _write_image(tmp_path / "data" / f"{i}.png")
    (tmp_path / "data" / "boxes.txt").write_text("".join(f"{i}.png 5 5 30 40 {i % 2}\n" for i in range(3)))
    (tmp_path / "my_detection.py").write_text(USER_MODULE)
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "mine.yaml").write_text(textwrap.dedent(f"""
        defaults:
          - training_hyperparams: default_train_params
          - _self_
        imports: [my_detection]
        architecture: anything
        train_dataloader: shapes_detection_train
        dataset_params:
          train_dataset_params:
            dataset: ListFileDetection
            data_dir: {tmp_path / "data"}
            class_names: [odd, even]
          train_dataloader_params: {{batch_size: 3}}
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg, source = compose_recipe("mine", config_dir=recipes)
    import_user_modules(cfg, source)
    params = cfg.dataset_params
    loader = dataloaders.get(cfg.train_dataloader, params.train_dataset_params, params.train_dataloader_params,
                             where="dataset_params.train_dataset_params")
    images, targets = next(iter(loader))  # the named loader's transforms and DetectionCollateFN
    assert images.shape == (3, 3, 160, 160) and sorted(targets[:, 1].tolist()) == [0, 0, 1] and loader.drop_last
    assert not (tmp_path / "data" / "shapes_detection").exists()  # nothing of the shapes set was built
    dataset_cls = type(loader.dataset)
    assert {"list_file", "class_inclusion_list"} <= set(inspect.signature(dataset_cls).parameters)
    with pytest.raises(RecipeError, match="Did you mean: list_file"):
        dataloaders.get(cfg.train_dataloader, {"dataset": "ListFileDetection", "data_dir": "x", "list_fil": "y"})
    extras = dataset_cls(data_dir=str(tmp_path / "data"), transforms=[_CountExtras()])
    assert float(extras[1][0][0, 0, 0]) == 2.0


def _digest(root: Path) -> str:
    hasher = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".lock")):
        hasher.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return hasher.hexdigest()


def test_synthetic_shapes_set_is_deterministic_coco_valid_and_idempotent(tmp_path):
    first = ensure_shapes_detection_dataset(tmp_path / "a", "val", num_images=60, image_size=96, seed=3)
    second = ensure_shapes_detection_dataset(tmp_path / "b", "val", num_images=60, image_size=96, seed=3)
    assert _digest(first) == _digest(second)
    json_path = first / "annotations" / "instances_val.json"
    stamp, _ = json_path.stat().st_mtime_ns, (first / ".val-tmp-stale").mkdir()  # as a killed run leaves
    ensure_shapes_detection_dataset(first, "val", num_images=60, image_size=96, seed=3)
    assert json_path.stat().st_mtime_ns == stamp  # already complete: nothing rewritten
    ensure_shapes_detection_dataset(first, "val", num_images=50, image_size=96, seed=3)
    assert len(list((first / "images" / "val").iterdir())) == 50 and not (first / ".val-tmp-stale").exists()
    assert _digest(ensure_shapes_detection_dataset(tmp_path / "c", "val", 50, 96, seed=4)) != _digest(first)

    from pycocotools.coco import COCO

    coco = COCO(str(ensure_shapes_detection_dataset(first, "train", 100, 160) / "annotations/instances_train.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASS_NAMES)
    anns = coco.loadAnns(coco.getAnnIds())
    per_image = [len(coco.getAnnIds(imgIds=i, iscrowd=False)) for i in coco.getImgIds()]
    assert min(per_image) >= 1 and max(per_image) <= 5 and len(coco.getImgIds()) == 100
    sides = np.array([a["bbox"][2:] for a in anns if not a["iscrowd"]])
    assert sides.min() >= 10 and sides.max() <= 70 and any(a["iscrowd"] for a in anns)
    assert {a["category_id"] for a in anns} == {1, 2, 3, 4}  # every class appears
    dataset = ShapesDetectionDataset(data_dir=str(first), split="train", num_images=100)
    assert dataset.class_names == list(CLASS_NAMES) and len(dataset) == 100 and json_path.is_file()


def test_shapes_detection_loaders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = dataloaders.get("shapes_detection_train", dataset_params={"num_images": 40},
                            dataloader_params={"batch_size": 8})
    images, targets = next(iter(train))
    assert images.shape == (8, 3, 160, 160) and targets.shape[1] == 6 and float(images.max()) <= 1.0
    val = dataloaders.get("shapes_detection_val", dataset_params={"num_images": 10})
    assert next(iter(val))[2]["image_ids"].tolist() == list(range(1, 11))
    assert (tmp_path / "data" / "shapes_detection" / "annotations" / "instances_val.json").is_file()
