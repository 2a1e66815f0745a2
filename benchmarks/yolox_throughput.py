"""Throughput of a YOLOX model (recipe ``coco2017_yolox``): training steps and inference, in images per second.

    python benchmarks/yolox_throughput.py [--arch yolox_s] [--size 640] [--train-batch 8] [--infer-batch 8]
                                          [--steps 5] [--warmup 2] [--device cpu|cuda] [--threads N] [--amp]

Training step = forward + ``YoloXFastDetectionLoss`` + backward + SGD step (Nesterov, as the recipe) on random
images with 1-15 random boxes each (the assignment cost in the loss grows with the box count, so realistic
counts matter). Inference = eval forward (decoding) + ``YoloXPostPredictionCallback`` (conf 0.01, IoU 0.65,
as validation) on random images. ``--warmup`` untimed iterations come first (allocator, cuDNN autotuning);
the mean over ``--steps`` timed iterations is reported. On CUDA the clock waits for the device.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from super_recipes import models  # noqa: E402
from super_recipes.detection.yolox.loss import YoloXFastDetectionLoss  # noqa: E402
from super_recipes.detection.yolox.postprocess import YoloXPostPredictionCallback  # noqa: E402

NUM_CLASSES = 80


def random_targets(batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """``[N, 6]`` rows (batch index, label, cx, cy, w, h) in input pixels, 1-15 boxes per image."""
    rows = []
    for index in range(batch):
        n = int(torch.randint(1, 16, (1,), generator=generator))
        wh = 16 + torch.rand(n, 2, generator=generator) * (size / 2)
        centre = wh / 2 + torch.rand(n, 2, generator=generator) * (size - wh)
        labels = torch.randint(0, NUM_CLASSES, (n, 1), generator=generator).float()
        rows.append(torch.cat([torch.full((n, 1), float(index)), labels, centre, wh], dim=1))
    return torch.cat(rows)


def timed(step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    """Mean seconds of ``step`` over ``steps`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="yolox_s")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--infer-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--amp", action="store_true", help="autocast (float16 on CUDA, bfloat16 on CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    model = models.get(args.arch, num_classes=NUM_CLASSES).to(device)
    loss_fn = YoloXFastDetectionLoss(strides=[8, 16, 32], num_classes=NUM_CLASSES, use_l1=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")

    images = torch.rand(args.train_batch, 3, args.size, args.size, generator=generator).to(device)
    targets = random_targets(args.train_batch, args.size, generator).to(device)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            outputs = model(images)
        loss = loss_fn([o.float() for o in outputs], targets)[0]  # the loss runs in float32, as in training
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    model.train()
    train_s = timed(train_step, args.steps, args.warmup, device)

    post = YoloXPostPredictionCallback(conf=0.01, iou=0.65, max_predictions=300, nms_top_k=1000)
    batch = torch.rand(args.infer_batch, 3, args.size, args.size, generator=generator).to(device)

    @torch.no_grad()
    def infer_step() -> None:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            outputs = model(batch)
        post(outputs)

    model.eval()
    infer_s = timed(infer_step, args.steps, args.warmup, device)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    where = f"{device}" + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
    print(f"{args.arch} ({params:.2f} M params) at {args.size}x{args.size} on {where}, amp={args.amp}, "
          f"torch {torch.__version__}")
    print(f"  train (fwd+loss+bwd+SGD), batch {args.train_batch}: {train_s * 1000:8.1f} ms/step "
          f"{args.train_batch / train_s:8.2f} images/s")
    print(f"  inference (eval fwd+NMS), batch {args.infer_batch}: {infer_s * 1000:8.1f} ms/batch "
          f"{args.infer_batch / infer_s:8.2f} images/s")


if __name__ == "__main__":
    main()
