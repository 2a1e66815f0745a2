"""``model.predict(...)`` for segmentation models, kept apart from :mod:`.predict` so that building a model does
not import OpenCV and the drawing code (they are imported when ``predict`` is first called)."""

from __future__ import annotations

from typing import Any

import torch


class SegmentationPredictMixin:
    """Gives a segmentation model ``predict()``: the model class inherits it (``class DDRNet(
    SegmentationPredictMixin, nn.Module)``) and keeps its preprocessing in ``self.processing_params``."""

    def set_dataset_processing_params(self, **params: Any) -> None:
        """Remember how the dataset prepared inputs: ``class_names``, one of ``scale_factor`` / ``short_size``
        / ``long_size`` / ``size``, ``mean`` / ``std`` (see the module docstring); later calls update it."""
        current = dict(getattr(self, "processing_params", None) or {})
        current.update(params)
        self.processing_params = current
        if "class_names" in params:
            self.class_names = list(params["class_names"]) if params["class_names"] is not None else None

    def predict(self, source: Any, batch_size: int = 8, device: str | torch.device | None = None,
                channels: str = "BGR", threshold: float = 0.5
                ) -> Any:
        """Segment ``source``: an image path, a folder of images, a list of those or of arrays, a numpy array
        (HWC, or NHWC for several; BGR as ``cv2.imread`` gives, or RGB with ``channels="RGB"``), a PIL image, or
        a tensor (CHW or BCHW, 0..255 or [0, 1]; BGR unless ``channels="RGB"``). Returns a
        :class:`SegmentationPrediction` for one image, else an :class:`ImagesSegmentationPrediction`; masks
        have each image's own size. ``threshold`` applies to binary models (``sigmoid(logit) > threshold``)."""
        from super_recipes.segmentation.predict import predict

        return predict(self, source, batch_size=batch_size, device=device,  # type: ignore[arg-type]
                       channels=channels, threshold=threshold)
