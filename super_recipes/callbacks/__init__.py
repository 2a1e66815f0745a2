"""Callbacks: the :class:`Callback` base class, the event context, and the built-in callbacks.

Register your own with ``@register_callback`` and list it in ``training_hyperparams.phase_callbacks``.
"""

from super_recipes.callbacks.base import EVENTS, Callback, CallbackList, PhaseContext

__all__ = ["EVENTS", "Callback", "CallbackList", "PhaseContext"]
