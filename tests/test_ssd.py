"""Tests for SSD-Lite MobileNetV2 (``architecture: ssd_lite_mobilenet_v2``): outputs in every mode, parameter counts
of both layouts (the MobileNetV2 paper's SSDLite, the default, and SuperGradients' arch_params), default boxes of
both, ``predict()`` on real JPEGs and an overfit run on real tinycoco images (the loss and post-processing:
tests/test_ssd_loss.py)."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from super_recipes import models
from super_recipes.config.compose import compose_recipe
from super_recipes.detection.customizable import CustomizableDetector
from super_recipes.detection.ssd.anchors import SSD_LITE_TF_320_ANCHORS, DefaultBoxes, decode_boxes
from super_recipes.detection.ssd.loss import SSDLoss
from super_recipes.detection.ssd.model import SSDLiteMobileNetV2
from super_recipes.detection.ssd.postprocess import SSDPostPredictCallback
from super_recipes.errors import RecipeError
from super_recipes.paths import recipes_dir
from super_recipes.registry import DETECTION_MODULES, LOSSES, MODELS, PROCESSING

REPO_ROOT = Path(__file__).resolve().parents[1]
TINYCOCO = Path(os.environ.get("TINYCOCO_DIR", REPO_ROOT.parent / "shared/data/tinycoco"))
NUM_CLASSES = 80
# Grids of 20, 10, 5, 3, 2, 1 at 320x320; 10, 5, 3, 2, 1, 1 at 160x160. The paper's layout (the default) has 3 boxes
# per cell on the first level and 6 on the others; SuperGradients' has 6 everywhere.
BOXES_320 = 3 * 400 + 6 * (100 + 25 + 9 + 4 + 1)
BOXES_160 = 3 * 100 + 6 * (25 + 9 + 4 + 1 + 1)
SG_BOXES_320 = 6 * (400 + 100 + 25 + 9 + 4 + 1)
SG_BOXES_160 = 6 * (100 + 25 + 9 + 4 + 1 + 1)
PAPER_PARAMS = 4.3e6  # Sandler et al. 2018 (MobileNetV2), Table 6, SSDLite
SG_ARCH_PARAMS = REPO_ROOT / "recipes" / "arch_params" / "ssd_lite_mobilenetv2_arch_params.yaml"


@pytest.fixture(autouse=True, scope="module")
def _two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> SSDLiteMobileNetV2:
    torch.manual_seed(0)
    return models.get("ssd_lite_mobilenet_v2", num_classes=NUM_CLASSES)


def _sg_model(num_classes: int = NUM_CLASSES) -> SSDLiteMobileNetV2:
    """SuperGradients' layout, from the recipe's arch_params file as a recipe would build it."""
    arch_params = OmegaConf.load(SG_ARCH_PARAMS)
    arch_params.num_classes = num_classes
    return models.get("ssd_lite_mobilenet_v2", arch_params=arch_params)


@pytest.fixture(scope="module")
def sg_model() -> SSDLiteMobileNetV2:
    torch.manual_seed(0)
    return _sg_model()


def _inverted_residual(inp: int, out: int, expansion: float) -> int:
    """Parameters of a MobileNetV2 block: [1x1 expand + BN], depthwise 3x3 + BN, 1x1 project + BN (no biases)."""
    hidden = round(inp * expansion)
    expand = inp * hidden + 2 * hidden if expansion != 1 else 0
    return expand + hidden * 9 + 2 * hidden + hidden * out + 2 * out


def _mobilenet_v2_features_params() -> int:
    """MobileNetV2's feature layers, from the paper's block table (t, c, n, s), up to the 1280-channel conv."""
    total = 3 * 32 * 9 + 2 * 32  # stem 3x3 conv + BN
    channels = 32
    for t, c, n, _ in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)]:
        for _ in range(n):
            total += _inverted_residual(channels, c, t)
            channels = c
    return total + 320 * 1280 + 2 * 1280  # last 1x1 conv + BN


def _paper_ssd_lite_params(num_classes: int) -> int:
    """The MobileNetV2 paper's SSDLite as the TF Object Detection API builds it, counted layer by layer: extra
    layers of depth d = 512, 256, 256, 128 as 1x1 conv to d/2 + BN, depthwise 3x3 + BN, 1x1 to d + BN (no biases);
    per level a box and a class predictor, each depthwise 3x3 + BN (no bias) then 1x1 with bias; 3 boxes per cell
    on the first level, 6 on the others."""
    total = _mobilenet_v2_features_params()
    previous = 1280
    for depth in (512, 256, 256, 128):
        half = depth // 2
        total += previous * half + 2 * half + half * 9 + 2 * half + half * depth + 2 * depth
        previous = depth
    for c, boxes in zip((576, 1280, 512, 256, 256, 128), (3, 6, 6, 6, 6, 6), strict=True):
        for out in (boxes * 4, boxes * (num_classes + 1)):
            total += c * 9 + 2 * c + c * out + out
    return total


def _published_ssd_lite_params(num_classes: int) -> int:
    """SuperGradients' ssd_lite_mobilenetv2_arch_params, counted layer by layer from the MobileNetV2 paper's block
    table (t, c, n, s) and the SSDLite head's description."""
    total = _mobilenet_v2_features_params()
    previous = 1280
    for out, expansion in [(512, 0.2), (256, 0.25), (256, 0.5), (64, 0.25)]:
        total += _inverted_residual(previous, out, expansion)
        previous = out
    maps = [576, 1280, 512, 256, 256, 64]
    for level, c in enumerate(maps):
        for out in (6 * 4, 6 * (num_classes + 1)):
            if level < len(maps) - 1:  # depthwise 3x3 (+bias) + BN, then 1x1 (+bias)
                total += c * 9 + c + 2 * c + c * out + out
            else:  # a plain 3x3 conv on the 1x1 map
                total += c * 9 * out + out
    return total


def test_registered_under_both_names_and_as_parts() -> None:
    assert MODELS.get("ssd_lite_mobilenet_v2") is MODELS.get("SSDLiteMobileNetV2") is SSDLiteMobileNetV2
    for name in ("SSDLiteMobileNetV2Backbone", "MobileNetV2Backbone", "SSDInvertedResidualNeck", "SSDHead",
                 "DefaultBoxes"):
        assert name in DETECTION_MODULES
    assert LOSSES.get("SSDLoss") is SSDLoss and PROCESSING.get("SSDPostPredictCallback") is SSDPostPredictCallback


def test_default_parameter_count_is_the_papers_ssdlite(model) -> None:
    """The default is the MobileNetV2 paper's SSDLite: 4.3M parameters (Table 6), here to 1%."""
    count = sum(p.numel() for p in model.parameters())
    assert count == _paper_ssd_lite_params(NUM_CLASSES) == 4_337_013
    assert abs(count / PAPER_PARAMS - 1) < 0.01
    # Only the class predictors depend on the classes: boxes x (1x1 input channels + bias) per class and map.
    with torch.device("meta"):
        ninety = models.get("ssd_lite_mobilenet_v2", num_classes=90)
    per_class = 3 * (576 + 1) + 6 * sum(c + 1 for c in (1280, 512, 256, 256, 128))
    assert sum(p.numel() for p in ninety.parameters()) - count == 10 * per_class


def test_sg_arch_params_parameter_count_is_supergradients_layout() -> None:
    with torch.device("meta"):
        sg, ninety = _sg_model(), _sg_model(90)
    count = sum(p.numel() for p in sg.parameters())
    assert count == _published_ssd_lite_params(NUM_CLASSES) == 4_711_348
    assert sg.heads.num_anchors == [6] * 6
    # Only the class predictors depend on the classes: 6 boxes x (1x1 input channels + bias) per class and map.
    per_class = 6 * sum(c + 1 for c in (576, 1280, 512, 256, 256)) + 6 * (64 * 9 + 1)
    assert sum(p.numel() for p in ninety.parameters()) - count == 10 * per_class


def test_outputs_in_train_eval_trace_and_export(model) -> None:
    x = torch.rand(2, 3, 160, 160)
    model.train()
    locations, confidences, dboxes = model(x)
    assert locations.shape == (2, 4, BOXES_160) and confidences.shape == (2, NUM_CLASSES + 1, BOXES_160)
    assert dboxes.shape == (BOXES_160, 4)
    model.eval()
    with torch.no_grad():
        decoded, raw = model(x)
        assert decoded.shape == (2, BOXES_160, 5 + NUM_CLASSES) and len(raw) == 3
        assert raw[0].shape == locations.shape and raw[1].shape == confidences.shape
        # Probabilities over background + classes: the classes' share is below 1, the best one is column 4.
        assert torch.all(decoded[..., 5:].sum(-1) < 1) and torch.equal(decoded[..., 4], decoded[..., 5:].amax(-1))
        # The boxes are the raw offsets decoded against the default boxes.
        expected = decode_boxes(raw[0].transpose(1, 2), raw[2])
        torch.testing.assert_close(decoded[..., :4], expected)
        with warnings.catch_warnings():
            # Tracing bakes in the default boxes of this input size (documented), which is what it warns about.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace is deprecated in favour of export
            traced = torch.jit.trace(model, x, check_trace=False)
        out = traced(x)
        assert isinstance(out, torch.Tensor)
        torch.testing.assert_close(out, decoded, atol=1e-4, rtol=1e-4)
        exported = torch.export.export(model, (x,))
        out = exported.module()(x)
        assert isinstance(out, torch.Tensor)
        torch.testing.assert_close(out, decoded, atol=1e-4, rtol=1e-4)
        # The paper's extra layers end with BN + ReLU6 (TF's SSDLite), unlike a linear inverted residual.
        extra = model.neck(model.backbone(x))[2:]
        assert all(f.min() >= 0 and f.max() <= 6 for f in extra) and [f.shape[1] for f in extra] == [512, 256, 256,
                                                                                                      128]
    model.train()


def test_sg_layout_outputs(sg_model) -> None:
    x = torch.rand(2, 3, 160, 160)  # two images: BN in train mode needs them on the 1x1 maps
    sg_model.train()
    locations, confidences, dboxes = sg_model(x)
    assert locations.shape == (2, 4, SG_BOXES_160) and confidences.shape == (2, NUM_CLASSES + 1, SG_BOXES_160)
    assert dboxes.shape == (SG_BOXES_160, 4)
    sg_model.eval()
    with torch.no_grad():
        decoded, _ = sg_model(x)
    assert decoded.shape == (2, SG_BOXES_160, 5 + NUM_CLASSES)
    sg_model.train()


def _tf_ssd_box_specs(num_layers: int = 6, min_scale: float = 0.2, max_scale: float = 0.95,
                      ratios: tuple[float, ...] = (1.0, 2.0, 0.5, 3.0, 1 / 3)) -> list[list[tuple[float, float]]]:
    """TF Object Detection API's ssd_anchor_generator as ssdlite_mobilenet_v2_coco.config sets it, per level the
    (width, height) of each box as a fraction of the image: linear scales then 1.0; the lowest level reduced to
    (0.1, ratio 1), (s0, 2), (s0, 0.5); the others every ratio at s_k plus ratio 1 at sqrt(s_k s_k+1)."""
    scales = [min_scale + (max_scale - min_scale) * k / (num_layers - 1) for k in range(num_layers)] + [1.0]
    levels = []
    for k in range(num_layers):
        specs = [(0.1, 1.0), (scales[0], 2.0), (scales[0], 0.5)] if k == 0 else (
            [(scales[k], r) for r in ratios] + [(math.sqrt(scales[k] * scales[k + 1]), 1.0)])
        levels.append([(s * math.sqrt(r), s / math.sqrt(r)) for s, r in specs])
    return levels


def test_default_boxes_are_the_papers_320_set(model) -> None:
    boxes = DefaultBoxes(**SSD_LITE_TF_320_ANCHORS)
    assert len(boxes) == BOXES_320 == 2034 and boxes.num_anchors == [3, 6, 6, 6, 6, 6]
    assert model.heads.default_boxes.num_anchors == boxes.num_anchors and model.processing_params["input_dim"] == (
        320, 320)
    for ours, tf in zip(boxes.sizes, _tf_ssd_box_specs(), strict=True):
        torch.testing.assert_close(torch.tensor(sorted(ours)), torch.tensor(sorted(tf)))
    xywh = boxes("xywh")
    # Level 0: cell (0, 0) with the 0.1 square, then (400 cells on) the 2:1 box at scale 0.2, then the 1:2 box.
    torch.testing.assert_close(xywh[0], torch.tensor([0.025, 0.025, 0.1, 0.1]))
    torch.testing.assert_close(xywh[21], torch.tensor([0.075, 0.075, 0.1, 0.1]))  # row 1, column 1
    torch.testing.assert_close(xywh[400], torch.tensor([0.025, 0.025, 0.2 * math.sqrt(2), 0.2 / math.sqrt(2)]))
    torch.testing.assert_close(xywh[800], torch.tensor([0.025, 0.025, 0.2 / math.sqrt(2), 0.2 * math.sqrt(2)]))
    # Level 1 (10x10, scale 0.35) starts after 1200 boxes: the square, then the one between 0.35 and 0.5.
    torch.testing.assert_close(xywh[1200], torch.tensor([0.05, 0.05, 0.35, 0.35]))
    torch.testing.assert_close(xywh[1300], torch.tensor([0.05, 0.05, math.sqrt(0.35 * 0.5), math.sqrt(0.35 * 0.5)]))
    # The last box: the 1x1 level's tall 1:3 box at scale 0.95, not clipped (TF does not clip its anchors).
    torch.testing.assert_close(xywh[-1], torch.tensor([0.5, 0.5, 0.95 / math.sqrt(3), 0.95 * math.sqrt(3)]))
    torch.testing.assert_close(xywh[-5], torch.tensor([0.5, 0.5, math.sqrt(0.95), math.sqrt(0.95)]))
    # In pixels for a 160x160 input, as the model hands them to the loss.
    pixels = boxes.for_feature_sizes([(10, 10), (5, 5), (3, 3), (2, 2), (1, 1), (1, 1)], (160, 160))
    assert pixels.shape == (BOXES_160, 4)
    torch.testing.assert_close(pixels[1], torch.tensor([24.0, 8.0, 16.0, 16.0]))
    with pytest.raises(RecipeError, match="lowest_level_scale"):
        DefaultBoxes(**{**SSD_LITE_TF_320_ANCHORS, "lowest_level_scale": 0})


def test_default_boxes_are_supergradients_320_set() -> None:
    boxes = DefaultBoxes(fig_size=320, feat_size=[20, 10, 5, 3, 2, 1], scales=[32, 82, 133, 184, 235, 285, 336],
                         aspect_ratios=[[2, 3]] * 6)
    assert len(boxes) == SG_BOXES_320 and boxes.num_anchors == [6] * 6
    xywh = boxes("xywh")
    # Level 0: cell (0, 0) with the small square, the geometric-mean square, then the 2:1 box.
    torch.testing.assert_close(xywh[0], torch.tensor([0.5 / 20, 0.5 / 20, 32 / 320, 32 / 320]))
    torch.testing.assert_close(xywh[1], torch.tensor([1.5 / 20, 0.5 / 20, 32 / 320, 32 / 320]))
    mean = math.sqrt(32 * 82) / 320
    torch.testing.assert_close(xywh[400], torch.tensor([0.5 / 20, 0.5 / 20, mean, mean]))
    torch.testing.assert_close(xywh[800], torch.tensor([0.025, 0.025, 32 * math.sqrt(2) / 320,
                                                        32 / math.sqrt(2) / 320]))
    # The last box: the 1x1 level's tall 1:3 box, its height clamped to the image.
    torch.testing.assert_close(xywh[-1], torch.tensor([0.5, 0.5, 285 / math.sqrt(3) / 320, 1.0]))
    torch.testing.assert_close(boxes("xyxy")[0], torch.tensor([-0.025, -0.025, 0.075, 0.075]))  # not clamped
    # In pixels, for the maps a 160x160 input gives.
    pixels = boxes.for_feature_sizes([(10, 10), (5, 5), (3, 3), (2, 2), (1, 1), (1, 1)], (160, 160))
    assert pixels.shape == (SG_BOXES_160, 4)
    torch.testing.assert_close(pixels[1], torch.tensor([24.0, 8.0, 16.0, 16.0]))


def test_default_boxes_refuse_inconsistent_settings() -> None:
    with pytest.raises(RecipeError, match="one more scale"):
        DefaultBoxes(feat_size=[20, 10], scales=[32, 82], aspect_ratios=[[2], [2]])


def test_sg_layer_names_and_a_customizable_detector_build_the_same_model(model, sg_model) -> None:
    spec = {"SSDLiteMobileNetV2Backbone": {"out_layers": [["features", 14, "conv", 2], ["features", 18]]}}
    torch.manual_seed(0)
    sg_named = models.get("ssd_lite_mobilenet_v2", num_classes=NUM_CLASSES, backbone=spec)
    sg_named.load_state_dict(model.state_dict())
    # The parts' own defaults are SuperGradients' layout: the guide's arch_params with only the anchors spelled out.
    custom = CustomizableDetector(
        backbone={"MobileNetV2Backbone": {}}, neck={"SSDInvertedResidualNeck": {}},
        heads={"SSDHead": {"anchors": {"_target_": "super_gradients.training.utils.ssd_utils.DefaultBoxes",
                                       "fig_size": 320, "feat_size": [20, 10, 5, 3, 2, 1],
                                       "scales": [32, 82, 133, 184, 235, 285, 336],
                                       "aspect_ratios": [[2, 3]] * 6}}},
        num_classes=NUM_CLASSES)
    custom.load_state_dict(sg_model.state_dict())
    x = torch.rand(1, 3, 128, 128)
    for reference, other in ((model, sg_named), (sg_model, custom)):
        for m in (reference, other):
            m.eval()
        with torch.no_grad():
            torch.testing.assert_close(other(x)[0], reference(x)[0])
        reference.train()
    with pytest.raises(RecipeError, match="activation"):
        models.get("ssd_lite_mobilenet_v2", heads={"SSDHead": {"activation": "gelu"}})
    with pytest.raises(RecipeError, match="out_layers"):
        models.get("ssd_lite_mobilenet_v2", backbone={"SSDLiteMobileNetV2Backbone": {"out_layers": ["head.3"]}})


# --- real images ---

def _tinycoco_images(count: int) -> tuple[list[dict], dict[int, list[dict]]]:
    annotations = TINYCOCO / "annotations" / "instances_train2017.json"
    if not annotations.is_file():
        pytest.skip(f"the real COCO subset is not at {TINYCOCO} (set TINYCOCO_DIR)")
    coco = json.loads(annotations.read_text())
    by_image: dict[int, list[dict]] = {}
    for annotation in coco["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    return coco["images"][:count], by_image


def test_untrained_model_predicts_on_real_jpegs(model) -> None:
    images, _ = _tinycoco_images(2)
    paths = [str(TINYCOCO / "images" / "train2017" / image["file_name"]) for image in images]
    model.train()
    predictions = model.predict(paths, conf=0.01, max_predictions=50)
    assert model.training and len(predictions) == 2
    for prediction, image in zip(predictions, images, strict=True):
        assert prediction.image.shape[:2] == (image["height"], image["width"])
        assert 0 < len(prediction) <= 50 and prediction.boxes.shape == (len(prediction), 4)
        assert (prediction.boxes >= 0).all() and (prediction.boxes[:, [0, 2]] <= image["width"]).all()
        assert (prediction.labels >= 0).all() and (prediction.labels < NUM_CLASSES).all()
        assert ((prediction.scores >= 0.01) & (prediction.scores <= 1)).all()


def test_recipe_carries_the_published_setup() -> None:
    cfg, _ = compose_recipe("coco2017_ssd_lite_mobilenet_v2")
    hp = cfg.training_hyperparams
    assert (hp.max_epochs, hp.initial_lr, hp.optimizer, hp.lr_mode, hp.cosine_final_lr_ratio) == (
        400, 0.01, "SGD", "cosine", 0.01)
    assert dict(hp.optimizer_params) == {"momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}
    assert hp.lr_warmup_epochs == 3 and hp.ema and hp.ema_params.decay == 0.9999
    assert hp.loss == "SSDLoss" and dict(hp.criterion_params) == {"alpha": 1.0, "iou_thresh": 0.5,
                                                                   "neg_pos_ratio": 3.0}
    (metric,) = hp.valid_metrics_list
    post = metric.DetectionMetrics_050_095.post_prediction_callback.SSDPostPredictCallback
    assert (post.conf, post.iou) == (0.001, 0.6)
    assert cfg.architecture == "ssd_lite_mobilenet_v2" and cfg.arch_params.num_classes == 80
    data = cfg.dataset_params
    assert list(data.train_dataset_params.input_dim) == list(data.val_dataset_params.input_dim) == [320, 320]
    assert data.train_dataloader_params.batch_size == 32 and data.val_dataloader_params.batch_size == 16
    header = (recipes_dir() / "coco2017_ssd_lite_mobilenet_v2.yaml").read_text()
    assert all(figure in header for figure in ("21.5", "20.41", "22.1"))
    with torch.device("meta"):
        built = models.get(cfg.architecture, arch_params=cfg.arch_params)
    assert sum(p.numel() for p in built.parameters()) == 4_711_348  # SuperGradients' layout, as its 21.5 was
    # The header's way to train the paper's layout instead: drop the parts, the factory's defaults remain.
    paper, _ = compose_recipe("coco2017_ssd_lite_mobilenet_v2",
                              ["~arch_params.backbone", "~arch_params.neck", "~arch_params.heads"])
    with torch.device("meta"):
        built = models.get(paper.architecture, arch_params=paper.arch_params)
    assert sum(p.numel() for p in built.parameters()) == 4_337_013


# Tinycoco training images with a few large objects (toilet + sink, two giraffes, bus + person): an SSD whose
# smallest default box is a tenth of the image cannot be asked to overfit crowds of tiny objects in a minute.
OVERFIT_IMAGES = (331352, 153299, 143931)
OVERFIT_SIDE, OVERFIT_STEPS, OVERFIT_LR = 192, 120, 0.002


def _overfit_subset(root: Path) -> tuple[Path, list[dict], dict[int, list[dict]]]:
    """A COCO-layout folder holding just OVERFIT_IMAGES (real JPEGs linked, their real annotations), all 80
    categories kept so the labels are COCO's."""
    _tinycoco_images(0)
    coco = json.loads((TINYCOCO / "annotations" / "instances_train2017.json").read_text())
    images = [image for image in coco["images"] if image["id"] in OVERFIT_IMAGES]
    annotations = [a for a in coco["annotations"] if a["image_id"] in OVERFIT_IMAGES]
    (root / "annotations").mkdir(parents=True)
    (root / "images" / "train2017").mkdir(parents=True)
    for image in images:
        (root / "images" / "train2017" / image["file_name"]).symlink_to(
            TINYCOCO / "images" / "train2017" / image["file_name"])
    subset = {**coco, "images": images, "annotations": annotations}
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(subset))
    by_image: dict[int, list[dict]] = {}
    for annotation in annotations:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    return root, images, by_image


def test_learns_the_objects_of_real_images(tmp_path) -> None:
    """Overfit three tinycoco training images (no augmentation): mAP@0.50 >= 0.8 on them, and predict() on their
    JPEGs then finds every annotated object (IoU >= 0.5 in the original pixels, right class)."""
    from super_recipes import Trainer, dataloaders

    root, images, annotations = _overfit_subset(tmp_path / "coco")
    assert len(images) == len(OVERFIT_IMAGES)
    size = [OVERFIT_SIDE, OVERFIT_SIDE]
    data = {"data_dir": str(root), "subdir": "images/train2017", "json_file": "instances_train2017.json",
            "input_dim": size, "with_crowd": False,
            "transforms": [{"DetectionPaddedRescale": {"input_dim": size}}, "DetectionStandardize",
                           {"DetectionTargetsFormatTransform": {"output_format": "LABEL_CXCYWH"}}]}
    loader_params = {"batch_size": len(images), "num_workers": 0, "persistent_workers": False, "shuffle": False,
                     "drop_last": False}
    train = dataloaders.get("coco2017_train", dataset_params=data, dataloader_params=loader_params)
    valid = dataloaders.get("coco2017_val", dataset_params={**data, "with_crowd": True},
                            dataloader_params=loader_params)
    torch.manual_seed(0)
    model = models.get("ssd_lite_mobilenet_v2", num_classes=NUM_CLASSES)
    for module in model.modules():
        # One fixed batch: a fast BN momentum lets the running statistics (used by validation) reach it in time.
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.3
    record = Trainer("overfit", tmp_path, device="cpu").train(model=model, training_params={
        "max_epochs": OVERFIT_STEPS, "initial_lr": OVERFIT_LR, "optimizer": "Adam",
        "warmup_mode": "LinearBatchLRWarmup", "lr_warmup_steps": 10, "lr_mode": "cosine",
        "cosine_final_lr_ratio": 0.1, "loss": "SSDLoss", "loss_logging_items_names": SSDLoss.component_names,
        "valid_metrics_list": [{"DetectionMetrics_050": {
            "num_cls": NUM_CLASSES, "post_prediction_callback": {"SSDPostPredictCallback": {"conf": 0.01,
                                                                                           "iou": 0.6}}}}],
        "metric_to_watch": "mAP@0.50", "run_validation_freq": OVERFIT_STEPS, "save_model": False,
        "silent_mode": True,
    }, train_loader=train, valid_loader=valid)
    assert record["valid/mAP@0.50"] >= 0.8, record

    # predict() on the JPEGs, boxes back in their pixels, labels COCO's contiguous indices.
    categories = sorted(c["id"] for c in json.loads(
        (root / "annotations" / "instances_train2017.json").read_text())["categories"])
    model.set_dataset_processing_params(input_dim=(OVERFIT_SIDE, OVERFIT_SIDE))
    paths = [str(root / "images" / "train2017" / image["file_name"]) for image in images]
    for image, prediction in zip(images, model.predict(paths, conf=0.1, iou=0.6), strict=True):
        for annotation in annotations[image["id"]]:
            x, y, w, h = annotation["bbox"]
            same_class = prediction.labels == categories.index(annotation["category_id"])
            iou = torchvision.ops.box_iou(torch.tensor([[x, y, x + w, y + h]]),
                                          torch.from_numpy(prediction.boxes[same_class]))
            assert iou.numel() and iou.max() >= 0.5, (image["file_name"], annotation["category_id"])
