"""Cost of ``DetectionMetrics`` (recipe key ``valid_metrics_list``): accumulating (``update``) and ``compute()``.

    python benchmarks/detection_metrics.py [--images 5000] [--preds 100] [--batch-size 32] [--device cpu]
                                           [--iou 0.5 0.95] [--copies 1 4] [--repeat 3] [--coco]

Synthetic COCO-like batches (640x640 inputs, 80 classes, 1-15 objects per image, a crowd region in one image
of ten; per image ``--preds`` detections: 1-4 (``--copies``) jittered copies of each object, the rest random
boxes) are built
before timing, so only the metric is measured; the fastest of ``--repeat`` runs is reported (a shared machine
adds noise, never speed). ``--coco`` also times pycocotools' COCOeval on the same boxes
and prints both mAPs (they agree).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from super_recipes.detection.metrics import DetectionMetrics  # noqa: E402

SIZE, NUM_CLASSES = 640.0, 80


def make_image(generator: torch.Generator, num_preds: int, copies: tuple[int, int] = (1, 4),
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(predictions [K, 6] XYXY, targets [N, 5] label+CXCYWH, crowd targets [M, 5])."""
    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    num_gt = int(torch.randint(1, 16, (1,), generator=generator))
    wh = 10 + rand(num_gt, 2) * 300
    centre = wh / 2 + rand(num_gt, 2) * (SIZE - wh)
    labels = torch.randint(0, NUM_CLASSES, (num_gt,), generator=generator).double()
    targets = torch.cat([labels[:, None], centre, wh], 1)
    counts = torch.randint(copies[0], copies[1] + 1, (num_gt,), generator=generator)
    source = torch.repeat_interleave(torch.arange(num_gt), counts)[:num_preds]
    jitter_c = centre[source] + torch.randn(len(source), 2, generator=generator) * wh[source] * 0.1
    jitter_wh = wh[source] * torch.exp(torch.randn(len(source), 2, generator=generator) * 0.1)
    rest = num_preds - len(source)
    random_wh = 10 + rand(rest, 2) * 300
    random_c = random_wh / 2 + rand(rest, 2) * (SIZE - random_wh)
    centres, sizes = torch.cat([jitter_c, random_c]), torch.cat([jitter_wh, random_wh])
    classes = torch.cat([labels[source], torch.randint(0, NUM_CLASSES, (rest,), generator=generator).double()])
    preds = torch.cat([centres - sizes / 2, centres + sizes / 2, rand(num_preds, 1), classes[:, None]], 1)
    crowd = torch.zeros(0, 5)
    if float(rand(1)) < 0.1:
        crowd = torch.tensor([[float(labels[0]), SIZE / 2, SIZE / 2, SIZE / 3, SIZE / 3]])
    return preds.float(), targets.float(), crowd


def make_batches(num_images: int, num_preds: int, batch_size: int, copies: tuple[int, int] = (1, 4),
                 ) -> list[tuple[list, torch.Tensor, dict]]:
    generator = torch.Generator().manual_seed(0)
    images = [make_image(generator, num_preds, copies) for _ in range(num_images)]
    batches = []
    for start in range(0, num_images, batch_size):
        chunk = images[start:start + batch_size]
        extras = {"crowd_targets": _with_image_index([item[2] for item in chunk]),
                  "image_ids": torch.arange(start, start + len(chunk))}
        batches.append(([item[0] for item in chunk], _with_image_index([item[1] for item in chunk]), extras))
    return batches


def _with_image_index(per_image: list[torch.Tensor]) -> torch.Tensor:
    """``[N, 5]`` rows per image -> one ``[sum N, 6]`` tensor with the image's index in front."""
    return torch.cat([torch.cat([torch.full((len(rows), 1), float(i)), rows], 1) for i, rows in enumerate(per_image)])


def run_coco(batches: list) -> tuple[float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for preds, targets, extras in batches:
        ids = extras["image_ids"].tolist()
        images += [{"id": i, "width": SIZE, "height": SIZE} for i in ids]
        for crowd, rows in ((0, targets), (1, extras["crowd_targets"])):
            for b, label, cx, cy, w, h in rows.tolist():
                annotations.append({"id": len(annotations) + 1, "image_id": ids[int(b)], "iscrowd": crowd,
                                    "category_id": int(label), "bbox": [cx - w / 2, cy - h / 2, w, h],
                                    "area": w * h})
        for image_id, p in zip(ids, preds, strict=True):
            results += [{"image_id": image_id, "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "score": s} for x1, y1, x2, y2, s, c in p.tolist()]
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": c} for c in range(NUM_CLASSES)]}
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return time.perf_counter() - start, float(evaluator.stats[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--preds", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iou", type=float, nargs="+", default=[0.5, 0.95])
    parser.add_argument("--copies", type=int, nargs=2, default=[1, 4], help="jittered copies of each object")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--coco", action="store_true", help="also time pycocotools COCOeval on the same boxes")
    args = parser.parse_args()
    batches = make_batches(args.images, args.preds, args.batch_size, tuple(args.copies))
    device = torch.device(args.device)
    batches = [([p.to(device) for p in preds], targets.to(device), {k: v.to(device) for k, v in extras.items()})
               for preds, targets, extras in batches]
    iou = args.iou[0] if len(args.iou) == 1 else args.iou
    metric = DetectionMetrics(NUM_CLASSES, iou_thres=iou, score_thres=0.1).to(device)
    metric.update(*batches[0][:2], **batches[0][2])  # warm-up (lazy initialisations, CUDA kernels)
    metric.reset()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    update_s = compute_s = float("inf")
    for _ in range(args.repeat):
        metric.reset()
        sync()
        start = time.perf_counter()
        for preds, targets, extras in batches:
            metric.update(preds, targets, **extras)
        sync()
        update_s = min(update_s, time.perf_counter() - start)
        start = time.perf_counter()
        values = metric.compute()
        sync()
        compute_s = min(compute_s, time.perf_counter() - start)
    print(f"DetectionMetrics iou_thres={iou} on {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{args.images} images x {args.preds} predictions ({args.copies[0]}-{args.copies[1]} copies of each "
          f"object, the rest random), batches of {args.batch_size}")
    print(f"update (all batches): {update_s:.2f} s  ({1000 * update_s / len(batches):.1f} ms per batch, "
          f"{1e6 * update_s / args.images:.0f} us per image)")
    print(f"compute:              {compute_s:.3f} s")
    print("  " + ", ".join(f"{k}={float(v):.6f}" for k, v in values.items()))
    if args.coco:
        coco_s, coco_map = run_coco(batches)
        print(f"pycocotools COCOeval (evaluate+accumulate+summarize): {coco_s:.1f} s, stats[0]={coco_map:.6f}")


if __name__ == "__main__":
    main()
