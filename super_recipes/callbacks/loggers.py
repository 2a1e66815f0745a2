"""Where a run reports itself: tqdm progress bar, one console/log-file line per epoch, TensorBoard, metrics.csv.

All of them are ordinary callbacks that the Trainer adds on rank 0; they only read the PhaseContext.
"""

from __future__ import annotations

import csv
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from super_recipes.callbacks.base import Callback, PhaseContext

logger = logging.getLogger("super_recipes")

LOG_FILE_NAME = "train.log"
CSV_FILE_NAME = "metrics.csv"


def current_lrs(optimizer: Any) -> dict[str, float]:
    """The rate of every parameter group: ``{"lr": x}`` for one group, ``{"lr/<group name>": x}`` otherwise."""
    groups = optimizer.param_groups
    if len(groups) == 1:
        return {"lr": groups[0]["lr"]}
    return {f"lr/{group.get('name', i)}": group["lr"] for i, group in enumerate(groups)}


def configure_console_logging(silent: bool = False, errors_only: bool = False) -> None:
    """Print the ``super_recipes`` logger's messages to stderr; ``silent`` keeps only warnings and errors.

    The log file handler is separate, so a silent run still writes its ``train.log``.
    """
    console = next((h for h in logger.handlers if getattr(h, "_super_recipes_console", False)), None)
    if console is None:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter("%(message)s"))
        console._super_recipes_console = True  # type: ignore[attr-defined]
        logger.addHandler(console)
    console.setLevel(logging.ERROR if errors_only else logging.WARNING if silent else logging.INFO)
    logger.setLevel(logging.INFO)
    logger.propagate = False


class ProgressBar(Callback):
    """A tqdm bar per epoch showing the running loss and the learning rate.

    The loss is read back from the device (``.item()``) only when the bar is redrawn, not every step.
    """

    order = 90

    def __init__(self, refresh_seconds: float = 0.5):
        self.refresh_seconds = refresh_seconds
        self._bar: Any = None
        self._next_refresh = 0.0

    def on_train_loader_start(self, context: PhaseContext) -> None:
        from tqdm.auto import tqdm

        total = context.trainer.train_batches_per_epoch if context.trainer else None
        self._bar = tqdm(total=total, desc=f"Train epoch {context.epoch}", leave=False, dynamic_ncols=True)
        self._next_refresh = time.monotonic() + self.refresh_seconds

    def on_train_batch_end(self, context: PhaseContext) -> None:
        self._bar.update(1)
        now = time.monotonic()
        if now >= self._next_refresh:
            self._next_refresh = now + self.refresh_seconds
            lr = context.optimizer.param_groups[0]["lr"]
            self._bar.set_postfix(loss=f"{float(context.loss.detach()):.4f}", lr=f"{lr:.3g}", refresh=False)

    def on_train_loader_end(self, context: PhaseContext) -> None:
        self._bar.close()

    def on_validation_loader_start(self, context: PhaseContext) -> None:
        from tqdm.auto import tqdm

        total = context.trainer.valid_batches_per_epoch if context.trainer else None
        self._bar = tqdm(total=total, desc=f"Valid epoch {context.epoch}", leave=False, dynamic_ncols=True)

    def on_validation_batch_end(self, context: PhaseContext) -> None:
        self._bar.update(1)

    def on_validation_loader_end(self, context: PhaseContext) -> None:
        self._bar.close()


class EpochSummary(Callback):
    """One line per epoch on the console and in ``train.log``."""

    order = 200

    def on_epoch_end(self, context: PhaseContext) -> None:
        record = context.epoch_record
        parts = [f"Epoch {context.epoch + 1}/{context.max_epochs}"]
        parts += [f"{k}={_fmt(v)}" for k, v in record.items() if k != "epoch" and not _is_nan(v)]
        if context.metric_to_watch and context.best_metric is not None:
            parts.append(f"best {context.metric_to_watch}={_fmt(context.best_metric)}")
        logger.info("  ".join(parts))


class TensorBoardLogger(Callback):
    """TensorBoard scalars: every loss item, metric and LR per epoch, the loss and LRs every N steps.

    Per-step scalars are buffered and written at epoch end (writing a scalar costs tens of microseconds, more
    than the whole loop may add per step); the loss is read from the device only then, not at the logged step.
    """

    order = 210

    def __init__(self, log_every_n_steps: int = 10):
        self.log_every_n_steps = max(1, int(log_every_n_steps))
        self._writer: Any = None
        self._pending: list[tuple[str, float, int]] = []

    def on_training_start(self, context: PhaseContext) -> None:
        # Opened on first use (importing tensorboard takes a noticeable part of a second, before the first step).
        self._writer = LazySummaryWriter(context.experiment_dir)
        context.tensorboard = self._writer  # for callbacks that draw (SuperGradients' context.sg_logger)
        if getattr(context.training_params, "log_installed_packages", False):
            from super_recipes.engine.environment import installed_packages

            self._writer.add_text("installed_packages", "    " + "\n    ".join(installed_packages()), 0)

    def on_train_batch_gradient_step_end(self, context: PhaseContext) -> None:
        step = context.global_step
        if step % self.log_every_n_steps:
            return
        for group in context.optimizer.param_groups:
            self._pending.append((group.get("name", ""), group["lr"], step))
        self._pending.append(("__loss__", context.loss.detach(), step))

    def on_epoch_end(self, context: PhaseContext) -> None:
        multi_group = len(context.optimizer.param_groups) > 1
        for name, value, step in self._pending:
            if name == "__loss__":
                self._writer.add_scalar("train_step/loss", float(value), step)
            else:
                self._writer.add_scalar(f"train_step/lr/{name}" if multi_group else "train_step/lr", value, step)
        self._pending.clear()
        for key, value in context.epoch_record.items():
            if key != "epoch" and not _is_nan(value):
                self._writer.add_scalar(key, value, context.epoch)
        self._writer.flush()

    def on_training_end(self, context: PhaseContext) -> None:
        if self._writer is not None:
            self._writer.close()


class LazySummaryWriter:
    """A ``torch.utils.tensorboard.SummaryWriter`` for ``log_dir`` created on first use (``close`` before any
    use creates nothing)."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self._writer: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        return getattr(self._writer, name)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class MetricsCSV(Callback):
    """``metrics.csv``: one row per epoch (epoch, learning rates, train and validation results, epoch time).

    The columns are the keys of the first epoch's record; validation columns are present (empty) on epochs
    without validation, so every row has the same columns.
    """

    order = 220

    def __init__(self) -> None:
        self._columns: list[str] | None = None

    def on_training_start(self, context: PhaseContext) -> None:
        self._path = context.experiment_dir / CSV_FILE_NAME
        self._columns = None
        if context.epoch > 0 and self._path.exists():
            # A resumed run keeps the rows of the epochs before its checkpoint (a row written after the
            # checkpoint it resumes from is dropped: that epoch is computed again).
            with self._path.open(newline="") as f:
                rows = list(csv.reader(f))
            self._columns = rows[0] if rows else None
            kept = [r for r in rows[1:] if r and int(r[0]) < context.epoch]
            with self._path.open("w", newline="") as f:
                csv.writer(f).writerows(rows[:1] + kept)

    def on_epoch_end(self, context: PhaseContext) -> None:
        record = context.epoch_record
        if self._columns is None:
            self._columns = list(record)
            with self._path.open("w", newline="") as f:
                csv.writer(f).writerow(self._columns)
        with self._path.open("a", newline="") as f:
            csv.writer(f).writerow(["" if _is_nan(record.get(c)) else record.get(c) for c in self._columns])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _is_nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
