"""Joint segmentation transforms: each takes and returns the pair ``(image, mask)`` (recipe key
``dataset_params.*_dataset_params.transforms`` of a segmentation dataset).

Registered names: ``SegRandomRescale``, ``SegRandomCrop``, ``SegRandomFlip``, ``SegColorJitter``, ``SegRescale``,
``SegPadToSize``, ``SegToTensor``, ``SegNormalize``. A dataset applies its list in order to the pair, so any
callable ``t(image, mask) -> (image, mask)`` fits in the list, including ``torchvision.transforms.v2``
transforms, which treat a ``tv_tensors.Mask`` as a mask (nearest resampling, no colour change).

Inside the list the image is a ``tv_tensors.Image`` ``[3, H, W]`` (uint8 RGB until ``SegToTensor`` makes it
float32 in [0, 1]) and the mask a ``tv_tensors.Mask`` ``[H, W]`` of class indices. Geometry changes the two
together (the image bilinearly, the mask by nearest neighbour, so no new class values appear); colour changes
the image alone. Padding fills the mask with the ignore index: by default the owning dataset's ``ignore_index``.
Every random draw uses torch's global generator, so a seeded run (and the DataLoader's per-worker seeding, which
exact resume restores) replays the same augmentations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from super_recipes.errors import RecipeError
from super_recipes.registry import register_transform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IGNORE_INDEX = 255

Pair = tuple[tv_tensors.Image, tv_tensors.Mask]


def as_pair(image: Any, mask: Any) -> Pair:
    """``(tv_tensors.Image [C, H, W], tv_tensors.Mask [H, W])`` from tensors (CHW image), HWC/HW arrays or PIL
    images, so the transforms also work when called by hand."""
    if not isinstance(image, tv_tensors.Image):
        if not isinstance(image, torch.Tensor):
            array = np.asarray(image)
            array = array[:, :, None] if array.ndim == 2 else array
            image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
        image = tv_tensors.Image(image)
    if not isinstance(mask, tv_tensors.Mask):
        mask = tv_tensors.Mask(mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.array(mask)))
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = tv_tensors.Mask(mask[0])
    if image.shape[-2:] != mask.shape[-2:]:
        raise RecipeError(f"Image {tuple(image.shape[-2:])} and mask {tuple(mask.shape[-2:])} differ in size.")
    return image, mask


def _hw(size: int | Sequence[int], what: str) -> tuple[int, int]:
    """``[h, w]`` from an int (square) or a pair; a RecipeError naming ``what`` otherwise."""
    values = [size, size] if isinstance(size, (int, np.integer)) else list(size)
    if len(values) != 2 or any(int(v) != v or v < 1 for v in values):
        raise RecipeError(f"{what} must be a positive int or [height, width], got {size!r}.")
    return int(values[0]), int(values[1])


def _resize(image: tv_tensors.Image, mask: tv_tensors.Mask, hw: tuple[int, int]) -> Pair:
    if tuple(image.shape[-2:]) == hw:
        return image, mask
    # antialias: downscaling by 2 without it aliases thin structures (poles, fences) in the image.
    image = F.resize(image, list(hw), interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    mask = F.resize(mask, list(hw), interpolation=F.InterpolationMode.NEAREST)
    return image, mask


def _pad_bottom_right(image: tv_tensors.Image, mask: tv_tensors.Mask, hw: tuple[int, int], image_fill: float,
                      mask_fill: int) -> Pair:
    h, w = image.shape[-2:]
    extra_h, extra_w = max(hw[0] - h, 0), max(hw[1] - w, 0)
    if not (extra_h or extra_w):
        return image, mask
    if mask.dtype == torch.uint8 and not 0 <= mask_fill <= 255:
        mask = tv_tensors.Mask(mask.to(torch.int64))  # the fill value does not fit the stored dtype
    padding = [0, 0, extra_w, extra_h]  # left, top, right, bottom: the kept pixels keep their coordinates
    return F.pad(image, padding, fill=image_fill), F.pad(mask, padding, fill=mask_fill)


class _Joint:
    """Shared ``__repr__``: the class name and the arguments it was built with."""

    _args: dict[str, Any]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._args.items())})"


class _PadsMask(_Joint):
    """A transform that pads the mask: ``mask_pad_value=None`` means the owning dataset's ``ignore_index``."""

    mask_pad_value: int | None

    def adopt_ignore_index(self, ignore_index: int) -> None:
        """Called by the dataset: fill padding with its ``ignore_index`` unless a value was given."""
        if self._args.get("mask_pad_value") is None:
            self.mask_pad_value = int(ignore_index)

    def _mask_fill(self) -> int:
        return DEFAULT_IGNORE_INDEX if self.mask_pad_value is None else int(self.mask_pad_value)


@register_transform
class SegRandomRescale(_Joint):
    """Resize image and mask by a factor drawn uniformly from ``scales`` (``SegRandomRescale: {scales: [0.5,
    2.0]}``); a single number is a fixed factor. The aspect ratio is kept."""

    def __init__(self, scales: float | Sequence[float] = (0.5, 2.0)):
        low, high = (scales, scales) if isinstance(scales, (int, float)) else tuple(scales)
        if not 0 < low <= high:
            raise RecipeError(f"SegRandomRescale.scales must be a number or [low, high] with 0 < low <= high, "
                              f"got {scales!r}.")
        self.scales = (float(low), float(high))
        self._args = {"scales": list(self.scales)}

    def __call__(self, image: Any, mask: Any) -> Pair:
        image, mask = as_pair(image, mask)
        low, high = self.scales
        scale = low + (high - low) * float(torch.rand(()))
        h, w = image.shape[-2:]
        return _resize(image, mask, (max(round(h * scale), 1), max(round(w * scale), 1)))


@register_transform
class SegRandomCrop(_PadsMask):
    """A random ``crop_size`` window (``SegRandomCrop: {crop_size: [1024, 1024]}``), after padding image and mask
    on the bottom and right up to that size: image pixels with ``image_pad_value``, mask pixels with
    ``mask_pad_value`` (default: the dataset's ``ignore_index``, so padding counts for nothing)."""

    def __init__(self, crop_size: int | Sequence[int], image_pad_value: float = 0,
                 mask_pad_value: int | None = None):
        self.crop_size = _hw(crop_size, "SegRandomCrop.crop_size")
        self.image_pad_value = image_pad_value
        self.mask_pad_value = mask_pad_value
        self._args = {"crop_size": list(self.crop_size), "image_pad_value": image_pad_value,
                      "mask_pad_value": mask_pad_value}

    def __call__(self, image: Any, mask: Any) -> Pair:
        image, mask = _pad_bottom_right(*as_pair(image, mask), self.crop_size, self.image_pad_value,
                                        self._mask_fill())
        (h, w), (ch, cw) = image.shape[-2:], self.crop_size
        top = int(torch.randint(0, h - ch + 1, ()))
        left = int(torch.randint(0, w - cw + 1, ()))
        return F.crop(image, top, left, ch, cw), F.crop(mask, top, left, ch, cw)


@register_transform
class SegRandomFlip(_Joint):
    """Mirror image and mask left-right with probability ``prob`` (``SegRandomFlip: {prob: 0.5}``)."""

    def __init__(self, prob: float = 0.5):
        if not 0 <= prob <= 1:
            raise RecipeError(f"SegRandomFlip.prob must lie in [0, 1], got {prob!r}.")
        self.prob = float(prob)
        self._args = {"prob": self.prob}

    def __call__(self, image: Any, mask: Any) -> Pair:
        image, mask = as_pair(image, mask)
        if float(torch.rand(())) < self.prob:
            return F.horizontal_flip(image), F.horizontal_flip(mask)
        return image, mask


@register_transform
class SegColorJitter(_Joint):
    """Random brightness, contrast, saturation and hue of the image; the mask is returned untouched
    (``SegColorJitter: {brightness: 0.5, contrast: 0.5, saturation: 0.5}``). Arguments as
    ``torchvision.transforms.v2.ColorJitter``: a factor ``b`` draws from ``[1 - b, 1 + b]``, ``hue`` from
    ``[-hue, hue]`` (at most 0.5)."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0):
        try:
            self._jitter = v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
        except (TypeError, ValueError) as err:
            raise RecipeError(f"SegColorJitter: {err}") from None
        self._args = {"brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue}

    def __call__(self, image: Any, mask: Any) -> Pair:
        image, mask = as_pair(image, mask)
        return self._jitter(image), mask


@register_transform
class SegRescale(_Joint):
    """Deterministic resize of image and mask, e.g. for validation (``SegRescale: {scale_factor: 0.5}``). Give
    exactly one of: ``scale_factor`` (both sides times it), ``short_size`` / ``long_size`` (the shorter / longer
    side becomes this many pixels, aspect ratio kept) or ``size`` (``[h, w]``, or an int for a square)."""

    def __init__(self, scale_factor: float | None = None, short_size: int | None = None,
                 long_size: int | None = None, size: int | Sequence[int] | None = None):
        given = {k: v for k, v in {"scale_factor": scale_factor, "short_size": short_size, "long_size": long_size,
                                   "size": size}.items() if v is not None}
        if len(given) != 1:
            raise RecipeError(f"SegRescale needs exactly one of scale_factor, short_size, long_size, size; got "
                              f"{given or 'none'}.")
        (self.mode, value), = given.items()
        if self.mode == "size":
            value = _hw(value, "SegRescale.size")
        elif not (isinstance(value, (int, float)) and value > 0):
            raise RecipeError(f"SegRescale.{self.mode} must be a positive number, got {value!r}.")
        self.value = value
        self._args = {self.mode: list(value) if self.mode == "size" else value}

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(h, w)`` an input of ``height`` x ``width`` is resized to."""
        if self.mode == "size":
            return self.value
        if self.mode == "scale_factor":
            factor = float(self.value)
        else:
            side = min(height, width) if self.mode == "short_size" else max(height, width)
            factor = float(self.value) / side
        return max(round(height * factor), 1), max(round(width * factor), 1)

    def __call__(self, image: Any, mask: Any) -> Pair:
        image, mask = as_pair(image, mask)
        return _resize(image, mask, self.output_size(*image.shape[-2:]))


@register_transform
class SegPadToSize(_PadsMask):
    """Pad image and mask on the bottom and right to ``size`` (``SegPadToSize: {size: [512, 512]}``), so that
    images of different sizes batch together; the mask padding (default: the dataset's ``ignore_index``) keeps
    metrics those of the unpadded image. An image larger than ``size`` is an error: rescale it first."""

    def __init__(self, size: int | Sequence[int], image_pad_value: float = 0, mask_pad_value: int | None = None):
        self.size = _hw(size, "SegPadToSize.size")
        self.image_pad_value = image_pad_value
        self.mask_pad_value = mask_pad_value
        self._args = {"size": list(self.size), "image_pad_value": image_pad_value, "mask_pad_value": mask_pad_value}

    def __call__(self, image: Any, mask: Any) -> Pair:
        image, mask = as_pair(image, mask)
        h, w = image.shape[-2:]
        if h > self.size[0] or w > self.size[1]:
            raise RecipeError(f"SegPadToSize: an image of {h}x{w} is larger than size {list(self.size)}; put a "
                              f"SegRescale (e.g. long_size: {min(self.size)}) before it or raise size.")
        return _pad_bottom_right(image, mask, self.size, self.image_pad_value, self._mask_fill())


@register_transform
class SegToTensor(_Joint):
    """The image as float32 with values in [0, 1] (uint8 divided by 255) and the mask as int64; put it after the
    uint8 augmentations and before ``SegNormalize``."""

    def __init__(self) -> None:
        self._args = {}

    def __call__(self, image: Any, mask: Any) -> Pair:
        image, mask = as_pair(image, mask)
        return tv_tensors.Image(F.to_dtype(image, torch.float32, scale=True)), tv_tensors.Mask(mask.to(torch.int64))


@register_transform
class SegNormalize(_Joint):
    """``(image - mean) / std`` per channel, with ``mean`` and ``std`` on the [0, 1] scale (ImageNet's by default:
    ``SegNormalize: {mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}``). A uint8 image is first scaled to
    [0, 1]; the mask is untouched."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise RecipeError(f"SegNormalize needs mean and std of the same length with std > 0, got {mean}/{std}.")
        self._args = {"mean": self.mean, "std": self.std}

    def __call__(self, image: Any, mask: Any) -> Pair:
        image, mask = as_pair(image, mask)
        if not image.is_floating_point():
            image = tv_tensors.Image(F.to_dtype(image, torch.float32, scale=True))
        return F.normalize(image, self.mean, self.std), mask


def finalize_pair(image: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """What a dataset item holds: plain tensors, a float32 ``[3, H, W]`` image (uint8 scaled to [0, 1]) and an
    int64 ``[H, W]`` mask, whatever the transforms left."""
    image, mask = as_pair(image, mask)
    if not image.is_floating_point():
        image = F.to_dtype(image, torch.float32, scale=True)
    image = image.as_subclass(torch.Tensor).to(torch.float32).contiguous()
    return image, mask.as_subclass(torch.Tensor).to(torch.int64).contiguous()
