"""Detection plugs into the unchanged training loop: batch extras reach DetectionMetrics and the COCO callback,
and their named outputs (``mAP@0.50``, ``COCO/AP``) are logged and selectable as ``metric_to_watch``."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from super_recipes import Trainer, dataloaders
from super_recipes.errors import RecipeError
from super_recipes.registry import register_loss


class LearnedBoxesDetector(torch.nn.Module):
    """The smallest real detector: the same learnable boxes and class scores for every image."""

    def __init__(self, num_classes: int = 4, num_boxes: int = 16, image_size: int = 160):
        super().__init__()
        grid = torch.linspace(0.15, 0.85, int(num_boxes ** 0.5)) * image_size
        centers = torch.cartesian_prod(grid, grid)
        self.boxes = torch.nn.Parameter(torch.cat([centers - 20, centers + 20], dim=1))
        self.logits = torch.nn.Parameter(torch.zeros(num_boxes, num_classes))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        confidence, labels = self.logits.sigmoid().max(dim=1)
        row = torch.cat([self.boxes, confidence[:, None], labels[:, None].float()], dim=1)
        return [row for _ in range(images.shape[0])]


@register_loss("ClassFrequencyTestLoss")
class ClassFrequencyTestLoss(torch.nn.Module):
    """Pulls every box's class scores towards the batch's class frequencies."""

    component_names = ["cls", "num_targets"]

    def forward(self, preds, targets):
        logits = preds[0][:, 4:5]  # differentiable through the sigmoid of the detector's logits
        frequency = torch.bincount(targets[:, 1].long(), minlength=4).float() / max(len(targets), 1)
        loss = torch.nn.functional.mse_loss(logits.expand(-1, 4), frequency.expand(len(logits), -1))
        return loss, torch.stack([loss.detach(), torch.tensor(float(len(targets)))])


def _loaders(root):
    train = dataloaders.get("shapes_detection_train", dataset_params={"data_dir": str(root), "num_images": 16},
                            dataloader_params={"batch_size": 8})
    valid = dataloaders.get("shapes_detection_val", dataset_params={"data_dir": str(root), "num_images": 8},
                            dataloader_params={"batch_size": 4})
    return train, valid


def test_detection_metrics_and_coco_callback_through_the_trainer(tmp_path):
    train, valid = _loaders(tmp_path / "data")
    record = Trainer("det", tmp_path, device="cpu").train(
        model=LearnedBoxesDetector(),
        training_params={
            "max_epochs": 2, "loss": "ClassFrequencyTestLoss", "initial_lr": 0.1, "silent_mode": True,
            "valid_metrics_list": [{"DetectionMetrics_050": {"num_cls": 4, "post_prediction_callback": None}}],
            "phase_callbacks": [{"CocoEvaluationCallback": {"post_prediction_callback": None}}],
            "metric_to_watch": "mAP@0.50",
        },
        train_loader=train, valid_loader=valid)
    for key in ("valid/mAP@0.50", "valid/Recall@0.50", "valid/COCO/AP", "valid/COCO/AR100", "valid/cls"):
        assert key in record and not math.isnan(record[key]), key
    rows = list(csv.DictReader((tmp_path / "det" / "metrics.csv").open()))
    assert len(rows) == 2 and rows[-1]["valid/mAP@0.50"] != "" and rows[-1]["valid/COCO/AP50"] != ""
    assert (tmp_path / "det" / "ckpt_best.pth").is_file()


def test_unknown_detection_metric_name_is_refused(tmp_path):
    train, valid = _loaders(tmp_path / "data")
    with pytest.raises(RecipeError, match=r"metric_to_watch 'mAP@0.5'.*mAP@0.50"):
        Trainer("bad", tmp_path, device="cpu").train(
            model=LearnedBoxesDetector(),
            training_params={"loss": "ClassFrequencyTestLoss", "metric_to_watch": "mAP@0.5", "silent_mode": True,
                             "valid_metrics_list": [{"DetectionMetrics_050": {"num_cls": 4,
                                                                               "post_prediction_callback": None}}]},
            train_loader=train, valid_loader=valid)
