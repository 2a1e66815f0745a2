"""Exponential moving average of the weights (``ema: true``, ``ema_params: {decay, decay_type, beta}``).

Built on ``torch.optim.swa_utils.AveragedModel`` (which keeps the averaged copy, handles buffers and groups
tensors by device and dtype for foreach updates); we supply the decay rule. Every floating-point parameter and
buffer (BN statistics included) is averaged after every optimizer step; integer buffers such as
``num_batches_tracked`` are copied.

With ``t`` the number of updates done before this one and ``T`` the run's total optimizer steps:
``constant``: ``d``; ``threshold``: ``min(d, (1 + t) / (10 + t))``; ``exp``: ``d * (1 - exp(-beta * t / T))``.
Each update is ``ema = decay * ema + (1 - decay) * weights``; the average starts as a copy of the model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

from super_recipes.errors import RecipeError, did_you_mean

DECAY_TYPES = ("constant", "threshold", "exp")


class ModelEMA:
    """The EMA copy of a model; ``module`` is the averaged ``nn.Module`` (validated and saved as ``ema_net``)."""

    def __init__(self, model: torch.nn.Module, total_steps: int, decay: float = 0.9999, decay_type: str = "exp",
                 beta: float = 15.0):
        if decay_type not in DECAY_TYPES:
            raise RecipeError(f"training_hyperparams.ema_params.decay_type '{decay_type}' is not one of "
                              f"{', '.join(DECAY_TYPES)}. {did_you_mean(decay_type, DECAY_TYPES)}".rstrip())
        self.decay_value, self.decay_type, self.beta = float(decay), decay_type, float(beta)
        self.total_steps = max(int(total_steps), 1)
        self.updates = 0
        self._current_decay = 0.0
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)
        self.averaged.update_parameters(model)  # the first call copies: the average starts at the model
        self.averaged.eval()

    @property
    def module(self) -> torch.nn.Module:
        return self.averaged.module

    def decay(self, t: int) -> float:
        """The decay used by update number ``t`` (0-based)."""
        if self.decay_type == "constant":
            return self.decay_value
        if self.decay_type == "threshold":
            return min(self.decay_value, (1 + t) / (10 + t))
        return self.decay_value * (1 - math.exp(-self.beta * t / self.total_steps))

    def update(self, model: torch.nn.Module) -> None:
        """Fold the current weights of ``model`` into the average (call after each optimizer step)."""
        # The decay is computed here from a Python counter: AveragedModel's own counter is a tensor whose
        # read-back would synchronise with the device every step.
        self._current_decay = self.decay(self.updates)
        self.averaged.update_parameters(model)
        self.updates += 1

    def _average(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _n: Any) -> None:
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1.0 - self._current_decay)
        else:
            torch._foreach_copy_(averaged, current)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["net"])
        self.updates = int(state["updates"])


def build_ema(model: torch.nn.Module, params: Any, total_steps: int) -> ModelEMA | None:
    """``ema`` / ``ema_params``: the EMA tracker, or None when EMA is off."""
    if not params.ema:
        return None
    options = dict(params.ema_params or {})
    unknown = set(options) - {"decay", "decay_type", "beta"}
    if unknown:
        raise RecipeError(f"training_hyperparams.ema_params: unknown key(s) {sorted(unknown)}; "
                          "accepted: decay, decay_type, beta.")
    return ModelEMA(model, total_steps, **options)
