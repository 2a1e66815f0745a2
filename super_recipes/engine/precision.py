"""Mixed precision (``mixed_precision``, ``amp_dtype``): the autocast context and the gradient scaler.

float16 on CUDA uses ``torch.amp.GradScaler``; bfloat16 needs no scaler and also runs on CPU. float16 asked for
on CPU falls back to bfloat16 with a one-line warning (CPU float16 autocast is slow and not supported by every
operator), never a crash.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch

from super_recipes.errors import RecipeError

logger = logging.getLogger("super_recipes")

AMP_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def amp_dtype_for(params: Any, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for this run, or None when mixed precision is off."""
    if not params.mixed_precision:
        return None
    if params.amp_dtype not in AMP_DTYPES:
        raise RecipeError(f"training_hyperparams.amp_dtype must be one of {', '.join(AMP_DTYPES)}, "
                          f"got '{params.amp_dtype}'.")
    dtype = AMP_DTYPES[params.amp_dtype]
    if device.type == "cpu" and dtype is torch.float16:
        logger.warning("mixed_precision: float16 autocast is not available on CPU; using bfloat16 instead.")
        dtype = torch.bfloat16
    return dtype


def autocast_factory(device: torch.device, dtype: torch.dtype | None) -> Callable[[], Any]:
    """A zero-argument context factory: autocast when ``dtype`` is set, a no-op context otherwise."""
    if dtype is None:
        return _no_autocast
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


_NULL_CONTEXT = contextlib.nullcontext()  # stateless and reusable: one instance serves every step


def _no_autocast() -> contextlib.nullcontext:
    return _NULL_CONTEXT


def grad_scaler_for(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A GradScaler for float16 on CUDA (the only case whose gradients underflow), else None."""
    if dtype is torch.float16 and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None
