"""Optimizers (``training_hyperparams.optimizer`` + ``optimizer_params`` + ``initial_lr``).

Any ``torch.optim`` optimizer by class name (``SGD``, ``Adam``, ``AdamW``, ``RMSprop``...), one registered with
``@register_optimizer``, or a dotted path / ``_target_`` node.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from super_recipes.errors import RecipeError
from super_recipes.registry import OPTIMIZERS, call_with_kwargs, split_spec


def build_optimizer(model: torch.nn.Module, params: Any) -> torch.optim.Optimizer:
    """The optimizer over ``model``'s trainable parameters, with ``initial_lr`` recorded on every group."""
    spec = params.optimizer
    if isinstance(spec, str) and "." in spec and spec not in OPTIMIZERS:
        factory, kwargs = _import_optimizer(spec), {}
    else:
        factory, kwargs = split_spec(spec, OPTIMIZERS, "training_hyperparams.optimizer")
    kwargs = {**kwargs, **dict(params.optimizer_params or {})}
    if not isinstance(params.initial_lr, (int, float)):
        raise RecipeError(f"training_hyperparams.initial_lr must be a number, got {params.initial_lr!r}.")
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "name": "default"}]
    optimizer = call_with_kwargs(
        factory, {"params": groups, "lr": float(params.initial_lr), **kwargs},
        f"optimizer {getattr(factory, '__name__', spec)}", "training_hyperparams.optimizer_params",
    )
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return optimizer


def _import_optimizer(path: str) -> Any:
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise RecipeError(f"training_hyperparams.optimizer: cannot import '{path}': {err}") from None
