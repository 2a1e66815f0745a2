"""YOLO-NAS (``yolo_nas_s/m/l``): outputs in every mode, published parameter counts, QARepVGG fusion, the recipes'
published setups, and a YOLO-NAS S that learns the objects of real tinycoco images and finds them with predict()."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from super_recipes import models
from super_recipes.config.compose import compose_recipe
from super_recipes.detection.ppyoloe.postprocess import PPYoloEPostPredictionCallback
from super_recipes.detection.yolo_nas.blocks import QARepVGGBlock
from super_recipes.detection.yolo_nas.model import (
    YoloNAS,
    count_parameters,
    qarepvgg_placeholder_parameters,
    yolo_nas_parts,
)
from super_recipes.errors import RecipeError
from super_recipes.paths import recipes_dir
from super_recipes.registry import DETECTION_MODULES

REPO_ROOT = Path(__file__).resolve().parents[1]
TINYCOCO = Path(os.environ.get("TINYCOCO_DIR", REPO_ROOT.parent / "shared/data/tinycoco"))
REG_MAX = 16


def _anchors(height: int, width: int) -> int:
    return sum((height // s) * (width // s) for s in (8, 16, 32))


def _randomize_batch_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so that fusing them is actually exercised."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)


@pytest.fixture(scope="module")
def small_model() -> YoloNAS:
    torch.manual_seed(0)
    return models.get("yolo_nas_s", num_classes=5)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_outputs_in_train_eval_and_tracing_modes(small_model):
    model, x = small_model, torch.rand(2, 3, 64, 96)
    anchors = _anchors(64, 96)
    model.train()
    cls, reg, anchor_boxes, points, counts, strides = model(x)
    assert cls.shape == (2, anchors, 5) and reg.shape == (2, anchors, 4 * (REG_MAX + 1))
    assert ((cls >= 0) & (cls <= 1)).all()  # sigmoid probabilities (contract), started at the 0.01 prior
    assert abs(cls.mean().item() - 0.01) < 0.01
    assert anchor_boxes.shape == (anchors, 4) and points.shape == (anchors, 2) and strides.shape == (anchors, 1)
    assert counts == [8 * 12, 4 * 6, 2 * 3]
    assert torch.equal(strides[:, 0].unique(), torch.tensor([8.0, 16.0, 32.0]))

    model.eval()
    with torch.no_grad():
        (boxes, scores), raw = model(x)
        assert boxes.shape == (2, anchors, 4) and scores.shape == (2, anchors, 5) and len(raw) == 6
        # Every box contains its own anchor point (distances are >= 0).
        assert (boxes[..., :2] <= raw[3]).all() and (boxes[..., 2:] >= raw[3]).all()
        traced = torch.jit.trace(model, x, check_trace=False)
        exported = torch.export.export(model, (x,)).module()
        for outputs in (traced(x), exported(x)):
            assert isinstance(outputs, tuple) and len(outputs) == 2
            torch.testing.assert_close(outputs[0], boxes)
            torch.testing.assert_close(outputs[1], scores)


def test_post_prediction_callback_is_ppyoloe(small_model):
    callback = small_model.get_post_prediction_callback(conf=0.0, iou=0.5, max_predictions=7)
    assert isinstance(callback, PPYoloEPostPredictionCallback)
    small_model.eval()
    with torch.no_grad():
        results = callback(small_model(torch.rand(2, 3, 64, 64)))
    assert len(results) == 2 and all(r.shape[1] == 6 and 0 < len(r) <= 7 for r in results)


# Published counts (sources in super_recipes/detection/yolo_nas/model.py): SuperGradients counts its training-form
# modules, which register an unused 3x3 ``rbr_reparam`` convolution per QARepVGG block before fusing; we add those in.
# 80 classes: LW-DETR (arXiv:2406.03459) Table 3, 19.0M / 51.1M / 66.9M. 5 classes: SuperGradients' QAT notebook,
# YoloNAS_S 19.02M, and 12.15M after its conversion (fused).
@pytest.mark.parametrize("name, classes, published_sg, published_fused", [
    ("yolo_nas_s", 80, 19.0e6, None),
    ("yolo_nas_m", 80, 51.1e6, None),
    ("yolo_nas_l", 80, 66.9e6, None),
    ("yolo_nas_s", 5, 19.02e6, 12.15e6),
])
def test_parameter_counts_match_the_published_ones(name, classes, published_sg, published_fused):
    with torch.device("meta"):
        model = models.get(name, num_classes=classes)
    training_form = count_parameters(model)
    sg_form = training_form + qarepvgg_placeholder_parameters(model)
    assert abs(sg_form - published_sg) / published_sg < 0.01, (name, training_form, sg_form)
    model.prep_model_for_conversion()
    assert qarepvgg_placeholder_parameters(model) == 0
    fused = count_parameters(model)
    assert fused < training_form
    if published_fused is not None:
        assert abs(fused - published_fused) / published_fused < 0.01, (name, fused)


@pytest.mark.parametrize("stride, residual, alpha", [(1, True, False), (1, True, True), (2, False, False),
                                                     (1, False, True)])
def test_qarepvgg_block_fuses_exactly(stride, residual, alpha):
    torch.manual_seed(1)
    block = QARepVGGBlock(6, 6 if residual else 8, stride=stride, use_residual_connection=residual, use_alpha=alpha)
    _randomize_batch_norms(block)
    if alpha:
        block.alpha.data.fill_(0.7)
    block = block.double().eval()
    x = torch.randn(2, 6, 9, 11, dtype=torch.float64)
    expected = block(x)
    block.fuse_branches()
    assert block.fused and not hasattr(block, "branch_3x3") and not hasattr(block, "post_bn")
    assert [name for name, _ in block.named_parameters()] == ["rbr_reparam.weight", "rbr_reparam.bias"]
    torch.testing.assert_close(block(x), expected, rtol=1e-10, atol=1e-10)


def test_identity_branch_needs_stride_1_and_equal_widths():
    with pytest.raises(ValueError, match="identity branch"):
        QARepVGGBlock(4, 8, use_residual_connection=True)


def test_fused_model_gives_the_same_outputs(small_model):
    model = models.get("yolo_nas_s", num_classes=5)
    model.load_state_dict(small_model.state_dict())
    with torch.no_grad():
        _randomize_batch_norms(model, seed=3)
    model.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        (boxes, scores), _ = model(x)
        model.prep_model_for_conversion()
        (fused_boxes, fused_scores), _ = model(x)
    blocks = [m for m in model.modules() if isinstance(m, QARepVGGBlock)]
    assert len(blocks) == 1 + 4 + 2 * (2 + 3 + 5 + 2) + 2 * (2 + 2) and all(b.fused for b in blocks)
    torch.testing.assert_close(fused_scores, scores, rtol=1e-4, atol=1e-4)
    # Boxes are in pixels (up to ~100 here): 1e-4 of their scale.
    torch.testing.assert_close(fused_boxes, boxes, rtol=1e-4, atol=1e-4 * float(boxes.abs().max()))


def test_parts_are_registered_and_assemble_a_customizable_detector():
    for name in ("YoloNASBackbone", "YoloNASPANNeckWithC2", "NDFLHeads"):
        assert DETECTION_MODULES.get(name) is not None
    parts = yolo_nas_parts("yolo_nas_s")
    model = models.get("CustomizableDetector", arch_params={**parts, "num_classes": 3, "bn_eps": 1e-3,
                                                            "bn_momentum": 0.03})
    assert count_parameters(model) == count_parameters(models.get("yolo_nas_s", num_classes=3))
    assert model.backbone.out_channels == [96, 192, 384, 768] and model.neck.out_channels == [96, 192, 384]
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert (bn.eps, bn.momentum) == (1e-3, 0.03)


def test_bad_part_arguments_raise_recipe_errors():
    parts = yolo_nas_parts("yolo_nas_s")
    backbone = parts["backbone"]["YoloNASBackbone"]
    with pytest.raises(RecipeError, match="expected 4 stages"):
        models.get("CustomizableDetector", arch_params={**parts, "num_classes": 3, "backbone": {
            "YoloNASBackbone": {**backbone, "stages": backbone["stages"][:3]}}})
    heads = parts["heads"]["NDFLHeads"]
    with pytest.raises(RecipeError, match="unknown key"):
        models.get("CustomizableDetector", arch_params={**parts, "num_classes": 3, "heads": {"NDFLHeads": {
            **heads, "heads_list": [{**h, "groups": 2} for h in heads["heads_list"]]}}})


@pytest.mark.parametrize("size, published", [("s", "47.5"), ("m", "51.55"), ("l", "52.22")])
def test_coco_recipes_carry_the_published_setup(size, published):
    name = f"coco2017_yolo_nas_{size}"
    cfg, _ = compose_recipe(name)
    hp = cfg.training_hyperparams
    assert cfg.architecture == f"yolo_nas_{size}" and cfg.arch_params.num_classes == 80
    assert (cfg.arch_params.bn_eps, cfg.arch_params.bn_momentum, cfg.arch_params.reg_max) == (1e-3, 0.03, 16)
    assert (hp.max_epochs, hp.initial_lr, hp.optimizer, dict(hp.optimizer_params)) == (
        300, 2e-4, "AdamW", {"weight_decay": 1e-5})
    assert hp.zero_weight_decay_on_bias_and_bn and hp.mixed_precision and hp.sync_bn
    assert (hp.warmup_mode, hp.lr_warmup_steps, hp.warmup_initial_lr) == ("LinearBatchLRWarmup", 1000, 1e-6)
    assert (hp.lr_mode, hp.cosine_final_lr_ratio) == ("cosine", 0.1)
    assert hp.ema and (hp.ema_params.decay, hp.ema_params.decay_type) == (0.9997, "threshold")
    assert hp.loss == "PPYoloELoss" and not hp.criterion_params.use_static_assigner
    assert (hp.criterion_params.num_classes, hp.criterion_params.reg_max) == (80, 16)
    (metric,) = hp.valid_metrics_list
    post = metric.DetectionMetrics.post_prediction_callback
    assert post._target_.endswith("PPYoloEPostPredictionCallback")
    assert (post.score_threshold, post.nms_threshold, post.nms_top_k, post.max_predictions) == (0.01, 0.7, 1000, 300)
    assert hp.metric_to_watch == "mAP@0.50:0.95" and not hp.get("phase_callbacks")
    data = cfg.dataset_params
    assert (cfg.train_dataloader, cfg.val_dataloader) == ("coco2017_train", "coco2017_val")
    assert data.train_dataloader_params.batch_size == 32 and data.val_dataloader_params.batch_size == 25
    assert data.train_dataloader_params.collate_fn == "DetectionCollateFN"
    transforms = [next(iter(t)) if not isinstance(t, str) else t for t in data.train_dataset_params.transforms]
    assert transforms[:4] == ["DetectionRandomAffine", "DetectionHSV", "DetectionHorizontalFlip", "DetectionMixup"]
    assert list(data.train_dataset_params.input_dim) == [640, 640]
    header = (recipes_dir() / f"{name}.yaml").read_text()
    assert published in header and "8 GPUs" in header


def test_shapes_recipe_composes():
    cfg, _ = compose_recipe("shapes_yolo_nas_s")
    hp = cfg.training_hyperparams
    assert cfg.architecture == "yolo_nas_s" and cfg.arch_params.num_classes == 4
    assert hp.loss == "PPYoloELoss" and hp.metric_to_watch == "mAP@0.50"
    assert list(cfg.dataset_params.train_dataset_params.input_dim) == [96, 96]


# ---- learning real objects ---------------------------------------------------------------------------------------
# Two real tinycoco training images (a bathroom each: toilet and sink, 4 objects) whose objects stay at least ~20 px
# wide at 160 px input; the first images in the file hold a dozen objects each, most a few pixels wide at that size.
OVERFIT_IMAGE_IDS, OVERFIT_SIZE, OVERFIT_STEPS = (403385, 331352), [160, 160], 60
OVERFIT_IMAGES = len(OVERFIT_IMAGE_IDS)


def _write_subset(folder: Path) -> Path:
    """A COCO-layout folder holding the chosen images (linked) and their annotations, as a user's own subset."""
    annotations = json.loads((TINYCOCO / "annotations" / "instances_train2017.json").read_text())
    keep = set(OVERFIT_IMAGE_IDS)
    subset = {**annotations, "images": [i for i in annotations["images"] if i["id"] in keep],
              "annotations": [a for a in annotations["annotations"] if a["image_id"] in keep]}
    (folder / "annotations").mkdir(parents=True)
    (folder / "annotations" / "instances_train2017.json").write_text(json.dumps(subset))
    (folder / "images").symlink_to(TINYCOCO / "images", target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def overfit_model(tmp_path_factory):
    """YOLO-NAS S trained on the first tinycoco training images (no augmentation) and validated on them."""
    if not (TINYCOCO / "annotations" / "instances_train2017.json").is_file():
        pytest.skip(f"the real COCO subset is not at {TINYCOCO} (set TINYCOCO_DIR)")
    from super_recipes import Trainer, dataloaders

    data_dir = _write_subset(tmp_path_factory.mktemp("tinycoco_subset"))
    images = {"data_dir": str(data_dir), "subdir": "images/train2017", "json_file": "instances_train2017.json",
              "max_num_samples": OVERFIT_IMAGES, "input_dim": OVERFIT_SIZE, "with_crowd": False,
              "transforms": [{"DetectionPaddedRescale": {"input_dim": OVERFIT_SIZE}}, "DetectionStandardize",
                             {"DetectionTargetsFormatTransform": {"output_format": "LABEL_CXCYWH"}}]}
    loader_params = {"batch_size": OVERFIT_IMAGES, "num_workers": 0, "persistent_workers": False,
                     "shuffle": False, "drop_last": False}
    train = dataloaders.get("coco2017_train", dataset_params=images, dataloader_params=loader_params)
    valid = dataloaders.get("coco2017_val", dataset_params={**images, "with_crowd": True},
                            dataloader_params=loader_params)
    torch.manual_seed(0)
    model = models.get("yolo_nas_s", num_classes=80)
    for module in model.modules():
        # One fixed batch: the published BN momentum (0.03) would leave the running statistics validation uses far
        # from that batch's within these few steps; 0.3 lets them reach it.
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.3
    record = Trainer("overfit", tmp_path_factory.mktemp("yolo_nas"), device="cpu").train(model=model, training_params={
        "max_epochs": OVERFIT_STEPS, "initial_lr": 2e-3, "optimizer": "AdamW", "warmup_mode": "LinearBatchLRWarmup",
        "lr_warmup_steps": 5, "lr_mode": "cosine", "cosine_final_lr_ratio": 0.1,
        "loss": {"PPYoloELoss": {"num_classes": 80, "reg_max": REG_MAX, "use_static_assigner": True}},
        "valid_metrics_list": [{"DetectionMetrics_050": {
            "num_cls": 80, "post_prediction_callback": {"PPYoloEPostPredictionCallback": {
                "score_threshold": 0.01, "nms_threshold": 0.7}}}}],
        "metric_to_watch": "mAP@0.50", "run_validation_freq": OVERFIT_STEPS, "save_model": False,
        "silent_mode": True,
    }, train_loader=train, valid_loader=valid)
    model.set_dataset_processing_params(input_dim=OVERFIT_SIZE, standardize=True)
    return model, record, train.dataset


def test_yolo_nas_s_learns_the_objects_of_real_images(overfit_model):
    _, record, _ = overfit_model
    assert record["valid/mAP@0.50"] >= 0.8, record["valid/mAP@0.50"]


def test_predict_finds_the_learned_objects_in_the_jpegs(overfit_model):
    model, _, dataset = overfit_model
    annotations = json.loads((TINYCOCO / "annotations" / "instances_train2017.json").read_text())
    files = {image["id"]: image["file_name"] for image in annotations["images"]}
    ids = [int(dataset[i][2]["image_id"]) for i in range(OVERFIT_IMAGES)]  # the images the model learned
    paths = [TINYCOCO / "images" / "train2017" / files[i] for i in ids]
    predictions = model.predict([str(p) for p in paths], conf=0.05)
    assert len(predictions) == len(paths)
    for path, image_id, prediction in zip(paths, ids, predictions, strict=True):
        truth = torch.tensor([a["bbox"] for a in annotations["annotations"]
                              if a["image_id"] == image_id and not a.get("iscrowd")])
        truth[:, 2:] += truth[:, :2]  # xywh -> xyxy, original pixels
        assert len(prediction.boxes) >= 1, path.name
        h, w = prediction.image.shape[:2]
        assert (prediction.boxes[:, 2] <= w).all() and (prediction.boxes[:, 3] <= h).all()
        # The most confident detection lies on a ground-truth object (IoU >= 0.5), in original-image pixels.
        best = torch.from_numpy(prediction.boxes[prediction.scores.argmax()])
        lt = torch.maximum(best[:2], truth[:, :2])
        rb = torch.minimum(best[2:], truth[:, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=1)
        union = (best[2:] - best[:2]).prod() + (truth[:, 2:] - truth[:, :2]).prod(dim=1) - inter
        assert (inter / union).max() >= 0.5, path.name
