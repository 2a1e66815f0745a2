"""Losses (``training_hyperparams.loss`` + ``criterion_params``) and the one rule for reading a loss's output.

A loss returns either a scalar ``loss`` or ``(loss, loss_items)`` where ``loss_items`` is a 1-D tensor of
detached components to log. The names of the items come from ``loss_logging_items_names`` in the recipe, else
from the loss's ``component_names`` attribute, else ``<LossName>/<i>``. Any ``torch.nn`` loss is usable by name
(``CrossEntropyLoss`` with ``label_smoothing``, ``MSELoss``, ...); register your own with ``@register_loss``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from super_recipes.errors import RecipeError
from super_recipes.registry import LOSSES, build, is_spec


def build_loss(spec: Any, criterion_params: dict[str, Any] | None = None) -> Any:
    """``training_hyperparams.loss`` with ``criterion_params`` as its keyword arguments: a name, spec or class is
    built; a loss object or function (Python API) is used as is (``criterion_params`` must then be empty)."""
    extra = dict(criterion_params or {})
    where = "training_hyperparams.criterion_params" if extra else "training_hyperparams.loss"
    if extra and not is_spec(spec) and not inspect.isclass(spec):
        raise RecipeError(f"training_hyperparams.criterion_params {extra} cannot apply to the loss object "
                          f"{spec!r}, which is already built: pass these arguments when you build it.")
    loss = build(LOSSES, spec, where, **extra)
    if not callable(loss):
        raise RecipeError(f"training_hyperparams.loss: {loss!r} is not callable; a loss is called as "
                          "loss(preds, targets).")
    return loss


def loss_item_names(loss_fn: Any, configured: list[str] | None, num_items: int) -> list[str]:
    """Names for the logged items of ``loss_fn`` (see the module docstring for the rule)."""
    name = type(loss_fn).__name__
    if num_items == 1 and not configured:
        return [name]
    names = list(configured or getattr(loss_fn, "component_names", None) or [])
    if len(names) != num_items:
        if configured:
            from super_recipes.errors import RecipeError

            raise RecipeError(
                f"training_hyperparams.loss_logging_items_names has {len(names)} names but the loss {name} "
                f"returns {num_items} items."
            )
        names = [f"{name}/{i}" for i in range(num_items)]
    return names


def split_loss_output(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, items)`` from a loss's output; a scalar loss logs itself as its only item."""
    if isinstance(output, tuple):
        loss, items = output
        return loss, items.detach().reshape(-1)
    return output, output.detach().reshape(1)


def expected_loss_names(params: Any, loss_fn: Any) -> list[str] | None:
    """Loss item names known before the first forward pass (None for an unnamed tuple-returning loss)."""
    configured = params.loss_logging_items_names or getattr(loss_fn, "component_names", None)
    if configured:
        return list(configured)
    if isinstance(loss_fn, torch.nn.modules.loss._Loss):
        return [type(loss_fn).__name__]
    return None
