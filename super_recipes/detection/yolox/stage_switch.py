"""YOLOX's last training stage: recipe key ``YoloXTrainingStageSwitchCallback`` (``phase_callbacks``).

```yaml
training_hyperparams:
  phase_callbacks:
    - YoloXTrainingStageSwitchCallback: {next_stage_start_epoch: 285}   # max_epochs 300: 15 clean epochs
```

From epoch ``next_stage_start_epoch`` (0-based) on, the training dataset stops making mosaics and mixups (each
transform that has ``close()`` is closed; else ``enable_mosaic`` / ``enable_mixup`` are set to False) and the
loss adds its L1 term (``loss.use_l1 = True``).

When it acts: DataLoader worker processes hold copies of the dataset, made when the epoch's iterator is created,
and the trainer creates that iterator (``enumerate(loader)``) *before* ``on_train_loader_start`` fires. So the
switch happens at ``on_epoch_end`` of the epoch before, and at ``on_training_start`` for a run that starts or
resumes at or after that epoch (nothing is stored in checkpoints: the epoch alone decides). It is re-applied at
``on_train_loader_start`` of every later epoch, which is harmless and covers loops that fire no ``on_epoch_end``.
With ``persistent_workers`` the workers are made once and never see a later change, so a run that would need the
switch after its first epoch is refused at training start with a :class:`RecipeError`.
"""

from __future__ import annotations

import logging
from typing import Any

from super_recipes.callbacks.base import Callback, PhaseContext
from super_recipes.errors import RecipeError
from super_recipes.registry import register_callback

logger = logging.getLogger("super_recipes")

_SWITCHES = ("enable_mosaic", "enable_mixup")


@register_callback("YoloXTrainingStageSwitchCallback")
class YoloXTrainingStageSwitchCallback(Callback):
    """Turns mosaic and mixup off and the L1 loss on from epoch ``next_stage_start_epoch`` (see module docs)."""

    def __init__(self, next_stage_start_epoch: int = 285):
        self.next_stage_start_epoch = int(next_stage_start_epoch)
        self.switched = False

    def on_training_start(self, context: PhaseContext) -> None:
        loader = getattr(context.trainer, "train_loader", None)
        starts_before = context.epoch < self.next_stage_start_epoch < context.max_epochs
        if starts_before and getattr(loader, "persistent_workers", False) and getattr(loader, "num_workers", 0):
            raise RecipeError(
                "YoloXTrainingStageSwitchCallback cannot reach persistent DataLoader workers: they keep the dataset "
                f"copy made at the first epoch, so mosaic/mixup would stay on after epoch "
                f"{self.next_stage_start_epoch}. Set persistent_workers: false in train_dataloader_params.")
        if not hasattr(getattr(context.trainer, "loss_fn", None), "use_l1"):
            raise RecipeError(
                "YoloXTrainingStageSwitchCallback needs a loss with a use_l1 switch (YoloXDetectionLoss or "
                f"YoloXFastDetectionLoss), got {type(getattr(context.trainer, 'loss_fn', None)).__name__}.")
        if context.epoch >= self.next_stage_start_epoch:
            self._switch(context)

    def on_train_loader_start(self, context: PhaseContext) -> None:
        if context.epoch >= self.next_stage_start_epoch:
            self._switch(context)

    def on_epoch_end(self, context: PhaseContext) -> None:
        # The next epoch's iterator (and its workers) is created right after this: switch now so they see it.
        if context.epoch + 1 >= self.next_stage_start_epoch:
            self._switch(context)

    def _switch(self, context: PhaseContext) -> None:
        trainer = context.trainer
        closed = [type(t).__name__ for t in mixing_transforms(getattr(trainer, "train_loader", None))
                  if _close(t)]
        trainer.loss_fn.use_l1 = True
        if not self.switched:
            self.switched = True
            done = f"closed {', '.join(closed)}" if closed else "no mosaic/mixup transform was found"
            logger.info(f"YOLOX stage switch before epoch {context.epoch + 1}: {done}; L1 loss on.")


def mixing_transforms(loader: Any) -> list[Any]:
    """The transforms with a mosaic/mixup switch of the dataset(s) behind ``loader``.

    Wrappers (the trainer's ``BatchSeededDataset``, ``Subset``) are unwrapped through ``.dataset`` and
    ``ConcatDataset`` through ``.datasets``, until objects that own a ``transforms`` list are reached.
    """
    found: list[Any] = []
    pending = [getattr(loader, "dataset", loader)]
    seen: set[int] = set()
    while pending:
        obj = pending.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        # Own attribute or class attribute only: BatchSeededDataset forwards ``transforms`` without owning it.
        if "transforms" in getattr(obj, "__dict__", {}) or hasattr(type(obj), "transforms"):
            found += [t for t in _flat(obj.transforms) if any(hasattr(t, name) for name in _SWITCHES)]
        else:
            pending += [getattr(obj, "dataset", None), *getattr(obj, "datasets", ())]
    return found


def _flat(transforms: Any) -> list[Any]:
    # A Compose-like transform keeps its own list under ``transforms``.
    out = []
    for t in transforms if isinstance(transforms, (list, tuple)) else [transforms]:
        inner = getattr(t, "transforms", None)
        out += _flat(inner) if isinstance(inner, (list, tuple)) else [t]
    return out


def _close(transform: Any) -> bool:
    """Switch one transform off; True if it was on."""
    was_on = any(getattr(transform, name, False) for name in _SWITCHES)
    if callable(getattr(transform, "close", None)):
        transform.close()
    for name in _SWITCHES:
        if hasattr(transform, name):
            setattr(transform, name, False)
    return was_on
