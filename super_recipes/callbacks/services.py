"""The callbacks every training run gets: its LR schedule, model averaging, and (on rank 0) its reporters."""

from __future__ import annotations

import sys
from typing import Any

from super_recipes.callbacks.base import Callback
from super_recipes.callbacks.loggers import EpochSummary, MetricsCSV, ProgressBar, TensorBoardLogger


def service_callbacks(params: Any, is_rank_zero: bool, schedule: Callback | None) -> list[Callback]:
    """Callbacks implied by ``training_hyperparams``: the built LR ``schedule``, ``average_best_models``,
    and the reporters (progress bar, epoch summary, TensorBoard, metrics.csv) on rank 0."""
    services: list[Callback] = []
    if schedule is not None:
        services.append(schedule)
    if params.average_best_models:
        from super_recipes.callbacks.averaging import build_model_averaging

        services.append(build_model_averaging(params))
    if is_rank_zero:
        if not params.silent_mode and sys.stderr.isatty():
            services.append(ProgressBar())
        services += [EpochSummary(), TensorBoardLogger(params.log_every_n_steps), MetricsCSV()]
    return services
