"""super_recipes: train PyTorch models from composable YAML recipes.

``from super_recipes import Trainer, models, dataloaders`` — attributes are imported on first use so that
``import super_recipes`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Trainer": ("super_recipes.engine.trainer", "Trainer"),
    "models": ("super_recipes.models", None),
    "dataloaders": ("super_recipes.data.dataloaders", None),
    "Callback": ("super_recipes.callbacks.base", "Callback"),
    "PhaseContext": ("super_recipes.callbacks.base", "PhaseContext"),
    "Phase": ("super_recipes.callbacks.phase", "Phase"),
    "PhaseCallback": ("super_recipes.callbacks.phase", "PhaseCallback"),
    "TrainingParams": ("super_recipes.config.training_params", "TrainingParams"),
    "RecipeError": ("super_recipes.errors", "RecipeError"),
    "compose_recipe": ("super_recipes.config.compose", "compose_recipe"),
    "run_recipe": ("super_recipes.train_from_recipe", "run_recipe"),
}
for _name in ("model", "loss", "metric", "callback", "dataset", "dataloader", "transform", "optimizer",
              "lr_schedule", "lr_function", "collate_function", "processing"):
    _LAZY[f"register_{_name}"] = ("super_recipes.registry", f"register_{_name}")

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'super_recipes' has no attribute '{name}'")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value
