"""Build a model by its registered name: ``models.get("resnet18_cifar", num_classes=10)``.

This module only looks names up; the architectures live in :mod:`super_recipes.models.classification`,
which the model registry imports on first lookup (so ``import super_recipes.models`` stays cheap). Weights are
loaded by :mod:`super_recipes.models.weights` (files) and :mod:`super_recipes.models.pretrained` (published).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from types import MethodType
from typing import Any

from torch import nn

from super_recipes.errors import RecipeError
from super_recipes.registry import MODELS, call_with_kwargs, register_model, to_plain

__all__ = ["get", "names", "register_model"]


def get(
    name: str,
    num_classes: int | None = None,
    arch_params: Mapping[str, Any] | None = None,
    *,
    checkpoint_path: str | Path | None = None,
    pretrained_weights: str | None = None,
    strict_load: Any = "on",
    load_backbone: bool = False,
    load_ema_as_net: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build the model registered as ``name`` (recipe key ``architecture``), optionally with weights.

    ``arch_params`` (recipe key ``arch_params``, a mapping or DictConfig) and extra keyword arguments are the
    architecture's own arguments; keyword arguments win over ``arch_params``. ``num_classes``, when given,
    is passed too (it normally comes from the dataset). An unknown name or argument raises
    :class:`~super_recipes.errors.RecipeError` naming the closest valid ones.

    Weights (the keys of the recipe group ``checkpoint_params``): ``checkpoint_path`` loads a file,
    ``pretrained_weights="imagenet"`` published weights (cached, see :mod:`super_recipes.models.pretrained`);
    ``strict_load`` (``on``/``off``/``no_key_matching``), ``load_backbone`` and ``load_ema_as_net`` follow
    :mod:`super_recipes.models.weights`. Fine-tuning rule: when ``num_classes`` differs from the checkpoint's,
    everything but the head is loaded, even with ``strict_load=on``, and the head keys are reported. The
    :class:`~super_recipes.models.weights.LoadReport` is logged and kept as ``model._super_recipes_load_report``.
    """
    factory = _lookup(name)
    params = {**_plain_mapping(arch_params), **kwargs}
    if num_classes is not None:
        given = params.get("num_classes", num_classes)
        if given != num_classes:
            raise RecipeError(
                f"Model '{name}': arch_params.num_classes={given} contradicts num_classes={num_classes}; "
                f"remove one of them."
            )
        params["num_classes"] = num_classes
    model = call_with_kwargs(factory, params, f"model '{name}'", "arch_params")
    if getattr(model, "num_classes", None) is None:
        count = params.get("num_classes", _default_num_classes(factory))
        if isinstance(count, int):
            model.num_classes = count  # lets the Trainer check it against the dataset's classes
    if checkpoint_path or pretrained_weights:
        from super_recipes.models.weights import load_initial_weights

        load_initial_weights(model, {"checkpoint_path": checkpoint_path, "pretrained_weights": pretrained_weights,
                                     "strict_load": strict_load, "load_backbone": load_backbone,
                                     "load_ema_as_net": load_ema_as_net}, architecture=name)
    if not hasattr(model, "export"):
        model.export = MethodType(export, model)  # every model, torchvision's and timm's too
    return model


def export(model: nn.Module, output: str | Path, **options: Any) -> Any:
    """``model.export("model.onnx", batch_size=1, input_size=..., opset=17, precision="fp32", preprocessing=False,
    postprocessing=False, output_layout="batched", ...)``: ONNX export with the optional extra
    ``super-recipes[export]`` (see :func:`super_recipes.export.onnx_export.export_model` for every option)."""
    from super_recipes.export import export_model

    return export_model(model, output, **options)


def _lookup(name: str) -> Any:
    try:
        return MODELS.get(name)
    except RecipeError:
        # A name users know (1.x guide, 21K-P table) that is retired or lives elsewhere: say why, not "unknown".
        from super_recipes.models.classification import RETIRED_OR_ELSEWHERE

        reason = RETIRED_OR_ELSEWHERE.get(name) if isinstance(name, str) else None
        if reason is None:
            raise
        raise RecipeError(f"Model '{name}' is not available: {reason}.") from None


def _default_num_classes(factory: Any) -> Any:
    try:
        parameter = inspect.signature(factory).parameters.get("num_classes")
    except (TypeError, ValueError):
        return None
    return None if parameter is None else parameter.default


def names() -> list[str]:
    """All registered model names, sorted (the valid values of the recipe key ``architecture``)."""
    return MODELS.names()


def _plain_mapping(arch_params: Any) -> dict[str, Any]:
    arch_params = {} if arch_params is None else to_plain(arch_params)
    if not isinstance(arch_params, Mapping):
        raise RecipeError(f"arch_params must be a mapping of argument names to values, got {arch_params!r}.")
    return dict(arch_params)
