"""What ``model.predict(source)`` accepts, for every task: an image path, a folder of images, a list of either,
a numpy array (HWC, NHWC), a PIL image or a tensor (CHW, BCHW); and how several results get unique file names.

Every image comes out HWC uint8 with three channels, tagged with its channel order: files are read with ``cv2``
(BGR), PIL images are RGB, arrays and tensors are in the order the caller says (``channels``, BGR by default,
the order the datasets read files in). Tensors hold 0..255 values, or floats within [0, 1] which are scaled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
CHANNEL_ORDERS = ("BGR", "RGB")


class SourceImage(NamedTuple):
    """One image of a prediction source."""

    image: np.ndarray  # HWC uint8, three channels
    path: str | None  # the file it came from
    name: str  # the file's stem, or image_<i>
    channels: str  # "BGR" or "RGB"


def image_files(folder: str | Path) -> list[Path]:
    """The images directly inside ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: str | Path) -> np.ndarray:
    """HWC uint8 BGR; FileNotFoundError or ValueError naming ``path`` when it is missing or not an image."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        if not Path(path).exists():
            raise FileNotFoundError(f"Image {path} does not exist.")
        raise ValueError(f"Image {path} cannot be decoded (corrupt or not an image).")
    return image


def as_hwc3(image: np.ndarray) -> np.ndarray:
    """HW or HWC (1, 3 or 4 channels; alpha dropped) array -> contiguous HWC uint8 with three channels."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"An image array must be HW, HWC (1, 3 or 4 channels) or NHWC, got shape {image.shape}.")
    image = image[:, :, :3] if image.shape[2] == 4 else image  # alpha is not part of the picture
    if image.shape[2] == 1:
        image = image.repeat(3, axis=2)
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def tensor_images(tensor: torch.Tensor) -> list[np.ndarray]:
    """CHW or BCHW tensor (0..255, or floats within [0, 1]) -> HWC uint8 arrays."""
    values = tensor.detach().to("cpu", torch.float32)
    values = values[None] if values.ndim == 3 else values
    if values.ndim != 4:
        raise ValueError(f"A tensor source must be CHW or BCHW, got shape {tuple(tensor.shape)}.")
    scale = 255.0 if values.numel() and tensor.dtype != torch.uint8 and float(values.max()) <= 1.0 else 1.0
    return [as_hwc3(image) for image in (values * scale).clamp(0, 255).round().to(torch.uint8)
            .permute(0, 2, 3, 1).numpy()]


def collect_images(source: Any, channels: str = "BGR",
                   read: Callable[[str], np.ndarray] = read_image) -> tuple[list[SourceImage], bool]:
    """The images of ``source`` and whether it was a single image; ``read`` loads a file as BGR."""
    if channels not in CHANNEL_ORDERS:
        raise ValueError(f"channels must be one of {', '.join(CHANNEL_ORDERS)}, got {channels!r}.")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            files = image_files(path)
            if not files:
                raise FileNotFoundError(f"No images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            return [SourceImage(read(str(f)), str(f), f.stem, "BGR") for f in files], False
        return [SourceImage(read(str(path)), str(path), path.stem, "BGR")], True
    if isinstance(source, np.ndarray):
        if source.ndim == 4:
            return [SourceImage(as_hwc3(image), None, f"image_{i}", channels) for i, image in enumerate(source)], False
        return [SourceImage(as_hwc3(source), None, "image_0", channels)], True
    if isinstance(source, torch.Tensor):
        images = tensor_images(source)
        return [SourceImage(image, None, f"image_{i}", channels) for i, image in enumerate(images)], source.ndim == 3
    if type(source).__module__.startswith("PIL."):
        return [SourceImage(as_hwc3(np.asarray(source.convert("RGB"))), None, "image_0", "RGB")], True
    if isinstance(source, Sequence):
        items: list[SourceImage] = []
        for i, element in enumerate(source):
            for item in collect_images(element, channels, read)[0]:
                items.append(item if item.path else item._replace(name=f"image_{i}"))
        return items, False
    raise TypeError(f"Cannot predict on a {type(source).__name__}: give an image path, a folder, a list of paths, "
                    "a numpy array (HWC, BGR unless channels='RGB'), a PIL image or a tensor (CHW/BCHW).")


def in_order(item: SourceImage, channels: str) -> np.ndarray:
    """``item.image`` in the channel order ``channels``."""
    return item.image if item.channels == channels else np.ascontiguousarray(item.image[:, :, ::-1])


def unique_file_names(names: Iterable[str], suffix: str) -> list[str]:
    """``name<suffix>`` for each name, a repeated name getting ``_1``, ``_2``... so no file overwrites another."""
    seen: dict[str, int] = {}
    file_names = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        file_names.append(f"{name}_{count}{suffix}" if count else f"{name}{suffix}")
    return file_names
