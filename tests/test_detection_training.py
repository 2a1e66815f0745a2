"""Detection plugs into the unchanged training loop: batch extras reach DetectionMetrics and the COCO callback,
and their named outputs (``mAP@0.50``, ``COCO/AP``) are logged and selectable as ``metric_to_watch``."""

from __future__ import annotations

import contextlib
import csv
import io
import json

import cv2
import numpy as np
import pytest
import torch

from super_recipes import Trainer, dataloaders
from super_recipes.detection.coco_evaluation import COCO_STAT_NAMES
from super_recipes.engine.checkpoints import load_checkpoint
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


class ColourBlobDetector(torch.nn.Module):
    """A small real detector for the shapes set: every saturated connected region is an object (the background
    is grey), its hue gives the class, its fill ratio times a learnable per-class confidence the score."""

    HUES = (0, 60, 120, 28)  # OpenCV hues of circle, square, triangle, star in the shapes set

    def __init__(self):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(4))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for image in images:  # BGR in [0, 1]
            pixels = np.rint(image.detach().permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            hsv = cv2.cvtColor(pixels, cv2.COLOR_BGR2HSV)
            count, regions, stats, _ = cv2.connectedComponentsWithStats((hsv[..., 1] > 120).astype(np.uint8))
            boxes, fills, labels = [], [], []
            for k in range(1, count):
                x, y, w, h, area = stats[k].tolist()
                if area < 4:
                    continue
                hue = float(np.median(hsv[..., 0][regions == k]))
                labels.append(int(np.argmin([min(abs(hue - c), 180 - abs(hue - c)) for c in self.HUES])))
                boxes.append([x, y, x + w, y + h])
                fills.append(area / (w * h))
            labels_t = torch.tensor(labels, dtype=torch.long)
            confidence = torch.tensor(fills, dtype=torch.float32) * self.logits[labels_t].sigmoid()
            out.append(torch.cat([torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), confidence[:, None],
                                  labels_t[:, None].float()], dim=1))
        return out


@register_loss("ConfidenceTestLoss")
class ConfidenceTestLoss(torch.nn.Module):
    """Pulls every detection's confidence towards 0.9 (trains the per-class confidences)."""

    def forward(self, preds, targets):
        confidence = torch.cat([p[:, 4] for p in preds])
        return ((confidence - 0.9) ** 2).mean() if len(confidence) else confidence.sum()


VAL_INPUT = (128, 192)  # letterbox of the 160 px validation images: scale 0.8, grey on the right
VAL_SCALE = 0.8


def _letterboxed(image: np.ndarray) -> torch.Tensor:
    h, w = image.shape[:2]
    resized = cv2.resize(image, (round(w * VAL_SCALE), round(h * VAL_SCALE)), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((*VAL_INPUT, 3), 114, dtype=np.uint8)
    canvas[:resized.shape[0], :resized.shape[1]] = resized
    return torch.from_numpy(canvas).permute(2, 0, 1).float()[None] / 255


def _cocoeval(annotations: dict, detections: dict[int, np.ndarray], scale: float) -> list[float]:
    """pycocotools' 12 stats for ``detections`` (per image id, rows x1, y1, x2, y2, score, class) against the
    annotations with every box multiplied by ``scale``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    category_ids = sorted(c["id"] for c in annotations["categories"])
    scaled = [{**a, "bbox": [v * scale for v in a["bbox"]], "area": a["area"] * scale ** 2}
              for a in annotations["annotations"]]
    results = [{"image_id": image_id, "category_id": category_ids[int(c)], "score": float(score),
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]}
               for image_id, rows in detections.items() for x1, y1, x2, y2, score, c in rows]
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = {**annotations, "annotations": scaled}
        ground_truth.createIndex()
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats.tolist()


def test_logged_detection_metrics_equal_cocoeval_of_the_trained_model(tmp_path):
    """Through the Trainer (batch extras, crowd regions, a letterbox that is not the identity, a last partial
    batch), the logged ``mAP@0.50`` and ``COCO/*`` equal pycocotools on the final model's detections, computed
    here from the image files and the annotation JSON alone."""
    data = tmp_path / "data"
    train = dataloaders.get("shapes_detection_train", dataset_params={"data_dir": str(data), "num_images": 16},
                            dataloader_params={"batch_size": 8})
    transforms = [{"DetectionPaddedRescale": {"input_dim": list(VAL_INPUT)}}, "DetectionStandardize",
                  {"DetectionTargetsFormatTransform": {"output_format": "LABEL_CXCYWH"}}]
    valid = dataloaders.get("shapes_detection_val", dataloader_params={"batch_size": 6},
                            dataset_params={"data_dir": str(data), "num_images": 40, "transforms": transforms})
    model = ColourBlobDetector()
    record = Trainer("det", tmp_path, device="cpu").train(
        model=model,
        training_params={
            "max_epochs": 2, "loss": "ConfidenceTestLoss", "initial_lr": 0.5, "silent_mode": True,
            "valid_metrics_list": [{"DetectionMetrics_050": {"num_cls": 4, "post_prediction_callback": None}}],
            "phase_callbacks": [{"CocoEvaluationCallback": {"post_prediction_callback": None}}],
            "metric_to_watch": "mAP@0.50",
        },
        train_loader=train, valid_loader=valid)

    annotations = json.loads((data / "annotations" / "instances_val.json").read_text())
    assert len(annotations["images"]) == 40 and any(a["iscrowd"] for a in annotations["annotations"])
    input_pixels, original_pixels = {}, {}
    with torch.no_grad():
        for info in annotations["images"]:
            image = cv2.imread(str(data / "images" / "val" / info["file_name"]))
            rows = model(_letterboxed(image))[0].double().numpy()
            input_pixels[info["id"]] = rows
            limits = [info["width"], info["height"]] * 2
            original_pixels[info["id"]] = np.concatenate([np.clip(rows[:, :4] / VAL_SCALE, 0, limits), rows[:, 4:]],
                                                         axis=1)
    # DetectionMetrics scores boxes in the model's input pixels, the COCO callback in the original ones
    at_input, at_original = _cocoeval(annotations, input_pixels, VAL_SCALE), _cocoeval(annotations, original_pixels, 1)
    assert 0.1 < at_original[0] < 0.9 and 0.1 < at_input[1] < 0.9  # a case that tests something
    assert record["valid/mAP@0.50"] == pytest.approx(at_input[1], abs=1e-6)
    assert [record[f"valid/COCO/{name}"] for name in COCO_STAT_NAMES] == pytest.approx(at_original, abs=1e-6)

    rows = list(csv.DictReader((tmp_path / "det" / "metrics.csv").open()))
    assert len(rows) == 2 and float(rows[-1]["valid/mAP@0.50"]) == pytest.approx(record["valid/mAP@0.50"])
    assert float(rows[-1]["valid/COCO/AP"]) == pytest.approx(record["valid/COCO/AP"])
    best = load_checkpoint(tmp_path / "det" / "ckpt_best.pth")
    assert best["metric_to_watch"] == "mAP@0.50"
    assert best["acc"] == pytest.approx(max(float(r["valid/mAP@0.50"]) for r in rows))


def test_unknown_detection_metric_name_is_refused(tmp_path):
    train, valid = _loaders(tmp_path / "data")
    with pytest.raises(RecipeError, match=r"metric_to_watch 'mAP@0.5'.*mAP@0.50"):
        Trainer("bad", tmp_path, device="cpu").train(
            model=LearnedBoxesDetector(),
            training_params={"loss": "ClassFrequencyTestLoss", "metric_to_watch": "mAP@0.5", "silent_mode": True,
                             "valid_metrics_list": [{"DetectionMetrics_050": {"num_cls": 4,
                                                                               "post_prediction_callback": None}}]},
            train_loader=train, valid_loader=valid)
