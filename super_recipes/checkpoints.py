"""Checkpoint files: written atomically, read with ``weights_only=True``, errors that name the file.

A checkpoint is a dict with at least ``net`` (model state dict), ``acc`` (best ``metric_to_watch`` so far),
``epoch``, ``optimizer_state_dict`` and ``recipe`` (the resolved recipe as YAML text, so loading needs no
pickle of arbitrary objects).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from super_recipes.errors import RecipeError

LATEST = "ckpt_latest.pth"
BEST = "ckpt_best.pth"


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so that a crash at any moment leaves either the old or the new file.

    The data goes to a temporary file in the same folder, is flushed and fsync'ed, then renamed over ``path``
    (a rename within one file system is atomic).
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not supported on every platform/file system, hence best effort.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``); a clear RecipeError for missing/corrupt/foreign files."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"Checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types here (UnpicklingError, RuntimeError, EOFError...)
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RecipeError(
            f"Cannot load checkpoint {path}: {first_line}\n"
            "Expected a file written by torch.save holding tensors and plain containers (a super_recipes "
            "checkpoint or a state dict); files that need arbitrary pickled objects are refused."
        ) from None
    if not isinstance(state, dict):
        raise RecipeError(f"Checkpoint {path} holds a {type(state).__name__}, expected a dict.")
    return state
