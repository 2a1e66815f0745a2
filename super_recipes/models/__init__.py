"""Build a model by its registered name: ``models.get("resnet18_cifar", num_classes=10)``.

This module only looks names up; the architectures live in :mod:`super_recipes.models.classification`,
which the model registry imports on first lookup (so ``import super_recipes.models`` stays cheap).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from super_recipes.errors import RecipeError
from super_recipes.registry import MODELS, call_with_kwargs, register_model

__all__ = ["get", "names", "register_model"]


def get(
    name: str,
    num_classes: int | None = None,
    arch_params: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the model registered as ``name`` (recipe key ``architecture``).

    ``arch_params`` (recipe key ``arch_params``, a mapping or DictConfig) and extra keyword arguments are the
    architecture's own arguments; keyword arguments win over ``arch_params``. ``num_classes``, when given,
    is passed too (it normally comes from the dataset). An unknown name or argument raises
    :class:`~super_recipes.errors.RecipeError` naming the closest valid ones.
    """
    factory = MODELS.get(name)
    params = {**_plain_mapping(arch_params), **kwargs}
    if num_classes is not None:
        given = params.get("num_classes", num_classes)
        if given != num_classes:
            raise RecipeError(
                f"Model '{name}': arch_params.num_classes={given} contradicts num_classes={num_classes}; "
                f"remove one of them."
            )
        params["num_classes"] = num_classes
    return call_with_kwargs(factory, params, f"model '{name}'", "arch_params")


def names() -> list[str]:
    """All registered model names, sorted (the valid values of the recipe key ``architecture``)."""
    return MODELS.names()


def _plain_mapping(arch_params: Any) -> dict[str, Any]:
    if arch_params is None:
        return {}
    if type(arch_params).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        arch_params = OmegaConf.to_container(arch_params, resolve=True)
    if not isinstance(arch_params, Mapping):
        raise RecipeError(f"arch_params must be a mapping of argument names to values, got {arch_params!r}.")
    return dict(arch_params)
