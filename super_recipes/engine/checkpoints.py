"""Checkpoint files: written atomically, read with ``weights_only=True``, errors that name the file.

A checkpoint is a dict with at least ``net`` (model state dict), ``acc`` (best ``metric_to_watch`` so far),
``epoch``, ``optimizer_state_dict`` and ``recipe`` (the resolved recipe as YAML text, so loading needs no
pickle of arbitrary objects).
"""

from __future__ import annotations

import os
import re
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


def remove_stale_temporary_files(folder: Path) -> list[str]:
    """Delete the temporary files of saves that a killed process left in ``folder``; returns their names.

    Only this package's own pattern (``.<name>.pth.<random>.tmp``, see :func:`save_checkpoint`) is touched.
    Called when a run starts or resumes, before anything in the folder is written.
    """
    removed = []
    for path in Path(folder).glob(".*.pth.*.tmp"):
        try:
            path.unlink()
            removed.append(path.name)
        except OSError:
            pass
    return removed


class CheckpointSaveError(RecipeError):
    """A checkpoint could not be written (disk full, permissions...); the previous one is intact."""


def write_checkpoints(state: dict[str, Any], folder: Path, names: list[str]) -> None:
    """Save ``state`` under each of ``names`` in ``folder``; a failed write stops training with a clear message."""
    for name in names:
        path = Path(folder) / name
        try:
            save_checkpoint(state, path)
        except OSError as err:
            raise CheckpointSaveError(
                f"Could not write {path}: {err}. Training stopped; the previous checkpoint is intact.") from None


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


def numpy_safe_globals() -> list[Any]:
    """The NumPy constructors a checkpoint may hold data through, allowed in ``weights_only`` loading.

    Other frameworks' checkpoints (SuperGradients' ``processing_params`` keep class names as NumPy strings) pickle
    NumPy arrays, scalars and dtypes. These constructors only rebuild data, never run code, so allowing them keeps
    loading safe; everything else stays refused. Files written under NumPy 1.x name the same functions
    ``numpy.core.*`` where NumPy 2 says ``numpy._core.*``: both names are allowed.
    """
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # NumPy 2 / 1.x
    allowed: list[Any] = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    allowed += [type(np.dtype(kind)) for kind in (np.str_, np.bytes_, np.bool_, np.float16, np.float32, np.float64,
                                                   np.int8, np.int16, np.int32, np.int64, np.uint8, np.object_)]
    for function in (multiarray._reconstruct, multiarray.scalar):
        allowed.append((function, f"numpy.core.multiarray.{function.__name__}"))
        allowed.append((function, f"numpy._core.multiarray.{function.__name__}"))
    return allowed


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``, plus NumPy's data constructors: see
    :func:`numpy_safe_globals`); a clear RecipeError for missing/corrupt/foreign files."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"Checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types here (UnpicklingError, RuntimeError, EOFError...)
        raise RecipeError(describe_load_failure(path, err)) from None
    if not isinstance(state, dict):
        raise RecipeError(f"Checkpoint {path} holds a {type(state).__name__}, expected a dict.")
    return state


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# What torch's weights-only unpickler names when it refuses a file, across its wordings ("Unsupported global:
# GLOBAL x", "unsupported GLOBAL x whose module m is blocked", "unrecognized function x", "but got <class 'x'>").
_REFUSED_OBJECT = (
    re.compile(r"GLOBAL (\S+)"),
    re.compile(r"unrecognized function (\S+)"),
    re.compile(r"(?:got|for) <class '([^']+)'>"),
)
_TORCH_SAVE_STARTS = (b"PK\x03\x04", b"\x80")  # zip container (torch >= 1.6) or the legacy pickle stream


def describe_load_failure(path: Path, err: Exception) -> str:
    """One screen on what is wrong with ``path`` (empty, not a torch file, truncated, unsafe).

    torch's own message about a refused object suggests ``weights_only=False``, i.e. running code from the
    file: that advice is never repeated; only the object it names is reported.
    """
    with open(path, "rb") as f:
        start = f.read(16)
    text = _ANSI.sub("", str(err))
    if not start:
        why = "the file is empty"
    elif not start.startswith(_TORCH_SAVE_STARTS):
        kind = "text" if all(32 <= b < 127 or b in b"\t\r\n" for b in start) else "unknown binary data"
        why = f"not a file written by torch.save (it starts with {start!r}: {kind})"
    elif "weights only load failed" in text.lower() or "weightsunpickler" in text.lower():
        found = next((m.group(1).rstrip(".,;") for pattern in _REFUSED_OBJECT for m in [pattern.search(text)] if m),
                     None)
        needs = f"the Python object {found}" if found else "Python objects other than tensors and containers"
        why = (f"it needs {needs}, and files that need arbitrary pickled objects are refused: loading them could "
               "run code from the file. Nothing in it was run. Re-save its tensors with torch.save (a state dict)")
    elif "central directory" in text or isinstance(err, EOFError) or "truncated" in text.lower():
        why = "the file is truncated or corrupt (copy or save it again)"
    else:
        why = next((line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line),
                   type(err).__name__)
    return (f"Cannot load checkpoint {path}: {why}.\n"
            "Expected a file written by torch.save holding tensors and plain containers (a super_recipes "
            "checkpoint or a state dict).")
