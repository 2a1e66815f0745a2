"""Segmentation visualisation callbacks: the grid's pixels against the palette blended by hand, the PNG files and
TensorBoard images (read back with TensorBoard's own reader), ``freq`` / ``batch_idx`` / rank 0, binary models,
and a real training run that names the callback in ``phase_callbacks``."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from super_recipes.callbacks.base import PhaseContext
from super_recipes.errors import RecipeError
from super_recipes.registry import CALLBACKS, build
from super_recipes.segmentation.visualization import (
    BINARY_PALETTE,
    CITYSCAPES_PALETTE,
    GAP,
    IGNORE_COLOR,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BinarySegmentationVisualizationCallback,
    SegmentationVisualizationCallback,
    segmentation_palette,
)

H, W = 24, 32


def _pictures(count: int, seed: int = 0) -> np.ndarray:
    """``[count, H, W, 3]`` uint8 RGB pictures."""
    return np.random.default_rng(seed).integers(0, 256, (count, H, W, 3), dtype=np.uint8)


def _normalise(rgb: np.ndarray) -> torch.Tensor:
    """What ``SegToTensor`` + ``SegNormalize`` (ImageNet) make of RGB pictures: ``[B, 3, H, W]``."""
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _logits_for(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits whose argmax is ``mask`` (``[B, H, W]``)."""
    return torch.nn.functional.one_hot(mask.clamp(max=num_classes - 1), num_classes).permute(0, 3, 1, 2).float() * 4


def _blend(rgb_pixel: np.ndarray, colour_rgb, alpha: float) -> np.ndarray:
    """The expected BGR pixel: ``(1 - alpha) * image + alpha * colour``."""
    return ((1 - alpha) * rgb_pixel.astype(float) + alpha * np.asarray(colour_rgb, float))[::-1]


def _panel(grid: np.ndarray, row: int, column: int) -> np.ndarray:
    y, x = row * (H + GAP), column * (W + GAP)
    return grid[y:y + H, x:x + W]


def _context(tmp_path: Path, inputs, targets, preds, epoch: int = 0, batch_idx: int = 0, tensorboard=None,
             rank_zero: bool = True) -> PhaseContext:
    return PhaseContext(experiment_dir=tmp_path, inputs=inputs, targets=targets, preds=preds, epoch=epoch,
                        batch_idx=batch_idx, tensorboard=tensorboard, is_rank_zero=rank_zero)


def _tensorboard_images(folder: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0})
    accumulator.Reload()
    return {tag: accumulator.Images(tag) for tag in accumulator.Tags()["images"]}


def test_grid_pixels_are_the_palette_blended_with_alpha(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    rgb = _pictures(2)
    targets = torch.zeros(2, H, W, dtype=torch.int64)
    targets[0, :, 16:] = 13  # car
    targets[0, :4, :4] = 255  # ignored
    targets[1, 10:, :] = 10  # sky
    predicted = targets.clone()
    predicted[predicted == 255] = 2
    predicted[1, :, :8] = 18  # bicycle, where the ground truth says otherwise
    writer = SummaryWriter(str(tmp_path))
    callback = SegmentationVisualizationCallback(alpha=0.4, class_names=[f"c{i}" for i in range(19)])
    callback.on_validation_batch_end(_context(tmp_path, _normalise(rgb), targets, _logits_for(predicted, 19),
                                              tensorboard=writer))
    writer.close()
    grid = cv2.imread(str(tmp_path / "visualizations" / "epoch_0_batch_0.png"))
    assert grid.shape[0] > 2 * H + GAP and grid.shape[1] == 3 * W + 2 * GAP  # two rows and a legend
    palette = segmentation_palette(19)
    assert np.array_equal(palette, CITYSCAPES_PALETTE) and tuple(palette[13]) == (0, 0, 142)
    for row in range(2):
        image_panel, gt_panel, pred_panel = (_panel(grid, row, k) for k in range(3))
        np.testing.assert_allclose(image_panel, rgb[row][:, :, ::-1], atol=1)  # normalisation undone
        for y, x in ((0, 0), (2, 3), (5, 20), (12, 2), (20, 30)):
            gt, pred = int(targets[row, y, x]), int(predicted[row, y, x])
            gt_colour = IGNORE_COLOR if gt == 255 else palette[gt]
            np.testing.assert_allclose(gt_panel[y, x], _blend(rgb[row, y, x], gt_colour, 0.4), atol=1.01)
            np.testing.assert_allclose(pred_panel[y, x], _blend(rgb[row, y, x], palette[pred], 0.4), atol=1.01)
    assert np.all(grid[:2 * H + GAP, W:W + GAP] == 255)  # the white gaps
    images = _tensorboard_images(tmp_path)
    assert list(images) == ["segmentation/batch_0"] and images["segmentation/batch_0"][0].step == 0
    event = images["segmentation/batch_0"][0]
    decoded = cv2.imdecode(np.frombuffer(event.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(decoded, grid)  # TensorBoard got the same picture, in RGB


def test_freq_batch_idx_last_image_and_rank_zero(tmp_path):
    rgb = _pictures(3, seed=1)
    targets = torch.randint(0, 5, (3, H, W))
    callback = build(CALLBACKS, {"SegmentationVisualizationCallback": {"freq": 2, "batch_idx": 1,
                                                                       "last_img_idx_in_batch": 0}})
    assert isinstance(callback, SegmentationVisualizationCallback)
    for epoch in range(5):
        for batch_idx in range(3):
            callback.on_validation_batch_end(_context(tmp_path, _normalise(rgb), targets, _logits_for(targets, 5),
                                                      epoch=epoch, batch_idx=batch_idx))
    callback.on_validation_batch_end(_context(tmp_path / "rank1", _normalise(rgb), targets,
                                              _logits_for(targets, 5), batch_idx=1, rank_zero=False))
    files = sorted(p.name for p in (tmp_path / "visualizations").iterdir())
    assert files == ["epoch_0_batch_1.png", "epoch_2_batch_1.png", "epoch_4_batch_1.png"]
    assert not (tmp_path / "rank1").exists()
    grid = cv2.imread(str(tmp_path / "visualizations" / "epoch_2_batch_1.png"))
    assert grid.shape[:2] == (H, 3 * W + 2 * GAP)  # one image (index 0), no legend without class names
    # Training-mode outputs (main, aux) and logits at another resolution draw the main logits at mask size.
    small = torch.nn.functional.interpolate(_logits_for(targets, 5), scale_factor=0.5, mode="nearest")
    tuple_grid = SegmentationVisualizationCallback().draw(_normalise(rgb), targets, (small, small[:, :2]))
    assert tuple_grid.shape[:2] == (3 * H + 2 * GAP, 3 * W + 2 * GAP)


def test_binary_callback_leaves_the_background_and_thresholds(tmp_path):
    rgb = _pictures(1, seed=2)
    targets = torch.zeros(1, H, W, dtype=torch.int64)
    targets[0, 8:16, 8:24] = 1
    targets[0, 0, :] = 255
    logits = torch.full((1, 1, H, W), -3.0)
    logits[0, 0, :, :10] = 0.6  # sigmoid 0.65: foreground at threshold 0.5, background at 0.7
    for threshold, folder in ((0.5, tmp_path / "a"), (0.7, tmp_path / "b")):
        callback = BinarySegmentationVisualizationCallback(threshold=threshold, class_names=["person"])
        callback.on_validation_batch_end(_context(folder, _normalise(rgb), targets, logits))
        grid = cv2.imread(str(folder / "visualizations" / "epoch_0_batch_0.png"))
        image_panel, gt_panel, pred_panel = (_panel(grid, 0, k) for k in range(3))
        for panel, mask in ((gt_panel, targets[0].numpy()), (pred_panel, None)):
            if mask is None:
                mask = np.zeros((H, W), np.int64)
                mask[:, :10] = 1 if threshold == 0.5 else 0
            untouched = mask == 0
            assert np.array_equal(panel[untouched], image_panel[untouched])
            for y, x in zip(*np.nonzero(mask == 1), strict=True):
                np.testing.assert_allclose(panel[y, x], _blend(rgb[0, y, x], BINARY_PALETTE[1], 0.5), atol=1.01)
        np.testing.assert_allclose(gt_panel[0, 5], _blend(rgb[0, 0, 5], IGNORE_COLOR, 0.5), atol=1.01)
    # With one output channel the multi-class callback thresholds too (a constant argmax would draw nothing).
    grid = SegmentationVisualizationCallback().draw(_normalise(rgb), targets, logits)
    assert not np.array_equal(_panel(grid, 0, 2)[:, :10], _panel(grid, 0, 0)[:, :10])


def test_bad_settings_are_refused():
    with pytest.raises(RecipeError, match="VALIDATION_BATCH_END"):
        SegmentationVisualizationCallback(phase="TRAIN_BATCH_END")
    SegmentationVisualizationCallback(phase={"value": "VALIDATION_BATCH_END"})  # SuperGradients' spelling
    with pytest.raises(RecipeError, match="palette"):
        SegmentationVisualizationCallback(palette="rainbow")
    with pytest.raises(RecipeError, match="freq"):
        SegmentationVisualizationCallback(freq=0)
    with pytest.raises(RecipeError, match="one output channel"):
        BinarySegmentationVisualizationCallback().draw(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4).long(),
                                                       torch.zeros(1, 3, 4, 4))
    custom = segmentation_palette(3, [[1, 2, 3], [4, 5, 6]])
    assert custom.tolist() == [[1, 2, 3], [4, 5, 6], [1, 2, 3]]
    many = segmentation_palette(40)
    assert len({tuple(c) for c in many.tolist()}) == 40


class _Pixels(torch.utils.data.Dataset):
    """Images whose class is readable from the red channel: a 1x1 convolution learns it within a few steps."""

    def __init__(self, count: int):
        rng = np.random.default_rng(0)
        self.masks = torch.from_numpy(rng.integers(0, 3, (count, H, W))).long()
        rgb = np.zeros((count, H, W, 3), np.uint8)
        rgb[..., 0] = (self.masks.numpy() * 100).astype(np.uint8)
        rgb[..., 1] = rng.integers(0, 256, (count, H, W))
        self.images = _normalise(rgb)
        self.masks[:, 0, 0] = 255

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, index: int):
        return self.images[index], self.masks[index]


def test_a_training_run_draws_every_freq_epochs(tmp_path):
    from super_recipes import Trainer

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 1)
    loader = torch.utils.data.DataLoader(_Pixels(8), batch_size=4)
    params = {"max_epochs": 3, "initial_lr": 0.5, "loss": torch.nn.CrossEntropyLoss(ignore_index=255),
              "optimizer": "SGD", "valid_metrics_list": [], "metric_to_watch": "CrossEntropyLoss",
              "greater_metric_to_watch_is_better": False, "silent_mode": True, "save_model": False,
              "phase_callbacks": [{"SegmentationVisualizationCallback": {"freq": 2, "batch_idx": 1,
                                                                         "class_names": ["a", "b", "c"]}}]}
    Trainer("seg_vis", tmp_path, device="cpu").train(model=model, training_params=params, train_loader=loader,
                                                     valid_loader=loader)
    folder = tmp_path / "seg_vis"
    assert sorted(p.name for p in (folder / "visualizations").iterdir()) == ["epoch_0_batch_1.png",
                                                                            "epoch_2_batch_1.png"]
    images = _tensorboard_images(folder)
    assert [event.step for event in images["segmentation/batch_1"]] == [0, 2]
    last = cv2.imread(str(folder / "visualizations" / "epoch_2_batch_1.png"))
    decoded = cv2.imdecode(np.frombuffer(images["segmentation/batch_1"][1].encoded_image_string, np.uint8),
                           cv2.IMREAD_COLOR)
    assert np.array_equal(decoded, last) and last.shape[0] == 4 * H + 3 * GAP + 18  # 4 rows and the legend


def test_defaults_undo_the_shipped_validation_pipeline(tmp_path):
    """A batch of the shapes validation set, as its loader makes it: the image panels are the pictures the
    dataset read and the ground-truth overlays their masks."""
    from super_recipes import dataloaders

    loader = dataloaders.get("shapes_segmentation_val", dataset_params={"num_samples": 2, "image_size": 32},
                             dataloader_params={"batch_size": 2})
    images, masks = next(iter(loader))
    names = loader.dataset.class_names
    grid = SegmentationVisualizationCallback(class_names=names).draw(images, masks, _logits_for(masks, 4))
    palette = segmentation_palette(4)
    for row in range(2):
        picture, mask = loader.dataset.load_sample(row)
        y0 = row * (32 + GAP)
        np.testing.assert_allclose(grid[y0:y0 + 32, :32], picture[:, :, ::-1], atol=1)
        expected = 0.5 * picture.astype(float) + 0.5 * palette[mask]
        np.testing.assert_allclose(grid[y0:y0 + 32, 32 + GAP:64 + GAP], expected[:, :, ::-1], atol=1.01)
