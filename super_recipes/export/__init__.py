"""Export to ONNX (the optional extra ``super-recipes[export]``): :func:`export_model` (also ``model.export``),
the command line ``python -m super_recipes.export``, and running the exported file for predictions
(:mod:`super_recipes.export.runtime`)."""

from __future__ import annotations

from typing import Any

__all__ = ["export_model"]


def export_model(*args: Any, **kwargs: Any) -> Any:
    """See :func:`super_recipes.export.onnx_export.export_model` (imported on first use: it pulls in onnx)."""
    from super_recipes.export.onnx_export import export_model as export

    return export(*args, **kwargs)
