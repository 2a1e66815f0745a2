"""Segmentation metrics against a confusion matrix computed here with numpy (random cases of several shapes,
classes missing from prediction or target, ignored pixels, all-ignored batches, binary), accumulated over several
updates, from tuple outputs, saved and restored, and exact under DDP (2 gloo processes on CPU)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from super_recipes.engine.distributed import free_port
from super_recipes.errors import RecipeError
from super_recipes.metrics import build_metrics, compute_metrics
from super_recipes.segmentation.metrics import BinaryDice, BinaryIOU, Dice, IoU, PixelAccuracy

IGNORE = 255


def case(seed: int, batch: int, height: int, width: int, num_classes: int, ignored: float = 0.2,
         target_classes: int | None = None, channels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and masks; masks use only the first ``target_classes`` classes (others absent from the target)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, channels or num_classes, height, width, generator=generator)
    target = torch.randint(0, target_classes or num_classes, (batch, height, width), generator=generator)
    target[torch.rand(target.shape, generator=generator) < ignored] = IGNORE
    return logits, target


def np_confusion(pairs: list[tuple[np.ndarray, np.ndarray]], num_classes: int) -> np.ndarray:
    """``M[target, prediction]`` over the non-ignored pixels of every (prediction, target) pair."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for pred, target in pairs:
        valid = target != IGNORE
        np.add.at(matrix, (target[valid], pred[valid]), 1)
    return matrix


def np_scores(matrix: np.ndarray) -> dict[str, np.ndarray | float]:
    tp = np.diag(matrix).astype(np.float64)
    fp, fn = matrix.sum(0) - tp, matrix.sum(1) - tp
    present = tp + fp + fn > 0
    iou, dice = np.full(len(tp), np.nan), np.full(len(tp), np.nan)
    iou[present] = tp[present] / (tp + fp + fn)[present]
    dice[present] = 2 * tp[present] / (2 * tp + fp + fn)[present]
    total = matrix.sum()
    return {"iou": iou, "dice": dice, "miou": iou[present].mean() if present.any() else np.nan,
            "mdice": dice[present].mean() if present.any() else np.nan,
            "accuracy": np.trace(matrix) / total if total else np.nan}


def argmax(logits: torch.Tensor) -> np.ndarray:
    return logits.argmax(1).numpy()


def check_multiclass(metrics: dict, matrix: np.ndarray, names: list[str]) -> None:
    expected = np_scores(matrix)
    np.testing.assert_allclose(float(metrics["acc"].compute()), expected["accuracy"], rtol=1e-6)
    iou, dice = metrics["iou"].compute(), metrics["dice"].compute()
    assert list(iou) == metrics["iou"].component_names == ["IoU"] + [f"IoU/{n}" for n in names]
    np.testing.assert_allclose(float(iou["IoU"]), expected["miou"], rtol=1e-6)
    np.testing.assert_allclose([float(iou[f"IoU/{n}"]) for n in names], expected["iou"], rtol=1e-6)
    np.testing.assert_allclose(float(dice["Dice"]), expected["mdice"], rtol=1e-6)
    np.testing.assert_allclose([float(dice[f"Dice/{n}"]) for n in names], expected["dice"], rtol=1e-6)


def multiclass_metrics(num_classes: int, class_names: list[str] | None = None) -> dict:
    return {"acc": PixelAccuracy(num_classes), "iou": IoU(num_classes, class_names=class_names),
            "dice": Dice(num_classes, class_names=class_names)}


@pytest.mark.parametrize(("seed", "shape", "num_classes", "target_classes", "ignored"), [
    (0, (2, 7, 9), 3, None, 0.0),
    (1, (1, 16, 16), 5, 3, 0.3),      # classes 3, 4 absent from the target (present in predictions)
    (2, (3, 5, 31), 19, None, 0.5),   # many classes, some absent from both
    (3, (4, 8, 8), 2, None, 0.9),
])
def test_metrics_match_a_numpy_confusion_matrix(seed, shape, num_classes, target_classes, ignored):
    names = [f"c{i}" for i in range(num_classes)]
    metrics = multiclass_metrics(num_classes, names)
    pairs = []
    for step in range(3):  # accumulated over several updates
        logits, target = case(seed * 10 + step, *shape, num_classes, ignored, target_classes)
        if step == 1:
            logits[:, 1] = -1e9  # class 1 never predicted in this batch
        for metric in metrics.values():
            metric.update(logits, target)
        pairs.append((argmax(logits), target.numpy()))
    check_multiclass(metrics, np_confusion(pairs, num_classes), names)


def test_absent_classes_and_all_ignored_batches():
    metrics = multiclass_metrics(4)
    logits, target = case(5, 2, 6, 6, 4)
    everything_ignored = torch.full_like(target, IGNORE)
    for metric in metrics.values():
        metric.update(logits, everything_ignored)
    assert np.isnan(float(metrics["acc"].compute()))  # nothing measured yet: NaN, "no result"
    assert all(np.isnan(float(v)) for v in metrics["iou"].compute().values())
    logits = torch.zeros(2, 4, 6, 6)
    logits[:, 0] = 1  # predicts class 0 everywhere
    target = torch.where(target == 3, 0, target)  # class 3 absent from both prediction and target
    for metric in metrics.values():
        metric.update(logits, target)
    iou = metrics["iou"].compute()
    assert np.isnan(float(iou["IoU/3"])) and float(iou["IoU/1"]) == 0.0  # absent: NaN; missed: 0
    check_multiclass(metrics, np_confusion([(argmax(logits), target.numpy())], 4), [str(i) for i in range(4)])


def test_tuple_outputs_class_indices_and_smaller_logits():
    logits, target = case(6, 2, 16, 12, 4)
    aux = torch.randn(2, 4, 4, 3)
    small = F.interpolate(logits, size=(8, 6), mode="bilinear", align_corners=False)
    cases = [(logits, aux), [logits, aux, aux], logits.argmax(1), small]
    expected_preds = [argmax(logits)] * 3 + [argmax(F.interpolate(small, size=(16, 12), mode="bilinear"))]
    for preds, expected in zip(cases, expected_preds, strict=True):
        metric = IoU(4)
        metric.update(preds, target)
        np.testing.assert_allclose(float(metric.compute()["IoU"]),
                                   np_scores(np_confusion([(expected, target.numpy())], 4))["miou"], rtol=1e-6)
    metric = PixelAccuracy(4)
    metric.update(logits, target.unsqueeze(1))  # [B, 1, H, W] masks are accepted
    np.testing.assert_allclose(float(metric.compute()),
                               np_scores(np_confusion([(argmax(logits), target.numpy())], 4))["accuracy"])


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.8])
def test_binary_metrics(threshold):
    iou, dice = BinaryIOU(threshold=threshold), BinaryDice(threshold=threshold, class_names=["bg", "person"])
    pairs = []
    for step, (height, width) in enumerate([(9, 7), (9, 7), (9, 7)]):
        logits, target = case(20 + step, 2, height, width, 2, channels=1)
        preds = logits if step else logits[:, 0]  # [B, 1, H, W] or [B, H, W] logits
        iou.update((preds,), target)
        dice.update(preds, target)
        pairs.append(((torch.sigmoid(logits[:, 0]) > threshold).long().numpy(), target.numpy()))
    expected = np_scores(np_confusion(pairs, 2))
    got = iou.compute()
    assert list(got) == iou.component_names == ["BinaryIOU", "BinaryIOU/background", "BinaryIOU/foreground",
                                                "BinaryIOU/mean"]
    np.testing.assert_allclose([float(v) for v in got.values()],
                               [expected["iou"][1], *expected["iou"], expected["miou"]], rtol=1e-6)
    got = dice.compute()
    assert list(got) == ["BinaryDice", "BinaryDice/bg", "BinaryDice/person", "BinaryDice/mean"]
    np.testing.assert_allclose([float(v) for v in got.values()],
                               [expected["dice"][1], *expected["dice"], expected["mdice"]], rtol=1e-6)


def test_binary_foreground_absent_everywhere_is_no_result():
    metric = BinaryIOU()
    metric.update(torch.full((1, 1, 4, 4), -5.0), torch.zeros(1, 4, 4, dtype=torch.long))
    got = metric.compute()
    assert np.isnan(float(got["BinaryIOU"])) and float(got["BinaryIOU/background"]) == 1.0


def test_agrees_with_torchmetrics_where_the_semantics_match():
    from torchmetrics.classification import (
        BinaryJaccardIndex,
        MulticlassAccuracy,
        MulticlassF1Score,
        MulticlassJaccardIndex,
    )

    logits, target = case(30, 2, 12, 12, 6, target_classes=4)
    ours = multiclass_metrics(6)
    theirs = {"acc": MulticlassAccuracy(6, average="micro", ignore_index=IGNORE),
              "iou": MulticlassJaccardIndex(6, average="macro", ignore_index=IGNORE),
              "dice": MulticlassF1Score(6, average="macro", ignore_index=IGNORE)}
    for key in ours:
        ours[key].update(logits, target)
        theirs[key].update(logits, target)
    assert float(ours["acc"].compute()) == pytest.approx(float(theirs["acc"].compute()), rel=1e-6)
    assert float(ours["iou"].compute()["IoU"]) == pytest.approx(float(theirs["iou"].compute()), rel=1e-6)
    assert float(ours["dice"].compute()["Dice"]) == pytest.approx(float(theirs["dice"].compute()), rel=1e-6)
    logits, target = case(31, 2, 12, 12, 2, channels=1)
    binary, reference = BinaryIOU(), BinaryJaccardIndex(ignore_index=IGNORE)
    binary.update(logits, target)
    reference.update(torch.sigmoid(logits[:, 0]), target)  # probabilities: its sigmoid-or-not guess stays out
    assert float(binary.compute()["BinaryIOU"]) == pytest.approx(float(reference.compute()), rel=1e-6)


def test_an_ignore_index_that_is_a_class_is_left_out_of_the_means():
    from torchmetrics.classification import MulticlassJaccardIndex

    logits, target = case(35, 2, 9, 9, 4, ignored=0.0)
    iou, dice = IoU(4, ignore_index=0), Dice(4, ignore_index=0)
    iou.update(logits, target)
    dice.update(logits, target)
    t = target.numpy()
    expected = np_scores(np_confusion([(argmax(logits), np.where(t == 0, IGNORE, t))], 4))
    assert expected["iou"][0] == 0  # class 0 is predicted, never a target: a score of 0 that means nothing
    for got, key, scores in ((iou.compute(), "IoU", expected["iou"]), (dice.compute(), "Dice", expected["dice"])):
        assert np.isnan(float(got[f"{key}/0"]))
        np.testing.assert_allclose([float(got[f"{key}/{c}"]) for c in (1, 2, 3)], scores[1:], rtol=1e-6)
        np.testing.assert_allclose(float(got[key]), scores[1:].mean(), rtol=1e-6)
    reference = MulticlassJaccardIndex(4, ignore_index=0, average="macro")(logits, target)
    assert float(iou.compute()["IoU"]) == pytest.approx(float(reference), rel=1e-6)


def test_state_is_checkpointable_and_reset():
    logits, target = case(40, 2, 8, 8, 3)
    metric = IoU(3)
    metric.persistent(True)
    metric.update(logits, target)
    restored = IoU(3)
    restored.persistent(True)
    restored.load_state_dict(metric.state_dict())
    assert torch.equal(restored.confmat, metric.confmat) and restored.confmat.sum() > 0
    restored.update(logits, target)
    assert torch.equal(restored.confmat, 2 * metric.confmat)
    restored.reset()
    assert restored.confmat.sum() == 0
    with torch.inference_mode():  # validation resets and updates under inference mode; training does not
        restored.reset()
    restored.update(logits, target)
    assert torch.equal(restored.confmat, metric.confmat)


def test_bad_inputs_and_arguments_are_refused():
    logits, target = case(50, 1, 4, 4, 3)
    with pytest.raises(RecipeError, match=r"mask values \[7\] are neither a class \(0..2\) nor ignore_index 255"):
        IoU(3).update(logits, torch.where(target == 0, 7, target))
    with pytest.raises(RecipeError, match="num_classes is 4 but the model outputs 3 channels"):
        Dice(4).update(logits, target)
    with pytest.raises(RecipeError, match=r"mask values \[2\]"):
        BinaryIOU().update(logits[:, :1], target.clamp(max=2))
    with pytest.raises(RecipeError, match="class_names has 2 names but there are 3 classes"):
        IoU(3, class_names=["a", "b"])
    with pytest.raises(RecipeError, match="one logit channel .* got num_classes 2"):
        BinaryDice(num_classes=2)
    with pytest.raises(RecipeError, match="binary segmentation"):
        PixelAccuracy(1)


def test_recipe_names_and_logged_keys():
    metrics = build_metrics([{"IoU": {"num_classes": 3, "class_names": ["road", "car", "sky"]}},
                             {"PixelAccuracy": {"num_classes": 3, "ignore_index": 0}}, "BinaryDice"],
                            "valid_metrics_list")
    logits, target = case(60, 2, 6, 6, 3)
    metrics["IoU"].update(logits, target)
    metrics["PixelAccuracy"].update(logits, target.clamp(max=2))  # its ignore_index is 0: no 255 there
    metrics["BinaryDice"].update(logits[:, :1], target.clamp(max=1))
    logged = compute_metrics(metrics, "valid")
    assert list(logged) == ["valid/IoU", "valid/IoU/road", "valid/IoU/car", "valid/IoU/sky", "valid/PixelAccuracy",
                            "valid/BinaryDice", "valid/BinaryDice/background", "valid/BinaryDice/foreground",
                            "valid/BinaryDice/mean"]
    t = target.clamp(max=2).numpy()
    expected = np_confusion([(argmax(logits), np.where(t == 0, IGNORE, t))], 3)
    assert logged["valid/PixelAccuracy"] == pytest.approx(np_scores(expected)["accuracy"])


# ---------------------------------------------------------------------------------------------- DDP
DDP_BATCHES = [case(70 + i, 2, 10, 12, 5, ignored=0.3, target_classes=4) for i in range(5)]
DDP_BATCHES[3][1][:] = IGNORE  # an all-ignored batch
BINARY_BATCHES = [case(80 + i, 2, 10, 12, 2, channels=1) for i in range(3)]


def ddp_results(batches: list, binary_batches: list) -> dict[str, dict[str, float] | float]:
    metrics = multiclass_metrics(5) | {"biou": BinaryIOU()}
    for logits, target in batches:
        for key in ("acc", "iou", "dice"):
            metrics[key].update(logits, target)
    for logits, target in binary_batches:
        metrics["biou"].update(logits, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a rank without batches: torchmetrics warns, and still takes part
        return {key: {k: float(v) for k, v in value.items()} if isinstance(value, dict) else float(value)
                for key, value in ((key, metric.compute()) for key, metric in metrics.items())}


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        # uneven shards (3 batches and 2), and the binary batches all on rank 0: rank 1 updates nothing there
        results = ddp_results(DDP_BATCHES[rank::world_size], BINARY_BATCHES if rank == 0 else [])
        local = IoU(5)
        local.sync_on_compute = False  # as the trainer's evaluate() does: this rank's pixels alone, no collective
        for logits, target in DDP_BATCHES[rank::world_size]:
            local.update(logits, target)
        results["local"] = float(local.compute()["IoU"])
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_sums_the_confusion_matrix_across_ranks(tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2)
    expected = ddp_results(DDP_BATCHES, BINARY_BATCHES)
    matrix = np_confusion([(argmax(logits), target.numpy()) for logits, target in DDP_BATCHES], 5)
    assert expected["iou"]["IoU"] == pytest.approx(np_scores(matrix)["miou"], rel=1e-6)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        shard = np_confusion([(argmax(logits), target.numpy()) for logits, target in DDP_BATCHES[rank::2]], 5)
        assert got.pop("local") == pytest.approx(np_scores(shard)["miou"], rel=1e-6)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, dict):
                np.testing.assert_allclose(list(got[key].values()), list(value.values()), rtol=1e-6)
                assert list(got[key]) == list(value)
            else:
                assert got[key] == pytest.approx(value, rel=1e-6)
