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
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

from super_recipes.engine.loop_state import LoopState
from super_recipes.errors import RecipeError, did_you_mean


@dataclass(eq=False)
class PhaseContext:
    """What a callback sees. The loop updates fields in place; per-batch fields hold the current batch.

    ``epoch``, ``global_step``, ``best_metric``, ``stop_training`` and ``loss_names`` read and write the loop's
    :class:`~super_recipes.engine.loop_state.LoopState` (``state``). ``metrics`` holds the finished results of the
    last loader (``{"train/Accuracy": 0.9, ...}``); at ``on_epoch_end`` ``epoch_record`` holds the whole row
    written to ``metrics.csv``. The SuperGradients names (``metrics_dict``, ``loss_log_items``, ``target``,
    ``criterion``, ``ckpt_dir``, ``ema_model``, ``sg_logger``...) are read-only aliases.
    """

    net: Any = None  # the model being trained (the plain module, also under torch.compile or DDP)
    eval_net: Any = None  # the model validated and selected: the EMA model when ema is on, else net
    ema: Any = None  # super_recipes.engine.ema.ModelEMA when ema is on
    optimizer: Any = None
    training_params: Any = None
    device: Any = None
    experiment_dir: Path | None = None
    max_epochs: int = 0
    batch_idx: int = 0
    is_optimizer_step: bool = True  # False on micro-batches that only accumulate gradients (batch_accumulate)
    steps_per_epoch: int = 0  # optimizer steps per epoch
    inputs: Any = None
    targets: Any = None
    batch_extras: Any = None  # the third element of a batch, when the collate function returns one (a dict)
    preds: Any = None
    loss: Any = None
    loss_items: Any = None  # 1-D tensor, one value per name in loss_names
    metrics: dict[str, float] = field(default_factory=dict)
    epoch_record: dict[str, float] = field(default_factory=dict)
    metric_to_watch: str = ""
    is_rank_zero: bool = True
    average_model_metrics: dict[str, float] | None = None  # set by average_best_models at training end
    tensorboard: Any = None  # the run's torch.utils.tensorboard.SummaryWriter (rank 0), once training started
    trainer: Any = None
    state: LoopState = field(default_factory=LoopState)
    # Convenience for building a context by hand (tests of callbacks): they go into ``state``.
    epoch: InitVar[int | None] = None
    global_step: InitVar[int | None] = None
    best_metric: InitVar[float | None] = None
    loss_names: InitVar[list[str] | None] = None

    def __post_init__(self, epoch: int | None, global_step: int | None, best_metric: float | None,
                      loss_names: list[str] | None) -> None:
        given = {"epoch": epoch, "global_step": global_step, "best_metric": best_metric, "loss_names": loss_names}
        for name, value in given.items():
            if value is not None and not isinstance(value, property):
                setattr(self.state, name, value)


def _state_alias(name: str, doc: str) -> property:
    return property(lambda self: getattr(self.state, name), lambda self, value: setattr(self.state, name, value),
                    doc=doc)


PhaseContext.epoch = _state_alias("epoch", "the epoch being trained (0-based)")  # type: ignore[assignment]
PhaseContext.global_step = _state_alias("global_step", "optimizer steps taken so far")  # type: ignore[assignment]
PhaseContext.best_metric = _state_alias("best_metric", "the best metric_to_watch so far")  # type: ignore[assignment]
PhaseContext.stop_training = _state_alias("stop_training", "set true to end training after this epoch")
PhaseContext.loss_names = _state_alias("loss_names", "names of the loss items")  # type: ignore[assignment]


def _alias(getter: Any, doc: str) -> property:
    return property(getter, doc=doc)


_SG_ALIASES = {
    "metrics_dict": (lambda c: {k.split("/", 1)[-1]: v for k, v in c.metrics.items()},
                     "metrics of the last loader without their train/valid/test prefix"),
    "loss_log_items": (lambda c: c.loss_items, "loss_items"),
    "loss_logging_items_names": (lambda c: c.loss_names, "loss_names"),
    "target": (lambda c: c.targets, "targets"),
    "additional_batch_items": (lambda c: c.batch_extras, "batch_extras"),
    "criterion": (lambda c: getattr(c.trainer, "loss_fn", None), "the training loss"),
    "ckpt_dir": (lambda c: c.experiment_dir, "experiment_dir"),
    "checkpoints_dir_path": (lambda c: c.experiment_dir, "experiment_dir"),
    "ema_model": (lambda c: c.ema, "ema"),
    "sg_logger": (lambda c: c.tensorboard, "the TensorBoard SummaryWriter"),
    "train_loader": (lambda c: getattr(c.trainer, "train_loader", None), "the training loader"),
    "valid_loader": (lambda c: getattr(c.trainer, "full_valid_loader", None), "the validation loader"),
    "lr_warmup_epochs": (lambda c: getattr(c.training_params, "lr_warmup_epochs", 0), "lr_warmup_epochs"),
}
for _name, (_getter, _doc) in _SG_ALIASES.items():
    setattr(PhaseContext, _name, _alias(_getter, _doc))


class Callback:
    """Base class: override the events you need (each is documented below); the others cost nothing.

    ``order`` sorts callbacks (lower first); LR schedules use a low order so every other callback sees the rate
    in force for the step. ``state_dict``/``load_state_dict`` let a callback's state travel in checkpoints.
    A subclass defining an ``on_*`` method that is not an event is refused at class creation (a misspelt event
    would otherwise silently never run).
    """

    order: int = 100

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in vars(cls).items():
            if name.startswith("on_") and callable(value) and name not in EVENTS:
                raise CallbackDefinitionError(
                    f"{cls.__module__}.{cls.__qualname__}.{name} is not a callback event, so it would never run. "
                    f"{did_you_mean(name, EVENTS) or 'Events: ' + ', '.join(EVENTS)}")

    def handled_events(self) -> list[str]:
        """The events this callback listens to: by default those its class overrides."""
        return [event for event in EVENTS if getattr(type(self), event) is not getattr(Callback, event)]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------------------------------------- events
    def on_training_start(self, context: PhaseContext) -> None:
        """Once, after everything is built (and a checkpoint restored), before the first epoch."""

    def on_train_loader_start(self, context: PhaseContext) -> None:
        """Each epoch, before its first training batch (``context.epoch`` is set)."""

    def on_train_batch_start(self, context: PhaseContext) -> None:
        """Each training batch, once it is on the device (``inputs``, ``targets``, ``batch_idx``)."""

    def on_train_batch_loss_end(self, context: PhaseContext) -> None:
        """After the forward pass and the loss (``preds``, ``loss``, ``loss_items``)."""

    def on_train_batch_backward_end(self, context: PhaseContext) -> None:
        """After ``backward()`` of this micro-batch."""

    def on_train_batch_gradient_step_start(self, context: PhaseContext) -> None:
        """Right before ``optimizer.step()``: the LR schedules set the rate here (gradients are complete)."""

    def on_train_batch_gradient_step_end(self, context: PhaseContext) -> None:
        """Right after ``optimizer.step()`` and the EMA update (``global_step`` counts this step)."""

    def on_train_batch_end(self, context: PhaseContext) -> None:
        """After the batch is fully processed (metrics updated)."""

    def on_train_loader_end(self, context: PhaseContext) -> None:
        """After the epoch's last training batch (``metrics`` holds the epoch's training results)."""

    def on_validation_loader_start(self, context: PhaseContext) -> None:
        """Before validation (not every epoch when ``run_validation_freq`` > 1)."""

    def on_validation_batch_start(self, context: PhaseContext) -> None:
        """Each validation batch, once it is on the device."""

    def on_validation_batch_end(self, context: PhaseContext) -> None:
        """After the forward pass, loss and metric updates of a validation batch (``preds``)."""

    def on_validation_loader_end(self, context: PhaseContext) -> None:
        """After validation (``metrics`` holds the validation results)."""

    def on_validation_end_best_epoch(self, context: PhaseContext) -> None:
        """After a validation that improved ``metric_to_watch`` (``best_metric`` is the new best)."""

    def on_epoch_end(self, context: PhaseContext) -> None:
        """After the epoch (``epoch_record`` is its row of metrics.csv); checkpoints are written after this."""

    def on_test_loader_start(self, context: PhaseContext) -> None:
        """``Trainer.test()``: before the first batch."""

    def on_test_batch_start(self, context: PhaseContext) -> None:
        """``Trainer.test()``: each batch, once it is on the device."""

    def on_test_batch_end(self, context: PhaseContext) -> None:
        """``Trainer.test()``: after the forward pass, loss and metric updates of a batch."""

    def on_test_loader_end(self, context: PhaseContext) -> None:
        """``Trainer.test()``: after the last batch (``metrics`` holds the results)."""

    def on_training_end(self, context: PhaseContext) -> None:
        """Once, after the last epoch (or an early stop)."""


EVENTS: tuple[str, ...] = tuple(name for name in vars(Callback) if name.startswith("on_"))


class CallbackDefinitionError(RecipeError, TypeError):
    """A Callback subclass defines a method named like an event that does not exist."""


def _noop(context: PhaseContext) -> None:
    return None


class CallbackList:
    """Fires each event on the callbacks that listen to it, and only those.

    Dispatch is resolved once, at construction, so an event nobody listens to costs one no-op call: the
    per-step overhead of the loop stays in the microseconds.
    """

    def __init__(self, callbacks: Iterable[Callback]):
        self.callbacks = sorted(callbacks, key=lambda cb: cb.order)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise RecipeError(f"{cb!r} is not a callback: subclass super_recipes.callbacks.Callback (or "
                                  "PhaseCallback) and override its events.")
        listening = [(cb, set(cb.handled_events())) for cb in self.callbacks]
        for event in EVENTS:
            setattr(self, event, _dispatcher([getattr(cb, event) for cb, events in listening if event in events]))

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


