"""Build the ``transforms:`` list of a dataset's params into one callable, plus transforms torchvision lacks.

A transform spec is anything :func:`super_recipes.registry.build_list` accepts: ``ToFloatTensor``,
``{RandomCrop: {size: 32, padding: 4}}`` or a ``_target_`` node. Names not registered here resolve to the classes
of ``torchvision.transforms.v2``.

Datasets of this package hand their transforms a uint8 image (a CHW tensor, or a PIL image for image folders),
so any torchvision v2 transform works on it; put ``ToFloatTensor`` before ``Normalize``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from super_recipes.registry import TRANSFORMS, build, build_list, register_transform


def _to_float_chw(image: Any) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        tensor = image
    else:
        array = np.asarray(image)  # PIL images and HWC ndarrays
        if array.ndim == 2:
            array = array[:, :, None]
        if not array.flags.writeable:  # PIL hands out read-only buffers, which torch warns about
            array = array.copy()
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    if tensor.dtype == torch.uint8:
        return tensor.to(torch.float32).div_(255.0).contiguous()
    if not tensor.is_floating_point():
        raise TypeError(f"ToFloatTensor expects uint8 or float images, got dtype {tensor.dtype}.")
    return tensor.to(torch.float32)


@register_transform
class ToFloatTensor:
    """Image (PIL, HWC uint8 ndarray, uint8 or float tensor) -> float32 CHW tensor with values in [0, 1].

    Serves ``transforms: [..., ToFloatTensor, ...]``. Extra inputs (e.g. a target passed through a torchvision
    ``Compose`` together with the image) are returned unchanged.
    """

    def __call__(self, image: Any, *rest: Any) -> Any:
        tensor = _to_float_chw(image)
        return (tensor, *rest) if rest else tensor

    def __repr__(self) -> str:
        return "ToFloatTensor()"


class Compose:
    """Apply transforms in order, like ``torchvision.transforms.v2.Compose``.

    Used when no torchvision transform is in the list, so that such a pipeline does not pay for importing
    torchvision (about a second) before the first training step.
    """

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, *inputs: Any) -> Any:
        unpack = len(inputs) > 1
        for transform in self.transforms:
            outputs = transform(*inputs)
            inputs = outputs if unpack else (outputs,)
        return outputs if self.transforms else (inputs if unpack else inputs[0])

    def __repr__(self) -> str:
        body = "".join(f"\n    {t!r}" for t in self.transforms)
        return f"Compose({body}\n)" if body else "Compose()"


class _EnsureFloatTensor:
    """Last step of every built pipeline: a no-op on float tensors, :class:`ToFloatTensor` on anything else."""

    def __call__(self, image: Any, *rest: Any) -> Any:
        if not (isinstance(image, torch.Tensor) and image.dtype == torch.float32):
            image = _to_float_chw(image)
        return (image, *rest) if rest else image

    def __repr__(self) -> str:
        return "EnsureFloatTensor()"


def build_transforms(specs: Any, where: str = "transforms", ensure_float: bool = True) -> Callable:
    """Build the ``transforms:`` key of a dataset's params into one callable.

    ``specs`` may be ``None``/empty (only the float conversion), one spec, a list of specs and built transform
    objects (from Python), or an already built callable (returned as is). With ``ensure_float`` the result always
    yields a float32 CHW image, so a recipe that lists only augmentations still produces what the model and
    collate expect.
    """
    if _is_built(specs):
        return specs
    if isinstance(specs, (list, tuple)):
        transforms = [s if _is_built(s) else build(TRANSFORMS, s, f"{where}[{i}]") for i, s in enumerate(specs)]
    else:
        transforms = build_list(TRANSFORMS, specs, where)
    if ensure_float and not (transforms and isinstance(transforms[-1], ToFloatTensor)):
        transforms.append(_EnsureFloatTensor())
    if any(type(t).__module__.startswith("torchvision") for t in transforms):
        from torchvision.transforms import v2

        return v2.Compose(transforms)
    if len(transforms) == 1:
        return transforms[0]
    return Compose(transforms)


def _is_built(spec: Any) -> bool:
    return callable(spec) and not isinstance(spec, type)

