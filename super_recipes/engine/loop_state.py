"""The state of the training loop, in one place: where the run is, the best result so far, the epoch's partial sums.

The loop reads and writes only this object (callbacks see it through ``context.epoch``,
``context.global_step``, ``context.best_metric``...); a checkpoint writes it out and a resumed run reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoopState:
    """Where a run is between two optimizer steps."""

    epoch: int = 0  # the epoch being trained (0-based)
    global_step: int = 0  # optimizer steps taken so far in the run
    best_metric: float | None = None  # the best metric_to_watch so far
    stop_training: bool = False  # set by a callback (EarlyStop) to end training after this epoch
    # The epoch in progress:
    start_batch: int = 0  # micro-batches of this epoch trained before this process started (mid-epoch resume)
    loss_items: list[Any] = field(default_factory=list)  # per-batch loss-item tensors of this epoch so far
    loss_names: list[str] = field(default_factory=list)  # names of the loss items, known after one forward
    epoch_lrs: dict[str, float] = field(default_factory=dict)  # the rates of the epoch's first step
    epoch_elapsed: float = 0.0  # seconds this epoch ran before this process started
    last_record: dict[str, float] = field(default_factory=dict)  # the last finished epoch's row of metrics.csv

    def start_epoch(self, epoch: int) -> None:
        """Begin ``epoch`` from its first batch (a resumed epoch keeps what the checkpoint restored)."""
        if epoch != self.epoch or self.start_batch == 0:
            self.epoch, self.start_batch = epoch, 0
            self.loss_items, self.epoch_lrs, self.epoch_elapsed = [], {}, 0.0
