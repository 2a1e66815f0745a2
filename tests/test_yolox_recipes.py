"""The YOLOX recipes: ``coco2017_yolox`` carries the published setup and runs on real COCO images (tinycoco, laid
out as COCO 2017, pointed at exactly as a user points the recipe at their copy of COCO); a YOLOX-n learns the
objects of one real image; ``shapes_yolox`` composes and trains a step."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from super_recipes.config.compose import compose_recipe
from super_recipes.paths import recipes_dir
from super_recipes.train_from_recipe import run_recipe

REPO_ROOT = Path(__file__).resolve().parents[1]
TINYCOCO = Path(os.environ.get("TINYCOCO_DIR", REPO_ROOT.parent / "shared/data/tinycoco"))


@pytest.fixture(scope="module")
def tinycoco() -> Path:
    if not (TINYCOCO / "annotations" / "instances_train2017.json").is_file():
        pytest.skip(f"the real COCO subset is not at {TINYCOCO} (set TINYCOCO_DIR)")
    return TINYCOCO


def coco_data_overrides(data_dir: Path) -> list[str]:
    """What a user passes to train ``coco2017_yolox`` on a COCO 2017 copy at ``data_dir``."""
    return [f"dataset_params.train_dataset_params.data_dir={data_dir}",
            f"dataset_params.val_dataset_params.data_dir={data_dir}"]


# A short run of a 300-epoch recipe: no warmup/cooldown (they need more epochs than one), no worker processes.
SHORT_RUN = ["epochs=1", "training_hyperparams.lr_warmup_epochs=0", "training_hyperparams.lr_cooldown_epochs=0",
             "num_workers=0"]
# One image, no augmentation: enough optimizer steps at a rate that converges within about a minute on 2 cores.
OVERFIT_STEPS, OVERFIT_LR = 100, 0.002


def test_coco2017_yolox_carries_the_published_setup():
    cfg, _ = compose_recipe("coco2017_yolox")
    hp = cfg.training_hyperparams
    assert (hp.max_epochs, hp.initial_lr, hp.optimizer, hp.lr_mode, hp.cosine_final_lr_ratio) == (
        300, 0.02, "SGD", "cosine", 0.05)
    assert dict(hp.optimizer_params) == {"momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}
    assert hp.zero_weight_decay_on_bias_and_bn and hp.mixed_precision
    assert (hp.lr_warmup_epochs, hp.lr_cooldown_epochs) == (5, 15)
    assert hp.ema and hp.ema_params.decay == 0.9999 and hp.ema_params.decay_type == "exp"
    assert hp.loss == "YoloXFastDetectionLoss" and hp.metric_to_watch == "mAP@0.50:0.95"
    (metric,) = hp.valid_metrics_list
    post = metric.DetectionMetrics_050_095.post_prediction_callback
    assert post._target_.endswith("YoloXPostPredictionCallback") and (post.conf, post.iou) == (0.01, 0.65)
    assert list(hp.phase_callbacks) == [{"YoloXTrainingStageSwitchCallback": {"next_stage_start_epoch": 285}}]
    assert cfg.architecture == "yolox_s" and cfg.arch_params.num_classes == 80
    assert (cfg.train_dataloader, cfg.val_dataloader) == ("coco2017_train_yolox", "coco2017_val_yolox")
    assert cfg.dataset_params.train_dataloader_params.batch_size == 16
    assert list(cfg.dataset_params.train_dataset_params.input_dim) == [640, 640]
    header = (recipes_dir() / "coco2017_yolox.yaml").read_text()
    for published in ("26.77", "37.18", "40.47", "46.40", "49.25"):
        assert published in header
    for name in ("yolox_n", "yolox_t", "yolox_m", "yolox_l", "yolox_x"):
        assert compose_recipe("coco2017_yolox", [f"architecture={name}"])[0].architecture == name


def test_coco2017_yolox_trains_and_validates_on_real_coco_images(tinycoco, tmp_path):
    cfg, source = compose_recipe("coco2017_yolox", [
        *coco_data_overrides(tinycoco), *SHORT_RUN, "architecture=yolox_n",
        "dataset_params.train_dataset_params.input_dim=[160,160]",
        "dataset_params.val_dataset_params.input_dim=[160,160]",
        "batch_size=2", "val_batch_size=2", "training_hyperparams.max_train_batches=2",
        "training_hyperparams.max_valid_batches=2", "training_hyperparams.mixed_precision=false",
        "training_hyperparams.silent_mode=true", "device=cpu", f"ckpt_root_dir={tmp_path / 'ckpt'}"])
    # The 160 px input reaches every transform through the recipe's interpolations.
    mosaic = cfg.dataset_params.train_dataset_params.transforms[0].DetectionMosaic
    assert list(mosaic.input_dim) == [160, 160]
    record = run_recipe(cfg, source)
    for key in ("train/iou", "train/obj", "train/cls", "train/total", "valid/mAP@0.50:0.95"):
        assert key in record and math.isfinite(record[key]), key
    assert not any(TINYCOCO.rglob("*.pth")) and (tmp_path / "ckpt" / "coco2017_yolox" / "ckpt_latest.pth").is_file()


def test_yolox_n_learns_the_objects_of_one_real_image(tinycoco, tmp_path):
    """Overfit one tinycoco training image (no augmentation) and detect its objects: mAP@0.50 >= 0.8 on it."""
    from super_recipes import Trainer, dataloaders, models

    size = [256, 256]
    image = {"data_dir": str(tinycoco), "subdir": "images/train2017", "json_file": "instances_train2017.json",
             "max_num_samples": 1, "input_dim": size, "with_crowd": False,
             "transforms": [{"DetectionPaddedRescale": {"input_dim": size}}, "DetectionStandardize",
                            {"DetectionTargetsFormatTransform": {"output_format": "LABEL_CXCYWH"}}]}
    loader_params = {"batch_size": 1, "num_workers": 0, "persistent_workers": False, "shuffle": False,
                     "drop_last": False}
    train = dataloaders.get("coco2017_train", dataset_params=image, dataloader_params=loader_params)
    valid = dataloaders.get("coco2017_val", dataset_params={**image, "with_crowd": True},
                            dataloader_params=loader_params)
    model = models.get("yolox_n", num_classes=80)
    for module in model.modules():
        # Batches of one image: YOLOX's BN momentum (0.03) would leave the running statistics, which validation
        # uses, far from that image's within 100 steps; 0.3 lets them reach it.
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.3
    steps = OVERFIT_STEPS
    record = Trainer("overfit", tmp_path, device="cpu").train(model=model, training_params={
        "max_epochs": steps, "initial_lr": OVERFIT_LR, "optimizer": "Adam", "warmup_mode": "LinearBatchLRWarmup",
        "lr_warmup_steps": 10, "lr_mode": "cosine", "cosine_final_lr_ratio": 0.1,
        "loss": {"YoloXFastDetectionLoss": {"strides": [8, 16, 32], "num_classes": 80, "use_l1": False}},
        "loss_logging_items_names": ["iou", "obj", "cls", "l1", "num_fg", "total"],
        "valid_metrics_list": [{"DetectionMetrics_050": {
            "num_cls": 80, "post_prediction_callback": {
                "_target_": "super_recipes.detection.yolox.postprocess.YoloXPostPredictionCallback",
                "conf": 0.01, "iou": 0.6}}}],
        "metric_to_watch": "mAP@0.50", "run_validation_freq": steps, "save_model": False, "silent_mode": True,
    }, train_loader=train, valid_loader=valid)
    assert record["valid/mAP@0.50"] >= 0.8, record


def test_shapes_yolox_composes_and_trains_a_step(tmp_path):
    cfg, source = compose_recipe("shapes_yolox", [
        "epochs=1", "training_hyperparams.max_train_batches=1", "training_hyperparams.max_valid_batches=1",
        "training_hyperparams.lr_warmup_steps=1", "batch_size=4", "val_batch_size=4", "num_workers=0",
        f"dataset_params.train_dataset_params.data_dir={tmp_path / 'shapes'}",
        f"dataset_params.val_dataset_params.data_dir={tmp_path / 'shapes'}",
        "dataset_params.train_dataset_params.num_images=16", "dataset_params.val_dataset_params.num_images=8",
        "training_hyperparams.silent_mode=true", "device=cpu", f"ckpt_root_dir={tmp_path / 'ckpt'}"])
    assert cfg.architecture == "yolox_n" and cfg.training_hyperparams.metric_to_watch == "mAP@0.50"
    record = run_recipe(cfg, source)
    assert "valid/mAP@0.50" in record and math.isfinite(record["train/total"])
