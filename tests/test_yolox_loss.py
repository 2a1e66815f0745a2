"""YOLOX loss (SimOTA assignment, loss terms, fast == reference) and the training stage-switch callback.

Raw maps are built by hand (``[B, 1, H, W, 5 + C]`` per stride 8/16/32, as the YOLOX model returns them), so
no model is needed except in the one end-to-end run that checks the switch reaches DataLoader workers.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from super_recipes import Trainer, dataloaders
from super_recipes.callbacks import Callback, PhaseContext
from super_recipes.data.samplers import make_resumable
from super_recipes.detection.yolox.loss import YoloXDetectionLoss, YoloXFastDetectionLoss
from super_recipes.detection.yolox.simota import lowest_k, prior_masks
from super_recipes.detection.yolox.stage_switch import YoloXTrainingStageSwitchCallback, mixing_transforms
from super_recipes.errors import RecipeError
from super_recipes.losses import build_loss
from super_recipes.registry import CALLBACKS

STRIDES = (8, 16, 32)


def blank_maps(size: int, num_classes: int, batch: int = 1) -> list[torch.Tensor]:
    """Every anchor predicts a tiny box far off the image (IoU 0 with anything), obj -2, class logits -3/+1."""
    maps = []
    for stride in STRIDES:
        m = torch.zeros(batch, 1, size // stride, size // stride, 5 + num_classes)
        m[..., :2], m[..., 2:4], m[..., 4] = -20.0, -5.0, -2.0
        m[..., 5:] = torch.tensor([-3.0, 1.0] * (num_classes // 2))
        maps.append(m)
    return maps


def put_box(maps: list[torch.Tensor], level: int, row: int, col: int, box: tuple[float, ...]) -> None:
    """Make anchor (level, row, col) of image 0 predict ``box`` (cx, cy, w, h)."""
    s = STRIDES[level]
    cx, cy, w, h = box
    maps[level][0, 0, row, col, :4] = torch.tensor([cx / s - col, cy / s - row, math.log(w / s), math.log(h / s)])


def random_batch(seed: int, mode: str, counts: tuple[int, ...] = (6, 0, 12, 1), size: int = 128,
                 num_classes: int = 3) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Random maps ('near': box sizes around the targets', so k > 1 and boxes compete; 'zero': all-equal
    predictions and integer boxes, full of cost ties; 'rand') and shuffled targets of ``counts`` boxes/image."""
    g = torch.Generator().manual_seed(seed)
    maps = []
    for s in STRIDES:
        m = torch.randn(len(counts), 1, size // s, size // s, 5 + num_classes, generator=g) * 0.3
        if mode == "near":
            m[..., 2:4] += math.log(32.0 / s)
        maps.append(m.zero_() if mode == "zero" else m)
    rows = []
    for image, n in enumerate(counts):
        for _ in range(n):
            centre = torch.rand(2, generator=g) * size * 0.5 + size * 0.25
            wh = torch.rand(2, generator=g) * 60 + 8
            if mode == "zero":
                centre, wh = centre.round(), wh.round()
            label = torch.randint(0, num_classes, (1,), generator=g).float()
            rows.append(torch.cat([torch.tensor([float(image)]), label, centre, wh]))
    targets = torch.stack(rows)
    return maps, targets[torch.randperm(len(targets), generator=g)]


# ------------------------------------------------------------------ the hand-made case
GT = (28.0, 28.0, 16.0, 16.0)  # one box, label 1, in a 64x64 image: 8x8 + 4x4 + 2x2 = 84 anchors
P1, P3, P4, P5 = (0, 3, 3), (0, 2, 2), (0, 4, 4), (0, 0, 0)  # (level, row, col) at stride 8
P2 = (1, 1, 1)  # stride 16
IOU_P1, IOU_P2, IOU_P3, IOU_P4 = 1.0, 0.75, 224 / 288, 0.6


def hand_made() -> tuple[list[torch.Tensor], torch.Tensor]:
    maps = blank_maps(64, 2)
    put_box(maps, *P1, GT)  # anchor centre (28, 28): in the box and the centre region
    put_box(maps, *P2, (28, 28, 16, 12))  # centre (24, 24): in both
    put_box(maps, *P3, (28, 30, 16, 16))  # centre (20, 20): on the box edge, so only in the centre region
    put_box(maps, *P4, (28, 32, 16, 16))  # centre (36, 36): only in the centre region
    put_box(maps, *P5, GT)  # centre (4, 4): outside both, a perfect box that must not count at all
    return maps, torch.tensor([[0.0, 1.0, *GT]])


def flat_index(level: int, row: int, col: int) -> int:
    sides = [64 // s for s in STRIDES]
    return sum(n * n for n in sides[:level]) + row * sides[level] + col


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_priors_of_the_hand_made_case():
    centres, strides = [], []
    for s in STRIDES:
        n = 64 // s
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        centres.append((torch.stack([xs, ys], -1).reshape(-1, 2) + 0.5) * s)
        strides.append(torch.full((n * n,), float(s)))
    in_box, in_centre = prior_masks(torch.tensor([GT[0:4]]), torch.cat(centres), torch.cat(strides), 2.5)
    # Stride 8: the 5x5 cells within 20 px of (28, 28); 16 and 32: every cell is within 40 / 80 px.
    assert int((in_box | in_centre).sum()) == 25 + 16 + 4
    assert (in_box & in_centre)[0].nonzero().flatten().tolist() == [flat_index(*P1), flat_index(*P2)]


@pytest.mark.parametrize("loss_cls", [YoloXDetectionLoss, YoloXFastDetectionLoss])
def test_hand_made_assignment_and_loss_items(loss_cls):
    maps, targets = hand_made()
    loss_fn = loss_cls(num_classes=2, use_l1=True)
    assignment = loss_fn.assign(maps, targets)
    # k = floor(1 + 0.75 + 0.778 + 0.6) = 3 (P5's perfect box is no candidate); P1 and P2 lie in box and centre
    # region; the third is the cheapest of the others: P3 (IoU 0.78) beats P4 (0.6).
    assert assignment.fg[0].nonzero().flatten().tolist() == sorted(flat_index(*p) for p in (P1, P2, P3))
    assert assignment.gt_index.tolist() == [0, 0, 0]
    ious_in_anchor_order = [IOU_P3, IOU_P1, IOU_P2]
    assert assignment.ious.tolist() == pytest.approx(ious_in_anchor_order, abs=1e-6)

    loss, items = loss_fn(maps, targets)
    named = dict(zip(loss_fn.component_names, items.tolist(), strict=True))
    num_fg = 3
    assert named["num_fg"] == num_fg
    assert named["iou"] == pytest.approx(sum(1 - u * u for u in ious_in_anchor_order) / num_fg, abs=1e-5)
    obj = (num_fg * softplus(2.0) + (84 - num_fg) * softplus(-2.0)) / num_fg  # logit -2 everywhere
    assert named["obj"] == pytest.approx(obj, abs=1e-5)
    cls = sum(softplus(-3.0) + softplus(1.0) - u for u in ious_in_anchor_order) / num_fg  # targets [0, IoU]
    assert named["cls"] == pytest.approx(cls, abs=1e-5)
    # L1 to the encoded box: P1 predicts it exactly, P3 is 2 px (0.25 cell) low, P2's height is log(12/16) off.
    assert named["l1"] == pytest.approx((0.25 + abs(math.log(0.75))) / num_fg, abs=1e-5)
    total = 5 * named["iou"] + named["obj"] + named["cls"] + named["l1"]
    assert named["total"] == pytest.approx(total, abs=1e-5) and float(loss) == pytest.approx(total, abs=1e-5)

    giou = loss_cls(num_classes=2, iou_type="giou")(maps, targets)[1]
    # Each predicted box and the target span the same hull as their union here, so GIoU = IoU.
    assert giou[0] == pytest.approx(sum(1 - u for u in ious_in_anchor_order) / num_fg, abs=1e-5)
    assert giou[3] == 0.0  # use_l1 off


@pytest.mark.parametrize("loss_cls", [YoloXDetectionLoss, YoloXFastDetectionLoss])
def test_an_anchor_wanted_by_two_boxes_goes_to_the_cheapest(loss_cls):
    maps, _ = hand_made()
    # Two boxes on the same spot: class 1 (which the logits favour) and class 0; every anchor both pick is shared.
    targets = torch.tensor([[0.0, 0.0, *GT], [0.0, 1.0, *GT]])
    assignment = loss_cls(num_classes=2).assign(maps, targets)
    assert int(assignment.fg.sum()) == 3
    assert assignment.gt_index.tolist() == [1, 1, 1]


@pytest.mark.parametrize("mode", ["near", "zero", "rand"])
def test_fast_assignment_equals_the_reference(mode):
    for seed in range(4):
        maps, targets = random_batch(seed, mode)
        reference = YoloXDetectionLoss(num_classes=3, use_l1=True)
        fast = YoloXFastDetectionLoss(num_classes=3, use_l1=True)
        expected, got = reference.assign(maps, targets), fast.assign(maps, targets)
        assert torch.equal(expected.fg, got.fg), (mode, seed)
        assert torch.equal(expected.gt_index, got.gt_index), (mode, seed)
        assert torch.equal(expected.labels, got.labels) and torch.allclose(expected.ious, got.ious, atol=1e-6)
        assert not expected.fg[1].any()  # the image without boxes
        assert int(expected.fg.sum()) > sum((6, 0, 12, 1)) // 2
        torch.testing.assert_close(fast(maps, targets)[1], reference(maps, targets)[1], atol=1e-5, rtol=0)


def test_lowest_k_breaks_ties_by_anchor_index():
    inf = float("inf")
    cost = torch.tensor([[3.0, 1.0, 1.0, 0.0, 1.0, 1.0], [inf, 2.0, 2.0, inf, 2.0, 5.0]])
    chosen = lowest_k(cost, torch.tensor([3, 2]))
    assert chosen.nonzero().tolist() == [[0, 1], [0, 2], [0, 3], [1, 1], [1, 2]]


def test_images_without_targets_only_learn_objectness():
    maps = [m.requires_grad_() for m in random_batch(0, "rand", counts=(1, 1))[0]]
    loss, items = YoloXFastDetectionLoss(num_classes=3, use_l1=True)(maps, torch.zeros(0, 6))
    obj = sum(F.softplus(m[..., 4]).sum() for m in maps)  # BCE against 0, normalised by max(num_fg, 1) = 1
    torch.testing.assert_close(items, torch.stack([torch.tensor(0.0), obj, *torch.zeros(3), obj]).detach())
    loss.backward()
    for m in maps:
        assert m.grad[..., 4].abs().sum() > 0 and m.grad[..., :4].abs().sum() == 0 and m.grad[..., 5:].abs().sum() == 0

    # An empty image next to a real one adds only its objectness, under the same normaliser.
    maps, targets = random_batch(1, "near", counts=(5, 0))
    both = YoloXDetectionLoss(num_classes=3)(maps, targets)[1]
    alone = YoloXDetectionLoss(num_classes=3)([m[:1] for m in maps], targets)[1]
    empty_obj = sum(float(F.softplus(m[1, ..., 4]).sum()) for m in maps)
    num_fg = float(alone[4])
    assert both[4] == num_fg and torch.allclose(both[[0, 2, 3]], alone[[0, 2, 3]])
    assert float(both[1]) == pytest.approx(float(alone[1]) + empty_obj / num_fg, rel=1e-5)


def test_gradients_flow_and_the_loss_decreases():
    maps, targets = random_batch(2, "near", counts=(3, 2))
    maps = [m.clone().requires_grad_() for m in maps]
    loss_fn = YoloXFastDetectionLoss(num_classes=3, use_l1=True)
    optimizer = torch.optim.Adam(maps, lr=0.05)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss, _ = loss_fn(maps, targets)
        loss.backward()
        assert all(torch.isfinite(m.grad).all() and m.grad.abs().sum() > 0 for m in maps)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_eval_output_crowd_targets_registry_and_shape_errors():
    maps, targets = random_batch(3, "near", counts=(2, 3))
    loss_fn = build_loss("YoloXFastDetectionLoss", {"num_classes": 3, "strides": [8, 16, 32]})
    assert isinstance(loss_fn, YoloXFastDetectionLoss)
    train_items = loss_fn(maps, targets)[1]
    # Eval mode gives (decoded, raw maps); crowd boxes never become positives, so they change nothing.
    torch.testing.assert_close(loss_fn((torch.zeros(2, 5, 8), maps), targets)[1], train_items)
    torch.testing.assert_close(loss_fn(maps, targets, crowd_targets=targets[:1])[1], train_items)
    with pytest.raises(RecipeError, match="num_classes"):
        YoloXDetectionLoss(num_classes=80)(maps, targets)
    with pytest.raises(RecipeError, match="iou_type"):
        YoloXDetectionLoss(num_classes=3, iou_type="ciou")
    assert "YoloXTrainingStageSwitchCallback" in CALLBACKS.names()


# ------------------------------------------------------------------ the stage switch
MIXING_TRANSFORMS = [{"DetectionMosaic": {"input_dim": [160, 160]}}, {"DetectionMixup": {"input_dim": [160, 160]}},
                     "DetectionStandardize", {"DetectionTargetsFormatTransform": {"output_format": "LABEL_CXCYWH"}}]


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def mixing_loader(data_dir, **dataloader_params) -> torch.utils.data.DataLoader:
    """Mosaic on a 2 x 160 px canvas with no crop after it: 320 px images while it is on, 160 px once off."""
    return dataloaders.get("shapes_detection_train",
                           dataset_params={"data_dir": str(data_dir), "num_images": 8, "transforms": MIXING_TRANSFORMS},
                           dataloader_params={"batch_size": 4, **dataloader_params})


def context(loader, epoch: int, max_epochs: int = 10, loss_fn=None) -> PhaseContext:
    # What the trainer holds: its rebuilt, resumable training loader (workers wrap the dataset in
    # BatchSeededDataset; the callback reaches the transforms either way).
    trainer = SimpleNamespace(train_loader=make_resumable(loader, seed=0),
                              loss_fn=loss_fn if loss_fn is not None else YoloXFastDetectionLoss(num_classes=4))
    return PhaseContext(trainer=trainer, epoch=epoch, max_epochs=max_epochs)


def is_mixing(ctx: PhaseContext) -> bool:
    mosaic, mixup = mixing_transforms(ctx.trainer.train_loader)
    assert mosaic.enable_mosaic == mixup.enable_mixup
    return mosaic.enable_mosaic


def test_stage_switch_turns_mixing_off_and_l1_on(shapes_dir):
    ctx = context(mixing_loader(shapes_dir), epoch=0)
    dataset = getattr(ctx.trainer.train_loader.dataset, "dataset", ctx.trainer.train_loader.dataset)
    callback = YoloXTrainingStageSwitchCallback(next_stage_start_epoch=3)
    callback.on_training_start(ctx)
    for epoch in range(2):
        ctx.epoch = epoch
        callback.on_train_loader_start(ctx)
        callback.on_epoch_end(ctx)
        assert is_mixing(ctx) and not ctx.trainer.loss_fn.use_l1
    assert dataset[0][0].shape[-1] == 320
    ctx.epoch = 2
    callback.on_train_loader_start(ctx)
    assert is_mixing(ctx)
    callback.on_epoch_end(ctx)  # before epoch 3's iterator and workers exist
    assert not is_mixing(ctx) and ctx.trainer.loss_fn.use_l1
    assert [t.additional_samples_count for t in dataset.transforms[:2]] == [0, 0]
    assert dataset[0][0].shape[-1] == 160

    resumed = context(mixing_loader(shapes_dir), epoch=5)  # a run resumed past the switch
    assert is_mixing(resumed)
    YoloXTrainingStageSwitchCallback(next_stage_start_epoch=3).on_training_start(resumed)
    assert not is_mixing(resumed) and resumed.trainer.loss_fn.use_l1


def test_stage_switch_refuses_what_it_cannot_switch(shapes_dir):
    persistent = mixing_loader(shapes_dir, num_workers=1, persistent_workers=True)
    callback = YoloXTrainingStageSwitchCallback(next_stage_start_epoch=3)
    with pytest.raises(RecipeError, match="persistent_workers"):
        callback.on_training_start(context(persistent, epoch=0))
    past = context(persistent, epoch=4)  # the workers do not exist yet: switching before they start works
    callback.on_training_start(past)
    assert not is_mixing(past)
    with pytest.raises(RecipeError, match="use_l1"):
        callback.on_training_start(context(mixing_loader(shapes_dir), epoch=0, loss_fn=torch.nn.MSELoss()))


class PooledRawMaps(torch.nn.Module):
    """YOLOX-shaped raw maps from average-pooled pixels: the smallest model the loss can train."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.head = torch.nn.Conv2d(3, num_classes + 5, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.head(F.avg_pool2d(x, s)).permute(0, 2, 3, 1)[:, None] for s in STRIDES]


class InputRecorder(Callback):
    def __init__(self):
        self.seen: list[tuple[int, int, bool]] = []

    def on_train_batch_start(self, context: PhaseContext) -> None:
        self.seen.append((context.epoch, context.inputs.shape[-1], context.trainer.loss_fn.use_l1))


def test_stage_switch_reaches_dataloader_workers_in_a_real_run(shapes_dir, tmp_path):
    recorder = InputRecorder()
    Trainer("stage_switch", tmp_path, device="cpu").train(
        model=PooledRawMaps(), train_loader=mixing_loader(shapes_dir, num_workers=1), callbacks=[recorder],
        training_params={"max_epochs": 2, "loss": "YoloXFastDetectionLoss", "criterion_params": {"num_classes": 4},
                         "initial_lr": 0.01, "silent_mode": True, "save_model": False,
                         "phase_callbacks": [{"YoloXTrainingStageSwitchCallback": {"next_stage_start_epoch": 1}}]})
    # Epoch 1's worker was started after the switch, so it made no mosaic (320 px) images.
    assert recorder.seen == [(0, 320, False), (0, 320, False), (1, 160, True), (1, 160, True)]
