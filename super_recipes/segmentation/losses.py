"""Segmentation losses: recipe key ``training_hyperparams.loss`` with its arguments in
``training_hyperparams.criterion_params``.

```yaml
training_hyperparams:
  loss: OhemCELoss
  criterion_params: {threshold: 0.9, min_kept: 131072, weights: [1.0, 0.4]}   # DDRNet: main 1.0, aux 0.4
```

Every loss takes the model's training output, logits ``[B, C, H, W]`` or a tuple ``(main, aux1, ...)``, and its
eval output (the main logits alone, for the validation loss), with int64 masks ``[B, H, W]`` where
``ignore_index`` pixels count for nothing: they are left out of every sum and every mean, so that predictions there
change no loss. Logits of another size than the mask (auxiliary heads) are resized to it, bilinear without corner
alignment. Binary segmentation (``BCEDiceLoss``) takes one logit channel and 0/1 masks.

``weights`` (main first) weigh the outputs of a tuple; a tuple needs exactly one weight per output (``[1.0]``,
main only, by default), so an auxiliary head is never dropped silently. An output the model does not return (the
eval output has no auxiliary heads) contributes nothing and logs 0. Each loss returns ``(loss, items)``, ``loss``
the weighted sum and ``items`` the detached, unweighted terms named by ``component_names``: the terms of the main
output (``main``, or e.g. ``ce, dice, edge``), then ``aux1``, ``aux2``..., then ``detail_bce, detail_dice`` for a
detail output, then ``total`` (the loss itself). A loss with a single term logs it under the loss's class name,
as the trainer names single items. Every name is usable as ``metric_to_watch``.

Edge and detail maps are derived from the mask: see :func:`~.loss_functions.boundary_map` (``DiceCEEdgeLoss``)
and :func:`~.loss_functions.stdc_detail_map` (``STDCLoss``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from super_recipes.errors import RecipeError
from super_recipes.registry import register_loss, to_plain
from super_recipes.segmentation.loss_functions import (
    DEFAULT_IGNORE_INDEX,
    boundary_map,
    dice_of,
    masked_mean,
    ohem_mean,
    pixel_ce,
    soft_dice_loss,
    stdc_detail_map,
)

Preds = Tensor | Sequence[Tensor]


def _floats(value: Any, key: str, owner: str, length: int | None = None) -> list[float] | None:
    value = to_plain(value)
    if value is None:
        return None
    value = [value] if isinstance(value, int | float) else value  # a bool fails the check below
    ok = isinstance(value, list | tuple) and value and all(
        isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in value)
    if not ok or (length is not None and len(value) != length):
        size = f"{length} " if length is not None else ""
        raise RecipeError(f"{owner}: criterion_params.{key} must be a list of {size}numbers >= 0, got {value!r}.",
                          key=f"training_hyperparams.criterion_params.{key}")
    return [float(v) for v in value]


# ---------------------------------------------------------------------------------------------- the base
class SegmentationLoss(nn.Module):
    """Base of the segmentation losses: splits the output, resizes, weighs outputs, names the items (see the
    module docstring). Subclasses implement :meth:`output_loss` and may set ``main_terms`` and ``detail_index``."""

    main_terms: tuple[str, ...] = ("main",)
    binary = False  # one logit channel instead of class logits
    detail_weights: Sequence[float] = (1.0, 1.0)  # BCE and Dice of a detail output

    def __init__(self, weights: Sequence[float] | None = None, ignore_index: int = DEFAULT_IGNORE_INDEX,
                 num_classes: int | None = None, detail_index: int | None = None):
        super().__init__()
        self.weights = _floats(weights, "weights", type(self).__name__) or [1.0]
        self.ignore_index = int(ignore_index)
        self.num_classes = num_classes
        self.detail_index = detail_index  # position of a detail-logits output in the tuple (STDC), or None
        self.detail_terms = ("detail_bce", "detail_dice") if detail_index is not None else ()

    @property
    def component_names(self) -> list[str]:
        """The names of the items, known before any forward pass (see the module docstring)."""
        names = [*self.main_terms, *(f"aux{i}" for i in range(1, len(self.weights))), *self.detail_terms]
        return [*names, "total"] if len(names) > 1 else [type(self).__name__]

    def forward(self, preds: Preds, target: Tensor) -> tuple[Tensor, Tensor]:
        outputs, detail = self._split(preds)
        target = (target.squeeze(1) if target.ndim == 4 and target.shape[1] == 1 else target).long()
        self._check(outputs[0], target)
        context = self.prepare(target)
        zero = outputs[0].new_zeros((), dtype=torch.float32)
        total, items = zero, []
        for i, weight in enumerate(self.weights):
            if i >= len(outputs):  # the eval output: no auxiliary heads
                items.append(zero)
                continue
            self._check(outputs[i], target)
            value, terms = self.output_loss(self._resized(outputs[i], target), target, context)
            total = total + weight * value
            items += terms if i == 0 else [value]
        if self.detail_terms:
            terms = self.detail_loss(detail, target, context) if detail is not None else [zero, zero]
            total = total + sum(w * t for w, t in zip(self.detail_weights, terms, strict=True))
            items += terms
        if len(items) > 1:
            items.append(total)
        return total, torch.stack([item.detach().float() for item in items])

    def prepare(self, target: Tensor) -> Any:
        """What every output's loss needs from the mask (computed once per batch)."""
        return None

    def output_loss(self, logits: Tensor, target: Tensor, context: Any) -> tuple[Tensor, list[Tensor]]:
        """``(loss of one output, its terms named by main_terms)``; ``logits`` already at the mask's size."""
        raise NotImplementedError

    def detail_loss(self, logits: Tensor, target: Tensor, context: Any) -> list[Tensor]:
        """Unweighted ``[BCE, Dice]`` of the detail logits against the 0/1 map ``context["detail"]``."""
        logits = self._resized(logits, target).float()
        valid = (target != self.ignore_index).unsqueeze(1)
        truth = context["detail"].unsqueeze(1)
        bce = masked_mean(F.binary_cross_entropy_with_logits(logits, truth, reduction="none"), valid)
        return [bce, soft_dice_loss(logits.sigmoid(), truth, valid, 1.0, per_image=True)]

    def _split(self, preds: Preds) -> tuple[list[Tensor], Tensor | None]:
        if isinstance(preds, Tensor):
            return [preds], None
        outputs, detail = list(preds), None
        if self.detail_index is not None:
            if not -len(outputs) <= self.detail_index < len(outputs):
                raise RecipeError(f"{type(self).__name__}: detail_index {self.detail_index} is outside the "
                                  f"model's {len(outputs)} outputs.")
            detail = outputs.pop(self.detail_index)
            if detail.ndim != 4 or detail.shape[1] != 1:
                raise RecipeError(f"{type(self).__name__}: the detail output (position {self.detail_index}) should "
                                  f"be one logit channel [B, 1, H, W], got {list(detail.shape)}: check detail_index "
                                  "against the model's output_names.",
                                  key="training_hyperparams.criterion_params.detail_index")
        if len(outputs) != len(self.weights):
            what = "segmentation outputs besides the detail output" if detail is not None else "outputs"
            raise RecipeError(
                f"{type(self).__name__}: the model returned {len(outputs)} {what} (main first) but "
                f"criterion_params.weights has {len(self.weights)} ({self.weights}): give one weight per output, "
                f"e.g. weights: {[1.0] + [0.4] * (len(outputs) - 1)}.", key="training_hyperparams.criterion_params")
        return outputs, detail

    def _check(self, logits: Tensor, target: Tensor) -> None:
        name = type(self).__name__
        if logits.ndim != 4 or target.ndim != 3 or len(target) != len(logits):
            raise RecipeError(f"{name}: expected logits [B, C, H, W] and masks [B, H, W], got logits "
                              f"{list(logits.shape)} and masks {list(target.shape)}.")
        channels = logits.shape[1]
        if self.binary != (channels == 1):
            raise RecipeError(f"{name}: the model outputs {channels} channels: " + (
                "binary segmentation takes one logit channel (num_classes: 1); use a multi-class loss" if self.binary
                else "1 channel is binary segmentation: use BCEDiceLoss, or give the model num_classes >= 2") + ".")
        if self.num_classes is not None and not self.binary and channels != self.num_classes:
            raise RecipeError(f"{name}: criterion_params.num_classes is {self.num_classes} but the model outputs "
                              f"{channels} channels.", key="training_hyperparams.criterion_params.num_classes")

    @staticmethod
    def _resized(logits: Tensor, target: Tensor) -> Tensor:
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return logits


# ---------------------------------------------------------------------------------------------- the losses
@register_loss("SegmentationCrossEntropyLoss")
class SegmentationCrossEntropyLoss(SegmentationLoss):
    """Cross-entropy per pixel, ``sum(w[y] * ce) / sum(w[y])`` over non-ignored pixels (``torch``'s weighted
    mean; 0 when every pixel is ignored), per output, ``weights`` over the outputs.

    :param ignore_index: mask value that counts for nothing.
    :param class_weights: one weight per class (``w``; default all 1).
    :param label_smoothing: as in ``torch.nn.CrossEntropyLoss``.
    :param weights: one weight per model output, main first (default ``[1.0]``: main only).
    :param num_classes: when given, the model's channel count is checked against it.
    """

    def __init__(self, ignore_index: int = DEFAULT_IGNORE_INDEX, class_weights: Sequence[float] | None = None,
                 label_smoothing: float = 0.0, weights: Sequence[float] | None = None, num_classes: int | None = None):
        super().__init__(weights, ignore_index, num_classes)
        if not 0 <= label_smoothing <= 1:
            raise RecipeError(f"SegmentationCrossEntropyLoss: label_smoothing must be in [0, 1], "
                              f"got {label_smoothing}.")
        self.label_smoothing = float(label_smoothing)
        class_weights = _floats(class_weights, "class_weights", type(self).__name__, num_classes)
        self.register_buffer("class_weights", None if class_weights is None else torch.tensor(class_weights),
                             persistent=False)

    def output_loss(self, logits: Tensor, target: Tensor, context: Any) -> tuple[Tensor, list[Tensor]]:
        if self.class_weights is not None and len(self.class_weights) != logits.shape[1]:
            raise RecipeError(f"SegmentationCrossEntropyLoss: class_weights has {len(self.class_weights)} values but "
                              f"the model outputs {logits.shape[1]} classes.")
        losses = pixel_ce(logits, target, self.ignore_index, self.class_weights, self.label_smoothing)
        valid = target != self.ignore_index
        if self.class_weights is None:
            value = masked_mean(losses, valid)
        else:  # the denominator of torch's weighted mean: the weights of the non-ignored pixels' classes
            pixel_weights = self.class_weights[target.clamp(0, logits.shape[1] - 1)] * valid
            value = losses.sum() / pixel_weights.sum().clamp(min=torch.finfo(torch.float32).tiny)
        return value, [value]


@register_loss("OhemCELoss")
class OhemCELoss(SegmentationLoss):
    """Online hard example mining cross-entropy (BiSeNet/STDC/DDRNet practice), per output:
    the mean cross-entropy of the pixels whose loss is above ``-log(threshold)`` (probability of the true class
    below ``threshold``), or of the ``max(min_kept, floor(min_kept_fraction * N))`` hardest pixels when fewer are
    above it (``N``: non-ignored pixels of the batch; ignored pixels are never kept). See :func:`ohem_mean`.

    Published settings: BiSeNet/STDC ``threshold: 0.7`` with 1/16 of the pixels (the defaults); DDRNet
    ``threshold: 0.9, min_kept: 131072, min_kept_fraction: 0, weights: [1.0, 0.4]``.

    :param threshold: probability below which a pixel is hard, in (0, 1].
    :param min_kept: keep at least this many pixels per output.
    :param min_kept_fraction: keep at least this fraction of the non-ignored pixels.
    :param weights: one weight per model output, main first (default ``[1.0]``: main only).
    """

    def __init__(self, threshold: float = 0.7, min_kept: int = 0, min_kept_fraction: float = 1 / 16,
                 ignore_index: int = DEFAULT_IGNORE_INDEX, weights: Sequence[float] | None = None,
                 num_classes: int | None = None):
        super().__init__(weights, ignore_index, num_classes)
        if not 0 < threshold <= 1 or min_kept < 0 or not 0 <= min_kept_fraction <= 1:
            raise RecipeError(f"OhemCELoss: threshold must be in (0, 1], min_kept >= 0, min_kept_fraction in [0, 1]; "
                              f"got {threshold}, {min_kept}, {min_kept_fraction}.")
        self.threshold, self.min_kept, self.min_kept_fraction = float(threshold), int(min_kept), min_kept_fraction

    def output_loss(self, logits: Tensor, target: Tensor, context: Any) -> tuple[Tensor, list[Tensor]]:
        losses = pixel_ce(logits, target, self.ignore_index)
        value = ohem_mean(losses, target != self.ignore_index, self.threshold, self.min_kept, self.min_kept_fraction)
        return value, [value]


@register_loss("DiceLoss")
class DiceLoss(SegmentationLoss):
    """Soft Dice over classes: ``1 - mean_c (2 sum(p_c y_c) + smooth) / (sum(p_c) + sum(y_c) + smooth)``, ``p`` the
    softmax probabilities (the output itself without ``apply_softmax``), ``y`` the one-hot mask, sums over the
    non-ignored pixels of each image (of the whole batch without ``per_image``), the mean over classes (and images).

    :param smooth: added to numerator and denominator (a class absent from an image and not predicted scores 1).
    :param apply_softmax: the outputs are logits (default); false when the model already gives probabilities.
    :param per_image: Dice per image and class, averaged (SuperGradients' default); false: over the whole batch.
    :param weights: one weight per model output, main first (default ``[1.0]``: main only).
    """

    def __init__(self, ignore_index: int = DEFAULT_IGNORE_INDEX, smooth: float = 1.0, apply_softmax: bool = True,
                 per_image: bool = True, weights: Sequence[float] | None = None, num_classes: int | None = None):
        super().__init__(weights, ignore_index, num_classes)
        self.smooth, self.apply_softmax, self.per_image = float(smooth), bool(apply_softmax), bool(per_image)

    def output_loss(self, logits: Tensor, target: Tensor, context: Any) -> tuple[Tensor, list[Tensor]]:
        value = dice_of(logits, target, self.ignore_index, self.smooth, self.per_image, self.apply_softmax)
        return value, [value]


@register_loss("DiceCEEdgeLoss")
class DiceCEEdgeLoss(SegmentationLoss):
    """Dice + cross-entropy + an edge term (SuperGradients' PP-LiteSeg/STDC recipe loss), per output:
    ``ce_weight * CE + dice_weight * Dice + edge_weight * CE_edge``, where ``CE`` is the mean cross-entropy over
    non-ignored pixels, ``Dice`` the :class:`DiceLoss` and ``CE_edge`` the mean cross-entropy over the boundary pixels
    of :func:`boundary_map` (0 when there are none). With ``detail_index``, that output (one logit channel, e.g.
    STDC's detail head) gets ``detail_weights[0] * BCE + detail_weights[1] * Dice`` against the same boundary map.
    Items: ``ce, dice, edge`` of the main output, ``aux<i>``, ``detail_bce, detail_dice``, ``total``.

    The defaults are SuperGradients' (``ce_edge_weights 0.5, 0.5``, ``dice_ce_weights 1, 1``), but each mean is
    over non-ignored pixels (SuperGradients averages the edge term over all pixels, ignored ones included).

    :param edge_kernel: odd window size of the boundary test (boundary width ~ ``edge_kernel - 1``).
    :param weights: one weight per segmentation output, main first (default ``[1.0]``: main only).
    :param detail_index: position of a detail-logits output in the tuple (``-1``: last); None: no such output.
    """

    main_terms = ("ce", "dice", "edge")

    def __init__(self, num_classes: int | None = None, ignore_index: int = DEFAULT_IGNORE_INDEX,
                 ce_weight: float = 0.5, dice_weight: float = 1.0, edge_weight: float = 0.5, edge_kernel: int = 3,
                 weights: Sequence[float] | None = None, detail_index: int | None = None,
                 detail_weights: Sequence[float] = (1.0, 1.0)):
        super().__init__(weights, ignore_index, num_classes, detail_index)
        if not isinstance(edge_kernel, int) or edge_kernel < 1 or edge_kernel % 2 == 0:
            raise RecipeError(f"DiceCEEdgeLoss: edge_kernel must be an odd integer >= 1, got {edge_kernel!r}.")
        self.term_weights = _floats([ce_weight, dice_weight, edge_weight], "ce_weight/dice_weight/edge_weight",
                                    type(self).__name__)
        self.edge_kernel = edge_kernel
        self.detail_weights = _floats(detail_weights, "detail_weights", type(self).__name__, 2)

    def prepare(self, target: Tensor) -> dict[str, Tensor]:
        edges = boundary_map(target, self.ignore_index, self.edge_kernel)
        return {"edges": edges, "detail": edges.float()}

    def output_loss(self, logits: Tensor, target: Tensor, context: Any) -> tuple[Tensor, list[Tensor]]:
        losses = pixel_ce(logits, target, self.ignore_index)
        terms = [masked_mean(losses, target != self.ignore_index), dice_of(logits, target, self.ignore_index),
                 masked_mean(losses, context["edges"])]
        return sum(w * t for w, t in zip(self.term_weights, terms, strict=True)), terms


@register_loss("BCEDiceLoss")
class BCEDiceLoss(SegmentationLoss):
    """Binary segmentation (one logit channel, masks 0/1): ``bce_weight * BCE + dice_weight * Dice`` per output,
    ``BCE`` the mean binary cross-entropy with logits over non-ignored pixels, ``Dice`` the soft Dice loss of the
    sigmoid probabilities against the mask over non-ignored pixels (per image, ``smooth`` 1, then averaged). Items:
    ``bce, dice`` of the main output, ``aux<i>``, ``total``. Defaults 0.5/0.5 as SuperGradients' ``BCEDiceLoss``.

    :param weights: one weight per model output, main first (default ``[1.0]``: main only).
    """

    main_terms = ("bce", "dice")
    binary = True

    def __init__(self, bce_weight: float = 0.5, dice_weight: float = 0.5, ignore_index: int = DEFAULT_IGNORE_INDEX,
                 smooth: float = 1.0, per_image: bool = True, weights: Sequence[float] | None = None):
        super().__init__(weights, ignore_index)
        self.term_weights = _floats([bce_weight, dice_weight], "bce_weight/dice_weight", type(self).__name__)
        self.smooth, self.per_image = float(smooth), bool(per_image)
        self._mask_checked = False

    def output_loss(self, logits: Tensor, target: Tensor, context: Any) -> tuple[Tensor, list[Tensor]]:
        logits = logits.float()
        valid = (target != self.ignore_index).unsqueeze(1)
        if not self._mask_checked:  # once (a host sync): a 0/255 mask would otherwise train on nothing but 0s
            values = target[(target != self.ignore_index) & (target != 0) & (target != 1)].unique()
            if len(values):
                raise RecipeError(f"BCEDiceLoss: binary masks hold 0, 1 and ignore_index {self.ignore_index}; found "
                                  f"{values[:5].tolist()}. Map the foreground to 1 in the dataset.")
            self._mask_checked = True
        truth = (target == 1).unsqueeze(1).float()
        bce = masked_mean(F.binary_cross_entropy_with_logits(logits, truth, reduction="none"), valid)
        dice = soft_dice_loss(logits.sigmoid(), truth, valid, self.smooth, self.per_image)
        return self.term_weights[0] * bce + self.term_weights[1] * dice, [bce, dice]


@register_loss("STDCLoss")
class STDCLoss(SegmentationLoss):
    """STDC-Seg training loss: OHEM cross-entropy (:class:`OhemCELoss`; plain cross-entropy without ``use_ohem``)
    on the main and auxiliary outputs, weighted by ``weights``, plus the detail loss on the detail logits (the
    tuple element at ``detail_index``, default the last): ``detail_weights[0] * BCE + detail_weights[1] * Dice``
    against :func:`stdc_detail_map` of the mask, both over non-ignored pixels (Dice per image, ``smooth`` 1, as in
    the STDC code). Items: ``main, aux1, ..., detail_bce, detail_dice, total``.

    Defaults are the paper's: main and two auxiliary heads at weight 1 (``weights: [1.0, 1.0, 1.0]``), OHEM at
    0.7 keeping at least 1/16 of the pixels, BCE and Dice at weight 1. The eval output (main logits alone) gets
    the main term only.

    :param detail_threshold: Laplacian response (differing neighbours, of 8) that makes a pixel a detail.
    :param fuse_threshold: threshold of the fused strides 1/2/4 maps (weights 0.6, 0.3, 0.1).
    """

    def __init__(self, num_classes: int | None = None, ignore_index: int = DEFAULT_IGNORE_INDEX,
                 weights: Sequence[float] | None = (1.0, 1.0, 1.0), detail_index: int = -1,
                 detail_weights: Sequence[float] = (1.0, 1.0), use_ohem: bool = True, threshold: float = 0.7,
                 min_kept: int = 0, min_kept_fraction: float = 1 / 16, detail_threshold: float = 1.0,
                 fuse_threshold: float = 0.1):
        super().__init__(weights, ignore_index, num_classes, int(detail_index))
        self.detail_weights = _floats(detail_weights, "detail_weights", type(self).__name__, 2)
        self.segmentation = OhemCELoss(threshold, min_kept, min_kept_fraction, ignore_index) if use_ohem \
            else SegmentationCrossEntropyLoss(ignore_index)
        self.detail_threshold, self.fuse_threshold = float(detail_threshold), float(fuse_threshold)

    def prepare(self, target: Tensor) -> dict[str, Tensor]:
        return {"detail": stdc_detail_map(target, self.ignore_index, self.detail_threshold,
                                          fuse_threshold=self.fuse_threshold)}

    def output_loss(self, logits: Tensor, target: Tensor, context: Any) -> tuple[Tensor, list[Tensor]]:
        return self.segmentation.output_loss(logits, target, None)
