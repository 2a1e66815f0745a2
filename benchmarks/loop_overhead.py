"""Python overhead of the Trainer's loop per optimizer step, against a hand-written loop doing the same work.

    python benchmarks/loop_overhead.py [--steps 3000]

Both loops run the same tiny model on the same pre-built CPU batches (so data loading and compute are as small
as possible and the difference is the framework's own per-step cost: callbacks, schedule, logging, bookkeeping).
The Trainer runs with its default services on (LR schedule, TensorBoard, metrics.csv, log file); the progress
bar is off because stderr is not a terminal when piped (pass --tty-bar to force it on).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch


def make_batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 16, generator=generator), torch.randint(0, 4, (8,), generator=generator))
            for _ in range(steps)]


def hand_written(model: torch.nn.Module, batches: list, lr: float) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    start = time.perf_counter()
    for inputs, targets in batches:
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def with_trainer(model: torch.nn.Module, batches: list, lr: float, folder: str) -> float:
    from super_recipes import Trainer
    from super_recipes.callbacks import Callback

    times = {}

    class Clock(Callback):
        def on_train_loader_start(self, context):
            times["start"] = time.perf_counter()

        def on_train_loader_end(self, context):
            times["end"] = time.perf_counter()

    Trainer("overhead", folder, device="cpu").train(
        model=model, training_params={"max_epochs": 1, "initial_lr": lr, "optimizer_params": {"momentum": 0.9},
                                      "lr_mode": "cosine", "save_model": False, "valid_metrics_list": []},
        train_loader=batches, callbacks=[Clock()])
    return times["end"] - times["start"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    batches = make_batches(args.steps)
    hand, framework = [], []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            torch.manual_seed(0)
            hand.append(hand_written(torch.nn.Linear(16, 4), batches, 0.1))
            torch.manual_seed(0)
            framework.append(with_trainer(torch.nn.Linear(16, 4), batches, 0.1, folder))
    hand_ms = statistics.median(hand) / args.steps * 1e3
    framework_ms = statistics.median(framework) / args.steps * 1e3
    print(f"hand-written loop : {hand_ms:.4f} ms/step")
    print(f"Trainer loop      : {framework_ms:.4f} ms/step")
    print(f"overhead          : {framework_ms - hand_ms:.4f} ms/step (target < 0.05)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
