"""``phase_callbacks: [{EarlyStop: {metric: Accuracy, mode: max, patience: 5}}]``: stop when a metric stalls.

The decision is taken when validation ends (``on_validation_loader_end``, whose ``context.metrics`` are the
validation results that also end up in the epoch record) and acted on at ``on_epoch_end`` by setting
``context.stop_training``. Deciding before ``on_epoch_end`` matters for resuming: the trainer writes
``ckpt_latest.pth``, callback states included, between the two events, so the saved counters already count the
epoch the checkpoint ends with.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from super_recipes.callbacks.base import Callback, PhaseContext
from super_recipes.errors import RecipeError, did_you_mean
from super_recipes.registry import register_callback

logger = logging.getLogger("super_recipes")

MODES = ("max", "min")


def read_validation_metric(metrics: dict[str, float], name: str, owner: str) -> float:
    """``metrics["valid/<name>"]`` as a float; a RecipeError naming ``owner`` and the closest names otherwise."""
    key = f"valid/{name}"
    if key not in metrics:
        known = [k.removeprefix("valid/") for k in metrics if k.startswith("valid/")]
        raise RecipeError(
            f"{owner}: '{name}' is neither a validation metric nor a loss item. {did_you_mean(name, known)} "
            f"Valid: {', '.join(known) or '(none)'}".replace("  ", " ")
        )
    return float(metrics[key])


@register_callback
class EarlyStop(Callback):
    """Stop training after ``patience`` validations in a row without an improvement larger than ``min_delta``.

    ``metric`` is a validation metric or loss item name, as in ``metric_to_watch`` (default: ``metric_to_watch``
    itself). ``mode`` is ``max`` or ``min``; it may be left out only when watching ``metric_to_watch``, whose
    direction ``greater_metric_to_watch_is_better`` gives. Epochs without validation
    (``run_validation_freq > 1``) do not count. ``check_finite`` stops as soon as the validated value is NaN or
    infinite (a diverged run).
    """

    def __init__(self, metric: str | None = None, mode: str | None = None, patience: int = 5,
                 min_delta: float = 0.0, check_finite: bool = True):
        if mode is not None and mode not in MODES:
            raise RecipeError(f"EarlyStop: mode must be 'max' or 'min', got {mode!r}.")
        if patience < 1:
            raise RecipeError(f"EarlyStop: patience must be at least 1, got {patience}.")
        if min_delta < 0:
            raise RecipeError(f"EarlyStop: min_delta must be >= 0 (it is a margin, not a direction), got {min_delta}.")
        self.metric = metric.removeprefix("valid/") if metric else None
        self.mode = mode
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.check_finite = check_finite
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0  # validations in a row without improvement
        self._stop_reason: str | None = None

    def on_training_start(self, context: PhaseContext) -> None:
        watch = context.metric_to_watch.removeprefix("valid/")
        self.metric = self.metric or watch
        if self.mode is None:
            if self.metric != watch:
                raise RecipeError(
                    f"EarlyStop: say whether '{self.metric}' should go up or down: add mode: max or mode: min "
                    f"(it can be left out only for metric_to_watch '{watch}')."
                )
            greater = getattr(context.training_params, "greater_metric_to_watch_is_better", True)
            self.mode = "max" if greater else "min"
        self._stop_reason = None
        if context.epoch == 0:  # a fresh run (not a resume) does not inherit counters from an earlier train()
            self.best, self.best_epoch, self.bad_epochs = None, None, 0

    def on_validation_loader_end(self, context: PhaseContext) -> None:
        if not context.metrics:  # a validation loader with no batches computes nothing to compare
            return
        value = read_validation_metric(context.metrics, self.metric, "EarlyStop metric")
        if not math.isfinite(value):
            if self.check_finite:
                self._stop_reason = f"valid/{self.metric} is {value}"
            return
        if self._improves(value):
            self.best, self.best_epoch, self.bad_epochs = value, context.epoch, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self._stop_reason = (
                f"valid/{self.metric} has not improved by more than {self.min_delta:g} for {self.bad_epochs} "
                f"validations (best {self.best:.6g} at epoch {self.best_epoch})"
            )

    def on_epoch_end(self, context: PhaseContext) -> None:
        if self._stop_reason:
            logger.info(f"EarlyStop: {self._stop_reason}.")
            context.stop_training = True

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.best_epoch = state.get("best_epoch")
        self.bad_epochs = int(state.get("bad_epochs", 0))
