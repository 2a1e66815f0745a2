"""DetectionMetrics and CocoEvaluationCallback against pycocotools' COCOeval on the real tinycoco subset, with
predictions built from its ground truth (jittered copies, duplicates, false positives, boxes on crowd regions,
missing classes, >100 detections per image and per class, tied scores); both sides see the same boxes."""

from __future__ import annotations

import contextlib
import io
import math
import operator
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from super_recipes.callbacks.base import PhaseContext
from super_recipes.detection.coco_evaluation import COCO_STAT_NAMES, CocoEvaluationCallback
from super_recipes.detection.matching import greedy_match
from super_recipes.detection.metrics import DetectionMetrics, DetectionMetrics_050, DetectionMetrics_075
from super_recipes.engine.distributed import free_port
from super_recipes.errors import RecipeError
from super_recipes.registry import CALLBACKS, METRICS, build

TINYCOCO = Path(os.environ.get("TINYCOCO_DIR", Path(__file__).resolve().parents[2] / "shared/data/tinycoco"))
pytestmark = pytest.mark.skipif(not (TINYCOCO / "annotations").is_dir(),
                                reason=f"tinycoco not found at {TINYCOCO} (set TINYCOCO_DIR)")


class Subset:
    def __init__(self, split: str):
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(str(TINYCOCO / "annotations" / f"instances_{split}2017.json"))
        self.category_ids = sorted(self.coco.getCatIds())
        self.index = {c: i for i, c in enumerate(self.category_ids)}
        self.image_ids = sorted(self.coco.getImgIds())

    def anns(self, image_id: int) -> list[dict]:
        return self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))

    def targets(self, crowd: bool, images: list[int] | None = None) -> torch.Tensor:
        rows = [[i, self.index[a["category_id"]], a["bbox"][0] + a["bbox"][2] / 2, a["bbox"][1] + a["bbox"][3] / 2,
                 a["bbox"][2], a["bbox"][3]]
                for i, image_id in enumerate(images or self.image_ids) for a in self.anns(image_id)
                if bool(a["iscrowd"]) == crowd]
        return torch.tensor(rows, dtype=torch.float64).reshape(-1, 6)

    def predictions(self, seed: int, copies: int = 1, jitter: float = 0.05, false_positives: int = 0,
                    on_crowd: int = 0, drop_classes: int = 0, crowded_class: int = 0,
                    tie: bool = False) -> list[torch.Tensor]:
        """Per image ``[K, 6]`` XYXY predictions in original pixels, in a random order."""
        rng = np.random.default_rng(seed)
        present = sorted({self.index[a["category_id"]] for a in self.coco.dataset["annotations"]})
        dropped = set(rng.choice(present, drop_classes, replace=False).tolist())
        out = []
        for image_id in self.image_ids:
            info, rows = self.coco.imgs[image_id], []

            def add(x: float, y: float, w: float, h: float, label: int, rows: list = rows) -> None:
                rows.append([x, y, x + w, y + h, rng.uniform(), label])

            for a in self.anns(image_id):
                (x, y, w, h), label, crowd = a["bbox"], self.index[a["category_id"]], a["iscrowd"]
                for _ in range(0 if label in dropped else on_crowd if crowd else rng.integers(1, copies + 1)):
                    if crowd:  # a box inside the crowd region
                        bw, bh = w * rng.uniform(0.05, 0.4), h * rng.uniform(0.05, 0.4)
                        add(x + rng.uniform(0, w - bw), y + rng.uniform(0, h - bh), bw, bh, label)
                    else:
                        add(x + rng.normal(0, jitter) * w, y + rng.normal(0, jitter) * h,
                            w * np.exp(rng.normal(0, jitter)), h * np.exp(rng.normal(0, jitter)), label)
            for _ in range(false_positives):
                bw, bh = rng.uniform(5, info["width"] / 2), rng.uniform(5, info["height"] / 2)
                add(rng.uniform(0, info["width"] - bw), rng.uniform(0, info["height"] - bh), bw, bh,
                    rng.integers(len(self.category_ids)))
            regular = [a for a in self.anns(image_id) if not a["iscrowd"]]
            for _ in range(crowded_class if regular else 0):  # >100 boxes for one image and class
                x, y, w, h = regular[0]["bbox"]
                add(x + rng.normal(0, 0.1) * w, y + rng.normal(0, 0.1) * h, w, h, self.index[regular[0]["category_id"]])
            rows = np.array(rows, dtype=np.float64).reshape(-1, 6)
            rows[:, 4] = np.round(rows[:, 4], 1) if tie else rows[:, 4]
            out.append(torch.from_numpy(rng.permutation(rows)))
        return out

    def cocoeval(self, predictions: list[torch.Tensor]) -> np.ndarray:
        from pycocotools.cocoeval import COCOeval

        results = [{"image_id": i, "category_id": self.category_ids[int(c)], "score": s, "bbox": [x, y, x2 - x, y2 - y]}
                   for i, p in zip(self.image_ids, predictions, strict=True) for x, y, x2, y2, s, c in p.tolist()]
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator = COCOeval(self.coco, self.coco.loadRes(results), "bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return evaluator.stats

    def metric(self, predictions: list[torch.Tensor], batch_size: int | None = None, order: list[int] | None = None,
               name: str = "DetectionMetrics", **kwargs) -> dict[str, float]:
        metric = build(METRICS, {name: {"num_cls": len(self.category_ids), "score_thres": 0.0, **kwargs}})
        order = order if order is not None else list(range(len(self.image_ids)))
        for start in range(0, len(order), batch_size or len(order)):
            chosen = order[start:start + (batch_size or len(order))]
            images = [self.image_ids[i] for i in chosen]
            metric.update([predictions[i] for i in chosen], self.targets(False, images),
                          crowd_targets=self.targets(True, images), image_ids=torch.tensor(images),
                          original_shapes=torch.zeros(len(chosen), 2))
        return {k: float(v) for k, v in metric.compute().items()}


@pytest.fixture(scope="module")
def val() -> Subset:
    return Subset("val")


@pytest.fixture(scope="module")
def train() -> Subset:
    return Subset("train")


def test_greedy_rounds_equal_the_sequential_pass():
    # COCOeval's loop over detections, with its tie rule (the last box of highest IoU); rounded IoUs make ties
    rng = np.random.default_rng(0)
    for _ in range(300):
        iou = np.round(rng.uniform(0, 1, (2, rng.integers(1, 20), rng.integers(1, 10))), rng.integers(1, 3))
        iou[rng.uniform(size=iou.shape) < 0.3] = -1
        got = greedy_match(torch.from_numpy(iou), torch.tensor([0.5, 0.7])).numpy()
        for b, t in np.ndindex(2, 2):
            taken = set()
            for d, row in enumerate(iou[b]):
                free = [g for g in range(len(row)) if g not in taken and row[g] >= (0.5, 0.7)[t]]
                best = max(free, key=lambda g, row=row: (row[g], g), default=None)
                taken.update([] if best is None else [best])
                assert got[b, t, d] == (best is not None)


PREDICTION_SETS = {
    "jittered": {"jitter": 0.05},
    "duplicates": {"copies": 4, "jitter": 0.1},
    "false_positives": {"false_positives": 40, "jitter": 0.15},
    "crowd": {"on_crowd": 40, "copies": 2},
    "missing_classes": {"drop_classes": 5, "copies": 2, "false_positives": 10},
    "over_100_per_image": {"crowded_class": 150, "false_positives": 60, "copies": 3, "jitter": 0.1},
    "tied_scores": {"tie": True, "copies": 3, "false_positives": 20, "on_crowd": 10},
}


@pytest.mark.parametrize("split", ["val", "train"])
@pytest.mark.parametrize("kind", sorted(PREDICTION_SETS))
def test_map_equals_cocoeval(split, kind, request):
    subset = request.getfixturevalue(split)
    predictions = subset.predictions(seed=len(kind), **PREDICTION_SETS[kind])
    stats = subset.cocoeval(predictions)
    assert subset.metric(predictions, batch_size=4)["mAP@0.50:0.95"] == pytest.approx(stats[0], abs=1e-4)
    assert subset.metric(predictions, name="DetectionMetrics_050")["mAP@0.50"] == pytest.approx(stats[1], abs=1e-4)
    assert subset.metric(predictions, name="DetectionMetrics_075")["mAP@0.75"] == pytest.approx(stats[2], abs=1e-4)
    assert 0.02 < stats[0] < 0.98  # a set that tests something


def test_single_threshold_variants_and_names(val):
    predictions = val.predictions(seed=1, copies=2, false_positives=5)
    at_050 = val.metric(predictions, name="DetectionMetrics_050")
    assert list(at_050) == ["mAP@0.50", "Precision@0.50", "Recall@0.50", "F1@0.50"]
    assert at_050 == val.metric(predictions, iou_thres=0.5)
    names = [f"{kind}@0.50:0.95" for kind in ("mAP", "Precision", "Recall", "F1")]
    assert list(val.metric(predictions, name="DetectionMetrics_050_095")) == names
    assert METRICS.get("DetectionMetrics_075") is DetectionMetrics_075
    with pytest.raises(RecipeError, match="iou_thres"):  # fixed by the variant: refused by name
        build(METRICS, {"DetectionMetrics_050": {"num_cls": 80, "iou_thres": 0.7}})


def test_classwise_ap_and_best_thresholds(val):
    names = [f"c{i}" for i in range(80)]
    predictions = val.predictions(seed=2, copies=2, false_positives=10)
    kwargs = {"include_classwise_ap": True, "class_names": names, "calc_best_score_thresholds": True}
    out = val.metric(predictions, **kwargs)
    assert list(out) == DetectionMetrics(80, **kwargs).component_names
    with_gt = sorted({val.index[a["category_id"]] for a in val.coco.dataset["annotations"] if not a["iscrowd"]})
    assert out["mAP@0.50:0.95"] == pytest.approx(np.mean([out[f"AP@0.50:0.95_c{i}"] for i in with_gt]), abs=1e-6)
    assert math.isnan(out["AP@0.50:0.95_c79"])  # toothbrush: no ground truth here
    assert 0.0 <= out["Best_score_threshold"] <= 1.0


def test_batching_and_order_invariance(val):
    predictions = val.predictions(seed=3, copies=3, false_positives=30, on_crowd=5, tie=True)
    kwargs = {"score_thres": 0.3, "calc_best_score_thresholds": True}
    all_at_once = val.metric(predictions, **kwargs)
    np.testing.assert_equal(val.metric(predictions, batch_size=1, **kwargs), all_at_once)  # NaN == NaN here
    np.testing.assert_equal(val.metric(predictions, batch_size=2, order=[5, 2, 0, 4, 1, 3], **kwargs), all_at_once)


def test_hand_made_case_with_known_values():
    # One class, two objects and one crowd region. By score: hit A, miss, box on the crowd (ignored), hit B.
    targets = torch.tensor([[0, 0, 15, 15, 10, 10], [0, 0, 65, 65, 10, 10]], dtype=torch.float64)
    crowd = torch.tensor([[0, 0, 150, 150, 100, 100]], dtype=torch.float64)
    predictions = [torch.tensor([[10, 10, 20, 20, 0.9, 0], [30, 30, 40, 40, 0.8, 0],
                                 [120, 120, 140, 140, 0.75, 0], [60, 60, 70, 70, 0.7, 0]])]
    metric = DetectionMetrics_050(1, score_thres=0.72)
    metric.update(predictions, targets, crowd_targets=crowd)
    out = {k: float(v) for k, v in metric.compute().items()}
    # precision 1 up to recall 0.5 (51 points), then 2/3 up to recall 1 (50 points)
    assert out["mAP@0.50"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-6)
    # at confidence >= 0.72: one hit, one miss (the crowd box counts for nothing)
    assert (out["Precision@0.50"], out["Recall@0.50"], out["F1@0.50"]) == pytest.approx((0.5, 0.5, 0.5))
    normalised = DetectionMetrics_050(1, score_thres=0.72, normalize_targets=True, input_dim=[200, 400])
    scale = torch.tensor([1, 1, 400, 200, 400, 200], dtype=torch.float64)
    normalised.update(predictions, targets / scale, crowd_targets=crowd / scale)
    assert {k: float(v) for k, v in normalised.compute().items()} == pytest.approx(out)


# Detections (score, hits a ground-truth box) per class; the F1 of "keep what scores >= t" peaks at a different t
# for each class and for their mean, none of them 0, 0.5 or 1. Scores are off the 0.01 grid.
BEST_THRESHOLD_CASE = {
    0: ([(0.914, True), (0.862, True), (0.785, False), (0.694, False), (0.653, True), (0.327, False),
         (0.216, False)], 3),
    1: ([(0.883, True), (0.806, False), (0.745, False), (0.568, True), (0.423, True), (0.292, True),
         (0.137, False)], 4),
}


def _f1_by_threshold(detections: list[tuple[float, bool]], num_gt: int, grid: np.ndarray) -> np.ndarray:
    scores = np.array([s for s, _ in detections])
    hits = np.array([h for _, h in detections])
    kept = scores[None, :] >= grid[:, None]
    tp, fp = (kept & hits).sum(1), (kept & ~hits).sum(1)
    precision, recall = tp / np.maximum(tp + fp, 1), tp / num_gt
    return np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)


@pytest.mark.parametrize("name", ["DetectionMetrics_050", "DetectionMetrics"])
def test_best_score_threshold_maximises_f1(name):
    """Hits are exact copies of a ground-truth box (IoU 1 at every threshold), misses overlap nothing."""
    targets, rows = [], []
    for label, (detections, num_gt) in BEST_THRESHOLD_CASE.items():
        gt_boxes = [(100 * i + 10, 300 * label + 10, 100 * i + 60, 300 * label + 60) for i in range(num_gt)]
        targets += [[0, label, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1] for x1, y1, x2, y2 in gt_boxes]
        hits = iter(gt_boxes)
        for k, (score, hit) in enumerate(detections):
            box = next(hits) if hit else (100 * k + 10, 300 * label + 150, 100 * k + 40, 300 * label + 180)
            rows.append([*box, score, label])
    metric = METRICS.get(name)(num_cls=2, score_thres=0.0, class_names=["a", "b"], calc_best_score_thresholds=True)
    metric.update([torch.tensor(rows, dtype=torch.float64)], torch.tensor(targets, dtype=torch.float64))
    out = {k: float(v) for k, v in metric.compute().items()}

    grid = np.round(np.arange(101) / 100, 2)
    curves = {label: _f1_by_threshold(d, n, grid) for label, (d, n) in BEST_THRESHOLD_CASE.items()}
    expected = {"a": grid[curves[0].argmax()], "b": grid[curves[1].argmax()],
                "": grid[((curves[0] + curves[1]) / 2).argmax()]}  # the lowest threshold among equal F1
    assert expected == {"a": 0.79, "b": 0.14, "": 0.22}
    assert out["Best_score_threshold"] == pytest.approx(expected[""], abs=1e-6)
    assert out["Best_score_threshold_a"] == pytest.approx(expected["a"], abs=1e-6)
    assert out["Best_score_threshold_b"] == pytest.approx(expected["b"], abs=1e-6)


def test_top_k_per_image_or_per_class():
    # 150 perfect copies of one object of class 0, scored below 150 false positives of class 1
    targets = torch.tensor([[0, 0, 50, 50, 20, 20]], dtype=torch.float64)
    hits = torch.tensor([[40, 40, 60, 60, 0.1, 0]]).repeat(150, 1)
    misses = torch.tensor([[0, 0, 5, 5, 0.9, 1]]).repeat(150, 1)
    for per_class, expected in ((True, 1.0), (False, 0.0)):
        metric = DetectionMetrics(2, top_k_per_class=per_class)
        metric.update([torch.cat([hits, misses])], targets)
        assert float(metric.compute()["mAP@0.50:0.95"]) == pytest.approx(expected)
    (empty := DetectionMetrics(2)).update([torch.zeros(0, 6)], torch.zeros(0, 6))
    assert float(empty.compute()["mAP@0.50:0.95"]) == -1.0  # no ground truth at all, as COCOeval's -1


def _run_callback(callback: CocoEvaluationCallback, subset: Subset, predictions: list[torch.Tensor],
                  batch_size: int = 5, indices: list[int] | None = None) -> list[float]:
    wrapped = SimpleNamespace(dataset=SimpleNamespace(coco=subset.coco, category_ids=subset.category_ids))
    context = PhaseContext(trainer=SimpleNamespace(full_valid_loader=SimpleNamespace(dataset=wrapped)))
    callback.on_validation_loader_start(context)
    indices = list(range(len(subset.image_ids))) if indices is None else indices
    for start in range(0, len(indices), batch_size):
        chosen = indices[start:start + batch_size]
        ids = [subset.image_ids[i] for i in chosen]
        shapes = torch.tensor([[subset.coco.imgs[i]["height"], subset.coco.imgs[i]["width"]] for i in ids])
        scales = 512 / shapes.amax(1).double()  # letterbox to 512 x 512
        pads = (512 - shapes.flip(1) * scales[:, None]) / 2  # left, top
        shift = torch.cat([pads, pads, torch.zeros(len(ids), 2)], 1)
        stretch = torch.cat([scales[:, None].repeat(1, 4), torch.ones(len(ids), 2)], 1)
        context.preds = {"detections": [predictions[i] * stretch[k] + shift[k] for k, i in enumerate(chosen)]}
        context.batch_extras = {"image_ids": torch.tensor(ids), "scales": scales.float(), "pads": pads.float(),
                                "original_shapes": shapes, "crowd_targets": torch.zeros(0, 6)}
        callback.on_validation_batch_end(context)
    context.metrics = {"valid/loss": 1.0}
    callback.on_validation_loader_end(context)
    assert list(context.metrics)[1:] == [f"valid/COCO/{n}" for n in COCO_STAT_NAMES]
    return list(context.metrics.values())[1:]


UNPACK = operator.itemgetter("detections")  # the "raw model output" is {"detections": [per-image [K, 6]]}


def _clipped(subset: Subset, predictions: list[torch.Tensor]) -> list[torch.Tensor]:
    sizes = [torch.tensor([subset.coco.imgs[i]["width"], subset.coco.imgs[i]["height"]] * 2 + [1e9, 1e9])
             for i in subset.image_ids]
    return [torch.minimum(p.clamp(min=0), size.double()) for p, size in zip(predictions, sizes, strict=True)]


def test_coco_evaluation_callback_maps_back_to_original_pixels(train):
    predictions = train.predictions(seed=5, copies=3, jitter=0.1, false_positives=20, on_crowd=10)
    callback = build(CALLBACKS, {"CocoEvaluationCallback": {"post_prediction_callback": UNPACK}})
    got = _run_callback(callback, train, predictions)
    assert got == pytest.approx(train.cocoeval(_clipped(train, predictions)).tolist(), abs=1e-6)
    assert 0.05 < got[0] < 0.95
    unclipped = CocoEvaluationCallback(UNPACK, clip_boxes=False,
                                       annotation_file=str(TINYCOCO / "annotations" / "instances_train2017.json"))
    assert _run_callback(unclipped, train, predictions) == pytest.approx(train.cocoeval(predictions).tolist(), abs=1e-6)


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        subset = Subset("train")
        predictions = subset.predictions(**DDP_SET)
        everything = list(range(len(subset.image_ids)))
        results = {
            "split": subset.metric(predictions, batch_size=3, order=everything[rank::world_size]),
            # a rank that sees no image at all still takes part in the gather
            "empty_rank": subset.metric(predictions, batch_size=3, order=everything if rank == 0 else []),
            "coco": _run_callback(CocoEvaluationCallback(UNPACK), subset, predictions, batch_size=3,
                                  indices=everything[rank::world_size]),
        }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


DDP_SET = {"seed": 7, "copies": 2, "false_positives": 10, "on_crowd": 5, "tie": True}


def test_ddp_counts_every_image_once(train, tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2)
    predictions = train.predictions(**DDP_SET)
    expected, stats = train.metric(predictions), train.cocoeval(_clipped(train, predictions)).tolist()
    for results in (torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)):
        assert results["split"] == pytest.approx(expected, abs=1e-6)
        assert results["empty_rank"] == pytest.approx(expected, abs=1e-6)
        assert results["coco"] == pytest.approx(stats, abs=1e-6)
