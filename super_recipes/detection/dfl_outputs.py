"""Anchor points and distribution-focal (DFL) box outputs shared by the PP-YOLOE and YOLO-NAS heads.

Both heads predict, at every cell of strides 8/16/32, class logits and for each box side (left, top, right,
bottom) a distribution over ``reg_max + 1`` integer distances in stride units (Li et al., "Generalized Focal
Loss", 2020). The expected distance times the stride, measured from the cell centre, gives the box.

What the head returns, as the detection guide describes (``A`` = anchors over all levels, ``C`` classes):

* ``model.train()``: ``(cls_score_list [B, A, C]`` sigmoid probabilities, ``reg_distri_list [B, A, 4 * (reg_max +
  1)]`` raw logits, ``anchors [A, 4]`` xyxy pixel squares of side ``grid_cell_size * stride`` (what ATSS compares
  with the boxes), ``anchor_points [A, 2]`` cell centres in pixels, ``num_anchors_list`` anchors per level,
  ``stride_tensor [A, 1])`` — what :class:`~super_recipes.detection.ppyoloe.loss.PPYoloELoss` consumes;
* ``model.eval()``: ``((pred_bboxes [B, A, 4]`` xyxy pixels, not clipped, ``pred_scores [B, A, C]), raw)``;
* traced or exported: ``(pred_bboxes, pred_scores)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from super_recipes.detection.tracing import is_exporting

__all__ = ["distances_to_boxes", "distribution_to_distances", "dfl_head_outputs", "generate_anchors"]

RawOutputs = tuple[Tensor, Tensor, Tensor, Tensor, list[int], Tensor]


def generate_anchors(feature_sizes: Sequence[tuple[int, int]], strides: Sequence[int], grid_cell_size: float = 5.0,
                     grid_cell_offset: float = 0.5, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, list[int], Tensor]:
    """Anchors of every level, in level then row-major cell order.

    :return: ``anchors [A, 4]`` (xyxy pixel squares of side ``grid_cell_size * stride`` centred on each cell
        centre), ``anchor_points [A, 2]`` (``((column, row) + grid_cell_offset) * stride``), ``num_anchors_list``
        (cells per level) and ``stride_tensor [A, 1]``.
    """
    anchors, points, counts, strides_out = [], [], [], []
    for (height, width), stride in zip(feature_sizes, strides, strict=True):
        ys = (torch.arange(height, device=device, dtype=dtype) + grid_cell_offset) * stride
        xs = (torch.arange(width, device=device, dtype=dtype) + grid_cell_offset) * stride
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack((grid_x, grid_y), dim=-1).reshape(-1, 2)
        half = grid_cell_size * stride / 2
        anchors.append(torch.cat((centres - half, centres + half), dim=-1))
        points.append(centres)
        counts.append(int(height * width))
        strides_out.append(torch.full((height * width, 1), float(stride), device=device, dtype=dtype))
    return torch.cat(anchors), torch.cat(points), counts, torch.cat(strides_out)


def distribution_to_distances(reg_distri: Tensor, reg_max: int) -> Tensor:
    """``[B, A, 4 * (reg_max + 1)]`` logits -> ``[B, A, 4]`` expected distances (l, t, r, b) in stride units."""
    bins = torch.arange(reg_max + 1, device=reg_distri.device, dtype=reg_distri.dtype)
    probabilities = F.softmax(reg_distri.reshape(*reg_distri.shape[:-1], 4, reg_max + 1), dim=-1)
    return probabilities @ bins


def distances_to_boxes(points: Tensor, distances: Tensor) -> Tensor:
    """Cell centres ``[A, 2]`` (or ``[B, A, 2]``) and distances ``[B, A, 4]`` (l, t, r, b) -> xyxy boxes."""
    left_top, right_bottom = distances[..., :2], distances[..., 2:]
    return torch.cat((points - left_top, points + right_bottom), dim=-1)


def dfl_head_outputs(cls_logits: Sequence[Tensor], reg_distri: Sequence[Tensor], strides: Sequence[int], reg_max: int,
                     training: bool, grid_cell_size: float = 5.0, grid_cell_offset: float = 0.5
                     ) -> RawOutputs | tuple[tuple[Tensor, Tensor], RawOutputs] | tuple[Tensor, Tensor]:
    """Per-level head maps -> the mode's output (see the module docstring).

    :param cls_logits: per level ``[B, C, h, w]`` class logits.
    :param reg_distri: per level ``[B, 4 * (reg_max + 1), h, w]`` distance logits, grouped by side.
    """
    sizes = [tuple(level.shape[-2:]) for level in cls_logits]
    # Sigmoid in float32: in fp16 any logit above ~7.6 rounds to exactly 1, and the probability-based losses
    # would then hit their log clamps.
    scores = torch.cat([level.flatten(2) for level in cls_logits], dim=2).permute(0, 2, 1).float().sigmoid()
    distri = torch.cat([level.flatten(2) for level in reg_distri], dim=2).permute(0, 2, 1)
    # Anchors in at least float32: pixel coordinates of large inputs must stay exact under fp16 autocast.
    dtype = torch.promote_types(distri.dtype, torch.float32)
    anchors, points, counts, stride_tensor = generate_anchors(sizes, strides, grid_cell_size, grid_cell_offset,
                                                              distri.device, dtype)
    raw = (scores, distri, anchors, points, counts, stride_tensor)
    if training:
        return raw
    boxes = distances_to_boxes(points / stride_tensor, distribution_to_distances(distri.to(dtype), reg_max))
    decoded = (boxes * stride_tensor, scores)
    if is_exporting():
        return decoded
    return decoded, raw
