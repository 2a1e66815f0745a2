"""What ``Trainer.train`` adds per optimizer step over a hand-written loop doing the same work.

    python benchmarks/loop_overhead.py [--repeats 12] [--epochs 4] [--threads 2]

The work, the same on both sides: a 3072-64-64-10 MLP, 8,192 in-memory samples, a shuffled ``DataLoader`` of
batch 64 (128 steps per epoch), cross-entropy, SGD with momentum, ``torch.set_num_threads(2)``. The hand-written
loop iterates the loader and steps; the Trainer gets the same loader (it rebuilds it with its resumable order)
and runs with its default services (TensorBoard, metrics.csv, train.log, epoch summary; no validation, no
checkpoints, constant LR). Each epoch is timed from its first batch request to its last step
(``on_train_loader_start`` to ``on_train_loader_end`` for the Trainer), so set-up and epoch-end writing are out
of the per-step figures; the Trainer's epoch-end work (summary line, TensorBoard, metrics.csv) is reported on
its own, per epoch.

The two sides alternate (hand, Trainer, hand, Trainer...) after one warm-up run each; the result is the median
over all (repeat, epoch) pairs of the per-step difference, with the medians of each side for reference.
Target: at most 0.05 ms per step. Run it on an idle machine: with other processes on the cores the noise is
larger than the quantity measured.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

SAMPLES, FEATURES, CLASSES, BATCH = 8192, 3072, 10, 64


def make_loader(seed: int) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(SAMPLES, FEATURES, generator=generator),
                                          torch.randint(0, CLASSES, (SAMPLES,), generator=generator))
    return torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed))


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                               torch.nn.ReLU(), torch.nn.Linear(64, CLASSES))


def hand_written(epochs: int) -> list[float]:
    """Seconds per epoch of the loop a user would write."""
    model, loader = make_model(), make_loader(seed=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for inputs, targets in loader:
            loss = loss_fn(model(inputs), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def with_trainer(epochs: int, folder: str, epoch_ends: list[float]) -> list[float]:
    """Seconds per epoch of ``Trainer.train`` on the same work (its training batches); the seconds of each
    epoch's end (summary line, TensorBoard, metrics.csv) are appended to ``epoch_ends``."""
    from super_recipes import Trainer
    from super_recipes.callbacks import Callback

    times: list[float] = []

    class EpochClock(Callback):
        order = -1000  # before every other callback at the start, so nothing else is timed there

        def on_train_loader_start(self, context):
            self.start = time.perf_counter()

        def on_train_loader_end(self, context):
            self.loop_end = time.perf_counter()
            times.append(self.loop_end - self.start)

    class EpochEndClock(Callback):
        order = 10_000  # after every other callback at the epoch's end

        def on_epoch_end(self, context):
            epoch_ends.append(time.perf_counter() - clock.loop_end)

    clock = EpochClock()

    Trainer("overhead", folder, device="cpu").train(
        model=make_model(), train_loader=make_loader(seed=1), callbacks=[clock, EpochEndClock()],
        training_params={"max_epochs": epochs, "initial_lr": 0.01, "optimizer": "SGD",
                         "optimizer_params": {"momentum": 0.9}, "save_model": False, "valid_metrics_list": [],
                         "metric_to_watch": "CrossEntropyLoss", "silent_mode": True})
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = SAMPLES // BATCH + (SAMPLES % BATCH > 0)
    with tempfile.TemporaryDirectory() as folder:
        hand_written(1), with_trainer(1, folder, [])  # warm-up: allocator, caches, lazy imports
        hand, framework, epoch_ends = [], [], []
        for _ in range(args.repeats):
            hand.append(hand_written(args.epochs))
            framework.append(with_trainer(args.epochs, folder, epoch_ends))
    pairs = [(f - h) / steps * 1e3 for hs, fs in zip(hand, framework, strict=True)
             for h, f in zip(hs, fs, strict=True)]
    hand_ms = statistics.median(t for ts in hand for t in ts) / steps * 1e3
    framework_ms = statistics.median(t for ts in framework for t in ts) / steps * 1e3
    print(f"hand-written loop  : {hand_ms:.3f} ms/step (median of {len(pairs)} epochs)")
    print(f"Trainer.train      : {framework_ms:.3f} ms/step")
    print(f"overhead           : {statistics.median(pairs):+.3f} ms/step (median of paired differences; "
          f"target <= 0.05)")
    print(f"epoch end          : {statistics.median(epoch_ends) * 1e3:.1f} ms per epoch (summary line, TensorBoard, "
          f"metrics.csv; not in the per-step figures)")


if __name__ == "__main__":
    main()
