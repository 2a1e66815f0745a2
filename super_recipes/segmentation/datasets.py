"""The segmentation dataset base class and the generic image-folder + mask-folder format (recipe key
``dataset_params.*_dataset_params.dataset``).

Subclass :class:`SegmentationDataset` for your own data: implement :meth:`~SegmentationDataset._setup_samples`
(return the ``(image_path, mask_path)`` pairs), optionally :meth:`~SegmentationDataset._load_mask` (when mask files
need decoding beyond "pixel value = class index"), register the class with ``@register_dataset`` and name it in
``dataset: MyDataset``. Every file a sample names is checked when the dataset is built, so a missing one stops the
run before training with its path; a file that exists but cannot be decoded raises
:class:`SegmentationImageError` naming it when it is loaded.

The real on-disk formats (Cityscapes, Pascal VOC, COCO) live in :mod:`.dataset_formats`, the offline synthetic
set in :mod:`.synthetic`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from super_recipes.errors import RecipeError
from super_recipes.image_sources import IMAGE_SUFFIXES, image_files
from super_recipes.registry import TRANSFORMS, build_list, register_dataset, to_plain

DEFAULT_IGNORE_INDEX = 255
# Masks are drawn in the stored pixel orientation; applying an image's EXIF rotation would misalign the pair.
_IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


class SegmentationImageError(RecipeError, RuntimeError):
    """An image or mask file that is missing or cannot be decoded; the message names the file."""


def load_rgb_image(path: str | os.PathLike) -> np.ndarray:
    """HWC uint8 RGB image; :class:`SegmentationImageError` naming ``path`` when it is missing or undecodable."""
    image = cv2.imread(str(path), _IMREAD_FLAGS)
    if image is None:
        reason = "does not exist" if not os.path.exists(path) else "cannot be decoded (corrupt or not an image)"
        raise SegmentationImageError(f"Image {path} {reason}. Fix or remove it (and its mask).")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_index_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask file as an ``[H, W]`` array of its stored values: a palette PNG (PIL mode ``P``) gives its palette
    indices, not colours; 8- and 16-bit greyscale their values. A colour mask whose three channels agree is read
    as greyscale; any other colour mask is refused (class indices are needed, not colours)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.array(image)
    except FileNotFoundError:
        raise SegmentationImageError(f"Mask {path} does not exist.") from None
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise SegmentationImageError(f"Mask {path} cannot be decoded (corrupt or not an image): {err}") from None
    if array.ndim == 3:
        colour = array[:, :, :3]
        if not ((colour == colour[:, :, :1]).all()):
            raise SegmentationImageError(
                f"Mask {path} is a colour image: masks must store class indices (a palette PNG, or a greyscale "
                f"PNG whose pixel values are the classes).")
        array = colour[:, :, 0]
    return array


@register_dataset
class SegmentationDataset(torch.utils.data.Dataset):
    """Base class of segmentation datasets (``dataset: MyDataset`` for a registered subclass); an item is
    ``(image, mask)``: a float32 ``[3, H, W]`` RGB image and an int64 ``[H, W]`` mask of class indices.

    Used directly, it reads the given ``samples``; subclasses find their own by implementing
    :meth:`_setup_samples`::

        @register_dataset
        class MyScans(SegmentationDataset):
            class_names = ["background", "lesion"]

            def __init__(self, root: str = "./data/scans", **kwargs):
                self.root = Path(root)
                super().__init__(**kwargs)  # transforms, ignore_index, binary, max_num_samples

            def _setup_samples(self):
                return [(str(p), str(self.root / "labels" / p.name)) for p in sorted(self.root.glob("img/*.png"))]

    :param samples: ``(image_path, mask_path)`` pairs (only when not subclassing).
    :param class_names: the name of each class index (``class_names[k]`` for mask value ``k``).
    :param transforms: joint transform specs (``SegRandomCrop``, ``{SegRescale: {...}}``, ...) or callables
        ``t(image, mask) -> (image, mask)``, applied in order; see :mod:`.transforms`.
    :param ignore_index: mask value of pixels that count for nothing (borders, unlabelled, padding).
    :param binary: one foreground class: masks are 0/1 (+ ``ignore_index``), ``num_classes`` is 1 (one output
        channel) while ``class_names`` still names the values 0 and 1.
    :param max_num_samples: keep at most the first this many samples.
    """

    def __init__(self, samples: Sequence[Sequence[str]] | None = None, class_names: Sequence[str] | None = None,
                 transforms: Any = None, ignore_index: int = DEFAULT_IGNORE_INDEX, binary: bool = False,
                 max_num_samples: int | None = None):
        if samples is not None:
            self._given_samples = [tuple(pair) for pair in to_plain(samples)]
        self.class_names: list[str] = [str(n) for n in (to_plain(class_names) or getattr(self, "class_names", []))]
        self.ignore_index = int(ignore_index)
        self.binary = bool(binary)
        if self.binary and not self.class_names:
            self.class_names = ["background", "foreground"]
        self.transforms: list[Any] = build_list(TRANSFORMS, transforms, "transforms")
        for transform in self.transforms:
            if hasattr(transform, "adopt_ignore_index"):
                transform.adopt_ignore_index(self.ignore_index)
        samples = list(self._setup_samples())
        if max_num_samples is not None:
            samples = samples[:int(max_num_samples)]
        self.samples: list[Any] = samples
        self._check_files()

    # -- to implement -------------------------------------------------------------------------------------------
    def _setup_samples(self) -> Sequence[Any]:
        """The samples, in order: ``(image_path, mask_path)`` pairs for the default loading. A subclass that
        overrides :meth:`_load_mask` may put any mask source in the second place (e.g. an annotation id)."""
        if hasattr(self, "_given_samples"):
            return self._given_samples
        raise RecipeError(f"{type(self).__name__} finds no samples: pass samples=[(image_path, mask_path), ...] "
                          f"or implement _setup_samples() in the subclass.")

    def _load_mask(self, source: Any) -> np.ndarray:
        """The ``[H, W]`` integer mask of class indices for a sample's mask source (default: the file's stored
        values, see :func:`load_index_mask`)."""
        return load_index_mask(source)

    def _load_image(self, source: Any) -> np.ndarray:
        """The HWC uint8 RGB image of a sample's image source (default: the file, see :func:`load_rgb_image`)."""
        return load_rgb_image(source)

    def _mask_name(self, source: Any) -> str:
        """How error messages name a mask source (default: the path)."""
        return str(source)

    # -- public API ---------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Output channels a model needs: ``len(class_names)``, or 1 for a binary dataset."""
        return 1 if self.binary else len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def load_sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` before transforms: an HWC uint8 RGB image and an ``[H, W]`` integer mask."""
        image_source, mask_source = self.samples[index]
        image, mask = self._load_image(image_source), self._load_mask(mask_source)
        if image.shape[:2] != mask.shape[:2]:
            raise SegmentationImageError(f"Image {image_source} is {image.shape[1]}x{image.shape[0]} (WxH) but its "
                                         f"mask {self._mask_name(mask_source)} is {mask.shape[1]}x{mask.shape[0]}.")
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from super_recipes.segmentation.transforms import as_pair, finalize_pair

        image, mask = self.load_sample(index)
        self._check_values(mask, index)
        # Masks stay uint8 while they fit (cheaper to resize and crop); SegToTensor or the end makes them int64.
        fits = mask.dtype == np.uint8 and 0 <= self.ignore_index <= 255
        pair = as_pair(image, mask if fits else mask.astype(np.int64))
        for transform in self.transforms:
            pair = transform(*pair)
        return finalize_pair(*pair)

    # -- checks -------------------------------------------------------------------------------------------------
    def _check_values(self, mask: np.ndarray, index: int) -> None:
        limit = 2 if self.binary else len(self.class_names)
        if not limit or mask.size == 0:
            return
        if mask.max() < limit and mask.min() >= 0:
            return
        bad = np.unique(mask[((mask >= limit) | (mask < 0)) & (mask != self.ignore_index)])
        if bad.size:
            source = self._mask_name(self.samples[index][1])
            raise SegmentationImageError(
                f"Mask {source} holds value(s) {bad[:8].tolist()}, but {type(self).__name__} has {limit} classes "
                f"(values 0..{limit - 1}) and ignore_index {self.ignore_index}. Fix class_names or the mask.")

    def _check_files(self) -> None:
        missing = [str(path) for sample in self.samples if isinstance(sample, (tuple, list))
                   for path in sample if isinstance(path, (str, os.PathLike)) and not os.path.isfile(path)]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise SegmentationImageError(f"{type(self).__name__}: {len(missing)} file(s) are missing: "
                                         f"{', '.join(missing[:5])}{more}.")


@register_dataset
class ImageMaskFolderDataset(SegmentationDataset):
    """Your own data as two folders (``dataset: ImageMaskFolderDataset``): ``<data_dir>/<images_dir>/name.jpg``
    and ``<data_dir>/<masks_dir>/name<mask_suffix>.png``, paired by file stem.

    Multi-class: each mask pixel stores its class index (a greyscale or palette PNG), ``ignore_index`` for
    pixels to ignore; ``class_names`` lists the classes (index 0 first, usually ``background``).
    Binary (``binary: true``): the items hold 0/1 and ``num_classes`` is 1 (one output channel). With the default
    ``mask_threshold: 128`` a mask may be a 0/255 (or any greyscale) image: values >= 128 are foreground, the rest
    background; a mask holding only 0 and 1 is used as it is. Such files cannot mark ignored pixels: with
    ``mask_threshold: null`` masks are read as stored, 0, 1 and ``ignore_index`` (a 255 is then ignored, not
    foreground).

    :param data_dir: root folder; the two folders are relative to it.
    :param images_dir: folder of the images (``.jpg``, ``.png``, ``.bmp``, ``.tif``, ``.webp``).
    :param masks_dir: folder of the masks (PNG; any image format PIL reads losslessly).
    :param mask_suffix: text between the stem and the extension of mask names (``"_mask"`` pairs ``a.jpg`` with
        ``a_mask.png``).
    :param class_names: class names, required for multi-class masks.
    :param binary: one foreground class (see above).
    :param mask_threshold: binary masks: the grey level from which a pixel is foreground, or null (see above).

    An image without a mask stops construction with their names; a mask without an image is ignored.
    """

    def __init__(self, data_dir: str = ".", images_dir: str = "images", masks_dir: str = "masks",
                 class_names: Sequence[str] | None = None, binary: bool = False, mask_threshold: int | None = 128,
                 mask_suffix: str = "", transforms: Any = None, ignore_index: int = DEFAULT_IGNORE_INDEX,
                 max_num_samples: int | None = None):
        self.data_dir = Path(data_dir).expanduser()
        self.images_dir, self.masks_dir = self.data_dir / images_dir, self.data_dir / masks_dir
        self.mask_suffix = str(mask_suffix)
        self.mask_threshold = None if mask_threshold is None else int(mask_threshold)
        if not binary and not class_names:
            raise RecipeError("ImageMaskFolderDataset needs class_names for multi-class masks (the name of each mask "
                              "value, index 0 first), or binary: true for 0/1 or 0/255 masks.")
        super().__init__(class_names=class_names, transforms=transforms, ignore_index=ignore_index, binary=binary,
                         max_num_samples=max_num_samples)

    def _setup_samples(self) -> list[tuple[str, str]]:
        for what, folder in (("images_dir", self.images_dir), ("masks_dir", self.masks_dir)):
            if not folder.is_dir():
                raise SegmentationImageError(f"ImageMaskFolderDataset: {what} folder {folder} not found "
                                             f"(data_dir/{what}).")
        masks: dict[str, Path] = {}
        for path in image_files(self.masks_dir):
            stem = path.stem
            if self.mask_suffix and stem.endswith(self.mask_suffix):
                stem = stem[:-len(self.mask_suffix)]
            # Two masks for one stem (a.png and a.jpg): PNG, being lossless, wins.
            if stem not in masks or path.suffix.lower() == ".png":
                masks[stem] = path
        images = image_files(self.images_dir)
        if not images:
            raise SegmentationImageError(f"ImageMaskFolderDataset: no images ({', '.join(IMAGE_SUFFIXES)}) in "
                                         f"{self.images_dir}.")
        stems = [p.stem for p in images]
        twice = sorted({s for s in stems if stems.count(s) > 1}) if len(set(stems)) < len(stems) else []
        if twice:
            raise RecipeError(f"ImageMaskFolderDataset: several images in {self.images_dir} share the stem(s) "
                              f"{twice[:5]}, so their masks cannot be told apart.")
        unpaired = [p.name for p in images if p.stem not in masks]
        if unpaired:
            more = f" and {len(unpaired) - 5} more" if len(unpaired) > 5 else ""
            raise SegmentationImageError(
                f"ImageMaskFolderDataset: {len(unpaired)} image(s) in {self.images_dir} have no mask "
                f"<stem>{self.mask_suffix}.png in {self.masks_dir}: {', '.join(unpaired[:5])}{more}.")
        return [(str(p), str(masks[p.stem])) for p in images]

    def _load_mask(self, source: Any) -> np.ndarray:
        mask = load_index_mask(source)
        if not self.binary or self.mask_threshold is None or (mask.size and mask.max() <= 1):
            return mask
        return (mask >= self.mask_threshold).astype(np.uint8)
