"""SSD default boxes (anchors, priors) and the box encoding shared by the SSD-Lite head and ``SSDLoss``.

Recipe key: ``arch_params.heads.SSDHead.anchors`` (``{DefaultBoxes: {...}}`` or a ``_target_`` node), as in
SuperGradients' ``ssd_lite_mobilenetv2_arch_params``. Two published 320x320 sets:

* :data:`SSD_LITE_TF_320_ANCHORS`, the MobileNetV2 paper's SSDLite (TensorFlow Object Detection API,
  ``ssdlite_mobilenet_v2_coco.config``: ``ssd_anchor_generator`` with 6 layers, ``min_scale`` 0.2, ``max_scale``
  0.95, aspect ratios 1, 2, 0.5, 3, 1/3, and its default ``reduce_boxes_in_lowest_layer``): scales
  ``0.2 + 0.15 k`` of the image (64, 112, ..., 304 px at 320, and 320 after the last for its extra box); the first
  level has 3 boxes per cell (a square of 0.1 of the image, and ratios 2 and 0.5 at scale 0.2), the others 6;
  not clipped (TF's ``create_ssd_anchors`` builds its generator without a clip window). 2034 boxes at 320x320.
  The default of ``ssd_lite_mobilenet_v2``.
* :data:`SSD_LITE_320_ANCHORS`, SuperGradients' (``recipes/anchors/ssd_anchors.yaml``,
  ``320x320.stride_16_plus_big``, the one its COCO recipe trains with): 6 boxes per cell everywhere, clipped.
  3234 boxes at 320x320. The default of the ``DefaultBoxes`` part itself.

For level ``k`` of ``f_k x f_k`` cells with scales ``s_k`` and ``s_{k+1}`` (pixels at ``fig_size``) and aspect ratios
``a``, every cell has, in this order, the boxes ``(s_k, s_k)``, ``(sqrt(s_k s_{k+1}),) * 2`` and for each ``a``
``(s_k sqrt(a), s_k / sqrt(a))`` then ``(s_k / sqrt(a), s_k sqrt(a))``, all divided by ``fig_size``. With
``lowest_level_scale`` ``l`` (TF's reduced lowest layer) level 0 has ``(l, l)`` instead of the first two, then its
ratio pairs at ``s_0``. Centres are ``((j + 0.5) / f_k, (i + 0.5) / f_k)``; with ``clip`` (SuperGradients' choice)
every value is clamped to [0, 1]. Boxes are ordered level by level, then box shape, then row ``i``, then column
``j`` (shape-major), which is how :class:`~super_recipes.detection.ssd.model.SSDHead` lays out its predictions.

The head builds the boxes for the feature maps it actually sees (:meth:`DefaultBoxes.for_feature_sizes`), so a
model made for 320 also runs at another input size: cell grids follow the maps and box sizes stay the same
fraction of the image.

Offsets (``encode`` / ``decode``) use the SSD variances ``scale_xy = 0.1`` and ``scale_wh = 0.2``:
``t_xy = (g_xy - d_xy) / (d_wh * scale_xy)``, ``t_wh = log(g_wh / d_wh) / scale_wh``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from super_recipes.errors import RecipeError
from super_recipes.registry import DETECTION_MODULES, build, register_detection_module

__all__ = ["DefaultBoxes", "SSD_LITE_320_ANCHORS", "SSD_LITE_TF_320_ANCHORS", "build_default_boxes",
           "cxcywh_to_xyxy", "decode_boxes", "encode_boxes"]

# SuperGradients' published default boxes for SSD-Lite MobileNetV2 at 320x320 (stride_16_plus_big).
SSD_LITE_320_ANCHORS: dict[str, Any] = {
    "fig_size": 320,
    "feat_size": [20, 10, 5, 3, 2, 1],
    "scales": [32, 82, 133, 184, 235, 285, 336],
    "aspect_ratios": [[2, 3], [2, 3], [2, 3], [2, 3], [2, 3], [2, 3]],
    "scale_xy": 0.1,
    "scale_wh": 0.2,
}

# The MobileNetV2 paper's SSDLite default boxes (TF Object Detection API ssd_anchor_generator: min_scale 0.2,
# max_scale 0.95, ratios 1, 2, 0.5, 3, 1/3, reduced lowest layer, no clipping) at 320x320: scales 0.2 + 0.15 k of
# the image, then 1.0 (only used for the last level's extra box), in pixels.
SSD_LITE_TF_320_ANCHORS: dict[str, Any] = {
    "fig_size": 320,
    "feat_size": [20, 10, 5, 3, 2, 1],
    "scales": [64, 112, 160, 208, 256, 304, 320],
    "aspect_ratios": [[2], [2, 3], [2, 3], [2, 3], [2, 3], [2, 3]],
    "lowest_level_scale": 32,
    "clip": False,
    "scale_xy": 0.1,
    "scale_wh": 0.2,
}


@register_detection_module("DefaultBoxes")
class DefaultBoxes:
    """SSD default boxes for ``arch_params.heads.SSDHead.anchors`` (see the module docstring for the formula).

    :param fig_size: the input side the scales are given for (pixels).
    :param feat_size: feature map side of each level at ``fig_size`` (the reference grid, e.g. ``[20, 10, 5, 3,
        2, 1]`` at 320).
    :param scales: ``len(feat_size) + 1`` box sizes in pixels at ``fig_size``.
    :param aspect_ratios: per level, the ratios beyond 1 (each adds a wide and a tall box).
    :param scale_xy: centre offset variance (0.1).
    :param scale_wh: size offset variance (0.2).
    :param lowest_level_scale: when set (pixels at ``fig_size``), level 0 has TF's reduced set: one square box of
        this side, then the pairs of ``aspect_ratios[0]`` at ``scales[0]`` (no geometric-mean box); ``None``
        (SuperGradients) gives level 0 the same shapes as the others.
    :param clip: clamp every ``cx, cy, w, h`` value to [0, 1] (SuperGradients); TF's generator does not clip.
    """

    def __init__(self, fig_size: int = 320, feat_size: Sequence[int] = (20, 10, 5, 3, 2, 1),
                 scales: Sequence[float] = (32, 82, 133, 184, 235, 285, 336),
                 aspect_ratios: Sequence[Sequence[float]] = ((2, 3),) * 6, scale_xy: float = 0.1,
                 scale_wh: float = 0.2, steps: Sequence[int] | None = None,
                 lowest_level_scale: float | None = None, clip: bool = True):
        # ``steps`` is accepted for older SuperGradients configs; centres follow the grid, as its current code does.
        del steps
        self.lowest_level_scale = None if lowest_level_scale is None else float(lowest_level_scale)
        self.clip = bool(clip)
        self.fig_size = int(fig_size)
        self.feat_size = [int(f) for f in feat_size]
        self.scales = [float(s) for s in scales]
        self.aspect_ratios = [[float(a) for a in ratios] for ratios in aspect_ratios]
        self.scale_xy = float(scale_xy)
        self.scale_wh = float(scale_wh)
        levels = len(self.feat_size)
        if levels == 0 or len(self.scales) != levels + 1 or len(self.aspect_ratios) != levels:
            raise RecipeError(
                f"DefaultBoxes: need one aspect-ratio list per level and one more scale than levels; got "
                f"{levels} feat_size, {len(self.scales)} scales and {len(self.aspect_ratios)} aspect_ratios lists."
            )
        if self.fig_size <= 0 or min(self.scales) <= 0 or min(self.feat_size) <= 0 or self.scale_xy <= 0 \
                or self.scale_wh <= 0 or any(a <= 0 for ratios in self.aspect_ratios for a in ratios) \
                or (self.lowest_level_scale is not None and self.lowest_level_scale <= 0):
            raise RecipeError("DefaultBoxes: fig_size, feat_size, scales, aspect ratios, lowest_level_scale and "
                              "scale_xy/scale_wh must be positive.")
        self.sizes = [self._level_sizes(k) for k in range(levels)]
        self.num_anchors = [len(sizes) for sizes in self.sizes]
        self.dboxes = self._boxes(self.feat_size, torch.device("cpu"), torch.float32)
        self.dboxes_xyxy = cxcywh_to_xyxy(self.dboxes)

    def _level_sizes(self, k: int) -> list[tuple[float, float]]:
        small, large = self.scales[k], self.scales[k + 1]
        if k == 0 and self.lowest_level_scale is not None:
            sizes = [(self.lowest_level_scale,) * 2]
        else:
            sizes = [(small, small), (math.sqrt(small * large),) * 2]
        for ratio in self.aspect_ratios[k]:
            wide, tall = small * math.sqrt(ratio), small / math.sqrt(ratio)
            sizes += [(wide, tall), (tall, wide)]
        return [(w / self.fig_size, h / self.fig_size) for w, h in sizes]

    def _boxes(self, feature_sizes: Sequence[tuple[int, int] | int], device: torch.device,
               dtype: torch.dtype) -> Tensor:
        """Normalised ``[A, 4]`` cx, cy, w, h for the given per-level ``(h, w)`` grid sizes."""
        levels = []
        for size, shapes in zip(feature_sizes, self.sizes, strict=True):
            rows, cols = (size, size) if isinstance(size, int) else size
            ys = (torch.arange(rows, device=device, dtype=dtype) + 0.5) / rows
            xs = (torch.arange(cols, device=device, dtype=dtype) + 0.5) / cols
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")
            centres = torch.stack((cx, cy), dim=-1).reshape(1, -1, 2).expand(len(shapes), -1, -1)
            wh = torch.tensor(shapes, device=device, dtype=dtype)[:, None, :].expand(-1, rows * cols, -1)
            levels.append(torch.cat((centres, wh), dim=-1).reshape(-1, 4))
        boxes = torch.cat(levels)
        return boxes.clamp_(0.0, 1.0) if self.clip else boxes

    def __call__(self, order: str = "xyxy") -> Tensor:
        """The reference boxes (at ``feat_size``), normalised to [0, 1]: ``order`` ``"xyxy"`` or ``"xywh"``
        (centre and size), as SuperGradients' ``DefaultBoxes``."""
        if order == "xyxy":
            return self.dboxes_xyxy
        if order == "xywh":
            return self.dboxes
        raise RecipeError(f"DefaultBoxes: order must be 'xyxy' or 'xywh', got {order!r}.")

    def __len__(self) -> int:
        return len(self.dboxes)

    def __repr__(self) -> str:
        return (f"DefaultBoxes(fig_size={self.fig_size}, feat_size={self.feat_size}, scales={self.scales}, "
                f"aspect_ratios={self.aspect_ratios}, scale_xy={self.scale_xy}, scale_wh={self.scale_wh}, "
                f"lowest_level_scale={self.lowest_level_scale}, clip={self.clip})")

    def for_feature_sizes(self, feature_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int],
                          device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """``[A, 4]`` cx, cy, w, h in pixels of an ``image_size`` ``(h, w)`` input whose levels are
        ``feature_sizes`` ``[(h, w), ...]`` (the boxes the head's predictions are offsets from)."""
        if len(feature_sizes) != len(self.sizes):
            raise RecipeError(f"DefaultBoxes has {len(self.sizes)} levels but the head sees {len(feature_sizes)} "
                              "feature maps; give one scale and aspect-ratio list per map.")
        boxes = self._boxes(feature_sizes, device or torch.device("cpu"), dtype)
        height, width = image_size
        return boxes * torch.tensor([width, height, width, height], device=boxes.device, dtype=dtype)


def build_default_boxes(spec: Any, where: str) -> DefaultBoxes:
    """A :class:`DefaultBoxes` from itself or a spec: ``{DefaultBoxes: {...}}``, or a ``_target_`` node naming any
    ``...DefaultBoxes`` (SuperGradients configs name its own class; the arguments are the same)."""
    if isinstance(spec, Mapping) and "_target_" in spec and str(spec["_target_"]).rpartition(".")[2] == "DefaultBoxes":
        spec = {"DefaultBoxes": {k: v for k, v in spec.items() if k != "_target_"}}
    boxes = build(DETECTION_MODULES, spec, where)
    if not isinstance(boxes, DefaultBoxes):
        raise RecipeError(f"{where} must be DefaultBoxes (or its spec), got {type(boxes).__name__}.")
    return boxes


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``[..., 4]`` centre/size -> corners."""
    centre, half = boxes[..., :2], boxes[..., 2:] / 2
    return torch.cat((centre - half, centre + half), dim=-1)


def encode_boxes(boxes: Tensor, dboxes: Tensor, scale_xy: float = 0.1, scale_wh: float = 0.2) -> Tensor:
    """Ground-truth ``boxes`` ``[..., A, 4]`` cx, cy, w, h -> SSD offsets from ``dboxes`` ``[A, 4]`` (same units)."""
    t_xy = (boxes[..., :2] - dboxes[:, :2]) / (dboxes[:, 2:] * scale_xy)
    t_wh = torch.log(boxes[..., 2:] / dboxes[:, 2:]) / scale_wh
    return torch.cat((t_xy, t_wh), dim=-1)


def decode_boxes(offsets: Tensor, dboxes: Tensor, scale_xy: float = 0.1, scale_wh: float = 0.2) -> Tensor:
    """SSD offsets ``[..., A, 4]`` -> boxes cx, cy, w, h in the units of ``dboxes`` ``[A, 4]`` (inverse of
    :func:`encode_boxes`)."""
    xy = offsets[..., :2] * scale_xy * dboxes[:, 2:] + dboxes[:, :2]
    wh = torch.exp(offsets[..., 2:] * scale_wh) * dboxes[:, 2:]
    return torch.cat((xy, wh), dim=-1)
