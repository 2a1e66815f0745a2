"""The callbacks every training run gets: its LR schedule, model averaging, and (on rank 0) its reporters."""

from __future__ import annotations

import sys
from typing import Any

from super_recipes.callbacks.base import Callback
from super_recipes.callbacks.loggers import EpochSummary, MetricsCSV, ProgressBar, TensorBoardLogger
from super_recipes.schedules import build_lr_schedule


def service_callbacks(params: Any, is_rank_zero: bool) -> list[Callback]:
    """Callbacks implied by ``training_hyperparams`` (``lr_mode``, ``average_best_models``, logging)."""
    services: list[Callback] = []
    schedule = build_lr_schedule(params)
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
