"""Multi-scale training for detection: ``pre_prediction_callback: DetectionMultiscalePrePredictionCallback``.

Every ``change_frequency`` batches a new input size is drawn: the loader's size in units of
``image_size_steps``, plus or minus up to ``multiscale_range`` units (aspect ratio kept). The images are resized
bilinearly and the targets (``[N, 6]``: batch index, label, cx, cy, w, h in input pixels) scaled with them.
The size is drawn from torch's global RNG, whose state checkpoints keep; the size in force is part of this
callable's ``state_dict``, which the Trainer saves, so a run resumed mid-group continues with the same sizes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from super_recipes.errors import RecipeError
from super_recipes.registry import register_processing


@register_processing("DetectionMultiscalePrePredictionCallback")
class DetectionMultiscalePrePredictionCallback:
    """``(inputs, targets, batch_idx) -> (inputs, targets)`` at a randomly drawn scale (see the module doc)."""

    def __init__(self, multiscale_range: int = 5, image_size_steps: int = 32, change_frequency: int = 10):
        if multiscale_range < 0 or image_size_steps < 1 or change_frequency < 1:
            raise RecipeError("DetectionMultiscalePrePredictionCallback: multiscale_range must be >= 0, "
                              "image_size_steps and change_frequency >= 1.")
        self.multiscale_range, self.image_size_steps = int(multiscale_range), int(image_size_steps)
        self.change_frequency = int(change_frequency)
        self.size: tuple[int, int] | None = None

    def __call__(self, inputs: torch.Tensor, targets: Any, batch_idx: int) -> tuple[torch.Tensor, Any]:
        height, width = inputs.shape[-2:]
        if self.size is None or batch_idx % self.change_frequency == 0:
            units = height // self.image_size_steps
            low, high = max(1, units - self.multiscale_range), units + self.multiscale_range
            drawn = int(torch.randint(low, high + 1, (1,)).item())
            self.size = (drawn * self.image_size_steps,
                         max(1, round(drawn * width / height)) * self.image_size_steps)
        new_height, new_width = self.size
        if (new_height, new_width) == (height, width):
            return inputs, targets
        inputs = F.interpolate(inputs, size=(new_height, new_width), mode="bilinear", align_corners=False)
        if isinstance(targets, torch.Tensor) and targets.ndim == 2 and targets.shape[1] == 6 and len(targets):
            scale = targets.new_tensor([new_width / width, new_height / height] * 2)
            targets = torch.cat([targets[:, :2], targets[:, 2:] * scale], dim=1)
        return inputs, targets

    def state_dict(self) -> dict[str, Any]:
        return {"size": list(self.size) if self.size else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.size = tuple(state["size"]) if state.get("size") else None
