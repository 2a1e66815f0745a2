"""Export to ONNX (the optional extra ``super-recipes[export]``): :func:`export_model` (also ``model.export``),
the command line ``python -m super_recipes.export``, and running the exported file for predictions
(:mod:`super_recipes.export.runtime`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["export_model", "is_exported_file"]


def is_exported_file(path: object) -> bool:
    """Whether a ``checkpoint`` argument names an exported ``.onnx`` file (the prediction loaders' switch)."""
    return isinstance(path, str | Path) and str(path).lower().endswith(".onnx")


def export_model(*args: Any, **kwargs: Any) -> Any:
    """See :func:`super_recipes.export.onnx_export.export_model` (imported on first use: it pulls in onnx)."""
    from super_recipes.export.onnx_export import export_model as export

    return export(*args, **kwargs)
