"""Rebuild the model a training run saved, from its checkpoint alone: what every task's
``load_model_for_prediction`` starts with.

A super_recipes checkpoint carries the resolved recipe, so the architecture, its ``arch_params`` and the
modules the recipe ``imports`` (which may register that architecture) come from the file; the weights load
under ``strict_load: on`` rules (:func:`super_recipes.models.weights.load_state_dict_into`), so a checkpoint that
does not fit its own recipe is reported tensor by tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from super_recipes.errors import RecipeError


def checkpoint_recipe(state: Mapping[str, Any], where: str = "the checkpoint") -> dict[str, Any]:
    """The resolved recipe a checkpoint carries, as plain containers, with its ``imports`` imported (they may
    register the model); a RecipeError naming ``where`` when it has none."""
    from omegaconf import OmegaConf

    from super_recipes.config.compose import import_user_modules

    if not state.get("recipe"):
        raise RecipeError(f"Checkpoint {where} carries no recipe: rebuild the model with models.get(...) and load "
                          "the weights with checkpoint_path=.")
    recipe = OmegaConf.to_container(OmegaConf.create(state["recipe"]), resolve=True)
    if not isinstance(recipe, dict) or not recipe.get("architecture"):
        raise RecipeError(f"The recipe in checkpoint {where} names no architecture.")
    import_user_modules(recipe)
    return recipe


def model_from_checkpoint(checkpoint: str | Path | Mapping[str, Any], use_ema: bool = True
                          ) -> tuple[nn.Module, dict[str, Any]]:
    """The checkpoint's model with its weights (the EMA weights when it has them and ``use_ema``), in eval mode
    on the CPU, and the recipe it was trained with. ``checkpoint``: the file, or its loaded dict."""
    from super_recipes import models
    from super_recipes.engine.checkpoints import load_checkpoint
    from super_recipes.models.weights import load_state_dict_into, state_dict_from_checkpoint

    where = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "the checkpoint"
    state = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    recipe = checkpoint_recipe(state, where)
    model = models.get(recipe["architecture"], arch_params=recipe.get("arch_params") or {})
    weights = state_dict_from_checkpoint(state, where, load_ema_as_net=use_ema and bool(state.get("ema_net")))
    load_state_dict_into(model, weights, "on", source=where)
    return model.eval(), recipe


def set_processing_params(model: nn.Module, params: Mapping[str, Any]) -> None:
    """Give ``model`` its prediction preprocessing: through ``set_dataset_processing_params`` when it has one,
    else as the ``processing_params`` attribute ``predict`` reads."""
    if hasattr(model, "set_dataset_processing_params"):
        model.set_dataset_processing_params(**params)
    else:
        model.processing_params = dict(params)
