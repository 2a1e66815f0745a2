"""The training engine: the loop (:mod:`.trainer`), its state and checkpoints, resuming, interrupts, distributed
processes, precision, devices, seeding and the EMA of the weights.

Only :class:`Trainer` is re-exported; ``from super_recipes import Trainer`` is the public way in.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "Trainer":
        from super_recipes.engine.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'super_recipes.engine' has no attribute '{name}'")
