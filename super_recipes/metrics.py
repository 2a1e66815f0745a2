"""Metrics (``train_metrics_list`` / ``valid_metrics_list``): metric objects, by registered name or as objects.

Any ``torchmetrics`` class is usable by name with its arguments (``{MulticlassF1Score: {num_classes: 10}}``).
A batch may carry a third element, a dict of extras (``(inputs, targets, extras)``); a metric that sets
``accepts_batch_extras = True`` receives them as keyword arguments of ``update``.
``Accuracy`` and ``Top5`` are registered as top-k accuracies over logits that need no ``num_classes``: the
torchmetrics classification metrics require the class count up front, which a recipe should not have to repeat.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch

from super_recipes.registry import METRICS, build, is_spec, register_metric, to_plain


class TopKAccuracy(torch.nn.Module):
    """Fraction of samples whose target is among the ``k`` highest-scoring classes.

    The interface of a ``torchmetrics.Metric`` (``update``/``compute``/``reset``, summed over DDP ranks at
    ``compute`` unless ``sync_on_compute`` is false, states in ``state_dict``) written out rather than inherited:
    importing torchmetrics costs more than a second (its image metrics import torchvision and torch._dynamo),
    which every classification run would pay before its first step for two counters.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, k: int = 1, sync_on_compute: bool = True, dist_sync_on_step: bool = False):
        super().__init__()
        self.k = k
        self.sync_on_compute = sync_on_compute
        self.register_buffer("correct", torch.zeros((), dtype=torch.long))
        self.register_buffer("total", torch.zeros((), dtype=torch.long))

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if target.ndim == preds.ndim:  # one-hot or soft targets (mixup, label smoothing done in data)
            target = target.argmax(dim=1)
        topk = preds.topk(min(self.k, preds.shape[1]), dim=1).indices
        self.correct += (topk == target.unsqueeze(1)).any(dim=1).sum()
        self.total += target.numel()

    def compute(self) -> torch.Tensor:
        counts = torch.stack([self.correct, self.total])
        if self.sync_on_compute and torch.distributed.is_available() and torch.distributed.is_initialized():
            counts = counts.clone()
            torch.distributed.all_reduce(counts)
        return counts[0].float() / counts[1].clamp(min=1)

    def reset(self) -> None:
        self.correct.zero_()
        self.total.zero_()

    def persistent(self, mode: bool = False) -> None:
        """torchmetrics' switch for states in ``state_dict``: these counters are always there."""

    def forward(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.update(preds, target)

    def extra_repr(self) -> str:
        return f"k={self.k}"


@register_metric("Accuracy")
class Accuracy(TopKAccuracy):
    """Top-1 accuracy over logits ``[B, C]`` and integer targets ``[B]``."""

    def __init__(self, sync_on_compute: bool = True, dist_sync_on_step: bool = False):
        super().__init__(k=1, sync_on_compute=sync_on_compute, dist_sync_on_step=dist_sync_on_step)


@register_metric("Top5")
class Top5(TopKAccuracy):
    """Top-5 accuracy over logits ``[B, C]`` and integer targets ``[B]``."""

    def __init__(self, sync_on_compute: bool = True, dist_sync_on_step: bool = False):
        super().__init__(k=5, sync_on_compute=sync_on_compute, dist_sync_on_step=dist_sync_on_step)


def build_metrics(specs: Any, where: str) -> dict[str, Any]:
    """``{name: metric}`` for ``train_metrics_list`` / ``valid_metrics_list`` / ``test_metrics_list``.

    Entries are recipe specs (named by their registered name: ``Accuracy``, ``Top5``...) or, from the Python API,
    metric objects or classes (named by their class); a mapping ``{name: metric object}`` names them explicitly.
    A repeated name gets the entry's index appended. A metric whose ``compute()`` returns a dict (several
    values) logs each under its own key.
    """
    specs = to_plain(specs)
    if specs is None or (isinstance(specs, (Mapping, list, tuple)) and not specs):
        return {}
    if isinstance(specs, Mapping) and specs and "_target_" not in specs and not any(is_spec(v) for v in
                                                                                    specs.values()):
        named = list(specs.items())  # the Python API's {name: metric object}
    else:
        entries = specs if isinstance(specs, (list, tuple)) else [specs]
        named = [(_metric_name(spec), spec) for spec in entries]
    metrics: dict[str, Any] = {}
    for i, (name, spec) in enumerate(named):
        metric = build(METRICS, spec, f"{where}[{i}]")
        metrics[name if name not in metrics else f"{name}_{i}"] = metric
    return metrics


def _metric_name(spec: Any) -> str:
    if isinstance(spec, str):
        return spec.rpartition(".")[2]
    if isinstance(spec, Mapping):
        if "_target_" in spec:
            return str(spec["_target_"]).rpartition(".")[2]
        key = next(iter(spec))
        return key.__name__ if inspect.isclass(key) else str(key).rpartition(".")[2]
    return spec.__name__ if inspect.isclass(spec) else type(spec).__name__


def update_metric(metric: Any, preds: Any, targets: Any, extras: dict | None) -> None:
    """``metric.update(preds, targets)``; metrics with ``accepts_batch_extras = True`` also get the batch's
    extras as keyword arguments (the third element of a batch, e.g. crowd boxes and image shapes in detection)."""
    if extras is not None and getattr(metric, "accepts_batch_extras", False):
        metric.update(preds, targets, **extras)
    else:
        metric.update(preds, targets)


def compute_metrics(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """Compute (synchronised across processes by torchmetrics) and reset; ``{prefix/name: value}``."""
    out: dict[str, float] = {}
    for name, metric in metrics.items():
        value = metric.compute()
        if isinstance(value, dict):
            out.update({f"{prefix}/{k}": float(v) for k, v in value.items()})
        else:
            out[f"{prefix}/{name}"] = float(value)
        metric.reset()
    return out


def check_metric_to_watch(watch: str, metric_names: list[str], loss_names: list[str]) -> None:
    """``metric_to_watch`` must name a validation result or a loss item; refuse it with the closest names."""
    from super_recipes.errors import RecipeError, did_you_mean

    known = metric_names + loss_names
    if watch not in known:
        raise RecipeError(
            f"training_hyperparams.metric_to_watch '{watch}' is neither a validation metric nor a loss item. "
            f"{did_you_mean(watch, known)} Valid: {', '.join(known)}"
        )
