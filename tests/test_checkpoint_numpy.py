"""Checkpoints of other frameworks keep NumPy data next to the weights (SuperGradients' ``processing_params`` hold
class names as NumPy strings): such files load with ``weights_only`` plus NumPy's data constructors, under NumPy 2
and NumPy 1.x names alike, while code-running objects stay refused."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
import torch

from super_recipes import models
from super_recipes.engine.checkpoints import load_checkpoint
from super_recipes.errors import RecipeError


def numpy_extras() -> dict:
    return {"class_names": np.array(["person", "car"]), "first": np.str_("person"), "conf": np.float32(0.25),
            "size": np.int64(640), "mean": np.array([0.485, 0.456, 0.406])}


def with_numpy1_names(path, out):
    """The same file as NumPy 1.x writes it: its pickle names ``numpy.core.multiarray`` (NumPy 2: ``numpy._core``)."""
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            target.writestr(item, data)
    return out


@pytest.mark.parametrize("numpy1", [False, True])
def test_numpy_data_loads_safely(tmp_path, numpy1):
    model = models.get("resnet_tiny_cifar", num_classes=2)
    path = tmp_path / "theirs.pth"
    torch.save({"net": model.state_dict(), "ema_net": model.state_dict(), "acc": np.float64(0.5), "epoch": 3,
                "processing_params": numpy_extras(), "packages": {"torch": "2.1.0"}}, path)
    if numpy1:
        path = with_numpy1_names(path, tmp_path / "numpy1.pth")
        assert "numpy.core.multiarray.scalar" in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    state = load_checkpoint(path)
    assert state["processing_params"]["class_names"].tolist() == ["person", "car"]
    assert state["processing_params"]["size"] == 640 and isinstance(state["processing_params"]["first"], np.str_)
    loaded = models.get("resnet_tiny_cifar", num_classes=2, checkpoint_path=str(path))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo should never run",))


def test_code_is_still_refused(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"net": {}, "processing_params": numpy_extras(), "hook": Payload()}, path)
    with pytest.raises(RecipeError, match="system") as err:
        load_checkpoint(path)
    assert "weights_only=False" not in str(err.value)
