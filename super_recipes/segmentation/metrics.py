"""Segmentation metrics (recipe keys ``train_metrics_list`` / ``valid_metrics_list``): ``PixelAccuracy``, ``IoU``,
``Dice``, ``BinaryIOU``, ``BinaryDice``.

```yaml
training_hyperparams:
  valid_metrics_list: [{IoU: {num_classes: 19}}, {PixelAccuracy: {num_classes: 19}}]
  metric_to_watch: IoU          # or IoU/<class name>, Dice, BinaryIOU, ...
```

Each accumulates one confusion matrix ``M[target, prediction]`` (``num_classes`` x ``num_classes``; 2 x 2 for
the binary ones) with ``torch.bincount`` over the non-ignored pixels, and computes from it:

* ``PixelAccuracy``: ``trace(M) / sum(M)``, the fraction of non-ignored pixels predicted right (one value).
* ``IoU``: per class ``TP / (TP + FP + FN)``; ``IoU`` is their mean over the classes present in the prediction or
  the target (``TP + FP + FN > 0``); ``IoU/<class>`` per class (``class_names`` or the index), NaN for a class
  absent from both. The mean is torchmetrics' ``MulticlassJaccardIndex(average="macro")`` (1.9, tested), which also
  leaves out absent classes; its ``average=None`` reports them as 0 (``zero_division``) where we say NaN, "not
  measured", so that an absent class is not mistaken for a missed one.
* ``Dice``: the same with ``2 TP / (2 TP + FP + FN)`` (torchmetrics' macro ``MulticlassF1Score`` on pixels).
* An ``ignore_index`` that is also a class index (``ignore_index: 0`` to leave out the background) has no
  target pixel: its per-class value is NaN and the means leave it out, as ``MulticlassJaccardIndex`` does (its
  ``MulticlassF1Score`` averages it in as 0). Predicting that class at other pixels still counts as a miss of
  their true class.
* ``BinaryIOU`` / ``BinaryDice``: one logit channel, foreground where ``sigmoid(logit) > threshold``, masks 0/1;
  ``BinaryIOU`` is the foreground IoU (torchmetrics' ``BinaryJaccardIndex``), ``BinaryIOU/background`` and
  ``BinaryIOU/foreground`` per class (``class_names`` renames them), ``BinaryIOU/mean`` their mean
  (SuperGradients' ``mean_IOU``). ``BinaryDice`` likewise.

A value with nothing to measure (every pixel ignored; the foreground absent from prediction and target) is NaN:
the trainer and loggers read NaN as "no result" (no best checkpoint from it, an empty CSV cell), where
torchmetrics would report 0.

Predictions: the model's training output (a tuple: the main output, first, is used) or its eval output, logits
``[B, C, H, W]`` (argmax; resized bilinear to the mask when their size differs) or class indices ``[B, H, W]``.
Masks ``[B, H, W]`` int64 with ``ignore_index`` pixels, which count nowhere. A mask value that is neither a class
nor ``ignore_index`` is refused with the value named.

Why ``torchmetrics.Metric`` as the base (unlike ``TopKAccuracy``, which avoids importing torchmetrics for
classification runs): its ~1.3 s import is nothing against a segmentation run, and it gives, maintained
upstream, what matters here: the confusion matrix summed across DDP ranks at ``compute`` (exact: every pixel of
every rank counts once, a rank without batches included), ``persistent(True)`` putting the state into
``state_dict`` (the trainer checkpoints mid-epoch train metrics that way), device moves and ``sync_on_compute``.
Why not the torchmetrics classification metrics themselves: they take neither tuple outputs nor logits smaller
than the mask, compute one value per object where one matrix serves all of ours (per class and mean), report
absent classes as 0, their binary metrics apply the sigmoid only when values fall outside [0, 1] (a logit map
within [0, 1] would be read as probabilities), and their argument check runs ``torch.unique`` over every pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from super_recipes.errors import RecipeError
from super_recipes.registry import register_metric, to_plain

DEFAULT_IGNORE_INDEX = 255


class ConfusionMatrixMetric(torchmetrics.Metric):
    """Base: accumulates ``confmat[target, prediction]`` over non-ignored pixels (see the module docstring).

    :param num_classes: the model's class count (binary metrics: 1, one logit channel).
    :param ignore_index: mask value that counts nowhere.
    :param class_names: names for the per-class keys (default: the class index).
    :param sync_on_compute: sum the matrix across DDP ranks at ``compute`` (torchmetrics' switch).
    :param dist_sync_on_step: torchmetrics' switch for ``forward`` (a per-batch value); not needed by the trainer.
    :param threshold: binary metrics: foreground where ``sigmoid(logit) > threshold``.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False
    binary = False

    def __init__(self, num_classes: int, ignore_index: int = DEFAULT_IGNORE_INDEX,
                 class_names: Sequence[str] | None = None, *, threshold: float = 0.5, sync_on_compute: bool = True,
                 dist_sync_on_step: bool = False):
        super().__init__(sync_on_compute=sync_on_compute, dist_sync_on_step=dist_sync_on_step)
        name = type(self).__name__
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise RecipeError(f"{name}: num_classes must be an integer >= 1, got {num_classes!r}.")
        if self.binary and num_classes != 1:
            raise RecipeError(f"{name} takes one logit channel (num_classes: 1), got num_classes {num_classes}; "
                              f"for {num_classes}-channel logits use IoU, Dice or PixelAccuracy instead.")
        if not self.binary and num_classes < 2:
            raise RecipeError(f"{name}: num_classes 1 is binary segmentation (one logit channel): use BinaryIOU "
                              "or BinaryDice.")
        if not 0 < threshold < 1:
            raise RecipeError(f"{name}: threshold must be in (0, 1), got {threshold}.")
        self.num_classes = int(num_classes)
        self.num_bins = 2 if self.binary else self.num_classes  # rows/columns of the confusion matrix
        self.ignore_index = int(ignore_index)
        self.threshold = float(threshold)
        names = to_plain(class_names)
        default = ["background", "foreground"] if self.binary else [str(i) for i in range(self.num_bins)]
        self.class_names = [str(n) for n in names] if names is not None else default
        if len(self.class_names) != self.num_bins:
            raise RecipeError(f"{name}: class_names has {len(self.class_names)} names but there are "
                              f"{self.num_bins} classes{' (background, foreground)' if self.binary else ''}.")
        self.add_state("confmat", default=torch.zeros(self.num_bins, self.num_bins, dtype=torch.long),
                       dist_reduce_fx="sum")

    @property
    def sync_on_compute(self) -> bool:
        """Whether ``compute`` sums the matrix across DDP ranks. Settable after construction (the trainer's
        ``evaluate`` switches it off to compute on one rank alone): torchmetrics reads a copy, ``_to_sync``, taken
        at construction, which a plain attribute would leave behind."""
        return self.__dict__.get("_sync_on_compute", True)

    @sync_on_compute.setter
    def sync_on_compute(self, value: bool) -> None:
        self.__dict__["_sync_on_compute"] = value
        self._to_sync = value

    def update(self, preds: Tensor | Sequence[Tensor], target: Tensor) -> None:
        """Add one batch: ``preds`` the model output (a tuple's first element), ``target`` masks ``[B, H, W]``."""
        if isinstance(preds, list | tuple):
            preds = preds[0]
        if target.ndim == 4 and target.shape[1] == 1:
            target = target.squeeze(1)
        labels = self._labels(preds, target)
        bins = self.num_bins
        target = target.to(labels.device).long()
        valid = target != self.ignore_index
        known = (target >= 0) & (target < bins)
        # One bincount: bin bins*bins gathers the ignored pixels, bin bins*bins+1 mask values that are no class.
        index = torch.where(valid, torch.where(known, target * bins + labels, bins * bins + 1), bins * bins)
        counts = torch.bincount(index.flatten(), minlength=bins * bins + 2)
        if counts[-1] > 0:  # bincount has synchronised with the host already (on GPUs it reads the maximum)
            values = target[valid & ~known].unique()[:5].tolist()
            raise RecipeError(f"{type(self).__name__}: mask values {values} are neither a class (0..{bins - 1}) nor "
                              f"ignore_index {self.ignore_index}.")
        # Out of place: the state may have been created under inference mode (a reset inside validation).
        self.confmat = self.confmat + counts[:bins * bins].reshape(bins, bins)

    def _labels(self, preds: Tensor, target: Tensor) -> Tensor:
        """Predicted class per pixel, ``[B, H, W]`` int64."""
        name = type(self).__name__
        if target.ndim != 3:
            raise RecipeError(f"{name}: masks should be [B, H, W], got {list(target.shape)}.")
        if preds.ndim == 3 and not preds.is_floating_point():  # class indices already
            labels = preds.long()
            if len(labels) and (labels.min() < 0 or labels.max() >= self.num_bins):
                raise RecipeError(f"{name}: predicted classes must be in 0..{self.num_bins - 1}, got "
                                  f"{labels.min().item()}..{labels.max().item()}.")
        else:
            if self.binary and preds.ndim == 3:
                preds = preds.unsqueeze(1)
            if preds.ndim != 4:
                raise RecipeError(f"{name}: expected logits [B, C, H, W] or classes [B, H, W], got "
                                  f"{list(preds.shape)}.")
            if preds.shape[1] != self.num_classes:
                raise RecipeError(f"{name}: num_classes is {self.num_classes} but the model outputs "
                                  f"{preds.shape[1]} channels.")
            if preds.shape[-2:] != target.shape[-2:]:
                preds = F.interpolate(preds.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
            if self.binary:
                labels = (preds[:, 0].float().sigmoid() > self.threshold).long()
            else:
                labels = preds.argmax(dim=1)
        if labels.shape != target.shape:
            raise RecipeError(f"{name}: predictions {list(labels.shape)} and masks {list(target.shape)} differ.")
        return labels

    def per_class(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(TP, FP, FN)`` per class from the (synchronised) matrix, as float64."""
        matrix = self.confmat.double()
        tp = matrix.diagonal()
        return tp, matrix.sum(0) - tp, matrix.sum(1) - tp

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, ignore_index={self.ignore_index}"


class _MultiClass(ConfusionMatrixMetric):
    """The multi-class metrics' arguments (no ``threshold``: the prediction is the argmax)."""

    def __init__(self, num_classes: int, ignore_index: int = DEFAULT_IGNORE_INDEX,
                 class_names: Sequence[str] | None = None, sync_on_compute: bool = True,
                 dist_sync_on_step: bool = False):
        super().__init__(num_classes, ignore_index, class_names, sync_on_compute=sync_on_compute,
                         dist_sync_on_step=dist_sync_on_step)


class _PerClassMetric(_MultiClass):
    """A per-class score (NaN for a class absent from prediction and target) and its mean over present classes,
    under the keys ``<key>``, ``<key>/<class>`` (binary: ``<key>`` is the foreground score, plus ``<key>/mean``)."""

    key = ""

    @property
    def component_names(self) -> list[str]:
        """The keys ``compute()`` returns, usable as ``metric_to_watch``."""
        names = [self.key] + [f"{self.key}/{n}" for n in self.class_names]
        return names + [f"{self.key}/mean"] if self.binary else names

    def score(self, tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
        raise NotImplementedError

    def compute(self) -> dict[str, Tensor]:
        tp, fp, fn = self.per_class()
        scores = self.score(tp, fp, fn)  # 0 / 0 = NaN where the class is absent from prediction and target
        if 0 <= self.ignore_index < len(scores):  # a class index used as ignore_index has no target pixel: no score
            scores[self.ignore_index] = float("nan")
        mean = scores.nanmean()  # NaN when every class is absent (nothing was measured)
        out = {self.key: scores[1] if self.binary else mean}
        out.update({f"{self.key}/{n}": s for n, s in zip(self.class_names, scores, strict=True)})
        if self.binary:
            out[f"{self.key}/mean"] = mean
        return {k: v.float() for k, v in out.items()}


@register_metric("PixelAccuracy")
class PixelAccuracy(_MultiClass):
    """Fraction of non-ignored pixels whose predicted class is the mask's (NaN when all are ignored).
    ``(num_classes, ignore_index=255, class_names=None)``: see :class:`ConfusionMatrixMetric`."""

    def compute(self) -> Tensor:
        matrix = self.confmat.double()
        return (matrix.trace() / matrix.sum()).float()


@register_metric("IoU")
class IoU(_PerClassMetric):
    """Mean intersection over union over the classes present in prediction or target, and per class
    (``IoU/<class>``); see the module docstring."""

    key = "IoU"

    def score(self, tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
        return tp / (tp + fp + fn)


@register_metric("Dice")
class Dice(_PerClassMetric):
    """Mean Dice (F1) over the classes present in prediction or target, and per class (``Dice/<class>``)."""

    key = "Dice"

    def score(self, tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
        return 2 * tp / (2 * tp + fp + fn)


class _Binary:
    """The binary metrics' arguments: ``num_classes`` is the one logit channel, ``threshold`` the probability."""

    binary = True

    def __init__(self, num_classes: int = 1, ignore_index: int = DEFAULT_IGNORE_INDEX,
                 class_names: Sequence[str] | None = None, threshold: float = 0.5, sync_on_compute: bool = True,
                 dist_sync_on_step: bool = False):
        ConfusionMatrixMetric.__init__(self, num_classes, ignore_index, class_names, threshold=threshold,
                                       sync_on_compute=sync_on_compute, dist_sync_on_step=dist_sync_on_step)


@register_metric("BinaryIOU")
class BinaryIOU(_Binary, IoU):
    """Foreground IoU of a one-logit-channel model (foreground: ``sigmoid(logit) > threshold``), with
    ``BinaryIOU/background``, ``BinaryIOU/foreground`` and ``BinaryIOU/mean``."""

    key = "BinaryIOU"


@register_metric("BinaryDice")
class BinaryDice(_Binary, Dice):
    """Foreground Dice of a one-logit-channel model (foreground: ``sigmoid(logit) > threshold``), with
    ``BinaryDice/background``, ``BinaryDice/foreground`` and ``BinaryDice/mean``."""

    key = "BinaryDice"

