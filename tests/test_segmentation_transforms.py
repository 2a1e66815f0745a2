"""Joint image/mask transforms: geometric ones keep image and mask aligned pixel-exactly, crops and pads fill
the mask with the ignore index, photometric ones leave the mask alone, recipe specs build seeded pipelines and
torchvision v2 transforms apply to both."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from super_recipes.errors import RecipeError
from super_recipes.segmentation.synthetic import ShapesSegmentationDataset
from super_recipes.segmentation.transforms import (
    SegColorJitter,
    SegNormalize,
    SegPadToSize,
    SegRandomCrop,
    SegRandomFlip,
    SegRandomRescale,
    SegRescale,
    SegToTensor,
)


def _coded_pair(h: int = 48, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A mask of 8x8 blocks of classes 0..20 and an image whose three channels are 10 x the class."""
    rng = np.random.default_rng(4)
    blocks = rng.integers(0, 21, (h // 8, w // 8)).astype(np.uint8)
    mask = np.kron(blocks, np.ones((8, 8), np.uint8))
    return np.repeat((mask * 10)[:, :, None], 3, axis=2), mask


def _interior(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 5x5 neighbourhood has one class: away from the edges bilinear resampling blurs."""
    return (cv2.dilate(mask, np.ones((5, 5))) == cv2.erode(mask, np.ones((5, 5)))) & (mask != 255)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_geometric_transforms_keep_image_and_mask_aligned(seed):
    torch.manual_seed(seed)
    image, mask = _coded_pair()
    pipeline = [SegRandomRescale((0.5, 2.0)), SegRandomCrop([40, 72]), SegRandomFlip(0.5)]
    pair = (image, mask)
    for transform in pipeline:
        pair = transform(*pair)
    out_image, out_mask = pair[0].numpy(), pair[1].numpy()
    assert out_image.shape == (3, 40, 72) and out_mask.shape == (40, 72)
    assert set(np.unique(out_mask)) <= set(np.unique(mask)) | {255}  # nearest: no new classes
    inside = _interior(out_mask)
    assert inside.sum() > 200
    assert np.abs(out_image[0][inside].astype(int) - 10 * out_mask[inside].astype(int)).max() <= 1
    padded = out_mask == 255  # the crop is wider than a downscaled image: padding is ignore, image 0 there
    assert (out_image[:, padded] == 0).all()


def test_crop_pads_with_ignore_index_and_flip_is_exact():
    image, mask = _coded_pair(16, 24)
    torch.manual_seed(0)
    out_image, out_mask = SegRandomCrop(32, image_pad_value=7)(image, mask)
    assert out_mask.shape == (32, 32) and (out_mask[16:] == 255).all() and (out_mask[:, 24:] == 255).all()
    assert np.array_equal(out_mask[:16, :24].numpy(), mask) and (out_image[:, 16:] == 7).all()
    flipped = SegRandomFlip(prob=1.0)(image, mask)
    assert np.array_equal(flipped[1].numpy(), mask[:, ::-1]) and np.array_equal(flipped[0][0].numpy(),
                                                                                image[:, ::-1, 0])
    dataset_pad = SegRandomCrop(32)
    dataset_pad.adopt_ignore_index(100)  # what a dataset with ignore_index 100 does
    assert (dataset_pad(image, mask)[1][16:] == 100).all()
    explicit = SegRandomCrop(32, mask_pad_value=0)
    explicit.adopt_ignore_index(100)
    assert (explicit(image, mask)[1][16:] == 0).all()


def test_colour_jitter_normalise_and_to_tensor():
    image, mask = _coded_pair()
    torch.manual_seed(0)
    jittered, same_mask = SegColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.1)(image, mask)
    assert np.array_equal(same_mask.numpy(), mask) and not np.array_equal(jittered.numpy(), image.transpose(2, 0, 1))
    tensor_image, tensor_mask = SegToTensor()(image, mask)
    assert tensor_image.dtype == torch.float32 and tensor_mask.dtype == torch.int64
    assert torch.allclose(tensor_image, torch.from_numpy(image).permute(2, 0, 1) / 255)
    normalised, _ = SegNormalize()(tensor_image, tensor_mask)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    assert torch.allclose(normalised, (tensor_image - mean) / torch.tensor([0.229, 0.224, 0.225])[:, None, None])


def test_rescale_modes_and_pad_to_size():
    image, mask = _coded_pair(48, 64)
    assert SegRescale(scale_factor=0.5)(image, mask)[1].shape == (24, 32)
    assert SegRescale(short_size=24)(image, mask)[0].shape == (3, 24, 32)
    assert SegRescale(long_size=128)(image, mask)[1].shape == (96, 128)
    assert SegRescale(size=[10, 20])(image, mask)[1].shape == (10, 20)
    assert np.array_equal(SegRescale(scale_factor=2)(image, mask)[1].numpy(), np.kron(mask, np.ones((2, 2))))
    padded_image, padded_mask = SegPadToSize([50, 70])(image, mask)
    assert padded_mask.shape == (50, 70) and (padded_mask[48:] == 255).all() and (padded_image[:, :, 64:] == 0).all()
    with pytest.raises(RecipeError, match="larger than size"):
        SegPadToSize(32)(image, mask)
    with pytest.raises(RecipeError, match="exactly one"):
        SegRescale(scale_factor=0.5, long_size=3)


def test_transforms_from_recipe_specs_are_seeded_and_accept_torchvision():
    from torchvision.transforms import v2

    specs = [{"SegRandomRescale": {"scales": [0.5, 1.5]}}, {"SegRandomCrop": {"crop_size": 48}},
             "SegRandomFlip", {"SegColorJitter": {"brightness": 0.3}}, "SegToTensor", "SegNormalize"]

    def items(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        dataset = ShapesSegmentationDataset(num_samples=4, transforms=specs)
        return [t for index in range(4) for t in dataset[index]]

    first = items(0)
    assert all(torch.equal(a, b) for a, b in zip(first, items(0), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, items(1), strict=True))
    plain = ShapesSegmentationDataset(num_samples=1)
    mirrored = ShapesSegmentationDataset(num_samples=1, transforms=[v2.RandomHorizontalFlip(p=1.0)])
    assert torch.equal(mirrored[0][1], plain[0][1].flip(-1)) and torch.equal(mirrored[0][0], plain[0][0].flip(-1))
    with pytest.raises(RecipeError, match="SegRandomFlip"):
        ShapesSegmentationDataset(transforms=["SegRandomFlp"])
