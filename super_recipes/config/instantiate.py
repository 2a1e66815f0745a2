"""One place that builds what ``training_hyperparams`` names: the loss, the metrics, the callbacks, the LR
schedule and the pre-prediction callback, with the optimizer checked by a dry construction.

The recipe runner calls :func:`instantiate_training` before the model and data are built (so checking a recipe
and building it are the same code) and hands the objects to the Trainer with :func:`with_components`; the
Trainer calls it too, on what it is given, where objects simply pass through.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from super_recipes.callbacks.base import Callback


@dataclass
class TrainingComponents:
    """The built objects of one run's ``training_hyperparams`` (everything but the optimizer, which needs the
    model)."""

    loss: Callable
    train_metrics: dict[str, Any]
    valid_metrics: dict[str, Any]
    callbacks: list[Callback]
    lr_schedule: Callback | None
    pre_prediction_callback: Callable | None


def instantiate_training(params: Any) -> TrainingComponents:
    """Build every object the params name; any mistake is a RecipeError naming its key."""
    from super_recipes.losses import build_loss
    from super_recipes.metrics import build_metrics
    from super_recipes.optimizers import check_optimizer
    from super_recipes.registry import CALLBACKS, PROCESSING, build_list, resolve_callable
    from super_recipes.schedules import build_lr_schedule

    check_optimizer(params)
    loss = build_loss(params.loss, params.criterion_params)
    train_metrics = build_metrics(params.train_metrics_list, "training_hyperparams.train_metrics_list")
    valid_metrics = build_metrics(params.valid_metrics_list, "training_hyperparams.valid_metrics_list")
    shared = {id(m) for m in train_metrics.values()}
    # The same metric object in both lists would mix training and validation batches in one state.
    valid_metrics = {name: copy.deepcopy(m) if id(m) in shared else m for name, m in valid_metrics.items()}
    callbacks = build_list(CALLBACKS, params.phase_callbacks, "training_hyperparams.phase_callbacks")
    schedule = build_lr_schedule(params)
    pre_prediction = resolve_callable(PROCESSING, params.pre_prediction_callback,
                                      "training_hyperparams.pre_prediction_callback")
    return TrainingComponents(loss, train_metrics, valid_metrics, callbacks, schedule, pre_prediction)


def with_components(params: Any, components: TrainingComponents) -> Any:
    """``params`` with every object key replaced by its built object (what the runner hands to the Trainer)."""
    handed = dataclasses.replace(
        params, loss=components.loss, criterion_params={}, train_metrics_list=components.train_metrics,
        valid_metrics_list=components.valid_metrics, phase_callbacks=components.callbacks,
        lr_mode=components.lr_schedule, pre_prediction_callback=components.pre_prediction_callback)
    handed.given_keys = getattr(params, "given_keys", frozenset())
    return handed
