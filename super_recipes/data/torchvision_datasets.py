"""Standard on-disk datasets: ``Cifar10``, ``Cifar100`` (the python pickle releases) and ``ImageFolderDataset``.

The CIFAR readers load the files torchvision downloads (same folder layout, so an existing torchvision download
is reused) but skip its MD5 pass over 170 MB on every start; torchvision is only imported to download. Missing
data is reported as a :class:`~super_recipes.errors.RecipeError` that says which file was expected where.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from super_recipes.data.transforms import build_transforms
from super_recipes.errors import RecipeError, did_you_mean
from super_recipes.registry import register_dataset


class _CifarPickles(torch.utils.data.Dataset):
    """Reader for the python version of CIFAR: ``<root>/<folder>/`` holding pickled dicts of uint8 rows."""

    title = ""
    folder = ""
    train_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    meta_file = ""
    labels_key = ""
    names_key = ""
    torchvision_class = ""

    def __init__(self, root: str = "", train: bool = True, download: bool = False, transforms: Any = None):
        self.root = Path(root).expanduser()
        self.train = bool(train)
        self.transforms: Callable = build_transforms(transforms)
        files = [*(self.train_files if self.train else self.test_files), self.meta_file]
        if self._missing(files) and download:
            self._download()
        missing = self._missing(files)
        if missing:
            raise RecipeError(self._not_found_message(missing, download))

        arrays, labels = [], []
        for name in files[:-1]:
            entry = _unpickle(self.root / self.folder / name)
            arrays.append(np.asarray(entry["data"], dtype=np.uint8))
            labels.extend(entry[self.labels_key])
        self.data = torch.from_numpy(np.concatenate(arrays).reshape(-1, 3, 32, 32))
        self.targets: list[int] = [int(label) for label in labels]
        meta = _unpickle(self.root / self.folder / self.meta_file)
        self.class_names: tuple[str, ...] = tuple(meta[self.names_key])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transforms(self.data[index]), self.targets[index]

    def _missing(self, files: list[str]) -> list[Path]:
        return [self.root / self.folder / name for name in files if not (self.root / self.folder / name).is_file()]

    def _download(self) -> None:
        import torchvision.datasets

        dataset_class = getattr(torchvision.datasets, self.torchvision_class)
        try:
            dataset_class(str(self.root), train=self.train, download=True)
        except Exception as err:  # no network, proxy, disk full...: all end in the same advice
            raise RecipeError(
                f"Downloading {self.title} into {self.root} failed: {type(err).__name__}: {err}\n"
                f"Download {dataset_class.url} yourself and extract it into {self.root} "
                f"(giving {self.root / self.folder}/), or point root: at an existing copy."
            ) from None

    def _not_found_message(self, missing: list[Path], download: bool) -> str:
        lines = [f"{self.title} not found: expected {missing[0]}"]
        if len(missing) > 1:
            lines.append(f"  (also missing next to it: {', '.join(path.name for path in missing[1:])})")
        lines.append(f"  root: {self.root} (resolved: {self.root.resolve()})")
        if not download:
            lines.append("Set download: true (needs network) or place the extracted archive there.")
        return "\n".join(lines)


def _unpickle(path: Path) -> dict[str, Any]:
    with open(path, "rb") as file:
        # The archives were pickled by Python 2; latin1 maps their byte strings 1:1.
        return pickle.load(file, encoding="latin1")


@register_dataset
class Cifar10(_CifarPickles):
    """CIFAR-10 (recipe ``dataset: Cifar10``; params ``root``, ``train``, ``download``, ``transforms``).

    Expects ``<root>/cifar-10-batches-py/`` (data_batch_1..5, test_batch, batches.meta). Images reach the
    transforms as uint8 CHW tensors; the result is always a float32 CHW tensor.
    """

    title = "CIFAR-10"
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    meta_file = "batches.meta"
    labels_key = "labels"
    names_key = "label_names"
    torchvision_class = "CIFAR10"

    def __init__(
        self, root: str = "./data/cifar10", train: bool = True, download: bool = False, transforms: Any = None
    ):
        super().__init__(root, train, download, transforms)


@register_dataset
class Cifar100(_CifarPickles):
    """CIFAR-100 with its 100 fine labels (recipe ``dataset: Cifar100``; same params as ``Cifar10``).

    Expects ``<root>/cifar-100-python/`` (train, test, meta).
    """

    title = "CIFAR-100"
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"
    labels_key = "fine_labels"
    names_key = "fine_label_names"
    torchvision_class = "CIFAR100"

    def __init__(
        self, root: str = "./data/cifar100", train: bool = True, download: bool = False, transforms: Any = None
    ):
        super().__init__(root, train, download, transforms)


@register_dataset
class ImageFolderDataset(torch.utils.data.Dataset):
    """Images sorted into one sub-folder per class, e.g. ImageNet (recipe ``dataset: ImageFolderDataset``).

    ``root/<class_name>/<image>.jpg``; classes are the sorted sub-folder names. The result is always a float32
    CHW tensor. ``decoder`` (recipe key ``dataset_params.*_dataset_params.decoder``) picks how files are read:

    * ``pil`` (default): RGB PIL images reach the transforms, as with torchvision's ``ImageFolder``;
    * ``torchvision``: ``torchvision.io.decode_image`` (libjpeg-turbo / libpng) hands the transforms a uint8 CHW
      tensor. No PIL object and no HWC->CHW copy: the ImageNet training pipeline takes 1.4 instead of 2.3 ms
      per 500x375 JPEG on one CPU thread (``benchmarks/jpeg_decoding.py``). The v2 transforms (crops, flips,
      RandAugment, AutoAugment, RandomErasing) take both forms; a transform of yours that needs PIL wants ``pil``.
    """

    def __init__(self, root: str, transforms: Any = None, decoder: str = "pil"):
        if decoder not in IMAGE_DECODERS:
            raise RecipeError(f"ImageFolderDataset: decoder={decoder!r} is not one of {', '.join(IMAGE_DECODERS)}. "
                              f"{did_you_mean(str(decoder), IMAGE_DECODERS)}".rstrip())
        self.decoder = decoder
        self.root = Path(root).expanduser()
        self.transforms: Callable = build_transforms(transforms)
        if not self.root.is_dir():
            raise RecipeError(
                f"Image folder not found: expected a directory {self.root} (resolved: {self.root.resolve()}) "
                f"holding one sub-folder of images per class (root/<class_name>/<image>.jpg)."
            )
        from torchvision.datasets import ImageFolder

        try:
            self._folder = ImageFolder(str(self.root))
        except FileNotFoundError as err:  # no class folders, or class folders without images
            raise RecipeError(
                f"No images found in {self.root}: {err}\nExpected root/<class_name>/<image>.jpg "
                f"(extensions: .jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp)."
            ) from None
        self.class_names: tuple[str, ...] = tuple(self._folder.classes)
        self.samples: list[tuple[str, int]] = self._folder.samples
        self.targets: list[int] = self._folder.targets

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        try:
            image = self._folder.loader(path) if self.decoder == "pil" else _decode_with_torchvision(path)
        # PIL raises OSError/ValueError/SyntaxError for truncated or non-image files, torchvision RuntimeError.
        except (OSError, ValueError, SyntaxError, RuntimeError) as err:
            raise RecipeError(f"Cannot read image {path} (sample {index} of {self.root}): "
                              f"{type(err).__name__}: {err}. Replace or remove the file.") from err
        return self.transforms(image), label


IMAGE_DECODERS = ("pil", "torchvision")


def _decode_with_torchvision(path: str) -> torch.Tensor:
    import warnings

    from torchvision.io import ImageReadMode, decode_image, read_file

    # torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec, a further dependency with
    # FFmpeg libraries; until torchvision removes them they are the fast decoder every install already has.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # RGB mode also converts grayscale, CMYK JPEGs and palette PNGs, as PIL's convert("RGB") does.
        return decode_image(read_file(path), mode=ImageReadMode.RGB)
