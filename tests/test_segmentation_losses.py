"""Segmentation losses against independent computations written here (numpy or plain torch formulas), edge and
detail maps against hand-computed masks, ignore_index invariance, tuple outputs with weights, item names, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from super_recipes.errors import RecipeError
from super_recipes.losses import build_loss, loss_item_names, split_loss_output
from super_recipes.segmentation.losses import (
    BCEDiceLoss,
    DiceCEEdgeLoss,
    DiceLoss,
    OhemCELoss,
    SegmentationCrossEntropyLoss,
    STDCLoss,
    boundary_map,
    stdc_detail_map,
)

IGNORE = 255


def batch(num_classes: int = 4, shape: tuple[int, int, int] = (2, 12, 10), seed: int = 0, ignored: float = 0.2,
          channels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape[0], channels or num_classes, *shape[1:], generator=generator) * 2
    target = torch.randint(0, num_classes, shape, generator=generator)
    target[torch.rand(shape, generator=generator) < ignored] = IGNORE
    return logits.requires_grad_(), target


def np_log_softmax(logits: torch.Tensor) -> np.ndarray:
    x = logits.detach().double().numpy()
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def np_pixel_ce(logits: torch.Tensor, target: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel CE of the valid pixels, and the valid mask."""
    logp = np_log_softmax(logits)
    t = target.numpy()
    valid = t != IGNORE
    picked = np.take_along_axis(logp, np.where(valid, t, 0)[:, None], axis=1)[:, 0]
    return -picked[valid], valid


def np_dice_loss(probs: np.ndarray, onehot: np.ndarray, valid: np.ndarray, smooth: float, per_image: bool) -> float:
    axes = (2, 3) if per_image else (0, 2, 3)
    p, y = probs * valid[:, None], onehot * valid[:, None]
    dice = (2 * (p * y).sum(axes) + smooth) / (p.sum(axes) + y.sum(axes) + smooth)
    return float(1 - dice.mean())


def np_onehot(target: torch.Tensor, num_classes: int) -> np.ndarray:
    t = target.numpy()
    return np.stack([(t == c) for c in range(num_classes)], axis=1).astype(np.float64)


def value(loss_fn, preds, target) -> float:
    return split_loss_output(loss_fn(preds, target))[0].item()


# ---------------------------------------------------------------------------------------------- definitions
def test_cross_entropy_matches_the_weighted_mean_with_smoothing():
    logits, target = batch(seed=1)
    weights, eps = np.array([0.5, 1.0, 2.0, 3.0]), 0.1
    logp = np_log_softmax(logits)
    t = target.numpy()
    valid = t != IGNORE
    safe = np.where(valid, t, 0)
    nll = -np.take_along_axis(logp, safe[:, None], axis=1)[:, 0] * weights[safe]
    smooth = -(logp * weights[None, :, None, None]).sum(axis=1) / 4
    expected = (((1 - eps) * nll + eps * smooth)[valid]).sum() / weights[safe][valid].sum()
    loss = SegmentationCrossEntropyLoss(class_weights=weights.tolist(), label_smoothing=eps, num_classes=4)
    total, items = loss(logits, target)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert items.tolist() == pytest.approx([total.item()])
    assert loss.component_names == ["SegmentationCrossEntropyLoss"]
    plain = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)(logits, target)
    assert value(SegmentationCrossEntropyLoss(), logits, target) == pytest.approx(plain.item(), rel=1e-6)


@pytest.mark.parametrize(("threshold", "min_kept", "fraction"), [
    (0.9, 0, 0.0),      # many pixels are hard: all of them are kept
    (0.05, 10, 0.0),    # almost none is hard: the 10 hardest
    (0.05, 0, 0.25),    # a quarter of the valid pixels
    (0.5, 5, 1 / 16),
    (0.7, 10_000, 0.0),  # min_kept beyond the valid pixels: all valid pixels
])
def test_ohem_keeps_the_hard_pixels_or_the_min_kept_hardest(threshold, min_kept, fraction):
    logits, target = batch(seed=2, shape=(2, 16, 16))
    losses, _ = np_pixel_ce(logits, target)
    hard = losses[losses > -math.log(threshold)]
    floor_kept = max(min_kept, int(fraction * losses.size))
    kept = hard if hard.size >= floor_kept else np.sort(losses)[::-1][:floor_kept]
    loss = OhemCELoss(threshold=threshold, min_kept=min_kept, min_kept_fraction=fraction)
    assert value(loss, logits, target) == pytest.approx(kept.mean(), rel=1e-5)


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("apply_softmax", [True, False])
def test_dice_loss_formula(per_image, apply_softmax):
    logits, target = batch(num_classes=5, seed=3)
    target[target == 3] = 0  # a class absent from the masks
    probs = np.exp(np_log_softmax(logits))
    inputs = logits if apply_softmax else torch.from_numpy(probs).float()
    expected = np_dice_loss(probs, np_onehot(target, 5), target.numpy() != IGNORE, 1.0, per_image)
    loss = DiceLoss(apply_softmax=apply_softmax, per_image=per_image, num_classes=5)
    assert value(loss, inputs, target) == pytest.approx(expected, rel=1e-5)


def test_boundary_map_of_a_hand_drawn_mask():
    mask = torch.tensor([[0, 0, 0, 1, 1],
                         [0, 0, 0, 1, 1],
                         [2, 2, 0, 1, 1],
                         [2, 2, IGNORE, IGNORE, 1]])
    expected = torch.tensor([[0, 0, 1, 1, 0],
                             [1, 1, 1, 1, 0],
                             [1, 1, 1, 1, 1],
                             [0, 1, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(boundary_map(mask[None], IGNORE, 3)[0], expected)
    assert not boundary_map(mask[None], IGNORE, 1).any()  # a 1x1 window holds no other label


def test_dice_ce_edge_is_the_sum_of_its_terms():
    logits, target = batch(num_classes=3, seed=4, shape=(2, 10, 10))
    target[:, :, :4] = 0  # large regions, so that not every pixel is a boundary
    target[:, 6:, 5:] = 1
    losses, valid = np_pixel_ce(logits, target)
    edges = boundary_map(target, IGNORE, 3).numpy()
    per_pixel = np.zeros(valid.shape)
    per_pixel[valid] = losses
    ce, edge = losses.mean(), per_pixel[edges].mean()
    dice = np_dice_loss(np.exp(np_log_softmax(logits)), np_onehot(target, 3), valid, 1.0, True)
    assert 0 < edges.sum() < valid.sum()
    loss = DiceCEEdgeLoss(num_classes=3, ce_weight=0.3, dice_weight=0.7, edge_weight=2.0)
    total, items = loss(logits, target)
    assert items.tolist() == pytest.approx([ce, dice, edge, 0.3 * ce + 0.7 * dice + 2.0 * edge], rel=1e-5)
    assert loss.component_names == ["ce", "dice", "edge", "total"]


def np_binary_terms(logits: torch.Tensor, truth: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    x = logits.detach().double().numpy()[:, 0]
    bce = np.maximum(x, 0) - x * truth + np.log1p(np.exp(-np.abs(x)))
    p = 1 / (1 + np.exp(-x))
    dice = np_dice_loss(p[:, None], truth[:, None], valid, 1.0, True)
    return float(bce[valid].mean()), dice


def test_bce_dice_for_binary_masks():
    logits, target = batch(num_classes=2, channels=1, seed=5)
    valid = target.numpy() != IGNORE
    bce, dice = np_binary_terms(logits, (target.numpy() == 1).astype(np.float64), valid)
    total, items = BCEDiceLoss(bce_weight=0.25, dice_weight=2.0)(logits, target)
    assert items.tolist() == pytest.approx([bce, dice, 0.25 * bce + 2.0 * dice], rel=1e-5)
    with pytest.raises(RecipeError, match=r"found \[3\]"):
        BCEDiceLoss()(logits, torch.where(target == 1, 3, target))
    with pytest.raises(RecipeError, match="outputs 4 channels: binary segmentation takes one logit channel"):
        BCEDiceLoss()(torch.randn(2, 4, 12, 10), target)


# ---------------------------------------------------------------------------------------------- STDC
def test_stdc_detail_map_of_a_hand_drawn_mask():
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, 2:6, 2:6] = 1
    expected = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 0],
                             [0, 1, 1, 1, 1, 1, 1, 0],
                             [0, 1, 1, 1, 1, 1, 1, 1],
                             [0, 1, 1, 1, 1, 1, 1, 1],
                             [0, 1, 1, 1, 0, 1, 1, 1],
                             [0, 1, 1, 1, 1, 1, 1, 1],
                             [0, 1, 1, 1, 1, 1, 1, 1],
                             [0, 0, 1, 1, 1, 1, 1, 1]], dtype=torch.float32)
    # stride 1: the ring either side of the square's border; stride 2 adds its 2x2 blocks sampled at even pixels
    assert torch.equal(stdc_detail_map(mask), expected[None])


def laplacian_detail_map(mask: torch.Tensor, num_classes: int, detail_threshold: float, fuse_threshold: float,
                         ) -> torch.Tensor:
    """The STDC recipe written out: Laplacian convolutions of the one-hot mask at strides 1, 2, 4."""
    onehot = torch.from_numpy(np_onehot(mask, num_classes)).float()
    kernel = torch.tensor([[-1., -1, -1], [-1, 8, -1], [-1, -1, -1]]).expand(num_classes, 1, 3, 3)
    padded = F.pad(onehot, [1] * 4, mode="replicate")
    maps = []
    for stride in (1, 2, 4):
        response = F.conv2d(padded, kernel, stride=stride, groups=num_classes).max(dim=1, keepdim=True).values
        maps.append(F.interpolate((response >= detail_threshold).float(), size=mask.shape[-2:], mode="nearest"))
    fused = 0.6 * maps[0] + 0.3 * maps[1] + 0.1 * maps[2]
    return (fused > fuse_threshold + 1e-6).float()[:, 0]


@pytest.mark.parametrize(("detail_threshold", "fuse_threshold", "shape"), [
    (1.0, 0.1, (2, 16, 16)), (1.0, 0.05, (2, 16, 16)), (3.0, 0.05, (1, 13, 18)), (2.0, 0.5, (1, 9, 11))])
def test_stdc_detail_map_equals_laplacian_convolutions(detail_threshold, fuse_threshold, shape):
    generator = torch.Generator().manual_seed(6)
    mask = torch.randint(0, 3, (shape[0], shape[1] // 3 + 1, shape[2] // 3 + 1), generator=generator)
    mask = mask.repeat_interleave(3, 1).repeat_interleave(3, 2)[:, :shape[1], :shape[2]].contiguous()
    mask[:, :2, :3] = IGNORE
    got = stdc_detail_map(mask, IGNORE, detail_threshold, fuse_threshold=fuse_threshold)
    assert torch.equal(got, laplacian_detail_map(mask, 3, detail_threshold, fuse_threshold))
    assert 0 < got.sum() < got.numel()


def test_stdc_loss_ohem_outputs_plus_detail_bce_dice():
    logits, target = batch(num_classes=3, seed=7, shape=(2, 16, 16))
    aux = torch.randn(2, 3, 8, 8, requires_grad=True)
    detail = torch.randn(2, 1, 16, 16, requires_grad=True)
    loss = STDCLoss(num_classes=3, weights=[1.0, 0.5], threshold=0.7, min_kept_fraction=1 / 16)
    total, items = loss((logits, aux, detail), target)
    ohem = OhemCELoss(threshold=0.7, min_kept_fraction=1 / 16)
    aux_up = F.interpolate(aux, size=(16, 16), mode="bilinear", align_corners=False)
    main_term, aux_term = value(ohem, logits, target), value(ohem, aux_up, target)
    valid = target.numpy() != IGNORE
    bce, dice = np_binary_terms(detail, stdc_detail_map(target).numpy(), valid)
    expected = [main_term, aux_term, bce, dice, main_term + 0.5 * aux_term + bce + dice]
    assert items.tolist() == pytest.approx(expected, rel=1e-5)
    assert loss.component_names == ["main", "aux1", "detail_bce", "detail_dice", "total"]
    # the detail output may sit anywhere, named by position; plain cross-entropy instead of OHEM
    moved = STDCLoss(weights=[1.0, 0.5], detail_index=1, use_ohem=False)
    ce = SegmentationCrossEntropyLoss()
    expected = [value(ce, logits, target), value(ce, aux_up, target), bce, dice]
    assert moved((logits, detail, aux), target)[1].tolist()[:4] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(RecipeError, match="detail output .* one logit channel"):
        STDCLoss(weights=[1.0, 0.5], detail_index=1)((logits, aux, detail), target)


# ---------------------------------------------------------------------------------------------- shared behaviour
def all_losses(num_classes: int = 4) -> list:
    return [SegmentationCrossEntropyLoss(class_weights=[1.0, 2.0, 0.5, 1.0], label_smoothing=0.1),
            OhemCELoss(threshold=0.7, min_kept=20), DiceLoss(), DiceLoss(per_image=False),
            DiceCEEdgeLoss(num_classes=num_classes), STDCLoss(weights=[1.0])]


def outputs_for(loss, logits: torch.Tensor) -> torch.Tensor | tuple:
    if isinstance(loss, STDCLoss):
        return logits, logits[:, :1] * 0.5
    return logits


@pytest.mark.parametrize("index", range(6))
def test_ignored_pixels_have_no_effect_and_gradients_are_finite(index):
    loss = all_losses()[index]
    logits, target = batch(seed=8, ignored=0.3)
    before = value(loss, outputs_for(loss, logits), target)
    changed = logits.detach().clone()
    changed[(target == IGNORE).unsqueeze(1).expand_as(changed)] = 50.0  # confident nonsense where nothing counts
    assert value(loss, outputs_for(loss, changed), target) == pytest.approx(before, rel=1e-5)
    total, _ = loss(outputs_for(loss, logits), target)
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert logits.grad[(target == IGNORE).unsqueeze(1).expand_as(logits)].abs().max() == 0
    # every pixel ignored: a finite loss (0 for the means, not 0/0) and finite gradients
    logits.grad = None
    total, items = loss(outputs_for(loss, logits), torch.full_like(target, IGNORE))
    total.backward()
    assert torch.isfinite(items).all() and torch.isfinite(logits.grad).all()


def test_tuple_outputs_are_weighted_and_named():
    logits, target = batch(seed=9, shape=(2, 16, 16))
    aux1, aux2 = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)
    loss = OhemCELoss(threshold=0.7, weights=[1.0, 0.4, 0.2], num_classes=4)
    total, items = loss((logits, aux1, aux2), target)
    single = OhemCELoss(threshold=0.7)
    terms = [value(single, x, target) for x in
             (logits, *(F.interpolate(a, size=(16, 16), mode="bilinear", align_corners=False) for a in (aux1, aux2)))]
    assert items.tolist() == pytest.approx([*terms, terms[0] + 0.4 * terms[1] + 0.2 * terms[2]], rel=1e-5)
    assert total.item() == pytest.approx(items[-1].item())
    assert loss.component_names == ["main", "aux1", "aux2", "total"]
    assert loss_item_names(loss, None, len(items)) == loss.component_names
    # the eval output (main alone) keeps the item count: absent auxiliary terms log 0
    _, eval_items = loss(logits, target)
    assert eval_items.tolist() == pytest.approx([terms[0], 0.0, 0.0, terms[0]], rel=1e-5)
    # weights for every output are required: an auxiliary head is never dropped silently
    with pytest.raises(RecipeError, match=r"returned 3 outputs .*weights has 1"):
        OhemCELoss()((logits, aux1, aux2), target)
    edge = DiceCEEdgeLoss(weights=[1.0, 0.5], detail_index=-1)
    _, edge_items = edge((logits, aux1, torch.randn(2, 1, 8, 8)), target)
    assert edge.component_names == ["ce", "dice", "edge", "aux1", "detail_bce", "detail_dice", "total"]
    assert len(edge_items) == 7 and len(edge(logits, target)[1]) == 7
    assert BCEDiceLoss(weights=[1.0, 0.4]).component_names == ["bce", "dice", "aux1", "total"]


def test_bad_arguments_are_refused_with_both_numbers():
    logits, target = batch(seed=10)
    with pytest.raises(RecipeError, match="num_classes is 5 but the model outputs 4 channels"):
        DiceLoss(num_classes=5)(logits, target)
    with pytest.raises(RecipeError, match="class_weights has 3 values but the model outputs 4 classes"):
        SegmentationCrossEntropyLoss(class_weights=[1, 2, 3])(logits, target)
    with pytest.raises(RecipeError, match="1 channel .* BCEDiceLoss"):
        SegmentationCrossEntropyLoss()(logits[:, :1], target)
    with pytest.raises(RecipeError, match="weights must be a list of numbers"):
        OhemCELoss(weights=["a"])
    with pytest.raises(RecipeError, match="threshold must be in"):
        OhemCELoss(threshold=1.5)
    with pytest.raises(RecipeError, match="edge_kernel must be an odd"):
        DiceCEEdgeLoss(edge_kernel=4)


def test_recipe_names_build_the_losses():
    logits, target = batch(seed=11)
    for name, params in [("SegmentationCrossEntropyLoss", {"ignore_index": IGNORE}), ("OhemCELoss", {}),
                         ("DiceLoss", {"smooth": 0.5}), ("DiceCEEdgeLoss", {"num_classes": 4}),
                         ("STDCLoss", {"weights": [1.0], "detail_index": -1})]:
        loss = build_loss(name, params)
        loss_value, items = split_loss_output(loss(outputs_for(loss, logits), target))
        assert len(loss_item_names(loss, None, len(items))) == len(loss.component_names) == len(items)
        assert torch.isfinite(loss_value)
    binary = build_loss({"BCEDiceLoss": {"bce_weight": 1.0}})
    assert isinstance(binary, BCEDiceLoss) and binary.term_weights == [1.0, 0.5]
    with pytest.raises(RecipeError, match="Did you mean: threshold"):
        build_loss("OhemCELoss", {"treshold": 0.7})
