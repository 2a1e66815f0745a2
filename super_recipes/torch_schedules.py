"""``lr_mode: {ClassName: {kwargs, phase: epoch|step}}``: any ``torch.optim.lr_scheduler`` class as a schedule.

``phase: epoch`` (default) advances the scheduler once per epoch, ``phase: step`` once per optimizer step.
``ReduceLROnPlateau`` instead steps at ``on_epoch_end`` of the epochs that ran validation, on the value of
``metric_to_watch`` in the epoch record; its ``mode`` defaults from ``greater_metric_to_watch_is_better``.

The scheduler is advanced lazily, right before the rate is needed: at ``on_train_loader_start`` and, for
``phase: step``, at ``on_train_batch_gradient_step_start``, until its ``last_epoch`` equals the epoch (or the global
optimizer step) about to run. The rates in force are the same as stepping "after each epoch/step", but every
logger sees the rate the step used, and a scheduler restored from any checkpoint (written before or after an
epoch's step) catches up by itself. Its state travels through the callback's ``state_dict``.

Warmup and cooldown are refused with these classes: they are closed-form features of the built-in modes, and
mixing them with a stateful scheduler has no single obvious meaning (torch's ``LinearLR`` with ``phase: step``
is a warmup on its own).
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

from super_recipes.callbacks.base import Callback, PhaseContext
from super_recipes.errors import RecipeError, did_you_mean, unknown_name_message

PHASES = ("epoch", "step")
WHERE = "training_hyperparams.lr_mode"


def torch_scheduler_classes() -> dict[str, type]:
    """Every public ``torch.optim.lr_scheduler`` scheduler class, by name."""
    from torch.optim import lr_scheduler

    base = lr_scheduler.LRScheduler
    return {
        name: obj for name, obj in vars(lr_scheduler).items()
        if inspect.isclass(obj) and not name.startswith("_") and issubclass(obj, base) and obj is not base
    }


class TorchLRScheduler(Callback):
    """Drives one ``torch.optim.lr_scheduler`` scheduler.

    ``scheduler`` is a class name, a class (built at ``on_training_start`` on the training optimizer with
    ``kwargs``), or, from the Python API, an instance already built on the optimizer passed as
    ``training_hyperparams.optimizer``. ``params`` (the training params) supply the ReduceLROnPlateau direction
    and refuse warmup/cooldown keys.
    """

    order = 10

    def __init__(self, scheduler: Any, kwargs: dict[str, Any] | None = None, params: Any = None,
                 phase: str | None = None):
        from torch.optim.lr_scheduler import ReduceLROnPlateau

        classes = torch_scheduler_classes()
        kwargs = {} if kwargs is None else kwargs
        if not isinstance(kwargs, dict):
            raise RecipeError(f"Arguments of lr_mode {scheduler} must be a mapping, got {kwargs!r}.")
        self.kwargs = dict(kwargs)
        self.phase = phase or self.kwargs.pop("phase", "epoch")
        self.scheduler: Any = None
        if isinstance(scheduler, str):
            if scheduler not in classes:
                raise RecipeError(unknown_name_message("torch.optim.lr_scheduler class", scheduler, classes, WHERE))
            self.cls = classes[scheduler]
        elif inspect.isclass(scheduler):
            self.cls = scheduler
        else:
            self.cls, self.scheduler = type(scheduler), scheduler
            if self.kwargs:
                raise RecipeError(f"{WHERE}: the scheduler {type(scheduler).__name__} is already built; "
                                  f"arguments {self.kwargs} cannot apply to it.")
        self.name = self.cls.__name__
        if self.phase not in PHASES:
            raise RecipeError(f"{WHERE}.{self.name}.phase must be one of {', '.join(PHASES)}, got {self.phase!r}.")
        self.plateau = issubclass(self.cls, ReduceLROnPlateau)
        if self.plateau:
            if self.phase != "epoch":
                raise RecipeError(f"{WHERE}: ReduceLROnPlateau steps on validation results, so phase must be epoch.")
            if self.scheduler is None and params is not None:
                self.kwargs.setdefault("mode", "max" if params.greater_metric_to_watch_is_better else "min")
        if params is not None:
            _refuse_warmup_and_cooldown(self.name, params)
        if self.scheduler is None:
            _check_arguments(self.cls, self.name, self.kwargs)
        self._pending_state: dict[str, Any] | None = None
        self._restored = False

    def on_training_start(self, context: PhaseContext) -> None:
        if self.scheduler is not None:
            if self.scheduler.optimizer is not context.optimizer:
                raise RecipeError(
                    f"{WHERE}: the {self.name} instance was built on another optimizer than the one training "
                    "uses. Pass that optimizer as training_hyperparams.optimizer too, or pass the scheduler class "
                    "with its arguments ({SchedulerClass: {kwargs}}).")
        else:
            try:
                self.scheduler = self.cls(context.optimizer, **self.kwargs)
            except (TypeError, ValueError, KeyError) as err:
                raise RecipeError(f"Cannot build lr_mode {self.name} with {self.kwargs}: {err}") from None
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None

    def on_train_loader_start(self, context: PhaseContext) -> None:
        if not self.plateau:
            self._catch_up(context.global_step if self.phase == "step" else context.epoch)

    def on_train_batch_gradient_step_start(self, context: PhaseContext) -> None:
        if self.phase == "step":
            self._catch_up(context.global_step)

    def on_epoch_end(self, context: PhaseContext) -> None:
        if self.plateau:
            value = context.epoch_record.get(f"valid/{context.metric_to_watch}")
            if value is not None and not math.isnan(value):  # NaN: the epoch ran no validation
                self.scheduler.step(value)

    def _catch_up(self, target: int) -> None:
        if self._restored:
            self._restored = False
            with warnings.catch_warnings():
                # A scheduler restored in a fresh process steps before this process's first optimizer.step().
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
                self._catch_up(target)
            return
        while self.scheduler.last_epoch < target:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        if self.scheduler is None:
            return {"scheduler": self._pending_state} if self._pending_state else {}
        return {"scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state.get("scheduler"):
            return
        if self.scheduler is None:
            self._pending_state = state["scheduler"]
        else:
            self._restore(state["scheduler"])

    def _restore(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)
        # Building the scheduler reset every group's rate to its start; chainable schedulers compute the next
        # rate from the current one, so put back the rates the checkpoint was using.
        for group, lr in zip(self.scheduler.optimizer.param_groups, self.scheduler.get_last_lr(), strict=False):
            group["lr"] = lr
        self._restored = True


def _refuse_warmup_and_cooldown(name: str, params: Any) -> None:
    used = [key for key in ("lr_warmup_epochs", "lr_warmup_steps", "lr_cooldown_epochs") if getattr(params, key, 0)]
    if used:
        raise RecipeError(
            f"training_hyperparams: {', '.join(used)} cannot be combined with lr_mode {name} (a torch.optim "
            "scheduler); warmup and cooldown apply to lr_mode step, cosine, poly, exp, function and constant. "
            "For a torch warmup use LinearLR with phase: step."
        )


def _check_arguments(cls: type, name: str, kwargs: dict[str, Any]) -> None:
    """Unknown or missing constructor arguments, refused before training with the accepted names."""
    signature = inspect.signature(cls)
    accepted = [n for n in signature.parameters if n != "optimizer"]
    try:
        signature.bind(None, **kwargs)
    except TypeError as err:
        unknown = [k for k in kwargs if k not in accepted]
        hints = " ".join(did_you_mean(k, [*accepted, "phase"]) for k in unknown)
        raise RecipeError(f"Bad arguments for lr_mode {name} (in {WHERE}): {err}. {hints} "
                          f"Accepted: {', '.join(accepted + ['phase'])}".replace("  ", " ")) from None
