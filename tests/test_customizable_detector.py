"""``CustomizableDetector``: a detector assembled from registered parts named in ``arch_params``, trained by the same
loop; parts built in order with the channels of the previous one; BatchNorm settings; re-parameterisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from super_recipes import models
from super_recipes.detection.customizable import CustomizableDetector
from super_recipes.detection.dfl_outputs import dfl_head_outputs
from super_recipes.detection.ppyoloe.postprocess import PPYoloEPostPredictionCallback
from super_recipes.errors import RecipeError
from super_recipes.registry import DETECTION_MODULES, register_detection_module


class TinyBackbone(nn.Module):
    def __init__(self, in_channels: int, width: int = 8):
        super().__init__()
        self.stage1 = nn.Sequential(nn.Conv2d(in_channels, width, 3, 2, 1), nn.BatchNorm2d(width),
                                    nn.ReLU(inplace=True))
        self.stage2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.out_channels = [width, 2 * width]

    def forward(self, x):
        first = self.stage1(x)
        return [first, self.stage2(first)]


class TinyNeck(nn.Module):
    def __init__(self, in_channels: list[int], out: int = 12):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out, 1) for c in in_channels)
        self.out_channels = [out] * len(in_channels)

    def forward(self, features):
        return [conv(f) for conv, f in zip(self.lateral, features, strict=True)]


class FusableConv(nn.Module):
    """Two parallel convolutions summed, which fold into one (a minimal re-parameterisable block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.a, self.b = nn.Conv2d(channels, channels, 3, 1, 1), nn.Conv2d(channels, channels, 3, 1, 1)
        self.fused: nn.Conv2d | None = None

    def forward(self, x):
        return self.fused(x) if self.fused is not None else self.a(x) + self.b(x)

    def fuse_branches(self):
        self.fused = nn.Conv2d(self.a.in_channels, self.a.out_channels, 3, 1, 1)
        self.fused.weight.data = self.a.weight.data + self.b.weight.data
        self.fused.bias.data = self.a.bias.data + self.b.bias.data
        del self.a, self.b


class TinyDFLHead(nn.Module):
    def __init__(self, in_channels: list[int], num_classes: int, reg_max: int = 4):
        super().__init__()
        self.num_classes, self.reg_max = num_classes, reg_max
        self.mix = nn.ModuleList(FusableConv(c) for c in in_channels)
        self.cls = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in in_channels)
        self.reg = nn.ModuleList(nn.Conv2d(c, 4 * (reg_max + 1), 1) for c in in_channels)

    def forward(self, features):
        mixed = [m(f) for m, f in zip(self.mix, features, strict=True)]
        return dfl_head_outputs([c(f) for c, f in zip(self.cls, mixed, strict=True)],
                                [r(f) for r, f in zip(self.reg, mixed, strict=True)], [2, 4], self.reg_max,
                                self.training)

    def get_post_prediction_callback(self, conf, iou, max_predictions=300):
        return PPYoloEPostPredictionCallback(score_threshold=conf, nms_threshold=iou, max_predictions=max_predictions)


@pytest.fixture(scope="module", autouse=True)
def registered_parts():
    for part in (TinyBackbone, TinyNeck, TinyDFLHead):
        if part.__name__ not in DETECTION_MODULES:
            register_detection_module(part)


ARCH = {"backbone": {"TinyBackbone": {"width": 8}}, "neck": "TinyNeck", "heads": {"TinyDFLHead": {"reg_max": 4}}}


def test_parts_are_built_in_order_from_arch_params():
    model = models.get("CustomizableDetector", num_classes=3, arch_params={**ARCH, "in_channels": 1})
    assert isinstance(model, CustomizableDetector) and model.num_classes == 3
    assert model.backbone.stage1[0].in_channels == 1
    assert [conv.in_channels for conv in model.neck.lateral] == [8, 16]
    assert [conv.in_channels for conv in model.heads.cls] == [12, 12] and model.heads.cls[0].out_channels == 3
    model.train()
    raw = model(torch.rand(2, 1, 16, 16))
    assert raw[0].shape == (2, 8 * 8 + 4 * 4, 3)
    model.eval()
    (boxes, scores), _ = model(torch.rand(2, 1, 16, 16))
    assert boxes.shape == (2, 80, 4)
    detections = model.get_post_prediction_callback(conf=0.0, iou=0.5, max_predictions=5)(((boxes, scores), None))
    assert [d.shape for d in detections] == [(5, 6), (5, 6)]


def test_without_neck_the_head_reads_the_backbone():
    model = CustomizableDetector(backbone={"TinyBackbone": {}}, heads="TinyDFLHead", num_classes=2)
    assert [conv.in_channels for conv in model.heads.cls] == [8, 16]


def test_batch_norm_settings_and_modules_from_python():
    model = CustomizableDetector(backbone=TinyBackbone(3), heads={"TinyDFLHead": {}}, neck=None, num_classes=2,
                                 bn_eps=1e-3, bn_momentum=0.03, inplace_act=False)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.eps == 1e-3 and m.momentum == 0.03 for m in norms)
    assert model.backbone.stage1[2].inplace is False


def test_fusing_keeps_outputs():
    model = models.get("CustomizableDetector", num_classes=3, arch_params=ARCH).eval()
    images = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        (before, scores_before), _ = model(images)
        model.prep_model_for_conversion(input_size=[1, 3, 16, 16])
        (after, scores_after), _ = model(images)
    assert all(m.fused is not None for m in model.heads.mix)
    assert torch.allclose(before, after, atol=1e-4) and torch.allclose(scores_before, scores_after, atol=1e-5)


def test_bad_parts_are_named():
    with pytest.raises(RecipeError, match=r"(?s)detection module.*TinyBackbon.*TinyBackbone"):
        CustomizableDetector(backbone="TinyBackbon", heads="TinyDFLHead", num_classes=2)
    with pytest.raises(RecipeError, match="must expose out_channels"):
        CustomizableDetector(backbone=nn.Conv2d(3, 4, 3), heads="TinyDFLHead", num_classes=2)
    with pytest.raises(RecipeError, match="width_multiplier"):
        CustomizableDetector(backbone={"TinyBackbone": {"width_multiplier": 2}}, heads="TinyDFLHead", num_classes=2)


class ResNet18Backbone(nn.Module):
    """The README's example part: torchvision's ResNet-18, feature maps at strides 8, 16 and 32."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        import torchvision

        net = torchvision.models.resnet18()
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2)
        self.layer3, self.layer4 = net.layer3, net.layer4
        self.out_channels = [128, 256, 512]

    def forward(self, x):
        c3 = self.stem(x)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]


def test_a_detector_of_registered_parts_trains_in_the_loop(tmp_path):
    """The README's custom detector: a user backbone with PP-YOLOE's neck and head, trained by the unchanged
    Trainer with PPYoloELoss, validated by DetectionMetrics through the head's post-processing."""
    from super_recipes import Trainer, dataloaders

    if "ResNet18Backbone" not in DETECTION_MODULES:
        register_detection_module(ResNet18Backbone)
    model = models.get("CustomizableDetector", num_classes=4, arch_params={
        "backbone": "ResNet18Backbone", "neck": {"PPYoloECSPPAN": {"depth_mult": 0.33, "width_mult": 0.25}},
        "heads": {"PPYoloEHead": {"reg_max": 16}}, "bn_eps": 1e-3})
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    data = str(tmp_path / "data")
    train = dataloaders.get("shapes_detection_train", dataset_params={"data_dir": data, "num_images": 8},
                            dataloader_params={"batch_size": 4, "num_workers": 0})
    valid = dataloaders.get("shapes_detection_val", dataset_params={"data_dir": data, "num_images": 4},
                            dataloader_params={"batch_size": 4, "num_workers": 0})
    record = Trainer("custom", tmp_path, device="cpu").train(
        model=model, train_loader=train, valid_loader=valid,
        training_params={
            "max_epochs": 1, "loss": "PPYoloELoss", "criterion_params": {"num_classes": 4},
            "optimizer": "AdamW", "initial_lr": 1e-3, "silent_mode": True, "metric_to_watch": "mAP@0.50",
            "valid_metrics_list": [{"DetectionMetrics_050": {
                "num_cls": 4, "post_prediction_callback": model.get_post_prediction_callback(conf=0.01, iou=0.6)}}]})
    for key in ("train/cls", "train/iou", "train/dfl", "train/total", "valid/mAP@0.50"):
        assert key in record and torch.isfinite(torch.tensor(record[key])), key
