"""PPYoloELoss (PP-YOLOE / YOLO-NAS): ATSS and task-aligned assignment, loss terms, and the stage-switch callback.

Head outputs are built with the shared ``dfl_outputs`` helpers (anchors, the training 6-tuple); assignments and
loss values are checked against plain-Python oracles written here from the papers' definitions.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from super_recipes.detection.dfl_outputs import dfl_head_outputs, generate_anchors
from super_recipes.detection.ppyoloe.assigners import pad_targets
from super_recipes.detection.ppyoloe.loss import PPYoloELoss, distribution_focal_loss, giou
from super_recipes.engine.distributed import free_port
from super_recipes.errors import RecipeError
from super_recipes.losses import build_loss

REG_MAX = 16


def raw_outputs(size: int, strides: tuple[int, ...], scores: torch.Tensor | None = None,
                distri: torch.Tensor | None = None, batch: int = 1, num_classes: int = 2, seed: int = 0) -> tuple:
    """The head's training 6-tuple for a ``size`` px input; random scores/logits unless given."""
    anchors, points, counts, stride_tensor = generate_anchors([(size // s, size // s) for s in strides], strides)
    g = torch.Generator().manual_seed(seed)
    if scores is None:
        scores = torch.rand(batch, len(points), num_classes, generator=g) * 0.8 + 0.1
    if distri is None:
        distri = torch.randn(batch, len(points), 4 * (REG_MAX + 1), generator=g)
    return scores, distri, anchors, points, counts, stride_tensor


def xyxy(box_cxcywh: tuple[float, ...]) -> tuple[float, float, float, float]:
    cx, cy, w, h = box_cxcywh
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def inside(point, box) -> bool:
    return box[0] < point[0] < box[2] and box[1] < point[1] < box[3]


def atss_oracle(anchors: torch.Tensor, counts: list[int], box, topk: int = 9) -> tuple[set[int], list[float]]:
    """ATSS positives of one box (Zhang et al. 2020, steps 1-5), one anchor at a time."""
    boxes = anchors.tolist()
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    candidates, start = [], 0
    for count in counts:
        level = range(start, start + count)
        candidates += sorted(level, key=lambda i: math.dist(((boxes[i][0] + boxes[i][2]) / 2,
                                                             (boxes[i][1] + boxes[i][3]) / 2), centre))[:topk]
        start += count
    overlaps = [iou(boxes[i], box) for i in candidates]
    threshold = statistics.mean(overlaps) + statistics.stdev(overlaps)
    positives = {i for i, o in zip(candidates, overlaps, strict=True)
                 if o > threshold and inside(((boxes[i][0] + boxes[i][2]) / 2, (boxes[i][1] + boxes[i][3]) / 2), box)}
    return positives, [iou(b, box) for b in boxes]


def fg_set(assignment, image: int = 0) -> set[int]:
    return set(assignment.fg[image].nonzero().flatten().tolist())


# ------------------------------------------------------------------------------------------- assignment
def test_pad_targets_groups_boxes_by_image():
    targets = torch.tensor([[1, 2, 10, 10, 4, 6], [0, 1, 5, 5, 2, 2], [1, 0, 20, 30, 10, 10]], dtype=torch.float32)
    labels, boxes, mask = pad_targets(targets, batch_size=3)
    assert labels.tolist() == [[1, 0], [2, 0], [0, 0]]
    assert mask.tolist() == [[True, False], [True, True], [False, False]]
    assert boxes[1].tolist() == [[8, 7, 12, 13], [15, 25, 25, 35]] and boxes[0, 0].tolist() == [4, 4, 6, 6]
    with pytest.raises(RecipeError, match="image indices"):
        pad_targets(targets, batch_size=1)


def test_atss_picks_the_anchors_the_definition_picks():
    # Three levels on a 64 px input: 8x8 cells of stride 8, 4x4 of 16, 2x2 of 32 (fewer than topk: all candidates).
    outputs = raw_outputs(64, (8, 16, 32))
    loss = PPYoloELoss(num_classes=2, use_static_assigner=True)
    # Expected by hand: the stride-8 cells whose centres (12 + 8k) are nearest the box centre and inside it.
    cases = {(13.1, 18.7, 17.0, 15.0): {9, 10, 17, 18}, (30.3, 27.9, 38.0, 30.0): {19, 27, 28, 35},
             (21.5, 37.1, 30.0, 50.0): {26, 34, 35, 42, 43}, (9.7, 9.1, 9.0, 11.0): {1, 9}}
    for box, by_hand in cases.items():
        assignment = loss.assign(outputs, torch.tensor([[0, 1, *box]]))
        expected, _ = atss_oracle(outputs[2], outputs[4], xyxy(box))
        assert fg_set(assignment) == expected == by_hand
        # The anchor whose cell holds the box centre is always one of them (closest, inside, highest IoU).
        assert int(box[1] // 8) * 8 + int(box[0] // 8) in expected
        fg = assignment.fg[0]
        assert (assignment.labels[0][fg] == 1).all() and (assignment.labels[0][~fg] == 2).all()
        assert torch.allclose(assignment.boxes[0][fg], torch.tensor(xyxy(box)).expand(len(expected), 4))
    # A box far smaller than the 40 px anchors: all candidates overlap it about equally, none beats mean + std.
    small = loss.assign(raw_outputs(32, (8, 16)), torch.tensor([[0, 1, 13.1, 18.7, 17.0, 15.0]]))
    assert not small.fg.any() and atss_oracle(*raw_outputs(32, (8, 16))[2:5:2], xyxy((13.1, 18.7, 17, 15)))[0] == set()


def test_atss_soft_targets_are_the_predicted_box_iou_and_conflicts_go_to_the_larger_overlap():
    outputs = raw_outputs(64, (8, 16, 32), batch=2, num_classes=3, seed=1)
    boxes = [(30.0, 30.0, 24.0, 20.0), (36.0, 34.0, 20.0, 26.0), (20.0, 44.0, 30.0, 16.0)]
    targets = torch.tensor([[0, 2, *boxes[0]], [0, 0, *boxes[1]], [1, 1, *boxes[2]]])
    loss = PPYoloELoss(num_classes=3)
    assignment = loss.assign(outputs, targets)
    pred_boxes = loss.decode(outputs[1], outputs[3] / outputs[5]) * outputs[5]
    wanted = [[(2, boxes[0]), (0, boxes[1])], [(1, boxes[2])]]
    for image, gts in enumerate(wanted):
        choices: dict[int, list[tuple[float, int, tuple]]] = {}
        for label, box in gts:
            positives, overlaps = atss_oracle(outputs[2], outputs[4], xyxy(box))
            for a in positives:
                choices.setdefault(a, []).append((overlaps[a], label, box))
        assert fg_set(assignment, image) == set(choices)
        if image == 0:
            assert any(len(c) > 1 for c in choices.values())  # the two boxes compete for some anchors
        for a, competing in choices.items():
            _, label, box = max(competing)
            assert int(assignment.labels[image, a]) == label
            target = assignment.scores[image, a]
            assert target.nonzero().flatten().tolist() == [label] or float(target.sum()) == 0
            assert float(target[label]) == pytest.approx(iou(pred_boxes[image, a].tolist(), xyxy(box)), abs=1e-5)
    # Batched over images (padded to two boxes each) == each image alone.
    for image in (0, 1):
        rows = targets[targets[:, 0] == image].clone()
        rows[:, 0] = 0
        alone = loss.assign((outputs[0][image:image + 1], outputs[1][image:image + 1], *outputs[2:]), rows)
        assert torch.equal(alone.fg[0], assignment.fg[image])
        assert torch.allclose(alone.scores[0], assignment.scores[image])


def test_task_aligned_assigner_picks_the_best_aligned_anchors_inside_the_box():
    strides = (8, 16, 32)
    _, _, anchors, points, counts, stride_tensor = raw_outputs(64, strides)
    g = torch.Generator().manual_seed(3)
    box = (30.0, 33.0, 40.0, 36.0)
    gt = xyxy(box)
    # Predicted boxes: the ground truth jittered, so every anchor has a distinct, non-zero IoU and metric.
    pred = torch.tensor(gt).expand(len(points), 4) + torch.randn(len(points), 4, generator=g) * 3
    distances = torch.cat([points - pred[:, :2], pred[:, 2:] - points], -1) / stride_tensor
    scores = torch.rand(1, len(points), 2, generator=g) * 0.8 + 0.1
    # Logits whose expectation is exactly the (clamped) distance: mass split between the two nearest bins.
    distri = exact_distribution(distances.clamp(0, REG_MAX - 1e-3))[None]
    outputs = (scores, distri, anchors, points, counts, stride_tensor)
    loss = PPYoloELoss(num_classes=2, use_static_assigner=False)
    pred_boxes = (loss.decode(distri, points / stride_tensor) * stride_tensor)[0].tolist()
    metric = {a: float(scores[0, a, 1]) * iou(pred_boxes[a], gt) ** 6 for a in range(len(points))
              if inside(points[a].tolist(), gt)}
    assert len(metric) > 13
    for topk in (13, 5):
        loss.assigner.topk = topk
        assignment = loss.assign(outputs, torch.tensor([[0, 1, *box]]))
        best = sorted(metric, key=metric.get, reverse=True)[:topk]
        assert fg_set(assignment) == set(best)
        top_iou = max(iou(pred_boxes[a], gt) for a in best)
        for a in best:  # soft target: metric rescaled so that the best anchor gets the best IoU
            assert float(assignment.scores[0, a, 1]) == pytest.approx(metric[a] / metric[best[0]] * top_iou,
                                                                      rel=1e-4)
        assert float(assignment.scores[0, :, 0].abs().sum()) == 0


def test_task_aligned_conflicts_go_to_the_best_predicted_overlap_batched_over_images():
    _, _, anchors, points, counts, stride_tensor = raw_outputs(64, (8, 16, 32))
    g = torch.Generator().manual_seed(7)
    # Predicted boxes around the image centre, so both (overlapping) boxes have a non-zero metric everywhere.
    centre = torch.tensor([32.0, 32.0, 32.0, 32.0])
    pred = centre + torch.tensor([-14.0, -14.0, 14.0, 14.0]) + torch.randn(2, len(points), 4, generator=g) * 4
    distances = torch.cat([points - pred[..., :2], pred[..., 2:] - points], -1) / stride_tensor
    distri = exact_distribution(distances.clamp(0, REG_MAX - 1e-3))
    scores = torch.rand(2, len(points), 3, generator=g) * 0.8 + 0.1
    outputs = (scores, distri, anchors, points, counts, stride_tensor)
    gts = [[(2, (28.0, 30.0, 28.0, 24.0)), (0, (36.0, 34.0, 24.0, 28.0))], [(1, (30.0, 32.0, 30.0, 30.0))]]
    targets = torch.tensor([[image, label, *box] for image, boxes in enumerate(gts) for label, box in boxes])
    loss = PPYoloELoss(num_classes=3, use_static_assigner=False)
    loss.assigner.topk = 6
    assignment = loss.assign(outputs, targets)
    pred_boxes = (loss.decode(distri, points / stride_tensor) * stride_tensor).tolist()
    for image, boxes in enumerate(gts):
        choices: dict[int, list[tuple[float, int]]] = {}
        metrics = []
        for j, (label, box) in enumerate(boxes):
            gt = xyxy(box)
            metric = {a: float(scores[image, a, label]) * iou(pred_boxes[image][a], gt) ** 6
                      for a in range(len(points)) if inside(points[a].tolist(), gt)}
            metrics.append(metric)
            for a in sorted(metric, key=metric.get, reverse=True)[:6]:
                choices.setdefault(a, []).append((iou(pred_boxes[image][a], gt), j))
        assert fg_set(assignment, image) == set(choices)
        if image == 0:
            assert any(len(c) > 1 for c in choices.values())
        kept = {a: max(c)[1] for a, c in choices.items()}
        for j, (label, box) in enumerate(boxes):
            mine = [a for a, k in kept.items() if k == j]
            best_metric = max(metrics[j][a] for a in mine)
            best_iou = max(iou(pred_boxes[image][a], xyxy(box)) for a in mine)
            for a in mine:
                assert int(assignment.labels[image, a]) == label
                assert float(assignment.scores[image, a, label]) == pytest.approx(
                    metrics[j][a] / best_metric * best_iou, rel=1e-4)


def exact_distribution(distances: torch.Tensor) -> torch.Tensor:
    """Logits ``[..., 4 * (REG_MAX + 1)]`` whose softmax expectation is exactly ``distances`` ``[..., 4]``."""
    left = distances.floor().long()
    frac = distances - left
    probs = F.one_hot(left, REG_MAX + 1) * (1 - frac)[..., None] + F.one_hot(left + 1, REG_MAX + 1) * frac[..., None]
    return probs.clamp(min=1e-30).log().flatten(-2)


# ------------------------------------------------------------------------------------------- loss terms
def perfect_outputs(box, num_classes: int = 2, label: int = 1) -> tuple:
    """Every anchor inside ``box`` predicts it exactly (two-bin distributions); scores set after assignment."""
    _, _, anchors, points, counts, stride_tensor = raw_outputs(64, (8, 16, 32))
    gt = torch.tensor(xyxy(box))
    distances = torch.cat([points - gt[:2], gt[2:] - points], -1) / stride_tensor
    distances = torch.where(distances > 0, distances, torch.full_like(distances, 1.5))  # outside: anything
    distri = exact_distribution(distances)[None]
    scores = torch.zeros(1, len(points), num_classes)
    return scores, distri, anchors, points, counts, stride_tensor


@pytest.mark.parametrize("static", [True, False])
def test_a_perfect_prediction_costs_only_the_dfl_entropy(static):
    box = (29.0, 35.0, 22.0, 18.0)
    targets = torch.tensor([[0, 1, *box]])
    outputs = perfect_outputs(box)
    loss = PPYoloELoss(num_classes=2, use_static_assigner=static)
    outputs[0][0, :, 1] = (torch.tensor([inside(p, xyxy(box)) for p in outputs[3].tolist()])).float()
    fg = loss.assign(outputs, targets).fg[0]
    outputs[0][0, :, 1] = fg.float()  # probability 1 exactly where the target is 1, else 0
    assignment = loss.assign(outputs, targets)
    assert torch.equal(assignment.fg[0], fg) and torch.allclose(assignment.scores[0, fg, 1], torch.ones(int(fg.sum())))
    total, items = loss(outputs, targets)
    cls, iou_item, dfl, reported_total = items.tolist()
    assert cls == pytest.approx(0, abs=1e-6) and iou_item == pytest.approx(0, abs=1e-5)
    # DFL of a two-bin distribution at its own expectation: the binary entropy of the fraction, per side.
    gt = torch.tensor(xyxy(box))
    points, strides = outputs[3][fg], outputs[5][fg]
    frac = (torch.cat([points - gt[:2], gt[2:] - points], -1) / strides).frac()
    entropy = -(frac * frac.clamp(min=1e-12).log() + (1 - frac) * (1 - frac).clamp(min=1e-12).log())
    assert dfl == pytest.approx(float(entropy.mean(-1).mean()), rel=1e-4)
    assert reported_total == pytest.approx(0.5 * dfl + 2.5 * iou_item + cls, rel=1e-5) == float(total)


def test_dfl_of_a_one_hot_distribution_at_the_exact_bin():
    logit = 4.0
    logits = torch.zeros(3, 4, REG_MAX + 1)
    bins = torch.tensor([[0, 3, 7, 15], [1, 1, 1, 1], [9, 2, 5, 12]])
    logits.scatter_(-1, bins[..., None], logit)
    value = distribution_focal_loss(logits, bins.float())
    # -log softmax at the peak: log(1 + REG_MAX * e^-logit), whatever the bin.
    assert torch.allclose(value, torch.full((3,), math.log1p(REG_MAX * math.exp(-logit))), rtol=1e-4)
    # Between two bins the loss weighs both cross entropies by closeness.
    halfway = distribution_focal_loss(torch.zeros(1, 4, REG_MAX + 1), torch.full((1, 4), 2.25))
    assert float(halfway) == pytest.approx(math.log(REG_MAX + 1), rel=1e-6)


def test_giou_matches_its_definition():
    a, b = torch.tensor([[0.0, 0, 4, 4], [0, 0, 2, 2]]), torch.tensor([[2.0, 2, 6, 6], [3, 3, 4, 4]])
    # Pair 1: IoU 4/28, hull 36 -> 4/28 - 8/36; pair 2: disjoint, union 5, hull 16 -> -11/16.
    assert torch.allclose(giou(a, b), torch.tensor([4 / 28 - 8 / 36, -11 / 16]))


@pytest.mark.parametrize("static", [True, False])
def test_classification_terms_match_varifocal_and_focal_definitions(static):
    outputs = raw_outputs(64, (8, 16, 32), batch=2, num_classes=3, seed=5)
    targets = torch.tensor([[0, 2, 30, 30, 24, 20], [0, 0, 36, 34, 20, 26], [1, 1, 20, 44, 30, 16]])
    assignment = PPYoloELoss(num_classes=3, use_static_assigner=static).assign(outputs, targets)
    p, t = outputs[0], assignment.scores
    positive = F.one_hot(assignment.labels, 4)[..., :3].bool()
    bce = -(t * p.log() + (1 - t) * (1 - p).log())
    norm = max(float(t.sum()), 1.0)
    varifocal = float((bce * torch.where(positive, t, 0.75 * p ** 2)).sum()) / norm
    alpha = (0.25 * t + 0.75 * (1 - t)) if static else 1.0
    focal = float((bce * (p - t).abs() ** 2 * alpha).sum()) / norm
    for use_varifocal, expected in ((True, varifocal), (False, focal)):
        loss = PPYoloELoss(num_classes=3, use_static_assigner=static, use_varifocal_loss=use_varifocal,
                           classification_loss_weight=3.0)
        total, items = loss(outputs, targets)
        assert float(items[0]) == pytest.approx(expected, rel=1e-5)
        assert float(total) == pytest.approx(3.0 * expected + 2.5 * float(items[1]) + 0.5 * float(items[2]),
                                             rel=1e-5)
    assert varifocal != pytest.approx(focal, rel=1e-2)


def test_gradients_eval_input_empty_targets_and_errors():
    scores, distri, *rest = raw_outputs(64, (8, 16, 32), batch=2, num_classes=3)
    scores, distri = scores.requires_grad_(), distri.requires_grad_()
    outputs = (scores, distri, *rest)
    loss = PPYoloELoss(num_classes=3)
    targets = torch.tensor([[1, 2, 30, 30, 24, 20]])  # image 0 has no boxes
    total, items = loss(outputs, targets)
    total.backward()
    assert torch.isfinite(scores.grad).all() and scores.grad[0].abs().sum() > 0 and distri.grad[1].abs().sum() > 0
    assert distri.grad[0].abs().sum() == 0  # no foreground in image 0: no box gradient there
    decoded = (torch.zeros(2, scores.shape[1], 4), scores.detach())
    assert torch.equal(loss((decoded, outputs), targets)[1], items)
    assert torch.equal(loss(outputs, targets, crowd_targets=torch.tensor([[0, 1, 30, 30, 50, 50.0]]))[1], items)
    empty_total, empty_items = loss(outputs, torch.zeros(0, 6))
    assert empty_items[1] == 0 and empty_items[2] == 0 and empty_items[0] > 0 and torch.isfinite(empty_total)
    scores.grad = None
    empty_total.backward()
    assert scores.grad.abs().sum() > 0
    assert loss.component_names == ["cls", "iou", "dfl", "total"]
    with pytest.raises(RecipeError, match="reg_max"):
        PPYoloELoss(num_classes=3, reg_max=8)(outputs, targets)
    with pytest.raises(RecipeError, match="num_classes"):
        PPYoloELoss(num_classes=80)(outputs, targets)
    with pytest.raises(RecipeError, match="labels"):
        loss(outputs, torch.tensor([[0, 5, 30, 30, 24, 20]]))
    with pytest.raises(RecipeError, match="6-tuple|training output"):
        loss([torch.zeros(1)], targets)


def test_loss_is_float32_under_autocast_and_built_from_its_recipe_name():
    loss = build_loss("PPYoloELoss", {"num_classes": 3, "use_static_assigner": False, "iou_loss_weight": 1.0})
    assert isinstance(loss, PPYoloELoss) and not loss.use_static_assigner and loss.iou_loss_weight == 1.0
    assert isinstance(build_loss({"ppyoloe_loss": {"num_classes": 3, "reg_max": 16}}), PPYoloELoss)  # SG 3.0 name
    outputs = raw_outputs(64, (8, 16, 32), num_classes=3)
    half = (outputs[0].bfloat16(), outputs[1].bfloat16(), *outputs[2:])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, items = loss(half, torch.tensor([[0, 1, 30, 30, 24, 20]]))
    assert total.dtype == torch.float32 and torch.isfinite(items).all()


DDP_SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from super_recipes.detection.dfl_outputs import generate_anchors
    from super_recipes.detection.ppyoloe.loss import PPYoloELoss

    rank = int(sys.argv[2])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[1]}", rank=rank, world_size=2)
    anchors, points, counts, strides = generate_anchors([(8, 8), (4, 4), (2, 2)], (8, 16, 32))
    g = torch.Generator().manual_seed(rank)
    scores = (torch.rand(1, len(points), 3, generator=g) * 0.8 + 0.1).requires_grad_()
    distri = torch.randn(1, len(points), 68, generator=g).requires_grad_()
    outputs = (scores, distri, anchors, points, counts, strides)
    boxes = [[0, 1, 30, 30, 24, 20]] if rank == 0 else [[0, 2, 20, 20, 30, 30], [0, 0, 44, 40, 24, 30]]
    targets = torch.tensor(boxes, dtype=torch.float32)
    loss = PPYoloELoss(num_classes=3)
    train_items = loss(outputs, targets)[1]
    local_sum = float(loss.assign(outputs, targets).scores.sum())
    if rank == 1:
        dist.barrier()  # rank 0 evaluates first, alone: an evaluation must not wait for the other rank
    with torch.no_grad():
        eval_items = loss(outputs, targets)[1]
    if rank == 0:
        dist.barrier()
    print(repr(float(train_items[0])), repr(float(eval_items[0])), repr(local_sum), flush=True)
    dist.destroy_process_group()
""")


def test_ddp_normalises_training_by_the_mean_score_sum_over_ranks(tmp_path):
    script = tmp_path / "ddp_loss.py"
    script.write_text(DDP_SCRIPT)
    port = str(free_port())
    workers = [subprocess.Popen([sys.executable, str(script), port, str(rank)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        outputs = [worker.communicate(timeout=120) for worker in workers]
    finally:  # a rank stuck in a collective would otherwise outlive the test
        for worker in workers:
            worker.kill()
    assert all(worker.returncode == 0 for worker in workers), outputs
    (train0, eval0, sum0), (train1, eval1, sum1) = [map(float, out.split()) for out, _ in outputs]
    mean = max((sum0 + sum1) / 2, 1.0)
    assert sum0 != pytest.approx(sum1, rel=0.05)
    for train, evaluated, local in ((train0, eval0, sum0), (train1, eval1, sum1)):
        # Same unnormalised sum; training divides by the ranks' mean, evaluation by the rank's own.
        assert train * mean == pytest.approx(evaluated * max(local, 1.0), rel=1e-5)


# ----------------------------------------------------------------------------------------- training
class ToyHead(torch.nn.Module):
    """Per-level learnable maps through the shared DFL head outputs: the smallest thing the loss can train."""

    def __init__(self, num_classes: int = 4, size: int = 64, strides: tuple[int, ...] = (8, 16, 32)):
        super().__init__()
        self.strides = strides
        self.cls = torch.nn.ParameterList([torch.nn.Parameter(torch.full((1, num_classes, size // s, size // s),
                                                                         -4.0)) for s in strides])
        self.reg = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(1, 4 * (REG_MAX + 1), size // s,
                                                                          size // s)) for s in strides])
        self.mix = torch.nn.Conv2d(3, 1, 1)  # ties the output to the input batch size

    def forward(self, x: torch.Tensor):
        batch = self.mix(x).mean() * 0
        return dfl_head_outputs([c.expand(len(x), -1, -1, -1) + batch for c in self.cls],
                                [r.expand(len(x), -1, -1, -1) for r in self.reg], self.strides, REG_MAX,
                                training=self.training)


@pytest.mark.parametrize("static", [True, False])
def test_gradient_steps_on_a_toy_head_fit_the_boxes(static):
    torch.manual_seed(0)
    head = ToyHead(num_classes=4)
    with torch.no_grad():  # start at p = 0.5 everywhere and boxes of 2 strides per side
        for level in head.reg:
            level.view(1, 4, REG_MAX + 1, *level.shape[-2:])[:, :, 2] = 3.0
        for level in head.cls:
            level.fill_(0.0)
    loss = PPYoloELoss(num_classes=4, use_static_assigner=static)
    boxes = [(30.0, 30.0, 24.0, 20.0), (12.0, 48.0, 14.0, 20.0)]
    targets = torch.tensor([[0, 1, *boxes[0]], [0, 3, *boxes[1]]])
    optimizer = torch.optim.Adam(head.parameters(), lr=0.1)
    history = []
    for _ in range(60):
        total, items = loss(head(torch.zeros(1, 3, 64, 64)), targets)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(items)
    first, last = history[0], history[-1]
    assert torch.isfinite(torch.stack(history)).all()
    assert last[3] < 0.05 * first[3] and (last[:3] < first[:3]).all(), (first, last)
    head.eval()
    with torch.no_grad():
        (pred_boxes, scores), _ = head(torch.zeros(1, 3, 64, 64))
    for label, box in zip((1, 3), boxes, strict=True):  # the most confident anchor of each class now finds its object
        best = int(scores[0, :, label].argmax())
        assert float(scores[0, best, label]) > 0.5 and iou(pred_boxes[0, best].tolist(), xyxy(box)) > 0.9
