"""PP-YOLOE's assigner switch: recipe key ``PPYoloETrainingStageSwitchCallback`` (``phase_callbacks``).

```yaml
training_hyperparams:
  loss: PPYoloELoss
  criterion_params: {num_classes: 80, use_static_assigner: true}
  phase_callbacks:
    - PPYoloETrainingStageSwitchCallback: {static_assigner_end_epoch: 30}   # ATSS for epochs 0..29
```

From epoch ``static_assigner_end_epoch`` (0-based) on, the training loss assigns anchors with the task-aligned
assigner instead of ATSS (``loss.use_static_assigner = False``). The loss lives in the training process (not in
DataLoader workers), so switching at ``on_train_loader_start`` of that epoch is early enough. A run that starts or
resumes at or after that epoch is switched at ``on_training_start``: nothing is stored in checkpoints, the epoch
alone decides (SuperGradients switches only when the epoch equals the end epoch, so a resumed run would keep ATSS).
The validation loss is computed by the same loss object, so it follows the switch.
"""

from __future__ import annotations

import logging

from super_recipes.callbacks.base import Callback, PhaseContext
from super_recipes.errors import RecipeError
from super_recipes.registry import register_callback

logger = logging.getLogger("super_recipes")


@register_callback("PPYoloETrainingStageSwitchCallback")
class PPYoloETrainingStageSwitchCallback(Callback):
    """Switches ``PPYoloELoss`` from ATSS to task-aligned assignment at ``static_assigner_end_epoch`` (see module).

    :param static_assigner_end_epoch: the first epoch (0-based) trained with the task-aligned assigner.
    """

    def __init__(self, static_assigner_end_epoch: int = 30):
        self.static_assigner_end_epoch = int(static_assigner_end_epoch)
        if self.static_assigner_end_epoch < 0:
            raise RecipeError("PPYoloETrainingStageSwitchCallback: static_assigner_end_epoch must be >= 0, got "
                              f"{static_assigner_end_epoch}.")
        self.switched = False

    def on_training_start(self, context: PhaseContext) -> None:
        loss = getattr(context.trainer, "loss_fn", None)
        if not hasattr(loss, "use_static_assigner"):
            raise RecipeError(
                "PPYoloETrainingStageSwitchCallback needs a loss with a use_static_assigner switch (PPYoloELoss), "
                f"got {type(loss).__name__}. Remove the callback or use loss: PPYoloELoss.")
        if context.epoch >= self.static_assigner_end_epoch:
            self._switch(context)

    def on_train_loader_start(self, context: PhaseContext) -> None:
        if context.epoch >= self.static_assigner_end_epoch:
            self._switch(context)

    def _switch(self, context: PhaseContext) -> None:
        context.trainer.loss_fn.use_static_assigner = False
        if not self.switched:
            self.switched = True
            logger.info(f"PP-YOLOE stage switch at epoch {context.epoch}: task-aligned assigner on (ATSS off).")
