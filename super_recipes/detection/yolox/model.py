"""YOLOX detectors for the recipe key ``architecture``: ``yolox_n``, ``yolox_t``, ``yolox_s``, ``yolox_m``,
``yolox_l`` and ``yolox_x``.

Each is a CSPDarknet backbone, a PAFPN neck and an anchor-free decoupled head over strides 8, 16 and 32
(:mod:`super_recipes.detection.yolox.blocks`), scaled by the published depth/width multipliers. ``arch_params``:
``num_classes`` (default 80) and ``in_channels`` (default 3).

Outputs:

* ``model.train()``: a list of three raw maps ``[B, 1, H/s, W/s, C + 5]`` (channels ``x, y, w, h`` raw
  regression, objectness logit, class logits), what the YOLOX loss consumes;
* ``model.eval()``: ``(decoded, raw)``, ``decoded`` ``[B, N, C + 5]`` with ``cx, cy, w, h`` in input pixels and
  sigmoided objectness/class scores, ``N = sum(H/s * W/s)``;
* while traced or exported (TorchScript tracing, ONNX, ``torch.export``) in eval mode: ``decoded`` alone.

``model.get_post_prediction_callback(conf=, iou=)`` turns the eval output into per-image ``[K, 6]`` rows
``x1, y1, x2, y2, confidence, class`` (:class:`~super_recipes.detection.yolox.postprocess.YoloXPostPredictionCallback`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from super_recipes.detection.predict import DetectionPredictMixin
from super_recipes.detection.tracing import is_exporting
from super_recipes.detection.yolox.blocks import PAFPN, ConvBNAct, CSPDarknet, conv_block
from super_recipes.detection.yolox.postprocess import YoloXPostPredictionCallback
from super_recipes.registry import register_model

__all__ = ["YoloX", "YoloXHead", "YOLOX_SIZES", "is_exporting"]

STRIDES = (8, 16, 32)
# (depth multiplier, width multiplier, depthwise convolutions), as published.
YOLOX_SIZES: dict[str, tuple[float, float, bool]] = {
    "yolox_n": (0.33, 0.25, True),
    "yolox_t": (0.33, 0.375, False),
    "yolox_s": (0.33, 0.50, False),
    "yolox_m": (0.67, 0.75, False),
    "yolox_l": (1.0, 1.0, False),
    "yolox_x": (1.33, 1.25, False),
}
_GRID_CACHE_SIZE = 8  # input sizes remembered; multi-scale evaluation uses a handful at most


class YoloXHead(nn.Module):
    """Decoupled head: per level a 1x1 stem, then a classification branch (two 3x3 convs -> class logits) and a
    regression branch (two 3x3 convs -> 4 box values and 1 objectness logit)."""

    def __init__(self, num_classes: int, in_channels: Sequence[int], width: float, depthwise: bool = False,
                 prior_prob: float = 0.01):
        super().__init__()
        self.num_classes = num_classes
        hidden = int(256 * width)
        levels = range(len(in_channels))

        def branch() -> nn.Sequential:
            return nn.Sequential(conv_block(hidden, hidden, 3, depthwise=depthwise),
                                 conv_block(hidden, hidden, 3, depthwise=depthwise))

        # Grouped by kind rather than by level, in the reference implementation's order, so that its state dicts
        # pair with ours by position.
        self.cls_convs = nn.ModuleList(branch() for _ in levels)
        self.reg_convs = nn.ModuleList(branch() for _ in levels)
        self.cls_preds = nn.ModuleList(nn.Conv2d(hidden, num_classes, 1) for _ in levels)
        self.reg_preds = nn.ModuleList(nn.Conv2d(hidden, 4, 1) for _ in levels)
        self.obj_preds = nn.ModuleList(nn.Conv2d(hidden, 1, 1) for _ in levels)
        self.stems = nn.ModuleList(ConvBNAct(c, hidden, 1) for c in in_channels)
        self.reset_prediction_bias(prior_prob)

    def reset_prediction_bias(self, prior_prob: float = 0.01) -> None:
        """Start every objectness/class probability at ``prior_prob``: with ~all locations background, a 0.5
        start would flood the first iterations with huge negative-sample losses (focal-loss prior trick)."""
        bias = -math.log((1 - prior_prob) / prior_prob)
        for conv in (*self.cls_preds, *self.obj_preds):
            nn.init.constant_(conv.bias, bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        outputs = []
        for i, feature in enumerate(features):
            x = self.stems[i](feature)
            reg = self.reg_convs[i](x)
            out = torch.cat((self.reg_preds[i](reg), self.obj_preds[i](reg), self.cls_preds[i](self.cls_convs[i](x))),
                            dim=1)
            batch, channels, height, width = out.shape
            # [B, C+5, H, W] -> [B, 1, H, W, C+5]: one "anchor" per location, channels last for the loss/decode.
            outputs.append(out.view(batch, 1, channels, height, width).permute(0, 1, 3, 4, 2).contiguous())
        return outputs


class YoloX(DetectionPredictMixin, nn.Module):
    """A YOLOX detector; built by the ``yolox_*`` factories (recipe key ``architecture``).

    ``head_prefix`` names the part that depends on the class count: fine-tuning from a checkpoint with another
    ``num_classes`` reloads everything else, and ``load_backbone`` leaves the head out.
    """

    head_prefix = "head"

    def __init__(self, num_classes: int = 80, depth: float = 0.33, width: float = 0.5, depthwise: bool = False,
                 in_channels: int = 3, prior_prob: float = 0.01):
        super().__init__()
        self.num_classes = num_classes
        self.strides = STRIDES
        self.backbone = CSPDarknet(depth, width, depthwise, in_channels)
        self.neck = PAFPN(depth, width, depthwise)
        self.head = YoloXHead(num_classes, self.neck.out_channels, width, depthwise, prior_prob)
        self.class_names: list[str] | None = None
        self.processing_params: dict[str, Any] = {}
        self._grids: dict[tuple, tuple[Tensor, Tensor]] = {}

    def forward(self, x: Tensor) -> list[Tensor] | tuple[Tensor, list[Tensor]] | Tensor:
        raw = self.head(self.neck(self.backbone(x)))
        if self.training:
            return raw
        decoded = self.decode(raw)
        if is_exporting():
            return decoded
        return decoded, raw

    def decode(self, raw: Sequence[Tensor]) -> Tensor:
        """Raw maps -> ``[B, N, C + 5]``: ``cx, cy, w, h`` in input pixels, sigmoided objectness/class scores.

        All levels are decoded together against a cached grid; at least float32 so that pixel coordinates of
        large inputs stay exact under fp16 autocast.
        """
        flat = torch.cat([r.flatten(1, 3) for r in raw], dim=1)
        flat = flat.to(torch.promote_types(flat.dtype, torch.float32))
        grid, stride = self._grid([tuple(r.shape[2:4]) for r in raw], flat.device, flat.dtype)
        return torch.cat(((flat[..., :2] + grid) * stride, flat[..., 2:4].exp() * stride, flat[..., 4:].sigmoid()),
                         dim=-1)

    def _grid(self, sizes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Cell offsets ``[N, 2]`` (x, y) and strides ``[N, 1]`` for the given level sizes, cached per size."""
        key = (tuple(sizes), device, dtype)
        cached = self._grids.get(key)
        if cached is not None:
            return cached
        grids, strides = [], []
        for (height, width), stride in zip(sizes, self.strides, strict=True):
            ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                                    torch.arange(width, device=device, dtype=dtype), indexing="ij")
            grids.append(torch.stack((xs, ys), dim=-1).reshape(-1, 2))
            strides.append(torch.full((height * width, 1), float(stride), device=device, dtype=dtype))
        result = torch.cat(grids), torch.cat(strides)
        # Tensors made while tracing belong to that trace; keep them out of the cache.
        if not is_exporting():
            if len(self._grids) >= _GRID_CACHE_SIZE:
                self._grids.pop(next(iter(self._grids)))
            self._grids[key] = result
        return result

    def get_post_prediction_callback(self, conf: float = 0.001, iou: float = 0.6, *, max_predictions: int = 300,
                                     nms_top_k: int = 1000,
                                     classagnostic_nms: bool = False) -> YoloXPostPredictionCallback:
        """The NMS post-processing for this model's eval output (the metrics' ``post_prediction_callback``)."""
        return YoloXPostPredictionCallback(conf=conf, iou=iou, max_predictions=max_predictions,
                                           nms_top_k=nms_top_k, classagnostic_nms=classagnostic_nms)


def _build(name: str, num_classes: int, in_channels: int) -> YoloX:
    depth, width, depthwise = YOLOX_SIZES[name]
    return YoloX(num_classes, depth, width, depthwise, in_channels)


@register_model("yolox_n")
def yolox_n(num_classes: int = 80, in_channels: int = 3) -> YoloX:
    """YOLOX-Nano (depth 0.33, width 0.25, depthwise convs): 0.91M params at 80 classes."""
    return _build("yolox_n", num_classes, in_channels)


@register_model("yolox_t")
def yolox_t(num_classes: int = 80, in_channels: int = 3) -> YoloX:
    """YOLOX-Tiny (depth 0.33, width 0.375): 5.06M params at 80 classes."""
    return _build("yolox_t", num_classes, in_channels)


@register_model("yolox_s")
def yolox_s(num_classes: int = 80, in_channels: int = 3) -> YoloX:
    """YOLOX-S (depth 0.33, width 0.50): 8.97M params at 80 classes."""
    return _build("yolox_s", num_classes, in_channels)


@register_model("yolox_m")
def yolox_m(num_classes: int = 80, in_channels: int = 3) -> YoloX:
    """YOLOX-M (depth 0.67, width 0.75): 25.3M params at 80 classes."""
    return _build("yolox_m", num_classes, in_channels)


@register_model("yolox_l")
def yolox_l(num_classes: int = 80, in_channels: int = 3) -> YoloX:
    """YOLOX-L (depth 1.0, width 1.0): 54.2M params at 80 classes."""
    return _build("yolox_l", num_classes, in_channels)


@register_model("yolox_x")
def yolox_x(num_classes: int = 80, in_channels: int = 3) -> YoloX:
    """YOLOX-X (depth 1.33, width 1.25): 99.1M params at 80 classes."""
    return _build("yolox_x", num_classes, in_channels)
