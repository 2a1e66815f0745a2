"""Whether a model is being traced or exported: detectors then return their decoded predictions alone.

The detection guide's "tracing mode" (``torch.jit.trace``, ONNX export, ``torch.export``) wants a single,
export-friendly output; training and eval outputs carry the raw maps the losses need.
"""

from __future__ import annotations

import torch

__all__ = ["is_exporting"]


def is_exporting() -> bool:
    """True while the model is being traced or exported, when only the decoded predictions should come out."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return True
    exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.5
    return bool(exporting is not None and exporting())
