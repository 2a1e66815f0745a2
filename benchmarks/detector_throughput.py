"""Throughput of a detector as its COCO recipe trains and validates it: training steps and inference, in images/s.

    python benchmarks/detector_throughput.py [--recipe coco2017_yolo_nas_s] [--arch NAME] [--size 640]
        [--train-batch 8] [--infer-batch 8] [--steps 5] [--warmup 2] [--device cpu|cuda] [--threads N] [--amp]
        [--fuse]

The model (``architecture``), the loss (``training_hyperparams.loss`` with its ``criterion_params``), the optimizer
(``optimizer`` with ``optimizer_params``) and the post-processing (the first validation metric's
``post_prediction_callback``) come from the recipe, so the work timed is the recipe's own. Training step = forward
+ loss + backward + optimizer step on random images with 1-15 random boxes each (assignment costs grow with the box
count, so realistic counts matter). Inference = eval forward (decoding) + post-processing on random images;
``--fuse`` first folds re-parameterisable blocks (YOLO-NAS) as deployment does. ``--warmup`` untimed iterations
come first (allocator, cuDNN autotuning); the median over ``--steps`` timed iterations is reported. On CUDA the
clock waits for the device.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from super_recipes import models  # noqa: E402
from super_recipes.config.compose import compose_recipe  # noqa: E402
from super_recipes.detection.matching import resolve_post_prediction_callback  # noqa: E402
from super_recipes.losses import build_loss  # noqa: E402
from super_recipes.registry import OPTIMIZERS, to_plain  # noqa: E402

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
    """Median seconds of ``step`` over ``steps`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="coco2017_yolo_nas_s")
    parser.add_argument("--arch", default=None, help="another size of the recipe's family (default: the recipe's)")
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--infer-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--amp", action="store_true", help="autocast (float16 on CUDA, bfloat16 on CPU)")
    parser.add_argument("--fuse", action="store_true", help="fuse re-parameterisable blocks before inference")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg, _ = compose_recipe(args.recipe, [f"architecture={args.arch}"] if args.arch else [])
    hp = cfg.training_hyperparams
    generator = torch.Generator().manual_seed(0)
    model = models.get(cfg.architecture, num_classes=NUM_CLASSES,
                       arch_params={k: v for k, v in to_plain(cfg.arch_params).items() if k != "num_classes"})
    model = model.to(device)
    criterion_params = dict(to_plain(hp.criterion_params) or {})
    if "num_classes" in criterion_params:  # the recipe interpolates arch_params.num_classes
        criterion_params["num_classes"] = NUM_CLASSES
    loss_fn = build_loss(hp.loss, criterion_params)
    if isinstance(loss_fn, torch.nn.Module):
        loss_fn = loss_fn.to(device)
    optimizer = OPTIMIZERS.get(str(hp.optimizer))(model.parameters(), lr=float(hp.initial_lr),
                                                  **to_plain(hp.optimizer_params or {}))
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")

    images = torch.rand(args.train_batch, 3, args.size, args.size, generator=generator).to(device)
    targets = random_targets(args.train_batch, args.size, generator).to(device)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            outputs = model(images)
        loss = loss_fn(outputs, targets)[0]  # the detection losses compute in float32 themselves
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    model.train()
    train_s = timed(train_step, args.steps, args.warmup, device)

    (metric,) = list(to_plain(hp.valid_metrics_list))[:1]
    metric_args = next(iter(metric.values())) if isinstance(metric, dict) else {}
    post = resolve_post_prediction_callback(metric_args.get("post_prediction_callback"))
    batch = torch.rand(args.infer_batch, 3, args.size, args.size, generator=generator).to(device)

    @torch.no_grad()
    def infer_step() -> None:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=args.amp):
            outputs = model(batch)
        post(outputs)

    model.eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    if args.fuse and hasattr(model, "prep_model_for_conversion"):
        model.prep_model_for_conversion(input_size=[1, 3, args.size, args.size])
    infer_s = timed(infer_step, args.steps, args.warmup, device)
    where = f"{device}" + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
    print(f"{cfg.architecture} ({params:.2f} M params) at {args.size}x{args.size} on {where}, amp={args.amp}, "
          f"recipe {args.recipe}, torch {torch.__version__}")
    print(f"  train (fwd+{type(loss_fn).__name__}+bwd+{type(optimizer).__name__}), batch {args.train_batch}: "
          f"{train_s * 1000:8.1f} ms/step {args.train_batch / train_s:8.2f} images/s")
    print(f"  inference (eval fwd{'(fused)' if args.fuse else ''}+{type(post).__name__}), batch {args.infer_batch}: "
          f"{infer_s * 1000:8.1f} ms/batch {args.infer_batch / infer_s:8.2f} images/s")


if __name__ == "__main__":
    main()
