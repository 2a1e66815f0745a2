"""The PP-YOLOE recipes and data pipeline: ``coco2017_ppyoloe_s`` ... ``_x`` carry SuperGradients' published setup;
``PPYoloECollateFN`` resizes whole batches and scales the targets exactly (the crowd variant keeps the letterbox
record right); the recipes' training loader runs on real COCO images; a PP-YOLOE-s learns the objects of a few
real tinycoco images and ``predict()`` finds them in the JPEGs' own pixels."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from super_recipes.config.compose import compose_recipe
from super_recipes.detection.collate import CrowdDetectionCollateFN, DetectionCollateFN
from super_recipes.detection.ppyoloe.collate import CrowdDetectionPPYoloECollateFN, PPYoloECollateFN
from super_recipes.errors import RecipeError
from super_recipes.paths import recipes_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
TINYCOCO = Path(os.environ.get("TINYCOCO_DIR", REPO_ROOT.parent / "shared/data/tinycoco"))
SIZES = ("s", "m", "l", "x")
# SuperGradients' recipes: per-GPU batch (x 8 GPUs) and lr per size; their reproduced COCO val mAP@0.50:0.95.
BATCH = {"s": 32, "m": 24, "l": 20, "x": 16}
LR = {"s": 2e-3, "m": 1e-3, "l": 1e-3, "x": 2e-3}
SG_MAP = ("42.52", "47.11", "49.48", "51.15")
PAPER_TEST_DEV = ("43.1", "48.9", "51.4", "52.2")


@pytest.fixture(scope="module")
def tinycoco() -> Path:
    if not (TINYCOCO / "annotations" / "instances_train2017.json").is_file():
        pytest.skip(f"the real COCO subset is not at {TINYCOCO} (set TINYCOCO_DIR)")
    return TINYCOCO


@pytest.mark.parametrize("size", SIZES)
def test_coco2017_ppyoloe_carries_the_published_setup(size):
    cfg, _ = compose_recipe(f"coco2017_ppyoloe_{size}")
    hp = cfg.training_hyperparams
    assert cfg.architecture == f"ppyoloe_{size}" and cfg.arch_params.num_classes == 80
    assert cfg.arch_params.reg_max == 16 and cfg.arch_params.activation == "silu"
    assert (hp.max_epochs, hp.initial_lr, hp.optimizer, dict(hp.optimizer_params)) == (
        500, LR[size], "AdamW", {"weight_decay": 1e-4})
    assert not hp.zero_weight_decay_on_bias_and_bn
    assert (hp.lr_mode, hp.cosine_final_lr_ratio) == ("cosine", 0.1)
    assert (hp.warmup_mode, hp.lr_warmup_steps, hp.warmup_initial_lr) == ("LinearBatchLRWarmup", 1000, 1e-6)
    assert hp.ema and (hp.ema_params.decay, hp.ema_params.decay_type) == (0.9997, "threshold")
    assert hp.mixed_precision and hp.sync_bn
    assert hp.loss == "PPYoloELoss"
    assert dict(hp.criterion_params) == {"num_classes": 80, "reg_max": 16, "use_varifocal_loss": True,
                                         "use_static_assigner": True, "classification_loss_weight": 1.0,
                                         "iou_loss_weight": 2.5, "dfl_loss_weight": 0.5}
    (metric,) = hp.valid_metrics_list
    params = metric.DetectionMetrics
    assert (params.num_cls, params.score_thres, params.top_k_predictions) == (80, 0.1, 300)
    post = params.post_prediction_callback
    assert post._target_.endswith("PPYoloEPostPredictionCallback")
    assert (post.score_threshold, post.nms_threshold, post.nms_top_k, post.max_predictions) == (0.01, 0.7, 1000, 300)
    assert hp.metric_to_watch == "mAP@0.50:0.95"
    assert list(hp.phase_callbacks) == [{"PPYoloETrainingStageSwitchCallback": {"static_assigner_end_epoch": 150}}]

    data = cfg.dataset_params
    assert (cfg.train_dataloader, cfg.val_dataloader) == ("coco2017_train", "coco2017_val")
    assert data.train_dataloader_params.batch_size == BATCH[size] and data.val_dataloader_params.batch_size == 64
    assert list(data.train_dataset_params.input_dim) == [640, 640] == list(data.val_dataset_params.input_dim)
    collate = data.train_dataloader_params.collate_fn.PPYoloECollateFN
    assert list(collate.random_resize_sizes) == list(range(320, 769, 32))
    assert list(collate.random_resize_modes) == [0, 1, 2, 3, 4]
    assert data.val_dataloader_params.collate_fn == "CrowdDetectionPPYoloECollateFN"
    names = [next(iter(t)) if not isinstance(t, str) else t for t in data.train_dataset_params.transforms]
    assert names[:4] == ["DetectionRandomAffine", "DetectionHSV", "DetectionHorizontalFlip", "DetectionMixup"]
    affine = data.train_dataset_params.transforms[0].DetectionRandomAffine
    assert (affine.degrees, affine.translate, list(affine.scales), affine.shear) == (0.0, 0.25, [0.5, 1.5], 0.0)
    assert data.train_dataset_params.transforms[3].DetectionMixup.prob == 0.5

    header = (recipes_dir() / f"coco2017_ppyoloe_{size}.yaml").read_text()
    for published in (*SG_MAP, *PAPER_TEST_DEV):
        assert published in header
    assert f"batch {BATCH[size]} per GPU x 8 GPUs = {BATCH[size] * 8}" in header


def _item(height: int, width: int, targets: list[list[float]], seed: int = 0, **extras):
    rng = np.random.default_rng(seed)
    image = torch.from_numpy(rng.random((3, height, width), dtype=np.float32))
    return image, np.array(targets, dtype=np.float32).reshape(-1, 5), extras


def test_collate_resizes_the_batch_and_scales_the_targets_exactly():
    items = [_item(40, 60, [[3, 30, 20, 12, 8], [1, 6, 35, 4, 10]], seed=0), _item(40, 60, [], seed=1),
             _item(50, 50, [[2, 25, 25, 50, 50]], seed=2)]
    for mode in (0, 1, 2, 3, 4):
        images, targets = PPYoloECollateFN(random_resize_sizes=[96], random_resize_modes=[mode])(items)
        assert images.shape == (3, 3, 96, 96)
        for index, (image, _, _) in enumerate(items):
            hwc = image.permute(1, 2, 0).numpy()
            expected = cv2.resize(hwc, (96, 96), interpolation=mode).transpose(2, 0, 1)
            assert torch.allclose(images[index], torch.from_numpy(expected))
        # Oracle: cx, w scale by 96 / W and cy, h by 96 / H of each image; labels and batch indices stay.
        expected_targets = torch.tensor([[0, 3, 30 * 1.6, 20 * 2.4, 12 * 1.6, 8 * 2.4],
                                         [0, 1, 6 * 1.6, 35 * 2.4, 4 * 1.6, 10 * 2.4],
                                         [2, 2, 25 * 1.92, 25 * 1.92, 50 * 1.92, 50 * 1.92]])
        assert torch.allclose(targets, expected_targets, atol=1e-4)
    assert items[0][1][0, 1] == 30  # the dataset's arrays are not modified in place


def test_collate_draws_one_size_per_batch_from_the_list():
    collate = PPYoloECollateFN(random_resize_sizes=[32, 64, 96], random_resize_modes=["nearest", "area"])
    items = [_item(48, 48, [[0, 24, 24, 10, 10]], seed=i) for i in range(2)]
    random.seed(0)
    seen = {collate(items)[0].shape[-1] for _ in range(30)}
    assert seen == {32, 64, 96}
    plain = PPYoloECollateFN()(items)
    reference = DetectionCollateFN()(items)
    assert all(torch.equal(a, b) for a, b in zip(plain, reference, strict=True))


def test_crowd_collate_keeps_the_letterbox_record_right():
    """A box at original pixels maps to the same place through the rescaled ``scales`` / ``pads``."""
    crowd = np.array([[5, 20, 30, 8, 6]], dtype=np.float32)
    item = _item(64, 64, [[1, 32, 40, 16, 12]], crowd_targets=crowd, image_id=7, original_shape=(108, 128),
                 scale=0.5, pad=(0.0, 10.0))
    images, targets, extras = CrowdDetectionPPYoloECollateFN(random_resize_sizes=[160])([item])
    assert images.shape == (1, 3, 160, 160)
    assert torch.allclose(extras["crowd_targets"], torch.tensor([[0, 5, 50, 75, 20, 15.0]]))
    assert torch.allclose(extras["scales"], torch.tensor([1.25])) and torch.allclose(
        extras["pads"], torch.tensor([[0.0, 25.0]]))
    assert extras["image_ids"].tolist() == [7] and extras["original_shapes"].tolist() == [[108, 128]]
    # The box's centre in the original image: before, (32 - 0) / 0.5, (40 - 10) / 0.5; after, the same.
    before = np.array([(32 - 0) / 0.5, (40 - 10) / 0.5])
    after = (targets[0, 2:4] - extras["pads"][0]) / extras["scales"][0]
    assert np.allclose(after.numpy(), before)
    unchanged = CrowdDetectionPPYoloECollateFN()([item])
    reference = CrowdDetectionCollateFN()([item])
    assert all(torch.equal(unchanged[2][k], reference[2][k]) for k in reference[2])
    with pytest.raises(ValueError, match="square"):
        CrowdDetectionPPYoloECollateFN(random_resize_sizes=[64])([_item(32, 64, [], scale=1.0, pad=(0, 0))])


def test_collate_arguments_are_checked():
    with pytest.raises(RecipeError, match="random_resize_sizes"):
        PPYoloECollateFN(random_resize_sizes=640)
    with pytest.raises(RecipeError, match="random_resize_sizes"):
        PPYoloECollateFN(random_resize_sizes=[])
    with pytest.raises(RecipeError, match="interpolation"):
        PPYoloECollateFN(random_resize_sizes=[64], random_resize_modes=[7])


def test_recipe_training_loader_gives_multiscale_batches_of_real_images(tinycoco):
    from super_recipes import dataloaders

    cfg, _ = compose_recipe("coco2017_ppyoloe_s", [
        f"dataset_params.train_dataset_params.data_dir={tinycoco}",
        "dataset_params.train_dataset_params.input_dim=[160,160]",
        "dataset_params.train_dataloader_params.collate_fn.PPYoloECollateFN.random_resize_sizes=[96,128]",
        "batch_size=3", "num_workers=0"])
    loader = dataloaders.get(cfg.train_dataloader, dataset_params=cfg.dataset_params.train_dataset_params,
                             dataloader_params={**cfg.dataset_params.train_dataloader_params,
                                                "persistent_workers": False})
    random.seed(1)
    for step, (images, targets) in zip(range(4), loader, strict=False):
        side = images.shape[-1]
        assert images.shape[:2] == (3, 3) and images.shape[-2] == side and side in (96, 128)
        # Pixels / 255; cubic and Lanczos interpolation of float images may overshoot [0, 1] a little.
        assert images.min() >= -0.3 and images.max() <= 1.3 and images.std() > 0.05
        boxes = targets[:, 2:]
        assert (boxes[:, :2] >= 0).all() and (boxes[:, :2] <= side).all() and (boxes[:, 2:] > 0).all(), step


# A few real training images with a few large objects, and the optimiser steps that learn them within about a
# minute on two idle cores (ATSS assignment: the task-aligned one needs a trained model to align with).
OVERFIT_IMAGE_IDS = (403385, 331352, 153299, 143931)
OVERFIT_SIZE, OVERFIT_STEPS, OVERFIT_LR = 192, 40, 0.003


def _subset(root: Path, tinycoco: Path, image_ids: tuple[int, ...]) -> tuple[list, list, list]:
    """A COCO folder with the real JPEGs of ``image_ids`` and their real annotations."""
    (root / "annotations").mkdir(parents=True)
    (root / "images").symlink_to(tinycoco / "images")
    coco = json.loads((tinycoco / "annotations" / "instances_train2017.json").read_text())
    coco["images"] = [im for im in coco["images"] if im["id"] in image_ids]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in image_ids]
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(coco))
    return coco["images"], coco["annotations"], coco["categories"]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_ppyoloe_s_learns_real_images_and_predicts_them_in_their_own_pixels(tinycoco, tmp_path):
    """Overfit four tinycoco training images (no augmentation): mAP@0.50 >= 0.8 on them; then ``predict()`` on
    the JPEG files finds each annotated object (COCO's boxes, original pixels) with IoU >= 0.5."""
    from super_recipes import Trainer, dataloaders, models

    images, annotations, categories = _subset(tmp_path / "coco", tinycoco, OVERFIT_IMAGE_IDS)
    size = [OVERFIT_SIZE, OVERFIT_SIZE]
    data = {"data_dir": str(tmp_path / "coco"), "subdir": "images/train2017", "json_file": "instances_train2017.json",
            "input_dim": size, "with_crowd": False,
            "transforms": [{"DetectionPaddedRescale": {"input_dim": size}}, "DetectionStandardize",
                           {"DetectionTargetsFormatTransform": {"output_format": "LABEL_CXCYWH"}}]}
    loader_params = {"batch_size": len(OVERFIT_IMAGE_IDS), "num_workers": 0, "persistent_workers": False,
                     "shuffle": False, "drop_last": False}
    train = dataloaders.get("coco2017_train", dataset_params=data,
                            dataloader_params={**loader_params, "collate_fn": "PPYoloECollateFN"})
    valid = dataloaders.get("coco2017_val", dataset_params={**data, "with_crowd": True},
                            dataloader_params={**loader_params, "collate_fn": "CrowdDetectionPPYoloECollateFN"})
    torch.manual_seed(0)
    model = models.get("ppyoloe_s", num_classes=80)
    for module in model.modules():
        # One batch of four images: the default BN momentum (0.1) would leave the running statistics, which
        # validation uses, far from these images' within 40 steps.
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.3
    record = Trainer("overfit", tmp_path, device="cpu").train(model=model, training_params={
        "max_epochs": OVERFIT_STEPS, "initial_lr": OVERFIT_LR, "optimizer": "Adam",
        "warmup_mode": "LinearBatchLRWarmup", "lr_warmup_steps": 5, "lr_mode": "cosine",
        "cosine_final_lr_ratio": 0.1, "loss": {"PPYoloELoss": {"num_classes": 80, "use_static_assigner": True}},
        "valid_metrics_list": [{"DetectionMetrics_050": {"num_cls": 80, "post_prediction_callback": {
            "PPYoloEPostPredictionCallback": {"score_threshold": 0.01, "nms_threshold": 0.7}}}}],
        "metric_to_watch": "mAP@0.50", "run_validation_freq": OVERFIT_STEPS, "save_model": False,
        "silent_mode": True,
    }, train_loader=train, valid_loader=valid)
    assert record["valid/mAP@0.50"] >= 0.8, record

    label_of = {c["id"]: i for i, c in enumerate(sorted(categories, key=lambda c: c["id"]))}
    model.set_dataset_processing_params(input_dim=size)
    files = {im["id"]: tinycoco / "images" / "train2017" / im["file_name"] for im in images}
    predictions = model.predict([str(files[i]) for i in OVERFIT_IMAGE_IDS], conf=0.1)
    found = 0
    for image_id, prediction in zip(OVERFIT_IMAGE_IDS, predictions, strict=True):
        assert prediction.image.shape[:2] == cv2.imread(str(files[image_id])).shape[:2]
        for annotation in (a for a in annotations if a["image_id"] == image_id):
            x, y, w, h = annotation["bbox"]
            truth = np.array([x, y, x + w, y + h])
            same_class = prediction.labels == label_of[annotation["category_id"]]
            found += any(_iou(box, truth) >= 0.5 for box in prediction.boxes[same_class])
    assert found >= len(annotations) - 1, (found, len(annotations))
