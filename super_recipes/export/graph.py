"""The modules an exported ONNX graph is made of, around the model: preprocessing (uint8 image in) and the
detection post-processing (score threshold, top-k, class-wise NMS, a cap per image) in the two output layouts.

Everything here is written so that the TorchScript-based ONNX exporter records it with static shapes except the
batch (and the number of detections): shape arithmetic happens in Python at export time, from the image size
the graph is exported for. The post-processing replays :func:`super_recipes.detection.postprocessing.select_detections`
over a whole batch at once, so an exported graph returns the detections ``predict()`` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from super_recipes.detection.postprocessing import NMS_Type, SelectionSettings, grouped_nms
from super_recipes.errors import RecipeError

OUTPUT_LAYOUTS = ("batched", "flat")


@dataclass(frozen=True)
class Preprocessing:
    """What the graph does to a uint8 ``[B, 3, H, W]`` image before the model (all static for one ``H, W``).

    ``resize`` (h, w) bilinear (no antialiasing: ONNX Resize before opset 18 has none); ``letterbox``: resize by
    ``letterbox_scale`` and paste top-left on a ``model_hw`` canvas of ``pad_value`` (the detection datasets'
    ``DetectionPaddedRescale``); ``crop`` (h, w) centred; ``divide`` (255 for pixels in [0, 1], None to keep
    0..255); ``mean`` / ``std`` per channel after the division.
    """

    image_hw: tuple[int, int]
    model_hw: tuple[int, int]
    resize: tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    letterbox_scale: float | None = None
    pad_value: float = 114.0
    divide: float | None = 255.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


class PreprocessingModule(nn.Module):
    """uint8 image -> the model's float input, as :class:`Preprocessing` says."""

    def __init__(self, spec: Preprocessing, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.spec, self.dtype = spec, dtype
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(spec.mean or (0.0,), dtype=torch.float32).reshape(shape), False)
        self.register_buffer("std", torch.tensor(spec.std or (1.0,), dtype=torch.float32).reshape(shape), False)

    def forward(self, image: Tensor) -> Tensor:
        spec = self.spec
        x = image.float()
        if spec.letterbox_scale is not None:
            h, w = spec.image_hw
            new_hw = (max(round(h * spec.letterbox_scale), 1), max(round(w * spec.letterbox_scale), 1))
            if new_hw != (h, w):
                x = F.interpolate(x, size=new_hw, mode="bilinear", align_corners=False)
            # Bottom/right padding up to the model's size: the pixels keep their coordinates.
            x = F.pad(x, (0, spec.model_hw[1] - new_hw[1], 0, spec.model_hw[0] - new_hw[0]), value=spec.pad_value)
        elif spec.resize is not None and tuple(spec.resize) != tuple(spec.image_hw):
            x = F.interpolate(x, size=tuple(spec.resize), mode="bilinear", align_corners=False)
        if spec.crop is not None:
            height, width = x.shape[-2:]
            top, left = int(round((int(height) - spec.crop[0]) / 2.0)), int(round((int(width) - spec.crop[1]) / 2.0))
            x = x[..., top:top + spec.crop[0], left:left + spec.crop[1]]
        if spec.divide:
            x = x / spec.divide
        if spec.mean is not None or spec.std is not None:
            x = (x - self.mean) / self.std
        return x.to(self.dtype)


class BatchedSelection(nn.Module):
    """Boxes ``[B, N, 4]`` and class scores ``[B, N, C]`` -> detections in one of :data:`OUTPUT_LAYOUTS`.

    ``batched``: ``num_predictions [B, 1]`` (int64), ``boxes [B, M, 4]``, ``scores [B, M]``, ``labels [B, M]``
    (int64), rows past an image's count zero, ``M`` = ``max_predictions``. ``flat``: ``detections [K, 7]`` rows
    ``image_index, x1, y1, x2, y2, score, label``, image by image, best first. ``box_scale`` / ``box_limit_hw``
    map boxes back to the pixels of the graph's input image (undoing the letterbox) and clip them there.
    """

    def __init__(self, settings: SelectionSettings, layout: str = "batched", box_scale: float = 1.0,
                 box_limit_hw: Sequence[int] | None = None):
        super().__init__()
        if layout not in OUTPUT_LAYOUTS:
            raise RecipeError(f"Detection output layout {layout!r} is not one of {', '.join(OUTPUT_LAYOUTS)}.")
        if NMS_Type(settings.nms_type) is not NMS_Type.ITERATIVE:
            raise RecipeError("Export puts iterative NMS in the graph; matrix NMS has no ONNX operator. Export with "
                              "nms_type: iterative, or without post-processing and apply it yourself.")
        self.settings, self.layout = settings, layout
        self.box_scale = float(box_scale)
        self.box_limit_hw = tuple(box_limit_hw) if box_limit_hw is not None else None

    def forward(self, boxes: Tensor, scores: Tensor) -> tuple[Tensor, ...]:
        s = self.settings
        boxes, scores = boxes.float(), scores.float()
        batch, anchors, classes = scores.shape
        if s.multi_label_per_box:
            top_scores, top = scores.reshape(batch, anchors * classes).topk(min(s.nms_top_k, anchors * classes), 1)
            box_index, labels = top // classes, top % classes
        else:
            best, best_label = scores.max(dim=2)
            top_scores, box_index = best.topk(min(s.nms_top_k, anchors), 1)
            labels = best_label.gather(1, box_index)
        top_boxes = boxes.gather(1, box_index.unsqueeze(-1).expand(-1, -1, 4))
        images = torch.arange(batch, device=scores.device).unsqueeze(1).expand_as(labels)
        flat_boxes, flat_scores = top_boxes.reshape(-1, 4), top_scores.reshape(-1)
        flat_labels, flat_images = labels.reshape(-1), images.reshape(-1)
        passing = torch.nonzero(flat_scores >= s.score_threshold).squeeze(1)
        flat_boxes, flat_scores = flat_boxes[passing], flat_scores[passing]
        flat_labels, flat_images = flat_labels[passing], flat_images[passing]
        # One NMS over the whole batch: a group per (image, class), or per image when class-agnostic.
        keep = grouped_nms(flat_boxes, flat_scores, s.nms_threshold, flat_images,
                           None if s.class_agnostic_nms else flat_labels)  # best first
        kept_boxes, kept_scores = flat_boxes[keep], flat_scores[keep]
        kept_labels, kept_images = flat_labels[keep], flat_images[keep]
        # Rank of each detection within its image (they arrive best first), to cap and to place them.
        one_hot = (kept_images.unsqueeze(1) == torch.arange(batch, device=scores.device).unsqueeze(0)).long()
        rank = (one_hot.cumsum(0) * one_hot).sum(1) - 1
        capped = torch.nonzero(rank < s.max_predictions).squeeze(1)
        kept_boxes, kept_scores = self._to_image(kept_boxes[capped]), kept_scores[capped]
        kept_labels, kept_images, rank = kept_labels[capped], kept_images[capped], rank[capped]
        if self.layout == "flat":
            order = (kept_images.float() * 2.0 - kept_scores).argsort()  # image by image, best first
            rows = torch.cat((kept_images.float().unsqueeze(1), kept_boxes, kept_scores.unsqueeze(1),
                              kept_labels.float().unsqueeze(1)), dim=1)
            return (rows[order],)
        count = one_hot[capped].sum(0).unsqueeze(1)
        out_boxes = boxes.new_zeros((batch, s.max_predictions, 4))
        out_scores = scores.new_zeros((batch, s.max_predictions))
        out_labels = torch.zeros((batch, s.max_predictions), dtype=torch.int64, device=scores.device)
        out_boxes = out_boxes.index_put((kept_images, rank), kept_boxes)
        out_scores = out_scores.index_put((kept_images, rank), kept_scores)
        out_labels = out_labels.index_put((kept_images, rank), kept_labels.long())
        return count, out_boxes, out_scores, out_labels

    def _to_image(self, boxes: Tensor) -> Tensor:
        if self.box_scale != 1.0:
            boxes = boxes / self.box_scale
        if self.box_limit_hw is not None:
            h, w = self.box_limit_hw
            limit = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
            boxes = torch.minimum(boxes.clamp_min(0.0), limit)
        return boxes


class ExportedGraph(nn.Module):
    """The whole exported graph: optional preprocessing, the model, and the task's outputs."""

    def __init__(self, model: nn.Module, task: str, preprocessing: PreprocessingModule | None = None,
                 post_callback: nn.Module | None = None, selection: BatchedSelection | None = None):
        super().__init__()
        self.model, self.task = model, task
        self.preprocessing, self.post_callback, self.selection = preprocessing, post_callback, selection

    def forward(self, image: Tensor) -> Tensor | tuple[Tensor, ...]:
        x = self.preprocessing(image) if self.preprocessing is not None else image
        output = self.model(x)
        if self.task == "detection":
            boxes, scores = self.post_callback.boxes_and_scores(output)  # type: ignore[union-attr]
            return self.selection(boxes, scores) if self.selection is not None else (boxes, scores)
        while isinstance(output, tuple | list):  # segmentation aux heads, GoogLeNet-like extras: the main output
            output = output[0]
        return output
