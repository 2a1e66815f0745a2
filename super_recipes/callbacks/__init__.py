"""Callbacks: the :class:`Callback` base class, the event context, SuperGradients' ``Phase``/``PhaseCallback``,
and the built-in callbacks.

Register your own with ``@register_callback`` and list it in ``training_hyperparams.phase_callbacks`` (or pass
the object from the Python API).
"""

from super_recipes.callbacks.base import EVENTS, Callback, CallbackList, PhaseContext
from super_recipes.callbacks.conversion_check import ModelConversionCheckCallback
from super_recipes.callbacks.early_stop import EarlyStop
from super_recipes.callbacks.lr_logging import LRMonitor
from super_recipes.callbacks.phase import Phase, PhaseCallback

# averaging (the ``average_best_models`` service, which needs torch) is imported by the trainer, not here, so
# that resolving callback names stays cheap.
__all__ = ["EVENTS", "Callback", "CallbackList", "EarlyStop", "LRMonitor", "ModelConversionCheckCallback",
           "Phase", "PhaseCallback", "PhaseContext"]
