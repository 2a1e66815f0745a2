"""Per-image time of the ImageNet training pipeline with each ``ImageFolderDataset`` decoder (``pil``, the
default, against ``torchvision``).

    python benchmarks/jpeg_decoding.py [--images 64] [--repeats 7]

Writes ``--images`` JPEGs of ImageNet's typical size (500x375, quality 90, smooth colour content that compresses
like a photograph) into a temporary image folder, then reads every image through the ``imagenet_*`` recipes'
training transforms (RandomResizedCrop 224, horizontal flip, ToFloatTensor, Normalize) in one process, one
thread (as one DataLoader worker does). The two decoders alternate, after a warm-up pass each; prints the median
milliseconds per image of each and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from super_recipes.data.torchvision_datasets import ImageFolderDataset

TRANSFORMS = [{"RandomResizedCrop": {"size": 224}}, "RandomHorizontalFlip", "ToFloatTensor",
              {"Normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}]


def write_images(root: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    (root / "class_a").mkdir(parents=True)
    ys, xs = np.mgrid[0:375, 0:500].astype(np.float32)
    for index in range(count):
        phase = rng.uniform(0, 6.28, 3)
        image = np.stack([127 + 120 * np.sin(xs / (30 + 10 * c) + ys / 45 + phase[c]) for c in range(3)], -1)
        image += rng.normal(0, 6, image.shape)  # sensor-like noise, so the files are not trivially compressible
        cv2.imwrite(str(root / "class_a" / f"{index}.jpg"), np.clip(image, 0, 255).astype(np.uint8),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])


def ms_per_image(dataset: ImageFolderDataset) -> float:
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    return (time.perf_counter() - start) * 1000 / len(dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        write_images(Path(folder), args.images)
        datasets = {decoder: ImageFolderDataset(folder, TRANSFORMS, decoder=decoder)
                    for decoder in ("pil", "torchvision")}
        times: dict[str, list[float]] = {decoder: [] for decoder in datasets}
        for dataset in datasets.values():
            ms_per_image(dataset)  # warm-up: file cache, first-call costs
        for _ in range(args.repeats):
            for decoder, dataset in datasets.items():
                times[decoder].append(ms_per_image(dataset))
    medians = {decoder: statistics.median(values) for decoder, values in times.items()}
    for decoder, median in medians.items():
        print(f"decoder={decoder:<12} {median:6.2f} ms/image (median of {args.repeats})")
    print(f"torchvision / pil: {medians['torchvision'] / medians['pil']:.2f}")


if __name__ == "__main__":
    main()
