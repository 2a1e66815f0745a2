"""Predicting from an exported file: ``load_model_for_prediction("model.onnx")`` and the predict command line.

:class:`OnnxModel` wraps an ONNX Runtime session in the shape of our PyTorch models (a module whose call takes
a float batch and returns the task's output, with ``processing_params`` and ``predict``), so the detection and
segmentation ``predict`` functions run unchanged on it and return the same results objects: boxes and masks in
the pixels of the images as given. What the graph needs (its input size, whether it preprocesses or
post-processes, class names) comes from the file's metadata (:func:`super_recipes.export.onnx_export.read_metadata`).

When the graph contains the detection post-processing, its thresholds were fixed at export: ``conf`` / ``iou``
given to ``predict`` are then not applied again (export again to change them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from super_recipes.detection.postprocessing import (
    DetectionPostPredictionCallback,
    NMS_Type,
    SelectionSettings,
    select_detections,
)
from super_recipes.detection.predict import DetectionPredictMixin
from super_recipes.errors import RecipeError
from super_recipes.export.onnx_export import read_metadata
from super_recipes.export.requirements import require_onnx
from super_recipes.models.predict import ClassificationPredictMixin
from super_recipes.segmentation.predict import SegmentationPredictMixin


class OnnxModel(nn.Module):
    """An exported file run by ONNX Runtime, called like the model it was exported from (see the module doc)."""

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None):
        super().__init__()
        require_onnx("Running an exported model")
        import onnxruntime

        self.path = str(path)
        if not Path(self.path).is_file():
            raise RecipeError(f"Exported model not found: {self.path}")
        self.meta = read_metadata(self.path)
        self.session = onnxruntime.InferenceSession(self.path, providers=list(providers or ["CPUExecutionProvider"]))
        self.task: str = self.meta["task"]
        self.preprocessing: dict[str, Any] | None = self.meta.get("preprocessing")
        self.postprocessing: dict[str, Any] | None = self.meta.get("postprocessing")
        self.static_batch = self.meta["input_shape"][0] if isinstance(self.meta["input_shape"][0], int) else None
        self.processing_params = self._processing_params()
        self.class_names = self.processing_params.get("class_names")
        self._device_anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # predict() asks for a device

    def _processing_params(self) -> dict[str, Any]:
        params = dict(self.meta.get("processing_params") or {})
        pre = self.preprocessing
        if self.task == "detection":
            params["input_dim"] = list(pre["model_hw"] if pre else self.meta["input_shape"][-2:])
            if pre:
                if list(pre["image_hw"]) != list(pre["model_hw"]):
                    raise RecipeError(f"{self.path} letterboxes {pre['image_hw']} images inside its graph; predict "
                                      "letterboxes each image itself: export with image_size equal to input_size.")
                params["standardize"] = None  # the graph divides; predict hands it 0..255 pixels
        elif self.task == "segmentation":
            # The graph's input size is fixed: predict resizes each image to it (the graph may resize further)
            # and the masks back to the image, whatever rescale the recipe's validation used.
            for mode in ("scale_factor", "short_size", "long_size", "size"):
                params[mode] = None
            params["size"] = list(pre["image_hw"] if pre else self.meta["input_shape"][-2:])
            if pre:
                params["mean"], params["std"] = None, None  # the graph normalises
        else:  # classification: the graph's fixed input, reached by the recipe's resize and crop when they do
            graph_hw = [int(v) for v in (pre["image_hw"] if pre else self.meta["input_shape"][-2:])]
            crop = params.get("crop")
            crop_hw = [int(crop)] * 2 if isinstance(crop, int) else [int(v) for v in crop or ()]
            if pre or crop_hw != graph_hw:
                params["resize"], params["crop"] = graph_hw, None
            if pre:
                params["mean"], params["std"] = None, None  # the graph normalises
        return params

    def forward(self, images: Tensor) -> Any:
        batch = images.detach().cpu()
        if self.preprocessing:
            # predict() hands 0..255 (detection) or [0, 1] (the other tasks) floats; the graph takes uint8.
            scale = 1.0 if self.task == "detection" else 255.0
            array = (batch * scale).round().clamp(0, 255).to(torch.uint8).numpy()
        else:
            dtype = np.float16 if self.meta.get("precision") == "fp16" else np.float32
            array = batch.numpy().astype(dtype, copy=False)
        chunks = [array] if not self.static_batch else [array[i:i + self.static_batch]
                                                        for i in range(0, len(array), self.static_batch)]
        outputs = [self._run(chunk) for chunk in chunks]
        merged = [torch.from_numpy(np.concatenate([o[i] for o in outputs])) for i in range(len(outputs[0]))]
        if self.task == "detection" and self.postprocessing and self.postprocessing["layout"] == "flat":
            offsets = np.cumsum([0] + [len(c) for c in chunks[:-1]])  # chunk-local image indices -> batch ones
            rows = torch.cat([torch.from_numpy(o[0]) + torch.tensor([float(off), 0, 0, 0, 0, 0, 0])
                              for o, off in zip(outputs, offsets, strict=True)])
            return rows, len(array)  # the image count: the last images may have no rows
        return merged[0] if len(merged) == 1 else tuple(merged)

    def _run(self, array: np.ndarray) -> list[np.ndarray]:
        if self.static_batch and len(array) < self.static_batch:  # a last, short chunk: pad, then drop the extra
            pad = np.repeat(array[-1:], self.static_batch - len(array), axis=0)
            out = self.session.run(None, {self.meta["input_name"]: np.concatenate([array, pad])})
            if self.postprocessing and self.postprocessing["layout"] == "flat":
                return [out[0][out[0][:, 0] < len(array)]]
            return [o[:len(array)] for o in out]
        return self.session.run(None, {self.meta["input_name"]: array})

    def get_post_prediction_callback(self, conf: float = 0.25, iou: float = 0.7, max_predictions: int = 300
                                     ) -> DetectionPostPredictionCallback:
        """What turns this graph's detection outputs into per-image ``[K, 6]`` rows for ``predict``."""
        return OnnxDetections(self.postprocessing, self.meta.get("selection"), conf, iou, max_predictions)


class OnnxDetections(DetectionPostPredictionCallback):
    """Per-image rows from an exported detection graph: its own post-processing's layout, or NMS here over its
    ``boxes`` / ``scores`` with the family's settings recorded at export and ``predict``'s thresholds."""

    def __init__(self, postprocessing: dict[str, Any] | None, selection: dict[str, Any] | None, conf: float,
                 iou: float, max_predictions: int):
        super().__init__()
        self.postprocessing = postprocessing
        recorded = {**(selection or {}), "score_threshold": conf, "nms_threshold": iou,
                    "max_predictions": max_predictions}
        recorded["nms_type"] = NMS_Type(recorded.get("nms_type", "iterative"))
        self.settings = SelectionSettings(**recorded)

    def forward(self, outputs: Any, device: str | torch.device | None = None) -> list[Tensor]:
        if self.postprocessing is None:
            return select_detections(*self.boxes_and_scores(outputs), **self.settings.__dict__)
        if self.postprocessing["layout"] == "flat":
            rows, count = outputs
            return [rows[rows[:, 0] == i][:, 1:] for i in range(count)]
        counts, boxes, scores, labels = outputs
        return [torch.cat((boxes[i, :n], scores[i, :n, None], labels[i, :n, None].float()), dim=1)
                for i, n in enumerate(counts[:, 0].tolist())]

    def boxes_and_scores(self, outputs: Any) -> tuple[Tensor, Tensor]:
        return outputs[0].float(), outputs[1].float()

    def selection(self) -> SelectionSettings:
        return self.settings


class OnnxClassifier(ClassificationPredictMixin, OnnxModel):
    """An exported classifier with ``predict`` (class probabilities per image)."""


class OnnxDetector(DetectionPredictMixin, OnnxModel):
    """An exported detection graph with ``predict`` (boxes in the given images' pixels)."""


class OnnxSegmenter(SegmentationPredictMixin, OnnxModel):
    """An exported segmentation graph with ``predict`` (masks at the given images' size)."""


def exported_task(path: str | Path) -> str:
    """The task an exported file was written for (its metadata); one-line errors without the extra or the file."""
    require_onnx("Running an exported model")
    if not Path(path).is_file():
        raise RecipeError(f"Exported model not found: {path}")
    return read_metadata(path)["task"]


def load_onnx_for_prediction(path: str | Path, device: str | torch.device = "cpu",
                             providers: Sequence[str] | None = None) -> OnnxModel:
    """``load_model_for_prediction("model.onnx")``: the model-like wrapper of the file's task (detection and
    segmentation and classification, each with the ``predict`` of its task). ``device`` picks ONNX Runtime's execution
    provider (``cuda`` -> CUDA, then CPU) unless ``providers`` are given."""
    task = exported_task(path)
    if providers is None:
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if torch.device(device).type == "cuda" \
            else ["CPUExecutionProvider"]
    cls = {"detection": OnnxDetector, "segmentation": OnnxSegmenter}.get(task, OnnxClassifier)
    return cls(path, providers)
