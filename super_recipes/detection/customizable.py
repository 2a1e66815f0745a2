"""A detector assembled from registered parts: ``architecture: CustomizableDetector`` with ``arch_params``.

```yaml
architecture: CustomizableDetector
arch_params:
  num_classes: 80
  in_channels: 3
  backbone: {CSPResNetBackbone: {depth_mult: 0.33, width_mult: 0.50}}
  neck: {PPYoloECSPPAN: {depth_mult: 0.33, width_mult: 0.50}}   # optional: null feeds the backbone's maps
  heads: {PPYoloEHead: {reg_max: 16}}
```

Each part is a name registered with ``@register_detection_module`` (a one-key mapping with its arguments, a
``_target_`` node, or an ``nn.Module`` from Python). They are built in order, each told what the previous one
produces: ``backbone(in_channels=...)``, ``neck(in_channels=backbone.out_channels)``,
``heads(in_channels=neck.out_channels, num_classes=...)``. So a backbone and a neck expose ``out_channels`` (a list,
one entry per feature map they return), and a head takes ``in_channels`` and ``num_classes``. The head returns the
mode-dependent output of the family (training intermediates, eval ``(decoded, raw)``, tracing decoded) and provides
``get_post_prediction_callback(conf=, iou=, max_predictions=)``. PP-YOLOE, YOLO-NAS and SSD-Lite are built this way;
register your own parts the same way to assemble a detector of your own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from super_recipes.detection.predict import DetectionPredictMixin
from super_recipes.errors import RecipeError
from super_recipes.registry import DETECTION_MODULES, build, register_model

__all__ = ["CustomizableDetector", "fuse_reparameterizable_blocks"]


def _build_part(spec: Any, role: str, **inputs: Any) -> nn.Module:
    part = build(DETECTION_MODULES, spec, f"arch_params.{role}", **inputs)
    if not isinstance(part, nn.Module):
        raise RecipeError(f"arch_params.{role} must build an nn.Module, got {type(part).__name__}.")
    return part


def _out_channels(part: nn.Module, role: str) -> list[int]:
    channels = getattr(part, "out_channels", None)
    if not isinstance(channels, Sequence) or not all(isinstance(c, int) for c in channels):
        raise RecipeError(f"The {role} {type(part).__name__} must expose out_channels (a list of ints, one per "
                          f"feature map it returns) so that the next part can be built; got {channels!r}.")
    return list(channels)


def _apply_batch_norm_settings(model: nn.Module, eps: float | None, momentum: float | None,
                               inplace_act: bool) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if eps is not None:
                module.eps = float(eps)
            if momentum is not None:
                module.momentum = float(momentum)
        elif not inplace_act and hasattr(module, "inplace") and isinstance(module.inplace, bool):
            module.inplace = False


def fuse_reparameterizable_blocks(model: nn.Module) -> int:
    """Call ``fuse_branches()`` on every block of ``model`` that has one (RepVGG-style re-parameterisation: the
    training-time branches fold into one convolution); returns how many were fused."""
    fusable = [module for module in model.modules()
               if module is not model and callable(getattr(module, "fuse_branches", None))]
    for module in fusable:
        module.fuse_branches()
    return len(fusable)


@register_model("CustomizableDetector")
class CustomizableDetector(DetectionPredictMixin, nn.Module):
    """Backbone -> optional neck -> heads, each a registered detection module (see the module docstring).

    :param backbone: the backbone spec or module.
    :param heads: the head spec or module (it returns the model's output in every mode).
    :param neck: the neck spec or module; ``None`` feeds the backbone's maps to the head.
    :param num_classes: classes the head predicts.
    :param in_channels: input image channels.
    :param bn_eps: override the eps of every BatchNorm (e.g. 1e-3 as some published detectors use).
    :param bn_momentum: override every BatchNorm's momentum.
    :param inplace_act: ``False`` makes in-place activations out-of-place (needed by some export/quantisation tools).
    """

    head_prefix = "heads"

    def __init__(self, backbone: Any, heads: Any, neck: Any = None, num_classes: int | None = None,
                 in_channels: int = 3, bn_eps: float | None = None, bn_momentum: float | None = None,
                 inplace_act: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.backbone = _build_part(backbone, "backbone", in_channels=in_channels)
        channels = _out_channels(self.backbone, "backbone")
        self.neck = None if neck is None else _build_part(neck, "neck", in_channels=channels)
        if self.neck is not None:
            channels = _out_channels(self.neck, "neck")
        head_inputs: dict[str, Any] = {"in_channels": channels}
        if num_classes is not None:
            head_inputs["num_classes"] = num_classes
        self.heads = _build_part(heads, "heads", **head_inputs)
        if self.num_classes is None:
            self.num_classes = getattr(self.heads, "num_classes", None)
        _apply_batch_norm_settings(self, bn_eps, bn_momentum, inplace_act)
        self.class_names: list[str] | None = None
        self.processing_params: dict[str, Any] = {}

    def forward(self, x: Tensor) -> Any:
        features = self.backbone(x)
        if self.neck is not None:
            features = self.neck(features)
        return self.heads(features)

    def get_post_prediction_callback(self, conf: float = 0.001, iou: float = 0.6, *, max_predictions: int = 300,
                                     **kwargs: Any) -> Any:
        """The head's post-processing for this model's eval output (a metric's ``post_prediction_callback``)."""
        make = getattr(self.heads, "get_post_prediction_callback", None)
        if make is None:
            raise RecipeError(f"The head {type(self.heads).__name__} defines no get_post_prediction_callback(conf, "
                              "iou, max_predictions): give the metric a post_prediction_callback explicitly.")
        return make(conf=conf, iou=iou, max_predictions=max_predictions, **kwargs)

    @torch.no_grad()
    def prep_model_for_conversion(self, input_size: Sequence[int] | None = None, **kwargs: Any) -> None:
        """Fold re-parameterisable blocks into single convolutions for inference and export (irreversible)."""
        fuse_reparameterizable_blocks(self)
