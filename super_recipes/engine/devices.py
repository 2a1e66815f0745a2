"""Devices and batches: ``device`` (auto/cpu/cuda) and moving a batch's tensors to it."""

from __future__ import annotations

from typing import Any

import torch

from super_recipes.errors import RecipeError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` recipe key: ``auto``/None picks CUDA when present, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"device is '{device}' but CUDA is not available on this machine; use device=cpu.")
    return device


def to_device(obj: Any, device: torch.device) -> Any:
    """Move a batch element (tensor, or list/tuple/dict of them, e.g. detection targets) to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj
