"""Seeding (``training_hyperparams.seed``, ``deterministic``)."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); ``deterministic`` also asks torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_states() -> dict[str, Any]:
    """The RNG states of python, numpy, torch (CPU) and every CUDA device, for a checkpoint."""
    states: dict[str, Any] = {
        "python": _python_state_to_tensor(random.getstate()),
        "numpy": _numpy_state_to_tensor(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Put back the states saved by :func:`rng_states`."""
    random.setstate(_python_state_from_tensor(states["python"]))
    np.random.set_state(_numpy_state_from_tensor(states["numpy"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# The python and numpy states are stored as tensors so the checkpoint loads with weights_only=True.
def _python_state_to_tensor(state: tuple) -> torch.Tensor:
    version, internal, gauss = state
    return torch.tensor([version, *internal, 0 if gauss is None else 1], dtype=torch.int64), gauss


def _python_state_from_tensor(packed: Any) -> tuple:
    values, gauss = packed
    values = values.tolist()
    return values[0], tuple(values[1:-1]), gauss if values[-1] else None


def _numpy_state_to_tensor(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_state_from_tensor(packed: dict[str, Any]) -> tuple:
    keys = packed["keys"].numpy().astype(np.uint32)
    return packed["name"], keys, packed["pos"], packed["has_gauss"], packed["cached"]
