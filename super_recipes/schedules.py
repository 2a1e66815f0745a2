"""LR schedules (``lr_mode``), warmup (``lr_warmup_epochs``) and cooldown, as a callback on the standard events.

Notation (optimizer steps, not micro-batches): ``S`` steps per epoch, ``E`` = ``max_epochs``, ``W`` warmup epochs,
``C`` cooldown epochs, ``lr0`` each parameter group's initial rate. The main schedule starts when warmup ends;
``t_main`` counts optimizer steps from there and ``T_main`` is the number of steps from the end of warmup to the
start of cooldown, so ``p = t_main / T_main``. During cooldown the rate stays at the last main-schedule rate.

The rate is set right before each ``optimizer.step()`` (``on_train_batch_gradient_step_start``), so the rate a
callback reads at that step is exactly the rate the step uses. torch.optim.lr_scheduler classes are stateful
epoch/step counters; the published-recipe formulas above are closed-form in (epoch, step), which is what makes
resuming mid-epoch exact, so we compute them directly.
"""

from __future__ import annotations

import math
from typing import Any

from super_recipes.callbacks.base import Callback, PhaseContext
from super_recipes.errors import RecipeError
from super_recipes.registry import LR_SCHEDULES, register_lr_schedule


class LRScheduleCallback(Callback):
    """Base: subclasses give ``main_rate(lr0, epoch, t_main, T_main, S)``; warmup and cooldown are shared."""

    order = 10

    def __init__(self, params: Any):
        self.max_epochs = params.max_epochs
        self.warmup_epochs = params.lr_warmup_epochs
        self.cooldown_epochs = getattr(params, "lr_cooldown_epochs", 0)
        self.warmup_initial_lr = params.warmup_initial_lr
        if self.warmup_epochs + self.cooldown_epochs > self.max_epochs:
            raise RecipeError(
                f"training_hyperparams: lr_warmup_epochs ({self.warmup_epochs}) + lr_cooldown_epochs "
                f"({self.cooldown_epochs}) exceed max_epochs ({self.max_epochs})."
            )
        self._default_lr0: float | None = None

    def main_rate(self, lr0: float, epoch: int, t_main: int, total_main: int, steps_per_epoch: int) -> float:
        raise NotImplementedError

    def warmup_start(self, lr0: float) -> float:
        if self.warmup_initial_lr is None:
            return lr0 / (self.warmup_epochs + 1)
        # An absolute warmup start applies to the default group; other groups start at the same fraction.
        default = self._default_lr0 or lr0
        return self.warmup_initial_lr * (lr0 / default) if default else 0.0

    def rate(self, lr0: float, epoch: int, global_step: int, steps_per_epoch: int) -> float:
        """The rate a group with initial rate ``lr0`` uses at optimizer step ``global_step`` of ``epoch``."""
        warmup_steps = self.warmup_epochs * steps_per_epoch
        if epoch < self.warmup_epochs:
            w0 = self.warmup_start(lr0)
            return w0 + epoch * (lr0 - w0) / self.warmup_epochs
        total_main = (self.max_epochs - self.cooldown_epochs) * steps_per_epoch - warmup_steps
        t_main = global_step - warmup_steps
        if epoch >= self.max_epochs - self.cooldown_epochs:
            epoch, t_main = self.max_epochs - self.cooldown_epochs - 1, total_main - 1
        return self.main_rate(lr0, epoch, t_main, max(total_main, 1), steps_per_epoch)

    def on_training_start(self, context: PhaseContext) -> None:
        groups = context.optimizer.param_groups
        default = next((g for g in groups if g.get("name") == "default"), groups[0])
        self._default_lr0 = default["initial_lr"]

    def on_train_batch_gradient_step_start(self, context: PhaseContext) -> None:
        for group in context.optimizer.param_groups:
            group["lr"] = self.rate(group["initial_lr"], context.epoch, context.global_step,
                                    context.steps_per_epoch)

    on_train_loader_start = on_train_batch_gradient_step_start


@register_lr_schedule("ConstantLRScheduler")
@register_lr_schedule("constant")
class ConstantLRScheduler(LRScheduleCallback):
    """``lr_mode: constant`` (also what no ``lr_mode`` means when warmup is set): ``lr0`` after warmup."""

    def main_rate(self, lr0: float, epoch: int, t_main: int, total_main: int, steps_per_epoch: int) -> float:
        return lr0


@register_lr_schedule("StepLRScheduler")
@register_lr_schedule("step")
class StepLRScheduler(LRScheduleCallback):
    """``lr_mode: step``: ``lr0 * lr_decay_factor ** n``, n = number of ``lr_updates`` milestones ``<= epoch``."""

    def __init__(self, params: Any):
        super().__init__(params)
        if params.lr_updates and params.step_lr_update_freq:
            raise RecipeError("training_hyperparams: give either lr_updates or step_lr_update_freq, not both.")
        if params.step_lr_update_freq:
            freq = params.step_lr_update_freq
            self.milestones = list(range(freq, params.max_epochs, freq))
        else:
            self.milestones = sorted(int(m) for m in params.lr_updates)
        self.decay_factor = params.lr_decay_factor

    def main_rate(self, lr0: float, epoch: int, t_main: int, total_main: int, steps_per_epoch: int) -> float:
        return lr0 * self.decay_factor ** sum(1 for m in self.milestones if m <= epoch)


@register_lr_schedule("CosineLRScheduler")
@register_lr_schedule("cosine")
class CosineLRScheduler(LRScheduleCallback):
    """``lr_mode: cosine``: ``f + 0.5 (lr0 - f)(1 + cos(pi p))`` with ``f = lr0 * cosine_final_lr_ratio``."""

    def __init__(self, params: Any):
        super().__init__(params)
        self.final_ratio = getattr(params, "cosine_final_lr_ratio", 0.01)

    def main_rate(self, lr0: float, epoch: int, t_main: int, total_main: int, steps_per_epoch: int) -> float:
        final = lr0 * self.final_ratio
        return final + 0.5 * (lr0 - final) * (1 + math.cos(math.pi * t_main / total_main))


@register_lr_schedule("PolyLRScheduler")
@register_lr_schedule("poly")
class PolyLRScheduler(LRScheduleCallback):
    """``lr_mode: poly``: ``lr0 * (1 - p) ** poly_lr_power``."""

    def __init__(self, params: Any):
        super().__init__(params)
        self.power = getattr(params, "poly_lr_power", 0.9)

    def main_rate(self, lr0: float, epoch: int, t_main: int, total_main: int, steps_per_epoch: int) -> float:
        return lr0 * (1 - t_main / total_main) ** self.power


@register_lr_schedule("ExponentialLRScheduler")
@register_lr_schedule("exp")
class ExponentialLRScheduler(LRScheduleCallback):
    """``lr_mode: exp``: ``lr0 * lr_decay_factor ** (t_main / S)``."""

    def __init__(self, params: Any):
        super().__init__(params)
        self.decay_factor = params.lr_decay_factor

    def main_rate(self, lr0: float, epoch: int, t_main: int, total_main: int, steps_per_epoch: int) -> float:
        return lr0 * self.decay_factor ** (t_main / steps_per_epoch)


def build_lr_schedule(params: Any) -> LRScheduleCallback | None:
    """The schedule callback for ``training_hyperparams.lr_mode`` (None: constant rate, no callback)."""
    if params.lr_mode is None:
        return ConstantLRScheduler(params) if params.lr_warmup_epochs else None
    schedule_cls = LR_SCHEDULES.get(params.lr_mode, "training_hyperparams.lr_mode")
    return schedule_cls(params)
