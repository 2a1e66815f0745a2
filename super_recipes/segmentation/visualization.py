"""Segmentation drawings: class-coloured mask overlays, and the callbacks that log validation batches.

Registered callback names (``training_hyperparams.phase_callbacks``): ``SegmentationVisualizationCallback``
(multi-class logits ``[B, C, H, W]``, argmax) and ``BinarySegmentationVisualizationCallback`` (one logit per
pixel, ``sigmoid > threshold`` is foreground). Every ``freq`` epochs each draws validation batch ``batch_idx``
as a grid, one row per image: the image | its ground truth over it | the prediction over it, and writes it
to TensorBoard (``context.tensorboard``, tag ``segmentation/batch_<i>``, ``global_step = epoch``) and to
``<experiment_dir>/visualizations/epoch_<N>_batch_<i>.png`` (``N`` 0-based, as everywhere in the logs).

Colours (:func:`segmentation_palette`, RGB): the official Cityscapes colours when there are 19 classes (the
Cityscapes training classes, in their train-id order), otherwise well-spread hues (class ``i`` gets hue
``i * 0.618...``, alternating brightness); a binary model draws its foreground in magenta and leaves the
background untouched. Pixels of ``ignore_index`` are drawn in :data:`IGNORE_COLOR` (black). Overlays blend
``alpha`` of the colour with ``1 - alpha`` of the image.

Drawings are HWC uint8 BGR arrays (the ``cv2`` convention used for images everywhere in this package); they
are flipped to RGB only for TensorBoard.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from super_recipes.callbacks.base import Callback, PhaseContext
from super_recipes.errors import RecipeError
from super_recipes.registry import register_callback

__all__ = ["BINARY_PALETTE", "CITYSCAPES_PALETTE", "IGNORE_COLOR", "IMAGENET_MEAN", "IMAGENET_STD",
           "BinarySegmentationVisualizationCallback", "SegmentationVisualizationCallback", "denormalize",
           "overlay_mask", "segmentation_grid", "segmentation_palette"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, for pixels scaled to [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)

# The 19 Cityscapes training classes (road, sidewalk, building, wall, fence, pole, traffic light, traffic sign,
# vegetation, terrain, sky, person, rider, car, truck, bus, train, motorcycle, bicycle): their official RGB colours.
CITYSCAPES_PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)], dtype=np.uint8)
# Binary masks: 0 background (never drawn), 1 foreground.
BINARY_PALETTE = np.array([(0, 0, 0), (255, 0, 255)], dtype=np.uint8)
IGNORE_COLOR = (0, 0, 0)  # RGB: "void", as Cityscapes draws it
GAP = 4  # white pixels between the panels and rows of a grid
LEGEND_ROW = 18  # pixels per line of the legend under a grid


def segmentation_palette(num_classes: int, palette: Any = None) -> np.ndarray:
    """``[num_classes, 3]`` uint8 RGB colours, one per class index.

    ``palette``: None (the default above: Cityscapes' colours for 19 classes, else spread hues), the name
    ``"cityscapes"``, or a list of ``[r, g, b]`` rows (repeated when shorter than ``num_classes``).
    """
    num_classes = max(int(num_classes), 1)
    if isinstance(palette, str):
        if palette.lower() != "cityscapes":
            raise RecipeError(f"Unknown palette '{palette}': use 'cityscapes', a list of [r, g, b], or null.")
        palette = CITYSCAPES_PALETTE
    if palette is not None:
        colors = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
        if not len(colors) or colors.min() < 0 or colors.max() > 255:
            raise RecipeError(f"A palette is a list of [r, g, b] rows of 0..255, got {palette!r}.")
        return colors[np.arange(num_classes) % len(colors)].astype(np.uint8)
    if num_classes == len(CITYSCAPES_PALETTE):
        return CITYSCAPES_PALETTE.copy()
    colors = []
    for i in range(num_classes):
        # Golden-ratio hue steps keep neighbouring indices far apart; alternating brightness separates classes
        # whose hues come back close after many steps.
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.8, 1.0 if i % 2 == 0 else 0.7)
        colors.append((round(r * 255), round(g * 255), round(b * 255)))
    return np.array(colors, dtype=np.uint8)


def denormalize(images: torch.Tensor, mean: Sequence[float] | None = IMAGENET_MEAN,
                std: Sequence[float] | None = IMAGENET_STD, pixel_scale: float = 255.0,
                channels: str = "RGB") -> list[np.ndarray]:
    """Undo ``SegNormalize``: a ``[B, 3, H, W]`` float batch -> HWC uint8 BGR images.

    ``pixels = (x * std + mean) * pixel_scale``: ``mean``/``std`` per channel of the batch (None: 0 and 1),
    ``pixel_scale`` 255 when the normalisation was applied to pixels in [0, 1]. ``channels`` is the order of
    the batch's channels (``RGB`` for the ImageNet statistics), flipped to BGR for drawing.
    """
    batch = images.detach().to("cpu", torch.float32)
    if batch.ndim == 3:
        batch = batch[None]
    count = batch.shape[1]
    if std is not None:
        batch = batch * torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1).expand(1, count, 1, 1)
    if mean is not None:
        batch = batch + torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1).expand(1, count, 1, 1)
    array = np.clip(np.rint(batch.numpy() * pixel_scale), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    if array.shape[3] == 1:
        array = array.repeat(3, axis=3)
    if channels.upper() == "RGB":
        array = array[..., ::-1]
    return [np.ascontiguousarray(image[:, :, :3]) for image in array]


def overlay_mask(image: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
                 ignore_index: int | None = 255, skip_classes: Sequence[int] = ()) -> np.ndarray:
    """A copy of ``image`` (HWC uint8 BGR) with every pixel of ``mask`` (HxW class indices) blended with its
    class colour (``palette``, RGB rows; indices past its end wrap around): ``(1 - alpha) * image + alpha *
    colour``. ``ignore_index`` pixels get :data:`IGNORE_COLOR`; ``skip_classes`` (a binary background) are
    left as they are."""
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"Mask of shape {mask.shape} does not match the image's {image.shape[:2]}.")
    colors = np.zeros(image.shape, dtype=np.float32)
    painted = np.zeros(mask.shape, dtype=bool)
    for value in np.unique(mask).tolist():
        if value in skip_classes:
            continue
        rgb = IGNORE_COLOR if value == ignore_index else palette[int(value) % len(palette)]
        where = mask == value
        colors[where] = rgb[::-1]  # BGR, like the image
        painted |= where
    out = image.copy()
    blended = (1.0 - alpha) * image[painted].astype(np.float32) + alpha * colors[painted]
    out[painted] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def segmentation_grid(images: Sequence[np.ndarray], targets: Sequence[np.ndarray], predictions: Sequence[np.ndarray],
                      palette: np.ndarray, alpha: float = 0.5, ignore_index: int | None = 255,
                      skip_classes: Sequence[int] = (), class_names: Sequence[str] | None = None) -> np.ndarray:
    """One BGR picture: a row per image, ``image | ground truth overlay | prediction overlay``, panels and rows
    ``GAP`` white pixels apart (panel ``k`` of row ``r`` starts at ``x = k * (W + GAP)``, ``y = r * (H + GAP)``).
    With ``class_names``, a legend of the classes present is added under the rows."""
    rows = []
    for image, target, prediction in zip(images, targets, predictions, strict=True):
        panels = [image, overlay_mask(image, target, palette, alpha, ignore_index, skip_classes),
                  overlay_mask(image, prediction, palette, alpha, ignore_index, skip_classes)]
        gap = np.full((image.shape[0], GAP, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1))
    width = max(row.shape[1] for row in rows)
    padded = []
    for i, row in enumerate(rows):
        # Images of one batch share a size; pad anyway so a caller's mixed sizes still make one picture.
        row = np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255)
        padded.append(row if i == len(rows) - 1 else np.pad(row, ((0, GAP), (0, 0), (0, 0)), constant_values=255))
    grid = np.concatenate(padded, axis=0)
    if class_names:
        present = sorted({int(v) for m in (*targets, *predictions) for v in np.unique(m).tolist()
                          if v != ignore_index and v not in skip_classes})
        grid = np.concatenate([grid, _legend(present, class_names, palette, width)], axis=0)
    return grid


def _legend(classes: list[int], class_names: Sequence[str], palette: np.ndarray, width: int) -> np.ndarray:
    """White strip(s) with a colour square and the name of each class, wrapped to ``width``."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    entries = []
    for value in classes:
        name = str(class_names[value]) if 0 <= value < len(class_names) else str(value)
        entries.append((palette[value % len(palette)], name, cv2.getTextSize(name, font, scale, 1)[0][0] + 24))
    lines: list[list[Any]] = [[]]
    used = 0
    for entry in entries:
        if lines[-1] and used + entry[2] > width:
            lines.append([])
            used = 0
        lines[-1].append(entry)
        used += entry[2]
    strip = np.full((LEGEND_ROW * len(lines), width, 3), 255, dtype=np.uint8)
    for row, line in enumerate(lines):
        x, y = 2, row * LEGEND_ROW
        for rgb, name, size in line:
            cv2.rectangle(strip, (x, y + 4), (x + 10, y + 14), tuple(int(c) for c in rgb[::-1]), cv2.FILLED)
            cv2.putText(strip, name, (x + 14, y + 13), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
            x += size
    return strip


def _main_logits(preds: Any) -> torch.Tensor:
    # Training-mode models return (main, aux...); the main logits come first.
    while isinstance(preds, (list, tuple)):
        preds = preds[0]
    if not isinstance(preds, torch.Tensor) or preds.ndim != 4:
        raise RecipeError("Segmentation visualisation expects logits [B, C, H, W] (or a tuple with them first), "
                          f"got {type(preds).__name__}{tuple(getattr(preds, 'shape', ()))}.")
    return preds.detach().float()


class _SegmentationVisualization(Callback):
    order = 230  # after the loggers (210, 220): context.tensorboard is set by then
    tag_prefix = "segmentation"

    def __init__(self, freq: int = 1, batch_idx: int = 0, last_img_idx_in_batch: int = -1,
                 class_names: Sequence[str] | None = None, palette: Any = None, alpha: float = 0.5,
                 mean: Sequence[float] | None = IMAGENET_MEAN, std: Sequence[float] | None = IMAGENET_STD,
                 pixel_scale: float = 255.0, channels: str = "RGB", ignore_index: int | None = 255,
                 folder: str = "visualizations", phase: Any = None):
        _check_phase(type(self).__name__, phase)
        if int(freq) < 1:
            raise RecipeError(f"{type(self).__name__}: freq must be >= 1 (epochs), got {freq}.")
        if not 0.0 <= float(alpha) <= 1.0:
            raise RecipeError(f"{type(self).__name__}: alpha must be within [0, 1], got {alpha}.")
        if str(channels).upper() not in ("RGB", "BGR"):
            raise RecipeError(f"{type(self).__name__}: channels must be RGB or BGR, got {channels!r}.")
        self.freq = int(freq)
        self.batch_idx = int(batch_idx)
        self.last_img_idx_in_batch = int(last_img_idx_in_batch)
        self.class_names = list(class_names) if class_names is not None else None
        self.palette = palette
        self.alpha = float(alpha)
        self.mean, self.std = mean, std
        self.pixel_scale = float(pixel_scale)
        self.channels = str(channels).upper()
        self.ignore_index = ignore_index
        self.folder = folder
        segmentation_palette(1, palette)  # a bad palette fails when the recipe is read, not at epoch 0

    def _masks(self, logits: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
        """Predicted class masks ``[B, H, W]``, the number of classes to colour, and whether it is binary."""
        raise NotImplementedError

    def draw(self, images: torch.Tensor, targets: torch.Tensor, preds: Any) -> np.ndarray:
        """The grid (BGR) of a batch: normalised images, masks ``[B, H, W]`` and the model output."""
        logits = _main_logits(preds)
        if logits.shape[-2:] != targets.shape[-2:]:
            logits = F.interpolate(logits, size=tuple(targets.shape[-2:]), mode="bilinear", align_corners=False)
        masks, num_classes, binary = self._masks(logits)
        count = len(images) if self.last_img_idx_in_batch < 0 else min(self.last_img_idx_in_batch + 1, len(images))
        names = self.class_names
        if binary and names is not None and len(names) == 1:
            names = ["background", *names]  # the one name of a binary model is its foreground's
        palette = segmentation_palette(max(num_classes, len(names or ())),
                                       BINARY_PALETTE if binary and self.palette is None else self.palette)
        pictures = denormalize(images[:count], self.mean, self.std, self.pixel_scale, self.channels)
        gt = [m.numpy() for m in targets[:count].detach().to("cpu", torch.int64)]
        pred = [m.numpy() for m in masks[:count].to("cpu", torch.int64)]
        # A binary background is the absence of a class: drawing it would tint the whole image.
        return segmentation_grid(pictures, gt, pred, palette, self.alpha, self.ignore_index, (0,) if binary else (),
                                 names)

    def on_validation_batch_end(self, context: PhaseContext) -> None:
        if not context.is_rank_zero or context.epoch % self.freq or context.batch_idx != self.batch_idx:
            return
        grid = self.draw(context.inputs, context.targets, context.preds)
        if context.experiment_dir is not None:
            folder = Path(context.experiment_dir) / self.folder
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"epoch_{context.epoch}_batch_{self.batch_idx}.png"
            if not cv2.imwrite(str(path), grid):
                raise OSError(f"Could not write {path}")
        if context.tensorboard is not None:
            context.tensorboard.add_image(f"{self.tag_prefix}/batch_{self.batch_idx}", grid[:, :, ::-1].copy(),
                                          global_step=context.epoch, dataformats="HWC")


def _check_phase(owner: str, phase: Any) -> None:
    # SuperGradients recipes name the phase; these callbacks only ever draw at the end of a validation batch.
    if phase is None:
        return
    name = getattr(phase, "value", None) or (phase.get("value") if isinstance(phase, dict) else phase)
    if str(name).upper() != "VALIDATION_BATCH_END":
        raise RecipeError(f"{owner} draws at VALIDATION_BATCH_END only; got phase {name!r}.")


@register_callback
class SegmentationVisualizationCallback(_SegmentationVisualization):
    """Every ``freq`` epochs, draws validation batch ``batch_idx``: image | ground truth | argmax prediction.

    Serves ``phase_callbacks: [{SegmentationVisualizationCallback: {freq, batch_idx, last_img_idx_in_batch,
    class_names, palette, alpha, mean, std, pixel_scale, channels, ignore_index, folder}}]``.

    ``last_img_idx_in_batch``: index of the last image drawn (-1: all). ``class_names`` adds a legend.
    ``palette``: see :func:`segmentation_palette`. ``mean``/``std``/``pixel_scale``/``channels`` undo the
    dataset's normalisation (defaults: ``SegNormalize``'s ImageNet statistics on RGB pixels in [0, 1]; give
    ``mean: null, std: null`` for un-normalised batches). ``phase`` is accepted for SuperGradients recipes
    (``VALIDATION_BATCH_END`` only). Output: ``<experiment_dir>/<folder>/epoch_<N>_batch_<i>.png`` and the
    TensorBoard image ``segmentation/batch_<i>``.
    """

    def _masks(self, logits: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
        if logits.shape[1] == 1:  # one channel is a binary model: sigmoid > 0.5, not a constant argmax
            return (torch.sigmoid(logits[:, 0]) > 0.5).long(), 2, True
        return logits.argmax(dim=1), logits.shape[1], False


@register_callback
class BinarySegmentationVisualizationCallback(_SegmentationVisualization):
    """As :class:`SegmentationVisualizationCallback` for binary models (one logit per pixel): foreground is
    ``sigmoid(logit) > threshold``; the background (class 0) is left undrawn in both overlays.

    Serves ``phase_callbacks: [{BinarySegmentationVisualizationCallback: {freq, batch_idx, threshold, ...}}]``
    with the same keys as :class:`SegmentationVisualizationCallback` plus ``threshold`` (default 0.5). The
    default palette draws the foreground in magenta (:data:`BINARY_PALETTE`). TensorBoard tag:
    ``binary_segmentation/batch_<i>``.
    """

    tag_prefix = "binary_segmentation"

    def __init__(self, freq: int = 1, batch_idx: int = 0, last_img_idx_in_batch: int = -1,
                 class_names: Sequence[str] | None = None, palette: Any = None, alpha: float = 0.5,
                 mean: Sequence[float] | None = IMAGENET_MEAN, std: Sequence[float] | None = IMAGENET_STD,
                 pixel_scale: float = 255.0, channels: str = "RGB", ignore_index: int | None = 255,
                 folder: str = "visualizations", phase: Any = None, threshold: float = 0.5):
        super().__init__(freq, batch_idx, last_img_idx_in_batch, class_names, palette, alpha, mean, std,
                         pixel_scale, channels, ignore_index, folder, phase)
        if not 0.0 < float(threshold) < 1.0:
            raise RecipeError(f"BinarySegmentationVisualizationCallback: threshold must be within (0, 1), "
                              f"got {threshold}.")
        self.threshold = float(threshold)

    def _masks(self, logits: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
        if logits.shape[1] != 1:
            raise RecipeError("BinarySegmentationVisualizationCallback expects one output channel (num_classes: 1), "
                              f"got {logits.shape[1]}; use SegmentationVisualizationCallback.")
        return (torch.sigmoid(logits[:, 0]) > self.threshold).long(), 2, True
