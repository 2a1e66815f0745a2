"""LR schedules (``lr_mode``), warmup (``warmup_mode``) and cooldown, as a callback on the standard events.

Notation (optimizer steps, not micro-batches): ``S`` steps per epoch (``context.steps_per_epoch``), ``E`` =
``max_epochs``, ``W`` = ``lr_warmup_epochs``, ``N`` = ``lr_warmup_steps``, ``C`` = ``lr_cooldown_epochs``, ``lr0``
each parameter group's own ``group["initial_lr"]``. The main schedule starts when warmup ends; ``t_main`` is the
0-based index of an optimizer step counted from there and ``T_main`` the number of steps from the end of warmup
to the start of cooldown, so ``p = t_main / T_main``. During the last ``C`` epochs the rate stays at the last
rate used before cooldown began.

Warmup (only with the closed-form modes below, and with ``lr_mode: null``, which then means constant):

* ``LinearEpochLRWarmup`` (default): epoch ``e < W`` uses ``w0 + e (lr0 - w0) / W``; ``w0`` defaults to
  ``lr0 / (W + 1)``, so lr0=1, W=3 gives 0.25, 0.5, 0.75, then 1.0.
* ``LinearBatchLRWarmup``: optimizer step ``s < N`` uses ``w0 + s (lr0 - w0) / (N - 1)`` (it may span several
  epochs); ``w0`` defaults to ``lr0 / N``, which makes the steps ``lr0 (s + 1) / N``: evenly spaced, none wasted at
  rate 0, the last at ``lr0`` (the batch analogue of the epoch default). Then ``T_main = (E - C) S - N``.
  (``N = 1`` is the degenerate case: its one step is the last warmup step, at ``lr0``.)

An explicit ``warmup_initial_lr`` is the first rate of the ``default`` group (else the first group); other groups
start at the same fraction of their own ``lr0``, so a group with ``lr0 = 0`` stays at 0.

Every closed-form schedule is a stateless function of (epoch, global optimizer step), which is what makes a
resumed run land on exactly the rate it would have used. ``torch.optim.lr_scheduler`` classes
(``lr_mode: {StepLR: {step_size: 30, phase: epoch}}``) live in :mod:`super_recipes.torch_schedules`.

Rates are set right before each ``optimizer.step()`` (``on_train_batch_gradient_step_start``, order 10), so the
rate a later callback reads at that event or at ``on_train_batch_gradient_step_end`` is the rate the step used.
They are also set at ``on_train_loader_start``, so the epoch's ``lr`` in ``metrics.csv`` is its first step's rate.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from super_recipes.callbacks.base import Callback, PhaseContext
from super_recipes.errors import RecipeError, did_you_mean
from super_recipes.registry import (
    LR_FUNCTIONS,
    LR_SCHEDULES,
    register_lr_function,
    register_lr_schedule,
    resolve_callable,
    to_plain,
)
from super_recipes.torch_schedules import TorchLRScheduler, torch_scheduler_classes

WARMUP_MODES = ("LinearEpochLRWarmup", "LinearBatchLRWarmup")

class LRScheduleCallback(Callback):
    """Base of the closed-form schedules: subclasses give :meth:`main_rate`; warmup and cooldown are shared."""

    order = 10
    needs_steps_per_epoch = True  # False for schedules that only look at the epoch

    def __init__(self, params: Any):
        self.max_epochs = int(params.max_epochs)
        self.cooldown_epochs = int(params.lr_cooldown_epochs or 0)
        self.warmup_initial_lr = params.warmup_initial_lr
        self.warmup_epochs, self.warmup_steps = check_warmup(params)
        if self.cooldown_epochs < 0 or self.warmup_epochs + self.cooldown_epochs > self.max_epochs:
            raise RecipeError(
                f"training_hyperparams: lr_warmup_epochs ({self.warmup_epochs}) + lr_cooldown_epochs "
                f"({self.cooldown_epochs}) must be between 0 and max_epochs ({self.max_epochs})."
            )
        if self.cooldown_epochs and self.cooldown_epochs >= self.max_epochs:
            raise RecipeError(f"training_hyperparams.lr_cooldown_epochs ({self.cooldown_epochs}) leaves no epoch "
                              f"before cooldown (max_epochs is {self.max_epochs}).")
        self._default_lr0: float | None = None
        self._steps_per_epoch = 0

    def main_rate(self, lr0: float, epoch: int, step: int, t_main: int, total_main: int,
                  steps_per_epoch: int) -> float:
        """The main schedule's rate at optimizer step ``step`` (global) of ``epoch``; ``p = t_main / total_main``."""
        raise NotImplementedError

    def warmup_start(self, lr0: float) -> float:
        """``w0`` for a group whose initial rate is ``lr0``."""
        if self.warmup_initial_lr is None:
            return lr0 / self.warmup_steps if self.warmup_steps else lr0 / (self.warmup_epochs + 1)
        default = self._default_lr0 or lr0
        return float(self.warmup_initial_lr) * (lr0 / default) if default else 0.0

    def rate(self, lr0: float, epoch: int, step: int, steps_per_epoch: int) -> float:
        """The rate a group with initial rate ``lr0`` uses at global optimizer step ``step`` of ``epoch``."""
        cooldown_start = self.max_epochs - self.cooldown_epochs
        if epoch >= cooldown_start:
            # Frozen at the rate of the last step before cooldown, whichever phase that step was in.
            epoch, step = cooldown_start - 1, cooldown_start * steps_per_epoch - 1
        if self.warmup_steps:
            if step < self.warmup_steps:
                w0 = self.warmup_start(lr0)
                return lr0 if self.warmup_steps == 1 else w0 + step * (lr0 - w0) / (self.warmup_steps - 1)
            main_start = self.warmup_steps
        else:
            if epoch < self.warmup_epochs:
                w0 = self.warmup_start(lr0)
                return w0 + epoch * (lr0 - w0) / self.warmup_epochs
            main_start = self.warmup_epochs * steps_per_epoch
        total_main = cooldown_start * steps_per_epoch - main_start
        # A loader longer than its len() must not push p past 1 (poly would turn complex).
        t_main = min(step - main_start, max(total_main - 1, 0))
        return self.main_rate(lr0, epoch, step, t_main, max(total_main, 1), steps_per_epoch)

    def on_training_start(self, context: PhaseContext) -> None:
        groups = context.optimizer.param_groups
        default = next((g for g in groups if g.get("name") == "default"), groups[0])
        self._default_lr0 = default["initial_lr"]
        steps = context.steps_per_epoch or 0
        if not steps and (self.needs_steps_per_epoch or self.warmup_steps or self.cooldown_epochs):
            raise RecipeError(
                f"lr_mode {type(self).__name__} needs the number of optimizer steps per epoch, but the training "
                "dataloader has no len(): set training_hyperparams.max_train_batches."
            )
        before_cooldown = (self.max_epochs - self.cooldown_epochs) * steps
        if self.warmup_steps > before_cooldown:
            raise RecipeError(
                f"training_hyperparams.lr_warmup_steps ({self.warmup_steps}) is longer than the "
                f"{before_cooldown} optimizer steps before cooldown ({steps} per epoch)."
            )
        self._steps_per_epoch = steps

    def on_train_batch_gradient_step_start(self, context: PhaseContext) -> None:
        epoch, step, steps = context.epoch, context.global_step, self._steps_per_epoch
        for group in context.optimizer.param_groups:
            group["lr"] = self.rate(group["initial_lr"], epoch, step, steps)

    on_train_loader_start = on_train_batch_gradient_step_start


def check_warmup(params: Any) -> tuple[int, int]:
    """``(lr_warmup_epochs, lr_warmup_steps)`` after checking them against ``warmup_mode``."""
    mode = params.warmup_mode or "LinearEpochLRWarmup"
    epochs, steps = int(params.lr_warmup_epochs or 0), int(params.lr_warmup_steps or 0)
    if mode not in WARMUP_MODES:
        raise RecipeError(f"Unknown training_hyperparams.warmup_mode '{mode}'. {did_you_mean(mode, WARMUP_MODES)} "
                          f"Valid: {', '.join(WARMUP_MODES)}")
    if epochs < 0 or steps < 0:
        raise RecipeError("training_hyperparams: lr_warmup_epochs and lr_warmup_steps cannot be negative.")
    if mode == "LinearEpochLRWarmup" and steps:
        raise RecipeError("training_hyperparams.lr_warmup_steps is read by warmup_mode: LinearBatchLRWarmup; "
                          "set warmup_mode: LinearBatchLRWarmup or use lr_warmup_epochs.")
    if mode == "LinearBatchLRWarmup" and epochs:
        raise RecipeError("training_hyperparams.lr_warmup_epochs is read by warmup_mode: LinearEpochLRWarmup; "
                          "with LinearBatchLRWarmup give the warmup length in lr_warmup_steps.")
    return epochs, steps


@register_lr_schedule("ConstantLRScheduler")
@register_lr_schedule("constant")
class ConstantLRScheduler(LRScheduleCallback):
    """``lr_mode: constant`` (also what ``lr_mode: null`` means when warmup is set): ``lr0`` after warmup."""

    needs_steps_per_epoch = False

    def main_rate(self, lr0: float, epoch: int, step: int, t_main: int, total_main: int,
                  steps_per_epoch: int) -> float:
        return lr0


@register_lr_schedule("StepLRScheduler")
@register_lr_schedule("step")
class StepLRScheduler(LRScheduleCallback):
    """``lr_mode: step``: epoch ``e`` uses ``lr0 * lr_decay_factor ** n``, n = milestones ``<= e``.

    Milestones are ``lr_updates`` (absolute epochs, as in ``MultiStepLR``) or, with ``step_lr_update_freq: k``,
    every k-th epoch.
    """

    needs_steps_per_epoch = False

    def __init__(self, params: Any):
        super().__init__(params)
        freq = params.step_lr_update_freq
        if params.lr_updates and freq:
            raise RecipeError("training_hyperparams: give either lr_updates or step_lr_update_freq, not both.")
        if freq is not None and (not isinstance(freq, int) or freq <= 0):
            raise RecipeError(f"training_hyperparams.step_lr_update_freq must be a positive integer, got {freq!r}.")
        self.milestones = list(range(freq, self.max_epochs, freq)) if freq else sorted(int(m) for m in
                                                                                      params.lr_updates)
        self.decay_factor = float(params.lr_decay_factor)

    def main_rate(self, lr0: float, epoch: int, step: int, t_main: int, total_main: int,
                  steps_per_epoch: int) -> float:
        return lr0 * self.decay_factor ** sum(1 for m in self.milestones if m <= epoch)


@register_lr_schedule("CosineLRScheduler")
@register_lr_schedule("cosine")
class CosineLRScheduler(LRScheduleCallback):
    """``lr_mode: cosine``: ``f + 0.5 (lr0 - f)(1 + cos(pi p))`` with ``f = lr0 * cosine_final_lr_ratio``."""

    def __init__(self, params: Any):
        super().__init__(params)
        self.final_ratio = float(params.cosine_final_lr_ratio)

    def main_rate(self, lr0: float, epoch: int, step: int, t_main: int, total_main: int,
                  steps_per_epoch: int) -> float:
        final = lr0 * self.final_ratio
        return final + 0.5 * (lr0 - final) * (1 + math.cos(math.pi * t_main / total_main))


@register_lr_schedule("PolyLRScheduler")
@register_lr_schedule("poly")
class PolyLRScheduler(LRScheduleCallback):
    """``lr_mode: poly``: ``lr0 * (1 - p) ** poly_lr_power``."""

    def __init__(self, params: Any):
        super().__init__(params)
        self.power = float(params.poly_lr_power)

    def main_rate(self, lr0: float, epoch: int, step: int, t_main: int, total_main: int,
                  steps_per_epoch: int) -> float:
        return lr0 * (1 - t_main / total_main) ** self.power


@register_lr_schedule("ExponentialLRScheduler")
@register_lr_schedule("exp")
class ExponentialLRScheduler(LRScheduleCallback):
    """``lr_mode: exp``: ``lr0 * lr_decay_factor ** (t_main / S)`` (one factor per epoch, applied per step)."""

    def __init__(self, params: Any):
        super().__init__(params)
        self.decay_factor = float(params.lr_decay_factor)

    def main_rate(self, lr0: float, epoch: int, step: int, t_main: int, total_main: int,
                  steps_per_epoch: int) -> float:
        return lr0 * self.decay_factor ** (t_main / steps_per_epoch)


@register_lr_schedule("FunctionLRScheduler")
@register_lr_schedule("function")
class FunctionLRScheduler(LRScheduleCallback):
    """``lr_mode: function``: ``lr_schedule_function(initial_lr, epoch, iter, max_epoch, iters_per_epoch)``.

    ``lr_schedule_function`` is a name registered with :func:`register_lr_function`, a dotted path, or (Python
    API) a callable. ``epoch`` is the absolute epoch, ``iter`` the optimizer step within it and
    ``iters_per_epoch`` = S, so the function owns the whole shape; warmup, when set, replaces it during the
    warmup epochs/steps and cooldown freezes it, as for the other closed-form modes.
    """

    def __init__(self, params: Any):
        super().__init__(params)
        self.function = resolve_lr_function(params.lr_schedule_function)

    def main_rate(self, lr0: float, epoch: int, step: int, t_main: int, total_main: int,
                  steps_per_epoch: int) -> float:
        return float(self.function(lr0, epoch, step - epoch * steps_per_epoch, self.max_epochs, steps_per_epoch))


@register_lr_function("linear_decay")
def linear_decay(initial_lr: float, epoch: int, iter: int, max_epoch: int, iters_per_epoch: int) -> float:
    """``lr_schedule_function: linear_decay``: from ``initial_lr`` at the first step linearly towards 0."""
    return initial_lr * (1 - (epoch * iters_per_epoch + iter) / (max_epoch * iters_per_epoch))


def resolve_lr_function(spec: Any) -> Callable[..., float]:
    """``training_hyperparams.lr_schedule_function``: a registered name, a dotted path or a callable."""
    where = "training_hyperparams.lr_schedule_function"
    if spec is None:
        raise RecipeError(f"lr_mode: function needs {where}: a registered name or a dotted path to "
                          "f(initial_lr, epoch, iter, max_epoch, iters_per_epoch) -> lr. "
                          f"Registered: {', '.join(LR_FUNCTIONS.names()) or 'none'}")
    return resolve_callable(LR_FUNCTIONS, spec, where)


def build_lr_schedule(params: Any) -> Callback | None:
    """The schedule callback for ``training_hyperparams.lr_mode`` (None: constant rate, no callback).

    ``lr_mode`` is a registered closed-form name (``step``, ``cosine``, ``poly``, ``exp``, ``function``,
    ``constant``), a ``torch.optim.lr_scheduler`` class name, or a one-key mapping ``{ClassName: {kwargs}}``
    of one. Every mistake is a RecipeError raised here, before training starts.
    """
    mode = to_plain(params.lr_mode)
    if isinstance(mode, Callback):
        return mode  # built already (Python API, or the recipe runner's hand-over)
    if inspect.isclass(mode) and issubclass(mode, Callback):
        return mode(params)
    if _is_torch_scheduler(mode):
        return TorchLRScheduler(mode, None, params)
    epochs, steps = check_warmup(params)
    if mode != "function" and params.lr_schedule_function is not None:
        raise RecipeError("training_hyperparams.lr_schedule_function is only read by lr_mode: function "
                          f"(lr_mode is {mode!r}).")
    if mode is None:
        return ConstantLRScheduler(params) if epochs or steps else None
    name, kwargs = mode, None
    if isinstance(mode, dict) and len(mode) == 1:
        (name, kwargs), = mode.items()
    if _is_torch_scheduler(name) and inspect.isclass(name):
        return TorchLRScheduler(name, kwargs or {}, params)
    if not isinstance(name, str):
        raise RecipeError(f"training_hyperparams.lr_mode: expected a schedule name or {{TorchScheduler: "
                          f"{{kwargs}}}}, got {mode!r}.")
    torch_classes = torch_scheduler_classes()
    if name in LR_SCHEDULES:
        if kwargs is not None:
            raise RecipeError(f"training_hyperparams.lr_mode: '{name}' takes no arguments; its settings are "
                              "training_hyperparams keys (lr_updates, cosine_final_lr_ratio, ...).")
        return LR_SCHEDULES.get(name)(params)
    if name in torch_classes:
        return TorchLRScheduler(name, kwargs or {}, params)
    known = LR_SCHEDULES.names() + list(torch_classes)
    raise RecipeError(f"Unknown lr_mode '{name}' (in training_hyperparams.lr_mode). {did_you_mean(name, known)}\n"
                      f"Valid: {', '.join(LR_SCHEDULES.names())}, or a torch.optim.lr_scheduler class: "
                      f"{', '.join(torch_classes)}")


def _is_torch_scheduler(value: Any) -> bool:
    from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

    kinds = (LRScheduler, ReduceLROnPlateau)
    return isinstance(value, kinds) or (inspect.isclass(value) and issubclass(value, kinds))


