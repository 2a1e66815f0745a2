"""The building blocks of the segmentation losses (:mod:`.losses`): edge and STDC detail maps derived from a mask,
per-pixel cross-entropy, masked means, soft Dice and online hard example mining. Plain functions of tensors, each
with the exact definition its loss documents."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_IGNORE_INDEX = 255


# ---------------------------------------------------------------------------------------------- target maps
def boundary_map(target: Tensor, ignore_index: int = DEFAULT_IGNORE_INDEX, kernel_size: int = 3) -> Tensor:
    """``[B, H, W]`` bool: the non-ignored pixels whose ``kernel_size`` x ``kernel_size`` window (clipped at the
    image border) holds another label, ``ignore_index`` counting as a label (a void region's rim is a boundary).

    This is the edge map of SuperGradients' ``target_to_binary_edge`` (dilation minus erosion of the one-hot mask,
    replicate padding), computed as "window max != window min" of the label map, without a channel per class;
    ignored pixels are left out here because they carry no loss.
    """
    pad = kernel_size // 2
    labels = F.pad(target.unsqueeze(1).float(), [pad] * 4, mode="replicate")  # replicate: the frame is no edge
    high = F.max_pool2d(labels, kernel_size, stride=1)
    low = -F.max_pool2d(-labels, kernel_size, stride=1)
    return (high != low).squeeze(1) & (target != ignore_index)


def stdc_detail_map(target: Tensor, ignore_index: int = DEFAULT_IGNORE_INDEX, detail_threshold: float = 1.0,
                    strides: Sequence[int] = (1, 2, 4), fuse_weights: Sequence[float] = (0.6, 0.3, 0.1),
                    fuse_threshold: float = 0.1) -> Tensor:
    """STDC's ground-truth detail map, ``[B, H, W]`` float of 0/1.

    1. The Laplacian kernel ``[[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]]`` on the one-hot mask (ignored pixels:
       no class), replicate padding, max over the class channels. At a non-ignored pixel this is the number of its
       8 neighbours with another label (ignore counting as one); at an ignored pixel it is <= 0. It is computed
       here by counting those neighbours, which needs no channel per class.
    2. For each stride ``s`` (1, 2, 4): the response at pixels ``(s*i, s*j)`` (a stride-``s`` convolution with
       padding 1), ``>= detail_threshold`` (1: any differing neighbour), upsampled (nearest) to the mask size.
    3. Fused as ``sum(fuse_weights[k] * map_k)`` (the paper's 1x1 convolution at its initial 0.6, 0.3, 0.1; it
       gets no gradient through the threshold, so it is fixed here) and ``> fuse_threshold`` (0.1, the STDC
       code's). With these defaults a pixel is a detail at stride 1 or 2; the stride-4 map alone (0.1) does not
       pass, in the STDC code as in SuperGradients (threshold 0.3). Departures from the STDC code: replicate
       instead of zero padding (the image frame is not a detail) and one-hot labels (both sides of a boundary, as
       SuperGradients does, rather than the side with the higher label value).
    """
    height, width = target.shape[-2:]
    labels = F.pad(target.unsqueeze(1).float(), [1] * 4, mode="replicate")
    centre = labels[..., 1:1 + height, 1:1 + width]
    response = torch.zeros_like(centre)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                response += labels[..., 1 + dy:1 + dy + height, 1 + dx:1 + dx + width] != centre
    response = response * (target != ignore_index).unsqueeze(1)
    fused = torch.zeros_like(response)
    for stride, weight in zip(strides, fuse_weights, strict=True):
        detail = (response[..., ::stride, ::stride] >= detail_threshold).float()
        if stride > 1:
            detail = F.interpolate(detail, size=(height, width), mode="nearest")
        fused += weight * detail
    return (fused > fuse_threshold + 1e-6).float().squeeze(1)  # the tolerance: 0.1 * 1.0 against 0.1 in float32


# ---------------------------------------------------------------------------------------------- building blocks
def pixel_ce(logits: Tensor, target: Tensor, ignore_index: int, class_weights: Tensor | None = None,
             label_smoothing: float = 0.0) -> Tensor:
    """Per-pixel cross-entropy ``[B, H, W]`` (0 at ignored pixels), ``class_weights[target]`` applied."""
    return F.cross_entropy(logits.float(), target, weight=class_weights, ignore_index=ignore_index,
                           reduction="none", label_smoothing=label_smoothing)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask``; 0 (with a gradient path) where nothing is selected."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def soft_dice_loss(probs: Tensor, onehot: Tensor, valid: Tensor, smooth: float, per_image: bool,
                   eps: float = 1e-7) -> Tensor:
    """``1 - mean(dice)``, ``dice = (2 sum(p y) + smooth) / (sum(p) + sum(y) + smooth)`` per class (and per image
    when ``per_image``), sums over non-ignored pixels only. ``probs``, ``onehot``: ``[B, K, H, W]``."""
    probs, onehot = probs * valid, onehot * valid
    dims = (2, 3) if per_image else (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    cardinality = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * intersection + smooth) / (cardinality + smooth).clamp(min=eps)).mean()


def ohem_mean(losses: Tensor, valid: Tensor, threshold: float, min_kept: int, min_kept_fraction: float) -> Tensor:
    """Mean of the ``k`` largest of ``losses`` over ``valid`` pixels, ``k = max(#(loss > -log threshold),
    min_kept, floor(min_kept_fraction * #valid))`` capped at ``#valid``; 0 when no pixel is valid.

    The ``k`` hardest pixels are taken by sorting and a rank mask rather than ``topk(k)``, so that the data-dependent
    ``k`` needs no host/device synchronisation.
    """
    losses, valid = losses.flatten(), valid.flatten()
    num_valid = valid.sum()
    num_hard = ((losses > -math.log(threshold)) & valid).sum()
    floor_kept = torch.clamp((num_valid * min_kept_fraction).floor().long(), min=min_kept)
    k = torch.minimum(torch.maximum(num_hard, floor_kept), num_valid)
    ordered = torch.where(valid, losses, -1.0).sort(descending=True).values  # losses are >= 0: valid come first
    kept = torch.arange(ordered.numel(), device=ordered.device) < k
    return torch.where(kept, ordered, 0.0).sum() / k.clamp(min=1)


def dice_of(logits: Tensor, target: Tensor, ignore_index: int, smooth: float = 1.0, per_image: bool = True,
            apply_softmax: bool = True) -> Tensor:
    """:class:`DiceLoss` of one output."""
    probs = logits.float().softmax(dim=1) if apply_softmax else logits.float()
    valid = target != ignore_index
    onehot = F.one_hot(torch.where(valid, target, 0), logits.shape[1]).permute(0, 3, 1, 2)
    return soft_dice_loss(probs, onehot, valid.unsqueeze(1), smooth, per_image)
