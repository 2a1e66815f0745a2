"""Data side: the shapes dataset, CIFAR/ImageFolder readers on real on-disk formats, and ``dataloaders.get``."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from super_recipes.data import dataloaders
from super_recipes.data.shapes import ShapesClassificationDataset
from super_recipes.data.torchvision_datasets import Cifar10, Cifar100, ImageFolderDataset
from super_recipes.errors import RecipeError
from super_recipes.registry import register_dataset


def test_shapes_same_sample_across_calls_and_instances():
    first = ShapesClassificationDataset(split="train", num_samples=50, seed=3)
    second = ShapesClassificationDataset(split="train", num_samples=50, seed=3)
    for index in (0, 7, 49):
        image, label = first[index]
        assert torch.equal(image, first[index][0])
        assert torch.equal(image, second[index][0]) and label == second[index][1]
    assert not torch.equal(first[7][0], ShapesClassificationDataset(split="val", num_samples=50, seed=3)[7][0])
    assert not torch.equal(first[7][0], ShapesClassificationDataset(num_samples=50, seed=4)[7][0])


def test_shapes_labels_are_balanced_and_images_well_formed():
    dataset = ShapesClassificationDataset(split="val", num_samples=60, image_size=24)
    samples = [dataset[i] for i in range(len(dataset))]
    counts = Counter(label for _, label in samples)
    assert len(dataset.class_names) == dataset.num_classes >= 6
    assert sorted(counts) == list(range(dataset.num_classes))
    assert set(counts.values()) == {60 // dataset.num_classes}
    image = samples[0][0]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.std() > 0.05
    assert dataset[-1][1] == samples[-1][1]
    with pytest.raises(IndexError):
        dataset[60]
    with pytest.raises(RecipeError, match="Did you mean: train"):
        ShapesClassificationDataset(split="trian")


def test_shapes_dataloader_uses_recipe_defaults_and_caller_overrides():
    loader = dataloaders.get(
        "shapes_train",
        dataset_params=OmegaConf.create({"num_samples": 50, "image_size": 16}),
        dataloader_params={"batch_size": 16},
    )
    assert loader.batch_size == 16 and loader.drop_last  # drop_last comes from shapes_dataset_params.yaml
    assert len(loader) == 3
    images, labels = next(iter(loader))
    assert images.shape == (16, 3, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.int64

    val = dataloaders.get("shapes_val", dataset_params={"num_samples": 10}, dataloader_params={"batch_size": 4})
    assert val.dataset.split == "val" and len(val) == 3  # val keeps the last partial batch


def _write_pickle(path: Path, content: dict) -> None:
    with open(path, "wb") as file:
        pickle.dump(content, file, protocol=2)


def _rows(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.integers(0, 256, (count, 3072), dtype=np.uint8)


def test_cifar10_reads_the_python_pickle_release(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    train_rows = []
    for i in range(1, 6):
        rows = _rows(rng, 3)
        train_rows.append(rows)
        _write_pickle(folder / f"data_batch_{i}", {
            "batch_label": f"training batch {i} of 5", "labels": [i % 10, (i + 1) % 10, (i + 2) % 10],
            "data": rows, "filenames": [f"img_{i}_{j}.png" for j in range(3)],
        })
    _write_pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": [4, 2],
                                          "data": _rows(rng, 2), "filenames": ["a.png", "b.png"]})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _write_pickle(folder / "batches.meta", {"num_cases_per_batch": 10000, "label_names": names, "num_vis": 3072})

    plain = Cifar10(root=str(tmp_path), train=True, transforms=["ToFloatTensor"])
    assert len(plain) == 15 and plain.class_names == tuple(names)
    image, label = plain[0]
    # Each row holds the red plane, then green, then blue, each 32x32 row-major.
    assert torch.equal(image, torch.from_numpy(train_rows[0][0].reshape(3, 32, 32)).float() / 255)
    assert label == 1

    train = dataloaders.get("cifar10_train", dataset_params={"root": str(tmp_path)},
                            dataloader_params={"batch_size": 5, "num_workers": 0})
    images, labels = next(iter(train))
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() < 0  # normalized by the default transforms
    val = dataloaders.get("cifar10_val", dataset_params={"root": str(tmp_path)},
                          dataloader_params={"num_workers": 0})
    assert len(val.dataset) == 2 and next(iter(val))[1].tolist() == [4, 2]


def test_cifar100_reads_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for split, count in (("train", 6), ("test", 4)):
        _write_pickle(folder / split, {
            "filenames": [f"{split}_{j}.png" for j in range(count)], "batch_label": f"{split} batch",
            "fine_labels": [j * 17 % 100 for j in range(count)], "coarse_labels": [j % 20 for j in range(count)],
            "data": _rows(rng, count),
        })
    _write_pickle(folder / "meta", {"fine_label_names": [f"fine_{i}" for i in range(100)],
                                    "coarse_label_names": [f"coarse_{i}" for i in range(20)]})

    dataset = Cifar100(root=str(tmp_path), train=False)
    assert len(dataset) == 4 and dataset.num_classes == 100
    assert [dataset[j][1] for j in range(4)] == [0, 17, 34, 51]
    loader = dataloaders.get("cifar100_train", dataset_params={"root": str(tmp_path)},
                             dataloader_params={"batch_size": 3, "num_workers": 0})
    images, labels = next(iter(loader))
    assert images.shape == (3, 3, 32, 32) and all(0 <= int(label) < 100 for label in labels)


def test_missing_cifar_folder_names_the_expected_path(tmp_path):
    with pytest.raises(RecipeError) as error:
        dataloaders.get("cifar10_train", dataset_params={"root": str(tmp_path / "nowhere")})
    message = str(error.value)
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py" / "data_batch_1") in message
    assert "download: true" in message and "dataset_params.train_dataset_params" in message


def test_image_folder_reads_jpeg_files(tmp_path):
    rng = np.random.default_rng(2)
    for class_name in ("cat", "dog"):
        (tmp_path / class_name).mkdir()
        for j in range(3):
            image = rng.integers(0, 256, (30 + j, 40, 3), dtype=np.uint8)
            assert cv2.imwrite(str(tmp_path / class_name / f"{j}.jpg"), image)

    dataset = ImageFolderDataset(root=str(tmp_path))
    assert len(dataset) == 6 and dataset.class_names == ("cat", "dog")
    image, label = dataset[4]
    assert image.shape == (3, 31, 40) and image.dtype == torch.float32 and label == 1

    loader = dataloaders.get("imagenet_val", dataset_params={"root": str(tmp_path)},
                             dataloader_params={"batch_size": 4, "num_workers": 0})
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 224, 224) and labels.tolist() == [0, 0, 0, 1]

    with pytest.raises(RecipeError, match="Image folder not found"):
        ImageFolderDataset(root=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecipeError, match="No images found"):
        ImageFolderDataset(root=str(tmp_path / "empty"))


def test_image_folder_torchvision_decoder_matches_pil(tmp_path):
    rng = np.random.default_rng(5)
    (tmp_path / "a").mkdir()
    # A smooth image, so that JPEG decoders differing only in IDCT rounding agree to a grey level or two.
    ramp = np.linspace(0, 255, 48 * 64, dtype=np.float64).reshape(48, 64)
    color = np.stack([ramp, ramp.T[:48, :48].repeat(2, axis=1)[:, :64], 255 - ramp], axis=-1).astype(np.uint8)
    assert cv2.imwrite(str(tmp_path / "a" / "color.jpg"), color)
    assert cv2.imwrite(str(tmp_path / "a" / "gray.jpg"), color[..., 0])  # one channel on disk
    (tmp_path / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert cv2.imwrite(str(tmp_path / "a" / "noise.png"), rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))

    pil = ImageFolderDataset(str(tmp_path), transforms=["ToFloatTensor"])
    fast = ImageFolderDataset(str(tmp_path), transforms=["ToFloatTensor"], decoder="torchvision")
    for index, (path, _) in enumerate(pil.samples):
        if path.endswith("broken.jpg"):
            for dataset in (pil, fast):
                with pytest.raises(RecipeError, match="Cannot read image .*broken.jpg"):
                    dataset[index]
            continue
        expected, actual = pil[index][0], fast[index][0]
        assert actual.shape == expected.shape and actual.shape[0] == 3
        assert (actual - expected).abs().max() <= 3 / 255
    noise_index = next(i for i, (p, _) in enumerate(pil.samples) if p.endswith(".png"))
    assert torch.equal(pil[noise_index][0], fast[noise_index][0])  # PNG is lossless: bit-exact
    with pytest.raises(RecipeError, match="decoder='turbo' is not one of pil, torchvision"):
        ImageFolderDataset(str(tmp_path), decoder="turbo")


def test_unknown_dataloader_name_lists_close_names():
    with pytest.raises(RecipeError, match="Did you mean: cifar10_train") as error:
        dataloaders.get("cifar10_trian")
    assert "shapes_train" in str(error.value)


def test_unknown_dataloader_and_dataset_params_are_named():
    with pytest.raises(RecipeError, match="batchsize.*train_dataloader_params.*Did you mean: batch_size"):
        dataloaders.get("shapes_train", dataloader_params={"batchsize": 8})
    with pytest.raises(RecipeError, match="val_dataset_params.*Did you mean: num_samples"):
        dataloaders.get("shapes_val", dataset_params={"num_sample": 8})
    with pytest.raises(RecipeError, match="Unknown transform 'RandomCorp'.*\n.*RandomCrop"):
        dataloaders.get("shapes_train", dataset_params={"transforms": ["RandomCorp"]})
    with pytest.raises(RecipeError, match="does not say which dataset"):
        dataloaders.get(dataset_params={"num_samples": 8})


@register_dataset
class SquaresOfIndexDataset(torch.utils.data.Dataset):
    """A user dataset registered from user code, as a recipe's ``imports:`` would do."""

    def __init__(self, length: int, transforms: object = None):
        self.length = length
        self.transforms = transforms

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.full((1, 2, 2), float(index * index)), index % 2


def test_user_registered_dataset_via_dataset_key():
    loader = dataloaders.get(dataset_params={"dataset": "SquaresOfIndexDataset", "length": 5},
                             dataloader_params={"batch_size": 5, "collate_fn": "DefaultCollateFN"})
    images, labels = next(iter(loader))
    assert images[:, 0, 0, 0].tolist() == [0, 1, 4, 9, 16] and labels.tolist() == [0, 1, 0, 1, 0]

    # Switching a named loader's dataset keeps the defaults the new class accepts (transforms, loader params).
    named = dataloaders.get("shapes_train", dataset_params={"dataset": "SquaresOfIndexDataset", "length": 256})
    assert isinstance(named.dataset, SquaresOfIndexDataset) and named.dataset.transforms == ["ToFloatTensor"]
    assert named.batch_size == 128 and named.drop_last


def test_build_transforms_converts_to_float_and_accepts_built_objects():
    from super_recipes.data.transforms import ToFloatTensor, build_transforms

    identity = build_transforms(None)
    image = identity(np.full((5, 6, 3), 255, dtype=np.uint8))
    assert image.shape == (3, 5, 6) and image.dtype == torch.float32 and float(image.max()) == 1.0
    pipeline = build_transforms([ToFloatTensor(), {"Normalize": {"mean": [0.5] * 3, "std": [0.5] * 3}}])
    assert torch.allclose(pipeline(torch.zeros(3, 2, 2, dtype=torch.uint8)), torch.full((3, 2, 2), -1.0))
