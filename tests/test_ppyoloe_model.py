"""PP-YOLOE models: published parameter counts, outputs of every mode (train, eval, jit.trace, torch.export), the
RepVGG re-parameterisation, the registered parts assembled by CustomizableDetector, and predict() mapping boxes
back to the pixels of real tinycoco JPEGs."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from super_recipes import models
from super_recipes.detection.ppyoloe.blocks import CSPResNetBackbone, PPYoloECSPPAN, RepVGGBlock
from super_recipes.detection.ppyoloe.model import PPYoloE, PPYoloEHead
from super_recipes.errors import RecipeError

REPO_ROOT = Path(__file__).resolve().parents[1]
TINYCOCO = Path(os.environ.get("TINYCOCO_DIR", REPO_ROOT.parent / "shared/data/tinycoco"))

# Published parameters at 80 classes (PP-YOLOE report, arXiv:2203.16250 Table 2; PaddleDetection model zoo,
# configs/ppyoloe/README_legacy.md): the deployed models, i.e. with the RepVGG branches folded into one conv.
PUBLISHED_M = {"ppyoloe_s": 7.93, "ppyoloe_m": 23.43, "ppyoloe_l": 52.20, "ppyoloe_x": 98.42}
# Our counts while training (two conv-BN branches per RepVGG block) and once fused.
TRAINING_COUNT = {"ppyoloe_s": 8_084_588, "ppyoloe_m": 24_134_892, "ppyoloe_l": 54_078_556, "ppyoloe_x": 102_331_484}
FUSED_COUNT = {"ppyoloe_s": 7_926_260, "ppyoloe_m": 23_427_492, "ppyoloe_l": 52_198_924, "ppyoloe_x": 98_424_044}


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_parameter_counts_equal_the_published_ones(name):
    with torch.device("meta"):  # shapes only: building the x model's weights would cost seconds
        model = models.get(name, num_classes=80)
    assert isinstance(model, PPYoloE) and _count(model) == TRAINING_COUNT[name]
    assert not any("proj" in key for key, _ in model.named_parameters())  # the DFL projection is no parameter
    model.eval().prep_model_for_conversion()
    assert not any(isinstance(m, RepVGGBlock) and m.fused is None for m in model.modules())
    assert _count(model) == FUSED_COUNT[name]
    assert abs(_count(model) / 1e6 / PUBLISHED_M[name] - 1) < 0.01


def _strided_points(height: int, width: int) -> torch.Tensor:
    """Oracle anchor points: cell centres of strides 8, 16, 32, row-major, ``(j + 0.5) * s``."""
    points = []
    for stride in (8, 16, 32):
        for row in range(height // stride):
            for col in range(width // stride):
                points.append(((col + 0.5) * stride, (row + 0.5) * stride))
    return torch.tensor(points)


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial weights and BN statistics, so that outputs differ per anchor (the head starts at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
        for head in (model.heads.pred_cls, model.heads.pred_reg):
            for conv in head:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.01)


@pytest.fixture(scope="module")
def small_model() -> PPYoloE:
    torch.manual_seed(0)
    model = models.get("ppyoloe_s", num_classes=3)
    _randomise(model)
    return model


def test_outputs_of_train_and_eval_modes(small_model):
    x = torch.rand(2, 3, 64, 96)
    anchors_count = 8 * 12 + 4 * 6 + 2 * 3
    small_model.train()
    scores, distri, anchors, points, counts, strides = small_model(x)
    assert scores.shape == (2, anchors_count, 3) and distri.shape == (2, anchors_count, 4 * 17)
    assert anchors.shape == (anchors_count, 4) and points.shape == (anchors_count, 2)
    assert list(counts) == [96, 24, 6] and strides.shape == (anchors_count, 1)
    assert torch.equal(points, _strided_points(64, 96))
    assert torch.equal(strides[:, 0], torch.tensor([8.0] * 96 + [16.0] * 24 + [32.0] * 6))
    # Anchor boxes for ATSS: squares of side 5 strides around each point.
    assert torch.allclose(anchors, torch.cat((points - 2.5 * strides, points + 2.5 * strides), dim=1))
    assert ((scores >= 0) & (scores <= 1)).all()

    small_model.eval()
    with torch.no_grad():
        (boxes, probabilities), raw = small_model(x)
    assert boxes.shape == (2, anchors_count, 4) and probabilities.shape == (2, anchors_count, 3)
    assert len(raw) == 6 and raw[1].shape == (2, anchors_count, 68)
    # Oracle decoding: expectation of the softmax over bins 0..16 per side, in strides, from the cell centre.
    distances = (raw[1].reshape(2, anchors_count, 4, 17).softmax(-1) * torch.arange(17.0)).sum(-1)
    distances = distances * strides
    expected = torch.cat((points - distances[..., :2], points + distances[..., 2:]), dim=-1)
    assert torch.allclose(boxes, expected, atol=1e-4)
    assert torch.equal(probabilities, raw[0])


def test_jit_trace_and_torch_export_give_decoded_predictions(small_model):
    x = torch.rand(1, 3, 64, 64)
    small_model.eval()
    with torch.no_grad():
        (boxes, scores), _ = small_model(x)
        traced = torch.jit.trace(small_model, x, check_trace=False)
        traced_out = traced(x)
    assert isinstance(traced_out, tuple) and len(traced_out) == 2
    assert torch.allclose(traced_out[0], boxes, atol=1e-4) and torch.allclose(traced_out[1], scores, atol=1e-5)
    exported = torch.export.export(small_model, (x,))
    with torch.no_grad():
        export_out = exported.module()(x)
    assert len(export_out) == 2 and export_out[0].shape == (1, 84, 4) and export_out[1].shape == (1, 84, 3)
    assert torch.allclose(export_out[0], boxes, atol=1e-4) and torch.allclose(export_out[1], scores, atol=1e-5)


def test_fused_repvgg_blocks_give_the_same_outputs():
    torch.manual_seed(1)
    model = models.get("ppyoloe_s", num_classes=4, use_alpha=True)
    _randomise(model, seed=1)
    for module in model.modules():
        if isinstance(module, RepVGGBlock) and module.alpha is not None:  # the backbone's (PP-YOLOE+)
            module.alpha.data.fill_(0.7)  # a weighted 1x1 branch must fold too
    model.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        (boxes, scores), _ = model(x)
        model.prep_model_for_conversion()
        (fused_boxes, fused_scores), _ = model(x)
    assert sum(isinstance(m, RepVGGBlock) and m.fused is not None for m in model.modules()) > 0
    assert torch.allclose(fused_boxes, boxes, atol=1e-3) and torch.allclose(fused_scores, scores, atol=1e-4)


def test_customizable_detector_assembles_the_registered_parts():
    spec = {"depth_mult": 0.33, "width_mult": 0.5}
    with torch.device("meta"):
        custom = models.get("CustomizableDetector", backbone={"CSPResNetBackbone": spec},
                            neck={"PPYoloECSPPAN": spec}, heads={"PPYoloEHead": {"reg_max": 16}}, num_classes=80)
        reference = models.get("ppyoloe_s", num_classes=80)
    assert isinstance(custom.backbone, CSPResNetBackbone) and isinstance(custom.neck, PPYoloECSPPAN)
    assert isinstance(custom.heads, PPYoloEHead) and custom.heads.strides == [8, 16, 32]
    assert _count(custom) == _count(reference)
    assert custom.backbone.out_channels == [128, 256, 512] and custom.neck.out_channels == [96, 192, 384]


def test_bad_arguments_are_recipe_errors():
    with pytest.raises(RecipeError, match="activation"):
        models.get("ppyoloe_s", activation="swishy")
    with pytest.raises(RecipeError, match="stride"):
        PPYoloEHead(in_channels=[8, 16], num_classes=2)
    with pytest.raises(RecipeError, match="return_idx"):
        CSPResNetBackbone(return_idx=(1, 4))


def test_inputs_not_divisible_by_32_still_work(small_model):
    small_model.eval()
    with torch.no_grad():
        (boxes, scores), raw = small_model(torch.rand(1, 3, 70, 100))
    assert boxes.shape[1] == scores.shape[1] == sum(raw[4])


def test_predict_maps_boxes_to_the_pixels_of_real_jpegs(small_model):
    """predict() on real JPEGs of different sizes = letterbox by hand, model, post-processing, then
    ``(xy - pad) / scale`` clipped to the image: an oracle computed here from the model's raw eval output."""
    files = sorted((TINYCOCO / "images" / "val2017").glob("*.jpg"))[:2]
    if len(files) < 2:
        pytest.skip(f"the real COCO subset is not at {TINYCOCO} (set TINYCOCO_DIR)")
    model = copy.deepcopy(small_model).eval()
    with torch.no_grad():  # spread the class scores over (0, 1) so that the kept set is far from ties
        for conv in model.heads.pred_cls:
            conv.bias.zero_()
            conv.weight.mul_(20)
    model.set_dataset_processing_params(input_dim=(96, 96), class_names=["a", "b", "c"])
    predictions = model.predict([str(f) for f in files], conf=0.5, iou=0.6, batch_size=1)
    post = model.get_post_prediction_callback(conf=0.5, iou=0.6)
    for path, prediction in zip(files, predictions, strict=True):
        image = cv2.imread(str(path))
        h, w = image.shape[:2]
        assert prediction.image.shape == image.shape
        ratio = min(96 / h, 96 / w)
        fit_h, fit_w = round(h * ratio), round(w * ratio)
        canvas = np.full((96, 96, 3), 114, np.uint8)
        canvas[:fit_h, :fit_w] = cv2.resize(image, (fit_w, fit_h), interpolation=cv2.INTER_LINEAR)
        batch = torch.from_numpy(canvas.astype(np.float32) / 255).permute(2, 0, 1)[None]
        with torch.no_grad():
            (rows,) = post(model(batch))
        expected = np.clip(rows[:, :4].numpy() / ratio, 0, [w, h, w, h])
        assert len(prediction) == len(rows) > 0
        assert np.allclose(prediction.boxes, expected, atol=0.05 / ratio)
        assert np.allclose(prediction.scores, rows[:, 4].numpy(), atol=1e-4)
        assert prediction.label_names()[0] in {"a", "b", "c"}
