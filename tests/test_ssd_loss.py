"""SSDLoss on hand-made cases (matching, offsets, hard negative mining, alpha), its check of the model's default
boxes, and SSDPostPredictCallback."""

from __future__ import annotations

import math

import pytest
import torch

from super_recipes import models
from super_recipes.detection.ssd.anchors import SSD_LITE_TF_320_ANCHORS, DefaultBoxes, decode_boxes, encode_boxes
from super_recipes.detection.ssd.loss import SSDLoss, match_default_boxes
from super_recipes.detection.ssd.postprocess import SSDPostPredictCallback
from super_recipes.errors import RecipeError
from tests.test_ssd import BOXES_160, BOXES_320


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return models.get("ssd_lite_mobilenet_v2", num_classes=80)

# --- SSDLoss on hand-made cases (boxes in pixels, cx, cy, w, h) ---

def test_matching_takes_the_best_overlaps_and_forces_one_box_per_object() -> None:
    dboxes = torch.tensor([[50.0, 50, 20, 20], [10, 10, 20, 20], [100, 100, 40, 40], [150, 150, 20, 20]])
    # Object A overlaps box 0 with IoU 360/440 > 0.5; object B overlaps box 2 with IoU 400/1600 < 0.5 only.
    gt = torch.tensor([[52.0, 50, 20, 20], [100, 100, 20, 20]])
    boxes, labels = match_default_boxes(gt, torch.tensor([3, 7]), dboxes, iou_thresh=0.5)
    assert labels.tolist() == [4, 0, 8, 0]  # label + 1; box 2 is B's best, so B claims it despite IoU 0.25
    torch.testing.assert_close(boxes[[0, 2]], gt)
    offsets = encode_boxes(boxes, dboxes)
    # (52 - 50) / (20 * 0.1) = 1; log(20 / 40) / 0.2 for B's size.
    torch.testing.assert_close(offsets[0], torch.tensor([1.0, 0.0, 0.0, 0.0]))
    half = math.log(0.5) / 0.2
    torch.testing.assert_close(offsets[2], torch.tensor([0.0, 0.0, half, half]))
    torch.testing.assert_close(decode_boxes(offsets, dboxes)[[0, 2]], gt)
    # Without objects everything is background.
    assert match_default_boxes(gt[:0], torch.tensor([]), dboxes)[1].tolist() == [0, 0, 0, 0]


def _smooth_l1(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def test_loss_mines_three_hard_negatives_per_positive() -> None:
    # One object on box 0 of eight (the others far away): one positive, seven negatives, three mined.
    dboxes = torch.tensor([[50.0, 50, 20, 20]] + [[200.0 + 30 * i, 200, 20, 20] for i in range(7)])
    targets = torch.tensor([[0.0, 2, 52, 50, 20, 20]])
    classes = 5  # 4 classes + background
    locations = torch.zeros(1, 4, 8)
    locations[0, :, 0] = torch.tensor([0.5, 0.0, 0.0, 2.0])  # against target offsets (1, 0, 0, 0)
    logits = torch.zeros(1, classes, 8)
    background = [0.0, 3.0, -1.0, 2.0, -2.0, 1.0, 0.5, -0.5]  # negatives 4, 2, 7 are the least background-like
    logits[0, 0] = torch.tensor(background)
    logits[0, 3, 0] = 1.0  # the positive's class (label 2 + 1)

    def ce(column: int, target: int) -> float:
        return -torch.log_softmax(logits[0, :, column], 0)[target].item()

    localisation = _smooth_l1(0.5 - 1.0) + _smooth_l1(2.0)
    mined = sorted((ce(j, 0) for j in range(1, 8)), reverse=True)
    classification = ce(0, 3) + sum(mined[:3])
    loss, items = SSDLoss(alpha=1.0, neg_pos_ratio=3.0)((locations, logits, dboxes), targets)
    assert loss.item() == pytest.approx(localisation + classification, rel=1e-5)
    assert items.tolist() == pytest.approx([localisation, classification, localisation + classification], rel=1e-5)
    assert classification != pytest.approx(ce(0, 3) + sum(mined[:4]), rel=1e-3)
    # alpha weighs classification against localisation (2 - alpha).
    weighted, _ = SSDLoss(alpha=1.5)((locations, logits, dboxes), targets)
    assert weighted.item() == pytest.approx(0.5 * localisation + 1.5 * classification, rel=1e-5)
    # A second image without objects adds nothing: the batch mean halves; eval outputs give the same loss.
    pair = (locations.repeat(2, 1, 1), logits.repeat(2, 1, 1), dboxes)
    halved, _ = SSDLoss()(pair, targets)
    assert halved.item() == pytest.approx(loss.item() / 2, rel=1e-5)
    again, _ = SSDLoss()((torch.zeros(2, 8, 9), pair), targets)
    assert again.item() == pytest.approx(halved.item(), rel=1e-6)


def test_loss_trains_the_model_and_checks_its_dboxes(model) -> None:
    x = torch.rand(2, 3, 160, 160)
    targets = torch.tensor([[0.0, 5, 80, 80, 60, 40], [1.0, 0, 40, 50, 30, 30], [1.0, 79, 120, 100, 50, 90]])
    model.train()
    loss, items = SSDLoss()(model(x), targets)
    loss.backward()
    assert math.isfinite(loss.item()) and items.shape == (3,) and SSDLoss.component_names[-1] == "total"
    assert model.heads.conf[0][3].weight.grad.abs().sum() > 0
    model.zero_grad()
    at_320 = DefaultBoxes(**SSD_LITE_TF_320_ANCHORS)
    with pytest.raises(RecipeError, match=f"{BOXES_320} default boxes but the model predicts {BOXES_160}"):
        SSDLoss(dboxes=at_320)(model(x), targets)
    with pytest.raises(RecipeError, match="alpha"):
        SSDLoss(alpha=3)


# --- post-processing ---

def test_post_prediction_callback_drops_background_and_keeps_pixel_boxes() -> None:
    decoded = torch.zeros(1, 3, 5 + 3)
    decoded[0, :, :4] = torch.tensor([[50.0, 50, 20, 20], [52, 50, 20, 20], [150, 150, 40, 20]])
    probabilities = torch.tensor([[0.9, 0.05, 0.0], [0.8, 0.0, 0.1], [0.0, 0.0, 0.7]])
    decoded[0, :, 5:] = probabilities
    decoded[0, :, 4] = probabilities.amax(-1)
    (rows,) = SSDPostPredictCallback(conf=0.3, iou=0.5)((decoded, None))
    # Box 1 is suppressed by box 0 (same class, IoU 0.82); classes are 0-based without background.
    torch.testing.assert_close(rows, torch.tensor([[40.0, 40, 60, 60, 0.9, 0], [130, 140, 170, 160, 0.7, 2]]))
    (low,) = SSDPostPredictCallback(conf=0.04, iou=0.5, classes=[1])(decoded)
    assert low[:, 5].tolist() == [1.0] and low[0, 4].item() == pytest.approx(0.05)
    with pytest.raises(RecipeError, match="train mode"):
        SSDPostPredictCallback()((torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), torch.zeros(3, 4)))


def test_objects_sharing_a_best_box_leave_it_to_the_last_one() -> None:
    dboxes = torch.tensor([[50.0, 50, 20, 20], [200, 200, 20, 20]])
    gt = torch.tensor([[50.0, 50, 18, 18], [50, 50, 16, 16]])  # both best on box 0
    boxes, labels = match_default_boxes(gt, torch.tensor([1, 2]), dboxes)
    assert labels.tolist() == [3, 0] and torch.equal(boxes[0], gt[1])
