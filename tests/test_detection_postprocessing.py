"""Shared detection post-processing (threshold, top-k, iterative or matrix NMS, multi-label, class-agnostic) against
plain-Python oracles written here, and the distribution-focal anchors/decoding of PP-YOLOE and YOLO-NAS heads."""

from __future__ import annotations

import math

import pytest
import torch

from super_recipes.detection.dfl_outputs import dfl_head_outputs, distribution_to_distances, generate_anchors
from super_recipes.detection.postprocessing import DetectionPostPredictionCallback, NMS_Type, select_detections
from super_recipes.detection.ppyoloe.postprocess import PPYoloEPostPredictionCallback
from super_recipes.errors import RecipeError


def iou(a: list[float], b: list[float]) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def greedy_oracle(boxes, scores, threshold, nms_iou, multi_label, agnostic, top_k, max_predictions):
    candidates = []
    for i, (box, row) in enumerate(zip(boxes.tolist(), scores.tolist(), strict=True)):
        classes = range(len(row)) if multi_label else [max(range(len(row)), key=lambda c: row[c])]
        candidates += [(row[c], i, c, box) for c in classes]
    candidates.sort(key=lambda t: -t[0])
    candidates = [c for c in candidates[:top_k] if c[0] >= threshold]
    kept = []
    for score, _, label, box in candidates:
        if all(iou(box, k[3]) <= nms_iou for k in kept if agnostic or k[2] == label):
            kept.append((score, _, label, box))
    return [(*k[3], k[0], float(k[2])) for k in kept[:max_predictions]]


def random_scene(seed: int, count: int = 40, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(count, 2, generator=generator) * 60
    sizes = torch.rand(count, 2, generator=generator) * 30 + 5
    boxes = torch.cat((centres - sizes / 2, centres + sizes / 2), dim=1)
    return boxes, torch.rand(count, classes, generator=generator)


@pytest.mark.parametrize("multi_label", [True, False])
@pytest.mark.parametrize("agnostic", [True, False])
def test_iterative_nms_matches_greedy_oracle(multi_label, agnostic):
    for seed in range(4):
        boxes, scores = random_scene(seed)
        (result,) = select_detections(boxes[None], scores[None], score_threshold=0.3, nms_threshold=0.5,
                                      multi_label_per_box=multi_label, class_agnostic_nms=agnostic, nms_top_k=50,
                                      max_predictions=12)
        expected = greedy_oracle(boxes, scores, 0.3, 0.5, multi_label, agnostic, 50, 12)
        assert result.shape == (len(expected), 6)
        assert torch.allclose(result, torch.tensor(expected).reshape(-1, 6), atol=1e-5)


def test_multi_label_reports_one_box_under_two_classes():
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0]]])
    scores = torch.tensor([[[0.6, 0.3, 0.01]]])
    (multi,) = select_detections(boxes, scores, score_threshold=0.1, nms_threshold=0.5)
    (single,) = select_detections(boxes, scores, score_threshold=0.1, nms_threshold=0.5, multi_label_per_box=False)
    assert multi[:, 5].tolist() == [0.0, 1.0] and multi[:, 4].tolist() == pytest.approx([0.6, 0.3])
    assert single[:, 5].tolist() == [0.0]


def matrix_oracle(boxes, scores, labels, sigma):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    boxes, scores, labels = [boxes[i] for i in order], [scores[i] for i in order], [labels[i] for i in order]
    same = [[labels[i] == labels[j] for j in range(len(boxes))] for i in range(len(boxes))]
    overlap = [[iou(boxes[i], boxes[j]) if i < j and same[i][j] else 0.0 for j in range(len(boxes))]
               for i in range(len(boxes))]
    compensation = [max([overlap[k][i] for k in range(i)], default=0.0) for i in range(len(boxes))]
    decayed = []
    for j in range(len(boxes)):
        factors = [math.exp(-sigma * (overlap[i][j] ** 2 - compensation[i] ** 2)) for i in range(j)]
        decayed.append(scores[j] * min([1.0, *factors]))
    return sorted(zip(decayed, labels, strict=True), key=lambda t: -t[0])


def test_matrix_nms_decays_scores_like_the_paper():
    boxes, scores = random_scene(7, count=15, classes=2)
    (result,) = select_detections(boxes[None], scores[None], score_threshold=0.2, nms_threshold=0.5,
                                  nms_type=NMS_Type.MATRIX, matrix_nms_sigma=2.0, nms_top_k=1000)
    candidates = [(boxes[i].tolist(), scores[i, c].item(), c) for i in range(15) for c in range(2)
                  if scores[i, c] >= 0.2]
    expected = [t for t in matrix_oracle([c[0] for c in candidates], [c[1] for c in candidates],
                                         [c[2] for c in candidates], 2.0) if t[0] >= 0.2]
    assert result[:, 4].tolist() == pytest.approx([t[0] for t in expected], abs=1e-5)
    assert result[:, 5].tolist() == [float(t[1]) for t in expected]
    # Decay never raises a score, and the best box of each class keeps its own.
    assert (result[:, 4] <= 1.0).all()


def test_empty_and_all_below_threshold():
    boxes, scores = random_scene(1)
    for nms_type in ("iterative", "matrix"):
        results = select_detections(boxes[None], scores[None] * 0.1, score_threshold=0.5, nms_threshold=0.5,
                                    nms_type=nms_type)
        assert results[0].shape == (0, 6)
    assert select_detections(torch.zeros(2, 0, 4), torch.zeros(2, 0, 3), score_threshold=0.1,
                             nms_threshold=0.5)[1].shape == (0, 6)


def test_bad_settings_fail_when_built():
    with pytest.raises(RecipeError, match="nms_type must be one of"):
        PPYoloEPostPredictionCallback(nms_type="fast")
    with pytest.raises(RecipeError, match=r"score threshold must lie in \[0, 1\]"):
        PPYoloEPostPredictionCallback(score_threshold=2.0)


def test_generate_anchors_layout():
    anchors, points, counts, strides = generate_anchors([(2, 3), (1, 2)], [8, 16], grid_cell_size=5.0)
    assert counts == [6, 2] and anchors.shape == (8, 4) and strides[:, 0].tolist() == [8] * 6 + [16] * 2
    # Row-major: the second anchor is the next column of the first row; the last is level 2, column 2.
    assert points[1].tolist() == [12.0, 4.0] and points[-1].tolist() == [24.0, 8.0]
    assert anchors[-1].tolist() == [24.0 - 40.0, 8.0 - 40.0, 24.0 + 40.0, 8.0 + 40.0]


def test_dfl_outputs_per_mode_and_decoding():
    reg_max = 4
    cls = [torch.zeros(1, 2, 2, 2)]
    # Every side's distribution is one-hot at bin 3: boxes reach 3 strides from the cell centre.
    distri = torch.full((1, 4, reg_max + 1, 2, 2), -1e4)
    distri[:, :, 3] = 0
    reg = [distri.reshape(1, 4 * (reg_max + 1), 2, 2)]
    assert distribution_to_distances(reg[0].flatten(2).permute(0, 2, 1), reg_max)[0, 0].tolist() == [3.0] * 4
    train = dfl_head_outputs(cls, reg, [8], reg_max, training=True)
    assert len(train) == 6 and train[0].shape == (1, 4, 2) and torch.allclose(train[0], torch.full((1, 4, 2), 0.5))
    (boxes, scores), raw = dfl_head_outputs(cls, reg, [8], reg_max, training=False)
    assert boxes[0, 0].tolist() == [4 - 24, 4 - 24, 4 + 24, 4 + 24] and len(raw) == 6 and scores.shape == (1, 4, 2)


def test_users_subclass_the_base_callback():
    class TopOne(DetectionPostPredictionCallback):
        def forward(self, outputs, device=None):
            boxes, scores = outputs
            return select_detections(boxes, scores, score_threshold=0.0, nms_threshold=1.0, max_predictions=1)

    boxes, scores = random_scene(3)
    (result,) = TopOne()((boxes[None], scores[None]))
    assert result.shape == (1, 6) and result[0, 4] == scores.max()
    with pytest.raises(TypeError):
        DetectionPostPredictionCallback()
