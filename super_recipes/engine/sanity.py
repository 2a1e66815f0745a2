"""Checks that turn a data/model mismatch into a clear error instead of a crash deep inside a loss.

The number of classes: before training when the dataset knows its classes (``num_classes``, ``classes`` or
``class_names``) and the model its own (``num_classes``); otherwise at the first batch of classification shape
(logits ``[B, C]``, integer labels ``[B]``), naming both numbers. A loss that fails later on such a batch gets
the same explanation.
"""

from __future__ import annotations

from typing import Any

import torch

from super_recipes.errors import RecipeError


def model_class_count(model: torch.nn.Module) -> int | None:
    """The model's ``num_classes`` attribute (set by ``models.get`` and by most architectures), if any."""
    count = getattr(model, "num_classes", None)
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def dataset_class_count(dataset: Any) -> int | None:
    """How many classes a dataset says it has (``num_classes``, or the length of ``classes``/``class_names``)."""
    if dataset is None:
        return None
    count = getattr(dataset, "num_classes", None)
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    for name in ("classes", "class_names"):
        names = getattr(dataset, name, None)
        if isinstance(names, (list, tuple)) and names:
            return len(names)
    return None


def check_class_count(model: torch.nn.Module, dataset: Any, recipe: Any = None) -> None:
    """Refuse a model with fewer outputs than the dataset has classes, before anything is trained."""
    model_count, data_count = model_class_count(model), dataset_class_count(dataset)
    if model_count is not None and data_count is not None and data_count > model_count:
        raise RecipeError(
            f"The training data has {data_count} classes ({type(dataset).__name__}) but the model predicts "
            f"{model_count}{_where(recipe)}: set num_classes to {data_count}.")


def check_first_batch(preds: Any, targets: Any, recipe: Any = None) -> None:
    """At the run's first batch: labels of a classification batch must be valid class indices of the logits."""
    problem = _label_problem(preds, targets, negative_ok=True)  # -100 is CrossEntropyLoss's ignore_index
    if problem:
        raise RecipeError(problem + _where(recipe) + ".")


def explain_loss_failure(err: Exception, preds: Any, targets: Any, recipe: Any = None) -> None:
    """Re-raise a loss failure as a RecipeError when the labels do not fit the logits; else return."""
    problem = _label_problem(preds, targets, negative_ok=False)
    if problem:
        raise RecipeError(f"{problem}{_where(recipe)} ({type(err).__name__}: {str(err).splitlines()[0]}).") \
            from err


def explain_first_batch_failure(part: str, err: Exception, given: Any) -> None:
    """A model or loss that fails on the run's first batch, before any step: a RecipeError naming what it got.

    Nothing has been trained yet, so this is a setup mistake (``in_channels``, ``criterion_params``, a
    transform...); ``SUPER_RECIPES_DEBUG=1`` shows the traceback.
    """
    key = "training_hyperparams.criterion_params" if part == "loss" else "arch_params"
    what = "The model" if part == "model" else "The loss"
    shape = f" {tuple(given.shape)}" if isinstance(given, torch.Tensor) else ""
    received = "inputs" if part == "model" else "predictions"
    raise RecipeError(f"{what} failed on the first training batch ({received}{shape}), before any step: "
                      f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}",
                      key=key) from err


def _label_problem(preds: Any, targets: Any, negative_ok: bool) -> str:
    if not (isinstance(preds, torch.Tensor) and isinstance(targets, torch.Tensor)):
        return ""
    if preds.ndim != 2 or targets.ndim != 1 or targets.is_floating_point() or not preds.is_floating_point():
        return ""
    if targets.numel() == 0:
        return ""
    classes = preds.shape[1]
    top, bottom = int(targets.max()), int(targets.min())
    if top < classes and (bottom >= 0 or negative_ok):
        return ""
    if top >= classes:
        return (f"A training batch has label {top}, but the model predicts {classes} classes (labels 0..{classes - 1}):"
                f" num_classes must be at least {top + 1}")
    return f"A training batch has the negative label {bottom}; class labels start at 0"


def _where(recipe: Any) -> str:
    arch_params = recipe.get("arch_params") if hasattr(recipe, "get") else None
    num_classes = arch_params.get("num_classes") if hasattr(arch_params, "get") else None
    return f" (arch_params.num_classes is {num_classes})" if num_classes is not None else ""
