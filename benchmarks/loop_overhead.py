"""What ``Trainer.train`` adds per optimizer step over a hand-written loop doing the same work.

    python benchmarks/loop_overhead.py [--epochs 40] [--threads 2]

The work, the same on both sides: a 3072-64-64-10 MLP, 8,192 in-memory samples, a shuffled ``DataLoader`` of
batch 64 (128 steps per epoch), cross-entropy, SGD with momentum, ``torch.set_num_threads(2)``. The hand-written
loop iterates its loader and steps; the Trainer gets the same kind of loader (it rebuilds it with its resumable
order) and runs with its default services (TensorBoard, metrics.csv, train.log, epoch summary; no validation,
no checkpoints, constant LR).

The two are interleaved step by step, so that a machine whose speed drifts (a shared VM) slows both alike: after
each Trainer step, a callback runs one step of the hand-written loop (its own model, optimizer and loader, the
batch request included) and times it. A Trainer epoch is its training window (``on_train_loader_start`` to
``on_train_loader_end``) minus the hand-written steps run inside it; the hand-written epoch is the sum of those
steps. The Trainer's epoch-end work (summary line, TensorBoard, metrics.csv) is reported separately, per epoch.
After 3 warm-up epochs, the result is the median over the epochs of the per-step difference, with each side's
median for reference. Target: at most 0.05 ms per step. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

SAMPLES, FEATURES, CLASSES, BATCH = 8192, 3072, 10, 64
WARMUP_EPOCHS = 3


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


class HandWritten:
    """The loop a user would write, one step per call (a new loader iterator at each epoch, as ``for`` does)."""

    def __init__(self) -> None:
        self.model, self.loader = make_model(), make_loader(seed=1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.model.train()
        self.batches = iter(())

    def step(self) -> None:
        batch = next(self.batches, None)
        if batch is None:
            self.batches = iter(self.loader)
            batch = next(self.batches)
        inputs, targets = batch
        loss = self.loss_fn(self.model(inputs), targets)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def measure(epochs: int, folder: str) -> tuple[list[float], list[float], list[float]]:
    """(Trainer epochs, hand-written epochs, Trainer epoch ends), in seconds, interleaved step by step."""
    from super_recipes import Trainer
    from super_recipes.callbacks import Callback

    hand = HandWritten()
    trainer_times: list[float] = []
    hand_times: list[float] = []
    epoch_ends: list[float] = []

    class Clock(Callback):
        order = -1000  # first at the start of an epoch, so nothing else is timed there

        def on_train_loader_start(self, context):
            self.hand = 0.0
            self.start = time.perf_counter()

        def on_train_batch_end(self, context):
            start = time.perf_counter()
            hand.step()
            self.hand += time.perf_counter() - start

        def on_train_loader_end(self, context):
            self.loop_end = time.perf_counter()
            trainer_times.append(self.loop_end - self.start - self.hand)
            hand_times.append(self.hand)

    class EpochEndClock(Callback):
        order = 10_000  # last at the end of an epoch: the Trainer's epoch-end work is done

        def on_epoch_end(self, context):
            epoch_ends.append(time.perf_counter() - clock.loop_end)

    clock = Clock()
    Trainer("overhead", folder, device="cpu").train(
        model=make_model(), train_loader=make_loader(seed=1), callbacks=[clock, EpochEndClock()],
        training_params={"max_epochs": epochs, "initial_lr": 0.01, "optimizer": "SGD",
                         "optimizer_params": {"momentum": 0.9}, "save_model": False, "valid_metrics_list": [],
                         "metric_to_watch": "CrossEntropyLoss", "silent_mode": True})
    return trainer_times, hand_times, epoch_ends


def harness_bias(epochs: int) -> float:
    """The same measurement with a hand-written loop in the Trainer's place (ms/step; should be about 0)."""
    outer, inner = HandWritten(), HandWritten()
    outer_times, inner_times = [], []
    for _ in range(epochs + WARMUP_EPOCHS):
        inner_total = 0.0
        start = time.perf_counter()
        for inputs, targets in outer.loader:
            loss = outer.loss_fn(outer.model(inputs), targets)
            loss.backward()
            outer.optimizer.step()
            outer.optimizer.zero_grad(set_to_none=True)
            step_start = time.perf_counter()
            inner.step()
            inner_total += time.perf_counter() - step_start
        outer_times.append(time.perf_counter() - start - inner_total)
        inner_times.append(inner_total)
    steps = len(outer.loader)
    pairs = [(o - i) / steps * 1e3 for o, i in zip(outer_times[WARMUP_EPOCHS:], inner_times[WARMUP_EPOCHS:],
                                                      strict=True)]
    return statistics.median(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--check-harness", action="store_true",
                        help="also measure a hand-written loop against itself (the harness's own bias)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = SAMPLES // BATCH + (SAMPLES % BATCH > 0)
    with tempfile.TemporaryDirectory() as folder:
        framework, hand, epoch_ends = measure(args.epochs + WARMUP_EPOCHS, folder)
    framework, hand, epoch_ends = (x[WARMUP_EPOCHS:] for x in (framework, hand, epoch_ends))
    pairs = [(f - h) / steps * 1e3 for f, h in zip(framework, hand, strict=True)]
    print(f"hand-written loop  : {statistics.median(hand) / steps * 1e3:.3f} ms/step (median of {len(pairs)} epochs)")
    print(f"Trainer.train      : {statistics.median(framework) / steps * 1e3:.3f} ms/step")
    print(f"overhead           : {statistics.median(pairs):+.3f} ms/step (median of paired differences; "
          f"target <= 0.05)")
    print(f"epoch end          : {statistics.median(epoch_ends) * 1e3:.1f} ms per epoch (summary line, TensorBoard, "
          f"metrics.csv; not in the per-step figures)")
    if args.check_harness:
        print(f"harness A/A bias   : {harness_bias(args.epochs):+.3f} ms/step (hand-written loop against itself)")


if __name__ == "__main__":
    main()
