"""The callback events, the context every event receives, and the dispatcher the training loop fires.

Events and when the loop fires them (``phase_callbacks`` and built-in services all use these)::

    on_training_start
      per epoch:
        on_train_loader_start
          per batch: on_train_batch_start -> forward -> on_train_batch_loss_end -> backward
                     -> on_train_batch_backward_end -> [on_train_batch_gradient_step_start -> optimizer.step()
                     -> on_train_batch_gradient_step_end] -> on_train_batch_end
        on_train_loader_end
        on_validation_loader_start
          per batch: on_validation_batch_start -> forward -> on_validation_batch_end
        on_validation_loader_end
        on_validation_end_best_epoch        (only when metric_to_watch improved)
        on_epoch_end                        (the epoch's record is complete; checkpoints are written after it)
    on_training_end
    Trainer.test(): on_test_loader_start, on_test_batch_start, on_test_batch_end, on_test_loader_end
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EVENTS = (
    "on_training_start",
    "on_train_loader_start",
    "on_train_batch_start",
    "on_train_batch_loss_end",
    "on_train_batch_backward_end",
    "on_train_batch_gradient_step_start",
    "on_train_batch_gradient_step_end",
    "on_train_batch_end",
    "on_train_loader_end",
    "on_validation_loader_start",
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_validation_loader_end",
    "on_validation_end_best_epoch",
    "on_epoch_end",
    "on_test_loader_start",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_test_loader_end",
    "on_training_end",
)


@dataclass(eq=False)
class PhaseContext:
    """What a callback sees. The loop updates fields in place; per-batch fields hold the current batch.

    ``metrics`` holds the finished results of the last loader (``{"train/Accuracy": 0.9, ...}``); at
    ``on_epoch_end`` ``epoch_record`` holds the whole row written to ``metrics.csv``.
    """

    net: Any = None  # the model being trained (the plain module, also under torch.compile or DDP)
    eval_net: Any = None  # the model validated and selected: the EMA model when ema is on, else net
    ema: Any = None  # super_recipes.engine.ema.ModelEMA when ema is on
    optimizer: Any = None
    training_params: Any = None
    device: Any = None
    experiment_dir: Path | None = None
    epoch: int = 0
    max_epochs: int = 0
    batch_idx: int = 0
    is_optimizer_step: bool = True  # False on micro-batches that only accumulate gradients (batch_accumulate)
    global_step: int = 0  # optimizer steps taken so far in the run
    steps_per_epoch: int = 0  # optimizer steps per epoch
    inputs: Any = None
    targets: Any = None
    batch_extras: Any = None  # the third element of a batch, when the collate function returns one (a dict)
    preds: Any = None
    loss: Any = None
    loss_items: Any = None  # 1-D tensor, one value per name in loss_names
    loss_names: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    epoch_record: dict[str, float] = field(default_factory=dict)
    metric_to_watch: str = ""
    best_metric: float | None = None
    is_rank_zero: bool = True
    average_model_metrics: dict[str, float] | None = None  # set by average_best_models at training end
    stop_training: bool = False  # set by a callback (EarlyStop) to end training after this epoch
    trainer: Any = None


class Callback:
    """Base class: override any of the events listed in this module's docstring.

    ``order`` sorts callbacks (lower first); LR schedules use a low order so every other callback sees the rate
    in force for the step. ``state_dict``/``load_state_dict`` let a callback's state travel in checkpoints.
    """

    order: int = 100

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


for _event in EVENTS:
    setattr(Callback, _event, lambda self, context: None)


def _noop(context: PhaseContext) -> None:
    return None


class CallbackList:
    """Fires each event on the callbacks that override it, and only those.

    Dispatch is resolved once, at construction, so an event nobody listens to costs one no-op call: the
    per-step overhead of the loop stays in the microseconds.
    """

    def __init__(self, callbacks: Iterable[Callback]):
        self.callbacks = sorted(callbacks, key=lambda cb: cb.order)
        for event in EVENTS:
            handlers = [
                getattr(cb, event) for cb in self.callbacks
                if getattr(type(cb), event, None) is not getattr(Callback, event)
            ]
            setattr(self, event, _dispatcher(handlers))

    def state_dict(self) -> dict[str, Any]:
        return {f"{i}:{type(cb).__name__}": cb.state_dict() for i, cb in enumerate(self.callbacks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, cb in enumerate(self.callbacks):
            key = f"{i}:{type(cb).__name__}"
            if key in state:
                cb.load_state_dict(state[key])


def _dispatcher(handlers: list) -> Any:
    if not handlers:
        return _noop
    if len(handlers) == 1:
        return handlers[0]

    def fire(context: PhaseContext) -> None:
        for handler in handlers:
            handler(context)

    return fire
