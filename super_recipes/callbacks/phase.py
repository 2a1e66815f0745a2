"""SuperGradients' older callback API: a ``Phase`` enum and ``PhaseCallback(phase)`` whose ``__call__`` runs at it.

Callbacks written against SuperGradients run with only their imports changed::

    from super_recipes.callbacks import Phase, PhaseCallback

    class PrintAccuracy(PhaseCallback):
        def __init__(self):
            super().__init__(Phase.VALIDATION_EPOCH_END)

        def __call__(self, context):
            print(context.epoch, context.metrics_dict["Accuracy"])

Each phase maps onto one of our events (SuperGradients' own correspondence table); the context carries
SuperGradients' attribute names as aliases (``metrics_dict``, ``loss_log_items``, ``ckpt_dir``...).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from super_recipes.callbacks.base import Callback, PhaseContext
from super_recipes.errors import RecipeError, did_you_mean


class Phase(str, Enum):
    """When a :class:`PhaseCallback` runs."""

    PRE_TRAINING = "PRE_TRAINING"
    TRAIN_EPOCH_START = "TRAIN_EPOCH_START"
    TRAIN_BATCH_END = "TRAIN_BATCH_END"
    TRAIN_BATCH_STEP = "TRAIN_BATCH_STEP"
    TRAIN_EPOCH_END = "TRAIN_EPOCH_END"
    VALIDATION_BATCH_END = "VALIDATION_BATCH_END"
    VALIDATION_EPOCH_END = "VALIDATION_EPOCH_END"
    VALIDATION_END_BEST_EPOCH = "VALIDATION_END_BEST_EPOCH"
    TEST_BATCH_END = "TEST_BATCH_END"
    TEST_END = "TEST_END"
    POST_TRAINING = "POST_TRAINING"


PHASE_EVENTS: dict[Phase, str] = {
    Phase.PRE_TRAINING: "on_training_start",
    Phase.TRAIN_EPOCH_START: "on_train_loader_start",
    Phase.TRAIN_BATCH_END: "on_train_batch_backward_end",
    Phase.TRAIN_BATCH_STEP: "on_train_batch_gradient_step_end",
    Phase.TRAIN_EPOCH_END: "on_train_loader_end",
    Phase.VALIDATION_BATCH_END: "on_validation_batch_end",
    Phase.VALIDATION_EPOCH_END: "on_validation_loader_end",
    Phase.VALIDATION_END_BEST_EPOCH: "on_validation_end_best_epoch",
    Phase.TEST_BATCH_END: "on_test_batch_end",
    Phase.TEST_END: "on_test_loader_end",
    Phase.POST_TRAINING: "on_training_end",
}


class PhaseCallback(Callback):
    """Runs ``self(context)`` at ``phase`` (a :class:`Phase` or its name); subclasses implement ``__call__``."""

    def __init__(self, phase: Phase | str):
        try:
            self.phase = Phase(phase)
        except ValueError:
            names = [p.value for p in Phase]
            raise RecipeError(f"Unknown phase '{phase}' for {type(self).__name__}. "
                              f"{did_you_mean(str(phase), names) or 'Phases: ' + ', '.join(names)}") from None
        # Only the mapped event is dispatched, so a PhaseCallback costs nothing at the other events.
        setattr(self, PHASE_EVENTS[self.phase], self.__call__)

    def handled_events(self) -> list[str]:
        return [PHASE_EVENTS[self.phase]]

    def __call__(self, context: PhaseContext) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(self, context).")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(phase={self.phase.value})"
