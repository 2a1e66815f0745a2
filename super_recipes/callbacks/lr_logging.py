"""``phase_callbacks: [{LRMonitor: {every_n_steps: 50}}]``: print the learning rates during training.

Also meant as a template for your own callbacks: subclass :class:`Callback`, override one event, register it.
"""

from __future__ import annotations

import logging

from super_recipes.callbacks.base import Callback, PhaseContext
from super_recipes.errors import RecipeError
from super_recipes.registry import register_callback

logger = logging.getLogger("super_recipes")


@register_callback
class LRMonitor(Callback):
    """Log the rate of every parameter group every ``every_n_steps`` optimizer steps.

    ``history`` keeps ``(global_step, {group name: rate})`` for each logged step; a group without a ``name``
    is called by its index. The rates are read at ``on_train_batch_gradient_step_end``: LR schedules set the
    rate just before the step, so this is the rate step ``global_step`` used.
    """

    def __init__(self, every_n_steps: int = 100):
        if every_n_steps < 1:
            raise RecipeError(f"LRMonitor: every_n_steps must be at least 1, got {every_n_steps}.")
        self.every_n_steps = int(every_n_steps)
        self.history: list[tuple[int, dict[str, float]]] = []

    def on_train_batch_gradient_step_end(self, context: PhaseContext) -> None:
        if context.global_step % self.every_n_steps or not context.is_rank_zero:
            return
        rates = {str(group.get("name", i)): group["lr"] for i, group in enumerate(context.optimizer.param_groups)}
        self.history.append((context.global_step, rates))
        logger.info(f"step {context.global_step}: " + "  ".join(f"lr/{k}={v:.6g}" for k, v in rates.items()))
