"""The optional extra export needs: ``pip install 'super-recipes[export]'`` (onnx, onnxruntime, onnxscript)."""

from __future__ import annotations

import importlib

from super_recipes.errors import RecipeError

EXPORT_EXTRA = "pip install 'super-recipes[export]'"


def require_onnx(what: str) -> None:
    """A one-line RecipeError naming the extra when onnx or onnxruntime is missing."""
    missing = []
    for module in ("onnx", "onnxruntime"):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise RecipeError(f"{what} needs {' and '.join(missing)}, an optional extra: {EXPORT_EXTRA}")
